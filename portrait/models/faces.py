"""Face detection for the default model set: OpenCV's Haar cascade (ships with OpenCV 4.10, nothing downloaded).

With InsightFace's buffalo_l pack under PORTRAIT_MODELS the `face_detector` model uses SCRFD and the
2d106 landmarks instead; this is the offline fallback. It finds frontal faces and estimates the five
keypoints from the ArcFace template.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from portrait.models.masks import estimate_keypoints


@dataclass(frozen=True)
class Faces:
    boxes: np.ndarray  # [F, 4] float32 x0, y0, x1, y1, largest first
    scores: np.ndarray  # [F] float32
    keypoints: np.ndarray  # [F, 5, 2] float32
    landmarks: np.ndarray | None = None  # [F, 106, 2] float32 when the detector gives them


class HaarFaceDetector:
    """Frontal faces with OpenCV's Haar cascade; overlapping hits merged by OpenCV's NMS."""

    def __init__(self, min_neighbors: int = 6, min_size_fraction: float = 0.04):
        self.cascade = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalface_default.xml")
        if self.cascade.empty():
            raise RuntimeError("OpenCV's Haar cascade could not be loaded")
        self.min_neighbors, self.min_size_fraction = min_neighbors, min_size_fraction

    def __call__(self, image: np.ndarray, max_faces: int = 16) -> Faces:
        """`image` [H, W, 3] uint8 RGB."""
        gray = cv2.equalizeHist(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY))
        side = max(16, int(min(gray.shape) * self.min_size_fraction))
        rects, _, weights = self.cascade.detectMultiScale3(
            gray, scaleFactor=1.1, minNeighbors=self.min_neighbors, minSize=(side, side), outputRejectLevels=True)
        if len(rects) == 0:
            return Faces(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros((0, 5, 2), np.float32))
        scores = 1.0 / (1.0 + np.exp(-np.asarray(weights, np.float64).reshape(-1)))  # level weight -> (0, 1)
        keep = cv2.dnn.NMSBoxes([list(map(int, r)) for r in rects], scores.tolist(), 0.0, 0.3)
        keep = np.asarray(keep, int).reshape(-1)
        boxes = np.array([[x, y, x + w, y + h] for x, y, w, h in np.asarray(rects)[keep]], np.float32)
        order = np.argsort(-(boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]), kind="stable")[:max_faces]
        boxes, scores = boxes[order], scores[keep][order].astype(np.float32)
        return Faces(boxes, scores, np.stack([estimate_keypoints(b) for b in boxes]))


class InsightFaceDetector:
    """SCRFD detection + 2d106 landmarks from InsightFace ONNX files (buffalo_l: det_10g.onnx, 2d106det.onnx),
    decoded by insightface's own model_zoo code through ONNX Runtime."""

    def __init__(self, pack_dir, det_size: int = 640, threshold: float = 0.5):
        from insightface.model_zoo import get_model

        providers = ["CPUExecutionProvider"]
        self.detector = get_model(str(Path(pack_dir) / "det_10g.onnx"), providers=providers)
        self.detector.prepare(ctx_id=-1, input_size=(det_size, det_size), det_thresh=threshold)
        landmark_file = Path(pack_dir) / "2d106det.onnx"
        self.landmarks = get_model(str(landmark_file), providers=providers) if landmark_file.exists() else None
        if self.landmarks is not None:
            self.landmarks.prepare(ctx_id=-1)

    def __call__(self, image: np.ndarray, max_faces: int = 16) -> Faces:
        """`image` [H, W, 3] uint8 RGB (insightface works in BGR)."""
        from insightface.app.common import Face

        bgr = np.ascontiguousarray(image[..., ::-1])
        h, w = image.shape[:2]
        dets, kpss = self.detector.detect(bgr, max_num=max_faces, metric="max")
        boxes = dets[:, :4].copy()
        boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, w)
        boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, h)
        keep = (boxes[:, 2] - boxes[:, 0] >= 2) & (boxes[:, 3] - boxes[:, 1] >= 2)
        boxes, scores = boxes[keep].astype(np.float32), dets[keep, 4].astype(np.float32)
        kps = (kpss[keep] if kpss is not None else np.stack([estimate_keypoints(b) for b in boxes])
               if len(boxes) else np.zeros((0, 5, 2)))
        kps = np.stack([k.clip([b[0], b[1]], [b[2], b[3]]) for k, b in zip(kps, boxes)]) if len(boxes) else kps
        order = np.argsort(-(boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]), kind="stable")
        boxes, scores, kps = boxes[order], scores[order], np.asarray(kps, np.float32)[order]
        landmarks = None
        if self.landmarks is not None:
            landmarks = np.zeros((len(boxes), 106, 2), np.float32)
            for i, (box, score, k) in enumerate(zip(boxes, scores, kps)):
                landmarks[i] = self.landmarks.get(bgr, Face(bbox=box, kps=k, det_score=score))[:106, :2]
        return Faces(boxes, scores, kps.reshape(-1, 5, 2), landmarks)


def make_face_detector(models_dir) -> HaarFaceDetector | InsightFaceDetector:
    """InsightFace (SCRFD + 2d106) when the buffalo_l files are under <models>/insightface/, else Haar."""
    pack = Path(models_dir) / "insightface"
    return InsightFaceDetector(pack) if (pack / "det_10g.onnx").exists() else HaarFaceDetector()


ARCFACE_FILE = "w600k_r50.onnx"


class FaceEmbedder:
    """ArcFace identity embeddings with InsightFace's recognition ONNX (buffalo_l's w600k_r50.onnx): each face is
    warped onto the 112x112 ArcFace template by a similarity transform of its five keypoints (insightface's
    norm_crop), then embedded. The embedding is the raw 512-d output (PhotoMaker V2 takes it unnormalised)."""

    def __init__(self, onnx_file):
        from insightface.model_zoo import get_model

        if not Path(onnx_file).exists():
            raise FileNotFoundError(f"{onnx_file} is missing (buffalo_l's recognition model)")
        self.model = get_model(str(onnx_file), providers=["CPUExecutionProvider"])
        self.model.prepare(ctx_id=-1)
        self.size = self.model.input_size[0]

    def align(self, image: np.ndarray, keypoints: np.ndarray) -> np.ndarray:
        """RGB image [H, W, 3], keypoints [F, 5, 2] -> aligned RGB crops [F, S, S, 3] (S = 112)."""
        from insightface.utils.face_align import norm_crop

        return np.stack([norm_crop(image, k.astype(np.float32), image_size=self.size) for k in keypoints]) \
            if len(keypoints) else np.zeros((0, self.size, self.size, 3), np.uint8)

    def __call__(self, image: np.ndarray, keypoints: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """-> (embeddings [F, 512] float32, aligned RGB crops [F, S, S, 3] uint8)."""
        aligned = self.align(image, keypoints)
        if not len(aligned):
            return np.zeros((0, 512), np.float32), aligned
        bgr = [np.ascontiguousarray(a[..., ::-1]) for a in aligned]  # insightface works in BGR (cv2.imread)
        return np.asarray(self.model.get_feat(bgr), np.float32).reshape(len(bgr), -1), aligned

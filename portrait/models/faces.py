"""Face detection. With InsightFace's buffalo_l pack under PORTRAIT_MODELS: SCRFD + the 2d106 landmarks. Without it
(the default, offline): MediaPipe's BlazeFace full-range detector + FaceMesh's 478 landmarks, both shipped inside the
mediapipe 0.10.21 wheel (Apache-2.0), nothing downloaded. OpenCV's Haar cascade stays as the measured baseline
(docs/faces.md): it misses tilted and small faces and has no keypoints of its own.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from portrait.errors import ModelSetError
from portrait.models.masks import estimate_keypoints


@dataclass(frozen=True)
class Faces:
    boxes: np.ndarray  # [F, 4] float32 x0, y0, x1, y1, largest first
    scores: np.ndarray  # [F] float32
    keypoints: np.ndarray  # [F, 5, 2] float32
    landmarks: np.ndarray | None = None  # [F, L, 2] float32 when the detector gives them (106: 2d106, 478: FaceMesh)


def largest_first(boxes: np.ndarray) -> np.ndarray:
    """Indices ordering `boxes` [F, 4] by area, largest first (ties keep their order)."""
    return np.argsort(-(boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]), kind="stable")


def no_faces(landmarks: int | None = None) -> Faces:
    empty = np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros((0, 5, 2), np.float32)
    return Faces(*empty, None if landmarks is None else np.zeros((0, landmarks, 2), np.float32))


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
            return no_faces()
        scores = 1.0 / (1.0 + np.exp(-np.asarray(weights, np.float64).reshape(-1)))  # level weight -> (0, 1)
        keep = cv2.dnn.NMSBoxes([list(map(int, r)) for r in rects], scores.tolist(), 0.0, 0.3)
        keep = np.asarray(keep, int).reshape(-1)
        boxes = np.array([[x, y, x + w, y + h] for x, y, w, h in np.asarray(rects)[keep]], np.float32)
        order = largest_first(boxes)[:max_faces]
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
        order = largest_first(boxes)
        boxes, scores, kps = boxes[order], scores[order], np.asarray(kps, np.float32)[order]
        landmarks = None
        if self.landmarks is not None:
            landmarks = np.zeros((len(boxes), 106, 2), np.float32)
            for i, (box, score, k) in enumerate(zip(boxes, scores, kps)):
                landmarks[i] = self.landmarks.get(bgr, Face(bbox=box, kps=k, det_score=score))[:106, :2]
        return Faces(boxes, scores, kps.reshape(-1, 5, 2), landmarks)


# FaceMesh landmark indices of the five ArcFace keypoints, image-left first on an upright face: the iris centres
# (refine_landmarks), the nose tip, the outer mouth corners.
MESH_KEYPOINTS = [468, 473, 1, 61, 291]
MESH_LANDMARKS = 478


class MediaPipeFaceDetector:
    """BlazeFace (short and full range) finds faces, FaceMesh (478 landmarks) runs on each one's crop and confirms it.

    BlazeFace sees its input at 128 or 192 px, so a face of 80 px in a 1280 px group photo would shrink to 12 px: it
    runs on overlapping square windows (the short side, then half of it) and OpenCV's NMS merges what they find.
    FaceMesh runs on a square crop twice the face's size, where its own detector sees a large face; a detection that
    FaceMesh finds no face in is dropped. Boxes are the bounding boxes of the landmarks' face oval (what the mask
    covers); scores are BlazeFace's. Measured against Haar in docs/faces.md.
    """

    def __init__(self, threshold: float = 0.5, mesh_threshold: float = 0.5, crop_size: int = 256):
        import mediapipe as mp

        # short range (model 0) for faces that fill much of a window, full range (model 1) for smaller ones
        self.detections = [mp.solutions.face_detection.FaceDetection(model_selection=m, min_detection_confidence=threshold)
                           for m in (0, 1)]
        self.mesh = mp.solutions.face_mesh.FaceMesh(static_image_mode=True, max_num_faces=3, refine_landmarks=True,
                                                    min_detection_confidence=mesh_threshold)
        self.crop_size = crop_size

    def windows(self, h: int, w: int) -> list[tuple[int, int, int]]:
        """Square windows (x, y, side): the short side's and, when it leaves BlazeFace enough pixels, half of it."""
        out = []
        for side in (min(h, w), min(h, w) // 2):
            if side < 128 and out:
                break
            stride = max(1, side // 2)
            ys = sorted({*range(0, h - side + 1, stride), h - side})
            xs = sorted({*range(0, w - side + 1, stride), w - side})
            out += [(x, y, side) for y in ys for x in xs]
        return out

    def candidates(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """BlazeFace over the windows, merged by NMS -> boxes [N, 4] (x0, y0, x1, y1), scores [N]."""
        boxes, scores = [], []
        for (x, y, side), detection in itertools.product(self.windows(*image.shape[:2]), self.detections):
            for d in detection.process(np.ascontiguousarray(image[y:y + side, x:x + side])).detections or []:
                b = d.location_data.relative_bounding_box
                boxes.append([x + b.xmin * side, y + b.ymin * side, b.width * side, b.height * side])
                scores.append(float(d.score[0]))
        if not boxes:
            return np.zeros((0, 4), np.float32), np.zeros(0, np.float32)
        keep = np.asarray(cv2.dnn.NMSBoxes(boxes, scores, 0.0, 0.3), int).reshape(-1)
        xywh = np.asarray(boxes, np.float32)[keep]
        return np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], 1), np.asarray(scores, np.float32)[keep]

    def landmarks(self, image: np.ndarray, box: np.ndarray) -> np.ndarray | None:
        """FaceMesh's 478 landmarks [478, 2] (image pixels) of the face in `box`, or None when it finds none there."""
        center, side = (box[:2] + box[2:]) / 2, 2.0 * float(max(box[2] - box[0], box[3] - box[1]))
        scale = self.crop_size / side
        origin = center - side / 2
        to_crop = np.array([[scale, 0, -origin[0] * scale], [0, scale, -origin[1] * scale]], np.float32)
        crop = cv2.warpAffine(image, to_crop, (self.crop_size, self.crop_size), flags=cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0))
        meshes = self.mesh.process(crop).multi_face_landmarks or []
        if not meshes:
            return None
        points = [np.array([[p.x, p.y] for p in m.landmark], np.float32) * self.crop_size for m in meshes]
        nearest = min(points, key=lambda p: float(np.linalg.norm(p[MESH_KEYPOINTS[2]] - self.crop_size / 2)))
        return nearest / scale + origin.astype(np.float32)

    def __call__(self, image: np.ndarray, max_faces: int = 16) -> Faces:
        """`image` [H, W, 3] uint8 RGB."""
        from portrait.models.masks import MESH_FACE_OVAL

        h, w = image.shape[:2]
        found = []
        for box, score in zip(*self.candidates(image)):
            marks = self.landmarks(image, box)
            if marks is None:
                continue
            oval = marks[MESH_FACE_OVAL]
            face_box = np.concatenate([oval.min(0), oval.max(0)]).clip(0, [w, h, w, h]).astype(np.float32)
            found.append((face_box, score, marks))
        if not found:
            return no_faces(MESH_LANDMARKS)
        # two windows' detections of one face can overlap too little for the first NMS and still find the same mesh
        boxes = np.stack([f[0] for f in found])
        xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], 1).tolist()
        keep = np.asarray(cv2.dnn.NMSBoxes(xywh, [f[1] for f in found], 0.0, 0.5), int).reshape(-1)
        found, boxes = [found[i] for i in keep], boxes[keep]
        order = largest_first(boxes)[:max_faces]
        landmarks = np.stack([found[i][2] for i in order]).astype(np.float32)
        return Faces(boxes[order], np.array([found[i][1] for i in order], np.float32),
                     np.ascontiguousarray(landmarks[:, MESH_KEYPOINTS]), landmarks)


FACE_DETECTORS = ("auto", "insightface", "mediapipe", "haar")


def make_face_detector(models_dir, choice: str = "auto") -> MediaPipeFaceDetector | InsightFaceDetector | HaarFaceDetector:
    """`auto` (PORTRAIT_FACE_DETECTOR's default): InsightFace (SCRFD + 2d106) when the buffalo_l files are under
    <models>/insightface/, else MediaPipe. `haar` (OpenCV's cascade, the old default) sees faces in the tiny set's
    noise where a trained detector sees none: the tests that need stage 2 to run on a generated base use it."""
    pack = Path(models_dir) / "insightface"
    if choice not in FACE_DETECTORS:
        raise ModelSetError(f"PORTRAIT_FACE_DETECTOR must be one of {', '.join(FACE_DETECTORS)}, got {choice!r}")
    if choice == "insightface" or (choice == "auto" and (pack / "det_10g.onnx").exists()):
        return InsightFaceDetector(pack)
    return HaarFaceDetector() if choice == "haar" else MediaPipeFaceDetector()


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

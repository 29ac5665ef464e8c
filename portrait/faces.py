"""Face detection for the default model set: OpenCV's Haar cascade (ships with OpenCV 4.10, nothing downloaded).

With InsightFace's buffalo_l pack under PORTRAIT_MODELS the `face_detector` model uses SCRFD and the
2d106 landmarks instead; this is the offline fallback. It finds frontal faces and estimates the five
keypoints from the ArcFace template.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from portrait.masks import estimate_keypoints


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

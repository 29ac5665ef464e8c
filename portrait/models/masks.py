"""Face masks, crop boxes, change maps and the feathered paste-back of stage 2.

Change maps follow the project convention (portrait/diffusion/diffdiff.py): values in [0, 1], high = more change.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

# ArcFace's 112x112 five-point template (left eye, right eye, nose, left and right mouth corner):
# used to place estimated keypoints inside a box when a detector gives none.
ARCFACE_TEMPLATE = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                             [41.5493, 92.3655], [70.7299, 92.2041]], dtype=np.float32)

# FaceMesh's face oval, in order around the face from the top of the forehead (landmark 10). A deliberate copy of
# mediapipe's FACEMESH_FACE_OVAL edges walked into a polygon (the mask is built where mediapipe is not imported);
# tests/unit/test_detector.py checks it against mediapipe's own.
MESH_FACE_OVAL = [10, 109, 67, 103, 54, 21, 162, 127, 234, 93, 132, 58, 172, 136, 150, 149, 176, 148, 152, 377, 400,
                  378, 379, 365, 397, 288, 361, 323, 454, 356, 389, 251, 284, 332, 297, 338]


@dataclass(frozen=True)
class CropBox:
    """A square region of the image, in pixels: [x0, x1) x [y0, y1)."""

    x0: int
    y0: int
    x1: int
    y1: int

    @property
    def size(self) -> int:
        return self.x1 - self.x0


def square_crop_box(box: np.ndarray, margin: float, image_hw: tuple[int, int]) -> CropBox:
    """A square around face `box` [x0, y0, x1, y1], `margin` x its larger side added on every side, kept inside the image."""
    h, w = image_hw
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    side = int(round(max(box[2] - box[0], box[3] - box[1]) * (1 + 2 * margin)))
    side = max(8, min(side, h, w))
    x0 = int(round(min(max(cx - side / 2, 0), w - side)))
    y0 = int(round(min(max(cy - side / 2, 0), h - side)))
    return CropBox(x0, y0, x0 + side, y0 + side)


def estimate_keypoints(box: np.ndarray) -> np.ndarray:
    """Five keypoints [5, 2] placed in `box` by the ArcFace template (for detectors that give only boxes)."""
    scale = np.array([box[2] - box[0], box[3] - box[1]], np.float32) / 112.0
    return box[:2].astype(np.float32) + ARCFACE_TEMPLATE * scale


def face_mask(image_hw: tuple[int, int], box: np.ndarray, landmarks: np.ndarray | None = None) -> np.ndarray:
    """Binary face mask [H, W] float32 from the detector's landmarks: FaceMesh's face oval (478 points: forehead to
    chin), or the hull of InsightFace's 106 points raised to the brow line; an ellipse in the box when there are none."""
    mask = np.zeros(image_hw, np.uint8)
    points = None if landmarks is None else np.asarray(landmarks, np.float32)
    if points is not None and len(points) > max(MESH_FACE_OVAL):
        cv2.fillPoly(mask, [points[MESH_FACE_OVAL].round().astype(np.int32)], 1)
    elif points is not None and len(points) >= 3:
        top = points[:, 1].min()
        # the 2d106 points stop at the brows; lift the upper half by a fifth of the face height to take the forehead
        height = points[:, 1].max() - top
        lifted = points.copy()
        upper = points[:, 1] < top + height / 2
        lifted[upper, 1] -= 0.2 * height
        hull = cv2.convexHull(np.concatenate([points, lifted]).round().astype(np.int32))
        cv2.fillConvexPoly(mask, hull, 1)
    else:
        center = (int(round((box[0] + box[2]) / 2)), int(round((box[1] + box[3]) / 2)))
        axes = (max(1, int(round((box[2] - box[0]) * 0.5))), max(1, int(round((box[3] - box[1]) * 0.6))))
        cv2.ellipse(mask, center, axes, 0, 0, 360, 1, thickness=-1)
    return mask.astype(np.float32)


def feather(mask: np.ndarray, radius: float) -> np.ndarray:
    """Soften a mask's edge over about `radius` pixels (Gaussian); stays in [0, 1] and exactly 0 far outside."""
    if radius <= 0:
        return mask.astype(np.float32)
    k = int(2 * round(radius) + 1)
    soft = cv2.GaussianBlur(mask.astype(np.float32), (k, k), sigmaX=radius / 2, borderType=cv2.BORDER_CONSTANT)
    soft[soft < 1e-3] = 0.0  # a clean zero outside, so pixels there stay bit-identical on paste-back
    return np.clip(soft, 0.0, 1.0)


def paste_back(base: np.ndarray, patch: np.ndarray, crop: CropBox, alpha: np.ndarray) -> np.ndarray:
    """Blend `patch` (the crop's size) into `base` [H, W, 3] uint8 through `alpha` [crop, crop]; alpha 0 keeps base bit-for-bit."""
    out = base.copy()
    region = out[crop.y0:crop.y1, crop.x0:crop.x1]
    a = alpha[..., None]
    blended = np.clip(a * patch.astype(np.float32) + (1 - a) * region.astype(np.float32) + 0.5, 0, 255).astype(np.uint8)
    out[crop.y0:crop.y1, crop.x0:crop.x1] = np.where(a > 0, blended, region)
    return out


def resize_square(image: np.ndarray, size: int) -> np.ndarray:
    """Magnify (cubic) or shrink (area) a square crop to `size` x `size`."""
    interpolation = cv2.INTER_CUBIC if size > image.shape[0] else cv2.INTER_AREA
    return cv2.resize(image, (size, size), interpolation=interpolation)

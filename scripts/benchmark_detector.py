"""Face detectors against hand-labelled photos that ship offline (docs/faces.md): recall at IoU 0.5, false positives,
keypoint error, for OpenCV's Haar cascade and MediaPipe (BlazeFace + FaceMesh), the default detector.

    .venv/bin/python scripts/benchmark_detector.py [--json out.json]

The labels were made by looking at zoomed crops of each photo with a 10 px grid: a face box from the hairline (or
the top of the forehead) to the chin and from cheek to cheek (ears left out), as WIDER FACE boxes are drawn, and the
five ArcFace keypoints (eye centres, nose tip, outer mouth corners, the image-left eye first). Variants are derived
from them exactly: a mirror image (keypoints mirrored, left and right swapped), rotations by +-30 degrees on an
enlarged canvas (a box becomes the bounding box of its inscribed ellipse rotated), downscales by 2 and 4.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

# (x0, y0, x1, y1), five keypoints; in each photo's own pixels
LABELS = {
    "astronaut": [([182, 76, 268, 182], [(202.5, 100.5), (246, 102.5), (224, 125), (204, 141), (249, 141)])],
    "t1": [  # insightface's group photo, left to right
        ([70, 268, 166, 396], [(88, 327), (129, 310), (119, 341), (114, 367), (149, 351)]),  # tilted ~20 degrees
        ([272, 148, 372, 270], [(290, 209), (320, 195), (313, 228), (311, 243), (340, 233)]),  # tilted, three-quarter
        ([468, 272, 572, 402], [(492.5, 320), (536, 332.5), (511, 360), (496, 379.5), (534, 382.5)]),
        ([749, 342, 847, 476], [(762.5, 399), (801, 399), (780, 423), (766, 439), (811, 438)]),
        ([912, 50, 1015, 203], [(915, 113.5), (947.5, 114), (922.5, 150), (931, 167), (958, 170)]),  # near profile
        ([1134, 288, 1218, 402], [(1150, 325.5), (1196, 324), (1171, 352.5), (1154, 365), (1197.5, 364)]),
    ],
    # a 112 x 112 ArcFace crop: the face fills it, cut at the top and bottom; put on a grey canvas twice its size
    "tom_hanks": [([12, 0, 84, 112], [(37, 51), (71, 50), (53, 75), (37, 92), (69, 91)])],
}
NEGATIVES = ["chelsea", "coffee", "rocket", "horse"]  # scikit-image photos without a face
LFW_SCALE, LFW_PAD = 4, 50  # lfw_subset's 25 x 25 patches, magnified and put on a grey canvas


@dataclass
class Sample:
    name: str
    subset: str
    image: np.ndarray  # [H, W, 3] uint8 RGB
    boxes: np.ndarray  # [N, 4]
    keypoints: np.ndarray | None  # [N, 5, 2] or None where not labelled


def package_path(package: str, relative: str) -> Path:
    return Path(importlib.util.find_spec(package).submodule_search_locations[0]) / relative


def read(package: str, relative: str) -> np.ndarray:
    return np.array(Image.open(package_path(package, relative)).convert("RGB"))


def photos() -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    hanks = read("insightface", "data/images/Tom_Hanks_54745.png")
    canvas = np.full((224, 224, 3), 128, np.uint8)
    canvas[56:168, 56:168] = hanks
    images = {"astronaut": read("skimage", "data/astronaut.png"), "t1": read("insightface", "data/images/t1.jpg"),
              "tom_hanks": canvas}
    out = {}
    for name, faces in LABELS.items():
        boxes = np.array([f[0] for f in faces], np.float32)
        kps = np.array([f[1] for f in faces], np.float32)
        if name == "tom_hanks":
            boxes, kps = boxes + 56, kps + 56
        out[name] = images[name], boxes, kps
    return out


def mirror(image, boxes, kps):
    w = image.shape[1]
    boxes = np.stack([w - boxes[:, 2], boxes[:, 1], w - boxes[:, 0], boxes[:, 3]], 1)
    kps = kps.copy()
    kps[..., 0] = w - kps[..., 0]
    return image[:, ::-1].copy(), boxes, kps[:, [1, 0, 2, 4, 3]]


def rotate(image, boxes, kps, degrees):
    """Counter-clockwise by `degrees` about the centre, on a canvas that holds the whole photo (black corners)."""
    h, w = image.shape[:2]
    m = cv2.getRotationMatrix2D((w / 2, h / 2), degrees, 1.0)
    cos, sin = abs(m[0, 0]), abs(m[0, 1])
    nw, nh = int(np.ceil(w * cos + h * sin)), int(np.ceil(w * sin + h * cos))
    m[:, 2] += (nw - w) / 2, (nh - h) / 2
    out = cv2.warpAffine(image, m, (nw, nh), flags=cv2.INTER_LINEAR)
    kps = kps @ m[:, :2].T + m[:, 2]
    centers = ((boxes[:, :2] + boxes[:, 2:]) / 2) @ m[:, :2].T + m[:, 2]
    a, b = (boxes[:, 2] - boxes[:, 0]) / 2, (boxes[:, 3] - boxes[:, 1]) / 2
    half = np.stack([np.sqrt((a * cos) ** 2 + (b * sin) ** 2), np.sqrt((a * sin) ** 2 + (b * cos) ** 2)], 1)
    return out, np.concatenate([centers - half, centers + half], 1).astype(np.float32), kps.astype(np.float32)


def downscale(image, boxes, kps, factor):
    h, w = image.shape[:2]
    out = cv2.resize(image, (round(w / factor), round(h / factor)), interpolation=cv2.INTER_AREA)
    return out, boxes / factor, kps / factor


VARIANTS = {"original": lambda *a: a, "mirror": mirror, "rotated +30": lambda *a: rotate(*a, 30),
            "rotated -30": lambda *a: rotate(*a, -30), "downscaled x2": lambda *a: downscale(*a, 2),
            "downscaled x4": lambda *a: downscale(*a, 4)}


def samples() -> list[Sample]:
    out = []
    for name, (image, boxes, kps) in photos().items():
        for variant, make in VARIANTS.items():
            out.append(Sample(f"{name} {variant}", variant, *make(image, boxes, kps)))
    patches = np.load(package_path("skimage", "data/lfw_subset.npy"))  # [200, 25, 25]: 100 faces, then 100 non-faces
    for i, patch in enumerate(patches):
        tile = cv2.resize((patch * 255).round().astype(np.uint8), None, fx=LFW_SCALE, fy=LFW_SCALE,
                          interpolation=cv2.INTER_CUBIC)
        tile = np.repeat(np.pad(tile, LFW_PAD, constant_values=128)[..., None], 3, 2)
        side = 25 * LFW_SCALE
        boxes = np.array([[LFW_PAD, LFW_PAD, LFW_PAD + side, LFW_PAD + side]], np.float32) if i < 100 else np.zeros((0, 4))
        out.append(Sample(f"lfw {i}", "lfw faces" if i < 100 else "lfw non-faces", tile, boxes, None))
    empty = np.zeros((0, 4), np.float32)
    for name in NEGATIVES:
        image = read("skimage", f"data/{name}.jpg" if name == "rocket" else f"data/{name}.png")
        for variant, make in VARIANTS.items():
            out.append(Sample(f"{name} {variant}", "face-free photos", make(image, empty, np.zeros((0, 5, 2)))[0], empty, None))
    return out


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[N, 4] x [M, 4] -> [N, M]."""
    lo, hi = np.maximum(a[:, None, :2], b[None, :, :2]), np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(hi - lo, 0, None), -1)
    area = lambda x: np.prod(x[:, 2:] - x[:, :2], -1)  # noqa: E731
    return inter / (area(a)[:, None] + area(b)[None] - inter)


def match(truth: np.ndarray, found: np.ndarray, threshold: float = 0.5) -> list[tuple[int, int]]:
    """Greedy one-to-one matching by IoU >= threshold, best pairs first -> [(truth index, found index)]."""
    if not len(truth) or not len(found):
        return []
    overlap = iou(truth, found)
    pairs = []
    for t, f in sorted(np.argwhere(overlap >= threshold).tolist(), key=lambda p: -overlap[p[0], p[1]]):
        if all(t != a and f != b for a, b in pairs):
            pairs.append((t, f))
    return pairs


def evaluate(detector, data: list[Sample]) -> dict:
    rows: dict[str, dict] = {}
    seconds = 0.0
    for s in data:
        start = time.perf_counter()
        faces = detector(s.image, 16)
        seconds += time.perf_counter() - start
        pairs = match(s.boxes, faces.boxes)
        row = rows.setdefault(s.subset, {"faces": 0, "found": 0, "false_positives": 0, "images": 0, "kp_errors": []})
        row["images"] += 1
        row["faces"] += len(s.boxes)
        row["found"] += len(pairs)
        row["false_positives"] += len(faces.boxes) - len(pairs)
        if s.keypoints is not None:
            for t, f in pairs:
                truth = s.keypoints[t]
                interocular = np.linalg.norm(truth[1] - truth[0])
                row["kp_errors"].append(float(np.linalg.norm(faces.keypoints[f] - truth, axis=-1).mean() / interocular))
    for row in rows.values():
        errors = row.pop("kp_errors")
        row["recall"] = row["found"] / row["faces"] if row["faces"] else None
        row["kp_nme_mean"] = float(np.mean(errors)) if errors else None
        row["kp_matched"] = len(errors)
    return {"subsets": rows, "seconds_per_image": seconds / len(data)}


def main() -> None:
    from portrait.models.faces import HaarFaceDetector, MediaPipeFaceDetector

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="write the results here too")
    args = parser.parse_args()
    data = samples()
    results = {name: evaluate(make(), data) for name, make in
               [("haar", HaarFaceDetector), ("mediapipe", MediaPipeFaceDetector)]}
    subsets = list(dict.fromkeys(s.subset for s in data))
    print("| images | faces | " + " | ".join(f"{d}: recall | {d}: FP | {d}: kp NME" for d in results) + " |")
    print("|---|---|" + "---|---|---|" * len(results))
    total = {d: {"faces": 0, "found": 0, "fp": 0} for d in results}
    for subset in subsets:
        cells = []
        for d, r in results.items():
            row = r["subsets"][subset]
            total[d]["faces"] += row["faces"]
            total[d]["found"] += row["found"]
            total[d]["fp"] += row["false_positives"]
            recall = f"{row['found']}/{row['faces']}" if row["faces"] else "-"
            nme = f"{row['kp_nme_mean']:.3f} ({row['kp_matched']})" if row["kp_nme_mean"] is not None else "-"
            cells += [recall, str(row["false_positives"]), nme]
        first = results["haar"]["subsets"][subset]
        print(f"| {subset} ({first['images']}) | {first['faces']} | " + " | ".join(cells) + " |")
    cells = []
    for d in results:
        t = total[d]
        cells += [f"{t['found']}/{t['faces']} = {t['found'] / t['faces']:.2f}", str(t["fp"]), ""]
    print(f"| all ({len(data)}) | {total['haar']['faces']} | " + " | ".join(cells) + " |")
    for d, r in results.items():
        print(f"{d}: {r['seconds_per_image'] * 1000:.0f} ms per image")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()

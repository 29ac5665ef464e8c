"""The default face detector (MediaPipe BlazeFace + FaceMesh, shipped inside the mediapipe wheel) on hand-labelled
photos that ship offline (labels and variants: scripts/benchmark_detector.py, measured in docs/faces.md), and the face
mask built from its landmarks."""

import cv2
import numpy as np
import pytest

from portrait.models.faces import MESH_KEYPOINTS, MESH_LANDMARKS, MediaPipeFaceDetector, make_face_detector
from portrait.models.masks import MESH_FACE_OVAL, face_mask
from scripts.benchmark_detector import NEGATIVES, VARIANTS, iou, photos, read


@pytest.fixture(scope="module")
def detector(tmp_path_factory):
    """What the face_detector model loads when PORTRAIT_MODELS has no InsightFace pack (the default set)."""
    return make_face_detector(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def labelled():
    return photos()


def test_the_default_is_the_trained_detector(detector):
    assert isinstance(detector, MediaPipeFaceDetector)


@pytest.mark.parametrize("variant", ["original", "mirror", "rotated +30", "rotated -30"])
def test_every_person_in_t1_is_found_with_keypoints_near_the_labelled_ones(detector, labelled, variant):
    """insightface's group photo (six people, two of them tilted, one near profile), upright, mirrored and turned by
    30 degrees either way: each labelled face is matched by one box at IoU >= 0.5, and its five keypoints lie within
    8 px on average and 16 px at most of the labelled ones (faces are about 100 px wide)."""
    image, boxes, keypoints = VARIANTS[variant](*labelled["t1"])
    faces = detector(image)
    assert len(faces.boxes) == 6
    overlap = iou(boxes, faces.boxes)  # [6 labelled, 6 found]
    found = overlap.argmax(1)
    assert sorted(found) == list(range(6)) and np.all(overlap.max(1) >= 0.5), overlap.round(2)
    error = np.linalg.norm(faces.keypoints[found] - keypoints, axis=-1)  # [6, 5] px
    assert np.all(error.mean(1) <= 8) and np.all(error <= 16), error.round(1)


def test_a_small_tilted_face_is_found(detector, labelled):
    """The tilted woman at the left of t1, turned a further 30 degrees and shrunk to half size (a face of 50 px)."""
    image, boxes, keypoints = VARIANTS["rotated +30"](*labelled["t1"])
    image = cv2.resize(image, None, fx=0.5, fy=0.5, interpolation=cv2.INTER_AREA)
    faces = detector(image)
    overlap = iou(boxes[:1] / 2, faces.boxes)[0]
    assert overlap.max() >= 0.5
    assert np.linalg.norm(faces.keypoints[overlap.argmax()] - keypoints[0] / 2, axis=-1).max() <= 8


def test_faces_come_largest_first_with_the_mesh_and_its_keypoints(detector, labelled):
    image = labelled["t1"][0]
    faces = detector(image, max_faces=4)
    areas = (faces.boxes[:, 2] - faces.boxes[:, 0]) * (faces.boxes[:, 3] - faces.boxes[:, 1])
    assert len(faces.boxes) == 4 and np.all(np.diff(areas) <= 0)
    everyone = detector(image)
    assert np.array_equal(faces.boxes, everyone.boxes[:4])  # the four largest of the six
    assert faces.landmarks.shape == (4, MESH_LANDMARKS, 2) and faces.keypoints.shape == (4, 5, 2)
    assert faces.scores.shape == (4,) and np.all((faces.scores > 0.5) & (faces.scores <= 1))
    np.testing.assert_array_equal(faces.keypoints, faces.landmarks[:, MESH_KEYPOINTS])
    for box, kps in zip(faces.boxes, faces.keypoints):
        assert np.all(kps >= box[:2]) and np.all(kps <= box[2:])


def test_the_image_left_eye_comes_first_on_a_mirrored_face(detector, labelled):
    """ArcFace's alignment template expects the image-left eye first; a mirror image must not swap them."""
    for variant in ("original", "mirror"):
        faces = detector(VARIANTS[variant](*labelled["astronaut"])[0])
        assert len(faces.boxes) == 1
        (left, right, nose, mouth_left, mouth_right) = faces.keypoints[0]
        assert left[0] < nose[0] < right[0] and mouth_left[0] < mouth_right[0]


@pytest.mark.parametrize("name", NEGATIVES)
def test_no_face_in_face_free_photos(detector, name):
    assert len(detector(read("skimage", f"data/{name}.jpg" if name == "rocket" else f"data/{name}.png")).boxes) == 0


def test_no_face_in_a_flat_image(detector):
    faces = detector(np.full((256, 256, 3), 128, np.uint8))
    assert faces.boxes.shape == (0, 4) and faces.keypoints.shape == (0, 5, 2)
    assert faces.landmarks.shape == (0, MESH_LANDMARKS, 2)


def test_face_oval_is_mediapipes():
    """masks.MESH_FACE_OVAL is a copy of mediapipe's FACEMESH_FACE_OVAL edges, walked into one closed polygon."""
    from mediapipe.python.solutions.face_mesh_connections import FACEMESH_FACE_OVAL

    ring = {frozenset(pair) for pair in zip(MESH_FACE_OVAL, MESH_FACE_OVAL[1:] + MESH_FACE_OVAL[:1])}
    assert len(MESH_FACE_OVAL) == len(set(MESH_FACE_OVAL)) == 36
    assert ring == {frozenset(edge) for edge in FACEMESH_FACE_OVAL}


def polygon_area(points: np.ndarray) -> float:
    return float(cv2.contourArea(points.astype(np.float32)))


@pytest.mark.parametrize("variant", ["original", "rotated -30"])
def test_the_mask_is_the_landmarks_face_oval(detector, labelled, variant):
    """The tilted woman at the left of t1: the mask is the region inside her face oval: it holds her eyes, nose and
    mouth, has the oval's area, and nothing of it lies outside the oval (no ellipse, no lifted forehead)."""
    image, boxes, keypoints = VARIANTS[variant](*labelled["t1"])
    faces = detector(image)
    i = int(iou(boxes[:1], faces.boxes)[0].argmax())
    oval = faces.landmarks[i][MESH_FACE_OVAL]
    mask = face_mask(image.shape[:2], faces.boxes[i], faces.landmarks[i])
    assert all(mask[int(round(y)), int(round(x))] == 1 for x, y in keypoints[0])
    assert mask.sum() == pytest.approx(polygon_area(oval), rel=0.04)
    ys, xs = np.nonzero(mask)
    inside = [cv2.pointPolygonTest(oval.astype(np.float32), (float(x), float(y)), True) for x, y in zip(xs[::7], ys[::7])]
    assert min(inside) >= -1.5
    assert ys.min() >= oval[:, 1].min() - 1  # the oval's top (the forehead), not above it
    ellipse = face_mask(image.shape[:2], faces.boxes[i])
    assert (mask * ellipse).sum() / np.maximum(mask, ellipse).sum() < 0.9  # and not the box's ellipse either

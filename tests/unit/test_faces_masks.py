"""OpenCV's Haar cascade (the baseline in docs/faces.md) on real photos, and the mask / crop / paste-back functions of stage 2."""

import numpy as np
import pytest

from portrait.models.faces import HaarFaceDetector
from portrait.models.masks import ARCFACE_TEMPLATE, estimate_keypoints, face_mask, feather, paste_back, square_crop_box
from tests.helpers import package_file


@pytest.fixture(scope="module")
def detector():
    return HaarFaceDetector()


def check_geometry(faces, image):
    h, w = image.shape[:2]
    assert np.all(faces.boxes[:, :2] >= 0) and np.all(faces.boxes[:, 2] <= w) and np.all(faces.boxes[:, 3] <= h)
    for box, kps in zip(faces.boxes, faces.keypoints):
        assert np.all(kps[:, 0] >= box[0]) and np.all(kps[:, 0] <= box[2])
        assert np.all(kps[:, 1] >= box[1]) and np.all(kps[:, 1] <= box[3])
    areas = (faces.boxes[:, 2] - faces.boxes[:, 0]) * (faces.boxes[:, 3] - faces.boxes[:, 1])
    assert np.all(np.diff(areas) <= 0)  # largest first


def test_finds_the_people_in_insightface_t1(detector):
    image = package_file("insightface", "data/images/t1.jpg")  # six people
    faces = detector(image)
    assert len(faces.boxes) >= 4
    check_geometry(faces, image)


def test_finds_exactly_the_astronaut(detector):
    image = package_file("skimage", "data/astronaut.png")
    faces = detector(image)
    assert len(faces.boxes) == 1
    check_geometry(faces, image)
    x0, y0, x1, y1 = faces.boxes[0]
    assert 150 < (x0 + x1) / 2 < 260 and 50 < (y0 + y1) / 2 < 160  # her face, not the flag or the badge


def test_no_face_in_a_flat_image(detector):
    assert len(detector(np.full((256, 256, 3), 128, np.uint8)).boxes) == 0


def test_estimated_keypoints_are_the_template_in_the_box():
    kps = estimate_keypoints(np.array([0, 0, 112, 112], np.float32))
    np.testing.assert_allclose(kps, ARCFACE_TEMPLATE, atol=1e-4)


@pytest.mark.parametrize("box,margin", [((100, 80, 180, 190), 0.3), ((0, 0, 50, 40), 0.5), ((450, 450, 510, 510), 0.2)])
def test_crop_box_is_square_inside_the_image_and_holds_the_face(box, margin):
    crop = square_crop_box(np.array(box, np.float32), margin, (512, 512))
    assert crop.x1 - crop.x0 == crop.y1 - crop.y0 == crop.size
    assert 0 <= crop.x0 and 0 <= crop.y0 and crop.x1 <= 512 and crop.y1 <= 512
    assert crop.x0 <= box[0] and crop.y0 <= box[1] and crop.x1 >= box[2] and crop.y1 >= box[3]


def test_masks_from_landmarks_and_from_a_box():
    box = np.array([40, 30, 90, 100], np.float32)
    ellipse = face_mask((128, 128), box)
    assert ellipse[65, 65] == 1 and ellipse[5, 5] == 0
    ring = np.stack([65 + 20 * np.cos(np.linspace(0, 6.28, 106)), 70 + 25 * np.sin(np.linspace(0, 6.28, 106))], 1)
    hull = face_mask((128, 128), box, ring)
    assert hull[70, 65] == 1 and hull[120, 120] == 0
    assert hull[40, 65] == 1 and ring[:, 1].min() > 40  # lifted above the landmarks: the forehead


def test_feather_is_soft_inside_and_zero_far_outside():
    mask = np.zeros((64, 64), np.float32)
    mask[16:48, 16:48] = 1
    soft = feather(mask, 6)
    assert soft.min() == 0 and soft.max() <= 1 and soft[32, 32] == pytest.approx(1, abs=1e-3)
    assert 0 < soft[16, 32] < 1 and soft[2, 2] == 0


def test_paste_back_leaves_pixels_outside_the_mask_bit_identical():
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (96, 128, 3), dtype=np.uint8)
    crop = square_crop_box(np.array([50, 30, 80, 60], np.float32), 0.2, base.shape[:2])
    patch = rng.integers(0, 256, (crop.size, crop.size, 3), dtype=np.uint8)
    alpha = feather(face_mask((crop.size, crop.size), np.array([8, 8, 32, 32], np.float32)), 3)
    out = paste_back(base, patch, crop, alpha)
    outside = np.ones(base.shape[:2], bool)
    outside[crop.y0:crop.y1, crop.x0:crop.x1] = alpha == 0
    assert np.array_equal(out[outside], base[outside])
    full = alpha >= 1
    assert np.array_equal(out[crop.y0:crop.y1, crop.x0:crop.x1][full], patch[full])


def test_insightface_path_decodes_the_seeded_buffalo_l_shaped_files(models_dir, tmp_path):
    """The tiny SCRFD/2d106 ONNX go through insightface's own routing and decoding (they find nothing meaningful)."""
    import shutil

    from insightface.model_zoo import SCRFD, Landmark, get_model

    from portrait.models.faces import InsightFaceDetector, MediaPipeFaceDetector, make_face_detector

    pack = models_dir / "insightface_tiny"
    assert isinstance(get_model(str(pack / "det_10g.onnx"), providers=["CPUExecutionProvider"]), SCRFD)
    assert isinstance(get_model(str(pack / "2d106det.onnx"), providers=["CPUExecutionProvider"]), Landmark)
    image = package_file("skimage", "data/astronaut.png")
    faces = InsightFaceDetector(pack)(image, max_faces=5)
    assert 1 <= len(faces.boxes) <= 5
    check_geometry(faces, image)
    assert faces.landmarks.shape == (len(faces.boxes), 106, 2) and np.isfinite(faces.landmarks).all()
    # the model picks InsightFace only when the pack sits at <models>/insightface/
    assert isinstance(make_face_detector(tmp_path), MediaPipeFaceDetector)
    shutil.copytree(pack, tmp_path / "insightface")
    assert isinstance(make_face_detector(tmp_path), InsightFaceDetector)


def test_the_face_detector_setting_chooses_or_names_the_choices(tmp_path):
    from portrait.errors import ModelSetError
    from portrait.models.faces import HaarFaceDetector, MediaPipeFaceDetector, make_face_detector

    assert isinstance(make_face_detector(tmp_path, "haar"), HaarFaceDetector)
    assert isinstance(make_face_detector(tmp_path, "mediapipe"), MediaPipeFaceDetector)
    with pytest.raises(ModelSetError, match="PORTRAIT_FACE_DETECTOR must be one of auto, insightface, mediapipe, haar"):
        make_face_detector(tmp_path, "dlib")

"""Phone photos: JPEG pixels stored sideways with an EXIF Orientation tag are read as every viewer shows them,
wherever a user's image is decoded (portrait.params.decode_image): stage-2 input, identity photos, the store,
sweep faces, the CLI. Real face photos from packages, turned and tagged here."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from portrait.errors import InvalidInput
from portrait.images import decode_image
from portrait.models.faces import HaarFaceDetector
from portrait.params import DetailParams
from tests.helpers import jpeg, package_file, run_cli, sideways


@pytest.fixture(scope="module")
def group():
    return package_file("insightface", "data/images/t1.jpg")  # [886, 1280, 3], several people, landscape


@pytest.fixture(scope="module")
def astronaut():
    return package_file("skimage", "data/astronaut.png")  # [512, 512, 3], one face


def iou(a, b) -> float:
    x0, y0, x1, y1 = max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x1 - x0) * max(0.0, y1 - y0)
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def assert_same_faces(found, expected):
    assert len(found) == len(expected) > 0, (found, expected)
    for box in expected:
        assert max(iou(box, other) for other in found) > 0.8, (box, found)


@pytest.mark.parametrize("orientation", [6, 8])
def test_sideways_photo_decodes_upright(group, orientation):
    upright = decode_image(jpeg(group))  # the same JPEG coding, untagged: what the tagged one must equal
    image = decode_image(sideways(group, orientation))
    assert image.shape == group.shape
    assert np.abs(image.astype(int) - upright).mean() < 1.5  # JPEG blocks differ on a turned grid, nothing more
    assert np.abs(image.astype(int) - upright[::-1, ::-1]).mean() > 20  # not upside down either


def test_untagged_and_upright_tagged_photos_are_unchanged(group):
    assert np.array_equal(decode_image(jpeg(group, 1)), decode_image(jpeg(group)))
    buffer = io.BytesIO()
    Image.fromarray(group).save(buffer, format="PNG")
    assert np.array_equal(decode_image(buffer.getvalue()), group)


@pytest.mark.parametrize("orientation", [6, 8])
def test_library_detector_finds_the_same_faces(group, orientation):
    detector = HaarFaceDetector()
    expected = detector(decode_image(jpeg(group))).boxes
    assert_same_faces(detector(decode_image(sideways(group, orientation))).boxes, expected)


def detail_params(**kw) -> DetailParams:
    return DetailParams(**{**dict(prompt="portrait photo, detailed face", steps=2, seed=3, work_size=64,
                                  max_faces=4), **kw})


@pytest.mark.parametrize("orientation", [6, 8])
def test_face_detailer_returns_the_displayed_picture(grpc_client, group, orientation):
    """Over the real server: the same faces as the upright photo, and the output is upright, of the displayed shape,
    with every pixel outside the faces the displayed photo's own."""
    data = sideways(group, orientation)
    reference = grpc_client.detail(jpeg(group), detail_params())
    out = grpc_client.detail(data, detail_params())
    assert out.image.shape == group.shape and out.mask.shape == group.shape[:2]
    assert out.faces_found == reference.faces_found > 0
    assert_same_faces(out.boxes, reference.boxes)
    outside = out.mask == 0
    assert np.array_equal(out.image[outside], decode_image(data)[outside])
    assert np.abs(out.image[outside].astype(int) - group[outside]).mean() < 3


@pytest.mark.parametrize("orientation", [6, 8])
def test_sideways_identity_photo_is_found(grpc_client, astronaut, orientation):
    """Identity photos go through the same decoder: a sideways phone photo is not 'no face found'."""
    photo = sideways(astronaut, orientation)
    out = grpc_client.detail(jpeg(astronaut), detail_params(prompt="portrait of a woman img", max_faces=1),
                             faces=[photo])
    assert out.faces_found == 1


def test_cli_detail_writes_the_displayed_picture(server, group, tmp_path):
    source = tmp_path / "phone.jpg"
    source.write_bytes(sideways(group, 6))
    out = tmp_path / "detailed.png"
    done = run_cli(["detail", "--image", str(source), "--prompt", "portrait photo", "--steps", "2", "--work-size", "64",
                   "--out", str(out)], env={"PORTRAIT_URL": server.grpc_url})
    assert done.returncode == 0, done.stderr
    written = np.array(Image.open(out))
    assert written.shape == group.shape
    mask = np.array(Image.open(tmp_path / "detailed_mask.png"))
    assert np.abs(written[mask == 0].astype(int) - group[mask == 0]).mean() < 3


def test_store_keeps_identity_photos_upright(tmp_path, astronaut):
    from portrait.app.store import LocalBackend, ProductionStore

    store = ProductionStore(LocalBackend(tmp_path))
    key = store.save_face(sideways(astronaut, 8))
    kept = np.array(Image.open(io.BytesIO(store.backend.get(key))))
    assert kept.shape == astronaut.shape and np.abs(kept.astype(int) - astronaut).mean() < 3


def test_sweep_checks_its_faces_before_running(tmp_path, astronaut):
    from portrait.app.sweep import parse_sweep

    (tmp_path / "phone.jpg").write_bytes(sideways(astronaut, 6))
    (tmp_path / "notes.jpg").write_text("not a photo")
    sweep = parse_sweep("faces: [phone.jpg]\nprompts: ['a woman img']\n", tmp_path, 64)
    assert [p.name for p in sweep.faces] == ["phone.jpg"]
    with pytest.raises(InvalidInput) as caught:
        parse_sweep("faces: [phone.jpg, notes.jpg]\nprompts: ['a woman img']\n", tmp_path, 64)
    assert caught.value.field == "faces" and "notes.jpg" in str(caught.value) and "not a readable image" in str(
        caught.value)

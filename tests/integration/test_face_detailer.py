"""face_detailer through the real server: faces re-diffused in place, everything else untouched."""

import io

import numpy as np
import pytest
from PIL import Image

from portrait.errors import InvalidInput
from portrait.params import DetailParams
from tests.helpers import package_file, png

OUT = ["image", "mask", "boxes", "faces_found"]


def params(**kw) -> DetailParams:
    return DetailParams(**{**dict(prompt="portrait photo, detailed face", steps=6, seed=3, work_size=128), **kw})


@pytest.fixture(scope="module")
def astronaut():
    return np.array(Image.fromarray(package_file("skimage", "data/astronaut.png")).resize((256, 256)))


def test_one_face_detailed_and_the_rest_bit_identical(grpc_client, astronaut):
    out = grpc_client.detail(png(astronaut), params())
    assert out.faces_found == 1 and out.boxes.shape == (1, 4)
    assert out.image.shape == astronaut.shape and out.mask.shape == astronaut.shape[:2]
    outside = out.mask == 0
    assert outside.mean() > 0.5
    assert np.array_equal(out.image[outside], astronaut[outside])
    inside = out.mask == 255
    assert inside.any() and np.abs(out.image[inside].astype(int) - astronaut[inside]).mean() > 5


def test_several_faces_each_detailed(grpc_client):
    photo = package_file("insightface", "data/images/t1.jpg")
    out = grpc_client.detail(png(photo), params(max_faces=4))
    assert out.faces_found == 4
    for x0, y0, x1, y1 in out.boxes.astype(int):
        face = (slice(y0, y1), slice(x0, x1))
        assert out.mask[face].max() == 255
        assert np.abs(out.image[face].astype(int) - photo[face]).mean() > 2
    assert np.array_equal(out.image[out.mask == 0], photo[out.mask == 0])


def test_no_face_returns_the_input_unchanged(grpc_client):
    flat = np.full((96, 128, 3), 90, np.uint8)
    out = grpc_client.detail(png(flat), params())
    assert out.faces_found == 0 and np.array_equal(out.image, flat) and not out.mask.any()


@pytest.mark.parametrize("mode", ["L", "RGBA"])
def test_gray_and_rgba_are_converted(grpc_client, astronaut, mode):
    buffer = io.BytesIO()
    Image.fromarray(astronaut).convert(mode).save(buffer, format="PNG")
    out = grpc_client.detail(buffer.getvalue(), params())
    assert out.image.shape == (256, 256, 3) and out.faces_found == 1


def big_png() -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (4097, 4096)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize("image,over,field,text", [
    (b"this is not an image", {}, "image", "not a readable image"),
    (b"", {}, "image", "is empty"),
    (None, {}, "image", "must have at most 4194304 pixels (PORTRAIT_MAX_IMAGE_PIXELS), got 4097x4096"),
    ("astronaut", {"max_faces": ("INT32", np.array([0], np.int32))}, "max_faces", "[1, 8]"),
    ("astronaut", {"max_faces": ("INT32", np.array([9], np.int32))}, "max_faces", "[1, 8]"),
    ("astronaut", {"margin": ("FP32", np.array([-0.1], np.float32))}, "margin", "[0, 2]"),
    ("astronaut", {"margin": ("FP32", np.array([2.5], np.float32))}, "margin", "[0, 2]"),
    ("astronaut", {"strength": ("FP32", np.array([0.1], np.float32))}, "strength", "runs no step"),
])
def test_bad_detail_inputs(grpc_client, astronaut, image, over, field, text):
    data = png(astronaut) if image == "astronaut" else big_png() if image is None else image
    arrays = {"image": ("BYTES", np.array([data], dtype=np.object_)),
              "prompt": ("BYTES", np.array([b"portrait"], dtype=np.object_)),
              "steps": ("INT32", np.array([6], np.int32)), "work_size": ("INT32", np.array([128], np.int32)), **over}
    with pytest.raises(InvalidInput) as caught:
        grpc_client.infer("face_detailer", arrays, OUT)
    assert caught.value.field == field and text in str(caught.value), str(caught.value)
    assert grpc_client.detail(png(np.full((64, 64, 3), 9, np.uint8)), params()).faces_found == 0  # still serving


def test_face_detector_model(grpc_client):
    photo = package_file("insightface", "data/images/t1.jpg")
    out = grpc_client.infer("face_detector", {"image": ("UINT8", photo), "max_faces": ("INT32", np.array([3], np.int32))},
                            ["boxes", "scores", "keypoints", "landmarks"])
    assert out["boxes"].shape == (3, 4) and out["keypoints"].shape == (3, 5, 2) and out["landmarks"].shape == (3, 478, 2)  # FaceMesh
    with pytest.raises(InvalidInput, match=r"max_faces: must be in \[1, 8\], got 0"):
        grpc_client.infer("face_detector", {"image": ("UINT8", photo), "max_faces": ("INT32", np.array([0], np.int32))},
                          ["boxes"])

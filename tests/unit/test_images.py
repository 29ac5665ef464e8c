"""decode_image on the formats people send: 16-bit gray, float TIFF, 32-bit integers; and the image-pixel cap."""

import io

import numpy as np
import pytest
from PIL import Image

from portrait.errors import InvalidInput
from portrait.images import decode_image
from portrait.params import check_image_array
from portrait.settings import get_settings


def photo() -> np.ndarray:
    import skimage.data

    return skimage.data.camera()  # a real gray photo, uint8 [512, 512], mean about 129


def encoded(array: np.ndarray, fmt: str, mode: str | None = None) -> bytes:
    buffer = io.BytesIO()
    (Image.fromarray(array, mode) if mode else Image.fromarray(array)).save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_16_bit_gray_is_scaled_not_clipped(fmt):
    gray = photo()
    data = encoded(gray.astype(np.uint16) * 257, fmt)
    assert Image.open(io.BytesIO(data)).mode.startswith("I;16")
    image = decode_image(data)
    assert image.shape == (*gray.shape, 3) and image.dtype == np.uint8
    assert np.array_equal(image[..., 0], gray) and np.array_equal(image[..., 2], gray)  # was: clipped, mean ~255


def test_float_tiff_in_unit_range_is_scaled():
    gray = photo()
    image = decode_image(encoded((gray / 255.0).astype(np.float32), "TIFF", "F"))
    assert np.abs(image[..., 1].astype(int) - gray).max() <= 1  # was: all 0 (black)


@pytest.mark.parametrize("values,text", [(np.full((8, 8), 300.0, np.float32), "[0, 1]"),
                                          (np.full((8, 8), np.nan, np.float32), "[0, 1]")])
def test_float_tiff_out_of_range_is_refused(values, text):
    with pytest.raises(InvalidInput) as caught:
        decode_image(encoded(values, "TIFF", "F"), "id_images")
    assert caught.value.field == "id_images" and text in str(caught.value)


def test_32_bit_integer_image_is_refused():
    with pytest.raises(InvalidInput) as caught:
        decode_image(encoded(np.full((8, 8), 70000, np.int32), "TIFF", "I"))
    assert caught.value.field == "image" and "32-bit" in str(caught.value)


def test_8_bit_formats_unchanged():
    rgb = np.random.default_rng(0).integers(0, 256, (16, 24, 3), dtype=np.uint8)
    assert np.array_equal(decode_image(encoded(rgb, "PNG")), rgb)
    assert np.array_equal(decode_image(encoded(rgb[..., 0], "PNG")), np.repeat(rgb[..., :1], 3, 2))


def test_image_pixel_cap(monkeypatch):
    """PORTRAIT_MAX_IMAGE_PIXELS (default 2048 x 2048, scripts/image_cost.py) bounds every whole-image input."""
    limit = get_settings().max_image_pixels
    assert limit == 2048 * 2048
    over = np.zeros((2048, 2056, 3), np.uint8)
    with pytest.raises(InvalidInput) as caught:
        decode_image(encoded(over, "PNG"))
    assert "at most 4194304 pixels" in str(caught.value)
    for image, batched in ((over, False), (over[None], True)):
        with pytest.raises(InvalidInput) as caught:
            check_image_array("image", image, 8, batched=batched)
        assert caught.value.field == "image" and "at most 4194304 pixels" in str(caught.value)
    check_image_array("image", np.zeros((2048, 2048, 3), np.uint8))
    monkeypatch.setenv("PORTRAIT_MAX_IMAGE_PIXELS", "4096")
    get_settings.cache_clear()
    try:
        with pytest.raises(InvalidInput, match="at most 4096 pixels"):
            check_image_array("image", np.zeros((65, 64, 3), np.uint8))
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()

"""Image bytes in and out: the one decoder of a user's image and the one PNG encoder."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from portrait.errors import InvalidInput
from portrait.params import MAX_IMAGE_PIXELS


def decode_image(data: bytes, field: str = "image") -> np.ndarray:
    """Encoded image bytes (PNG, JPEG, WebP ...) -> RGB uint8 [H, W, 3], upright as displayed. Gray and RGBA are
    converted (alpha dropped). Used for every image a user sends: server inputs, identity photos, UI uploads, sweeps.

    Phones store JPEG pixels sideways with an EXIF Orientation tag (6 or 8) that every viewer applies; so do we
    (PIL.ImageOps.exif_transpose, as diffusers' load_image does), or faces would be searched for on their side."""
    if not data:
        raise InvalidInput(field, "is empty")
    try:
        with Image.open(io.BytesIO(data)) as img:
            w, h = img.size
            if w == 0 or h == 0:
                raise InvalidInput(field, f"has no pixels ({w}x{h})")
            if w * h > MAX_IMAGE_PIXELS:
                raise InvalidInput(field, f"must have at most {MAX_IMAGE_PIXELS} pixels (4096x4096), got {w}x{h}")
            return np.array(ImageOps.exif_transpose(img).convert("RGB"))
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError) as error:
        if isinstance(error, InvalidInput):
            raise
        raise InvalidInput(field, f"is not a readable image ({type(error).__name__})") from None


def encode_png(image: np.ndarray | Image.Image) -> bytes:
    """uint8 [H, W, 3] / [H, W] or a PIL image -> PNG bytes."""
    buffer = io.BytesIO()
    (image if isinstance(image, Image.Image) else Image.fromarray(image)).save(buffer, format="PNG")
    return buffer.getvalue()

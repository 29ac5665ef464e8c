"""Image bytes in and out: the one decoder of a user's image and the one PNG encoder."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from portrait.errors import InvalidInput
from portrait.params import image_pixel_limit

HIGH_BIT_DEPTH = ("I;16", "I;16L", "I;16B", "I;16N")  # 16-bit gray (PNG, TIFF): PIL's convert("RGB") clips it


def decode_image(data: bytes, field: str = "image") -> np.ndarray:
    """Encoded image bytes (PNG, JPEG, WebP, TIFF ...) -> RGB uint8 [H, W, 3], upright as displayed. Gray and RGBA are
    converted (alpha dropped); 16-bit gray is scaled to 8 bits and float gray (TIFF) read as [0, 1]. Used for every
    image a user sends: server inputs, identity photos, UI uploads, sweeps.

    Phones store JPEG pixels sideways with an EXIF Orientation tag (6 or 8) that every viewer applies; so do we
    (PIL.ImageOps.exif_transpose, as diffusers' load_image does), or faces would be searched for on their side."""
    if not data:
        raise InvalidInput(field, "is empty")
    try:
        with Image.open(io.BytesIO(data)) as img:
            w, h = img.size
            if w == 0 or h == 0:
                raise InvalidInput(field, f"has no pixels ({w}x{h})")
            limit = image_pixel_limit()
            if w * h > limit:
                raise InvalidInput(field, f"must have at most {limit} pixels (PORTRAIT_MAX_IMAGE_PIXELS), got {w}x{h}")
            return to_rgb8(ImageOps.exif_transpose(img), field)
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError) as error:
        if isinstance(error, InvalidInput):
            raise
        raise InvalidInput(field, f"is not a readable image ({type(error).__name__})") from None


def to_rgb8(img: Image.Image, field: str) -> np.ndarray:
    """A decoded PIL image -> RGB uint8. PIL's own convert("RGB") clips 16-bit gray at 255 (a photo turns white) and
    truncates float gray (a [0, 1] image turns black), so those modes are scaled here; 32-bit integer images have no
    agreed range and are refused. 16-bit RGB PNGs already arrive as 8-bit RGB (PIL keeps the high byte)."""
    if img.mode in HIGH_BIT_DEPTH:
        gray = np.asarray(img, dtype=np.float64) / 257.0  # 65535 -> 255
    elif img.mode == "F":
        gray = np.asarray(img, dtype=np.float64)
        if not np.isfinite(gray).all() or gray.min() < 0.0 or gray.max() > 1.0:
            raise InvalidInput(field, "is a floating-point image: its values must be finite and in [0, 1]")
        gray = gray * 255.0
    elif img.mode in ("I", "I;32", "I;32L", "I;32B"):
        raise InvalidInput(field, f"has 32-bit integer pixels ({img.mode}), which have no agreed range: "
                                  "send 8 or 16 bits per channel")
    else:
        return np.array(img.convert("RGB"))
    gray8 = np.clip(np.rint(gray), 0, 255).astype(np.uint8)
    return np.repeat(gray8[:, :, None], 3, axis=2)


def encode_png(image: np.ndarray | Image.Image) -> bytes:
    """uint8 [H, W, 3] / [H, W] or a PIL image -> PNG bytes."""
    buffer = io.BytesIO()
    (image if isinstance(image, Image.Image) else Image.fromarray(image)).save(buffer, format="PNG")
    return buffer.getvalue()

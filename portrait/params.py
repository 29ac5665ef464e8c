"""Request parameters: frozen dataclasses validated once, at the boundary (cf. diffusers' check_inputs).

Every limit lives here; the Triton models, the clients and the front ends all read it from here,
so a value the UI accepts is a value the server accepts.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import MISSING, dataclass
from typing import Any

from portrait.errors import InvalidInput

MAX_PROMPT_CHARS = 1000  # longer prompts are rejected; prompts over 77 CLIP tokens are truncated and reported
MAX_PROMPT_TOKENS = 77  # CLIP's context, BOS and EOS included
SIZE_MIN, SIZE_MAX, SIZE_MULTIPLE = 64, 2048, 8
STEPS_MIN, STEPS_MAX = 1, 150
GUIDANCE_MIN, GUIDANCE_MAX = 0.0, 30.0
BATCH_MIN, BATCH_MAX = 1, 8
SEED_MAX = 2**63 - 1
MAX_IMAGE_PIXELS = 4096 * 4096  # larger images and uploads are rejected (uploads before decoding)


@dataclass(frozen=True)
class SamplingParams:
    """What every diffusion request has: the text, the schedule, guidance and the seed."""

    prompt: str
    negative_prompt: str = ""
    steps: int = 10
    guidance_scale: float = 5.0
    guidance_cutoff: float = 0.2
    seed: int = 0

    def __post_init__(self):
        check_prompt("prompt", self.prompt, required=True)
        check_prompt("negative_prompt", self.negative_prompt, required=False)
        check_int_range("steps", self.steps, STEPS_MIN, STEPS_MAX)
        check_float_range("guidance_scale", self.guidance_scale, GUIDANCE_MIN, GUIDANCE_MAX)
        check_float_range("guidance_cutoff", self.guidance_cutoff, 0.0, 1.0)
        check_int_range("seed", self.seed, 0, SEED_MAX)

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], defaults: Mapping[str, Any] | None = None):
        """Build from decoded request fields; absent (None) ones come from `defaults`, then the class."""
        merged = {**(defaults or {}), **{k: v for k, v in values.items() if v is not None}}
        for name, spec in cls.__dataclass_fields__.items():
            if name not in merged and spec.default is MISSING:
                raise InvalidInput(name, "is required")
        return cls(**merged)


@dataclass(frozen=True)
class Stage1Params(SamplingParams):
    """Text-to-image request. `batch_size` images use seeds seed, seed+1, ... (one generator each)."""

    width: int = 1024
    height: int = 1024
    batch_size: int = 1

    def __post_init__(self):
        super().__post_init__()
        for name in ("width", "height"):
            check_size(name, getattr(self, name))
        check_int_range("batch_size", self.batch_size, BATCH_MIN, BATCH_MAX)
        check_seed_offsets(self.seed, self.batch_size, "batch_size")

    @property
    def seeds(self) -> list[int]:
        return [self.seed + i for i in range(self.batch_size)]


def negative_is_zeros(negative_prompt: str, force_zeros_for_empty_prompt: bool) -> bool:
    """diffusers' SDXL rule: an empty negative prompt is zero embeddings when the checkpoint says so."""
    return not negative_prompt and force_zeros_for_empty_prompt


def check_prompt(name: str, value: Any, *, required: bool) -> None:
    if not isinstance(value, str):
        raise InvalidInput(name, f"must be text, got {type(value).__name__}")
    if required and not value.strip():
        raise InvalidInput(name, "must not be empty")
    if len(value) > MAX_PROMPT_CHARS:
        raise InvalidInput(name, f"must be at most {MAX_PROMPT_CHARS} characters, got {len(value)}")
    if any(ord(c) < 32 and c not in "\t\n" for c in value):
        raise InvalidInput(name, "must not contain control characters")


def check_int_range(name: str, value: Any, lo: int, hi: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInput(name, f"must be an integer in [{lo}, {hi}], got {value!r}")
    if not lo <= value <= hi:
        raise InvalidInput(name, f"must be in [{lo}, {hi}], got {value}")


def check_float_range(name: str, value: Any, lo: float, hi: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InvalidInput(name, f"must be a finite number in [{lo:g}, {hi:g}], got {value!r}")
    if not lo <= value <= hi:
        raise InvalidInput(name, f"must be in [{lo:g}, {hi:g}], got {value:g}")


def check_seed_offsets(seed: int, count: int, by: str) -> None:
    """Image (or face) i uses seed + i: the last of `count` must still be a valid seed (int64)."""
    if seed + count - 1 > SEED_MAX:
        raise InvalidInput("seed", f"seed + {by} - 1 must be at most {SEED_MAX} (image i uses seed + i), "
                                   f"got {seed} + {count} - 1")


def check_finite(name: str, array: Any) -> None:
    """Every value of a float tensor finite: a NaN or inf would run through the model and come out as noise."""
    import numpy as np

    if not np.isfinite(array).all():
        raise InvalidInput(name, "must hold finite numbers only (found NaN or inf)")


def check_shape(name: str, array: Any, expected: tuple) -> None:
    """`expected`: one int or None (any) per dimension."""
    shape = tuple(array.shape)
    if len(shape) != len(expected) or any(e is not None and e != s for e, s in zip(expected, shape)):
        wanted = "[" + ", ".join("N" if e is None else str(e) for e in expected) + "]"
        raise InvalidInput(name, f"must have shape {wanted}, got {list(shape)}")


def check_image_array(name: str, image: Any, multiple: int = 1, batched: bool = False) -> None:
    """A uint8 RGB tensor [H, W, 3] (or [B, H, W, 3]) with 1..MAX_IMAGE_PIXELS pixels, sides a multiple of `multiple`."""
    check_shape(name, image, (None,) * (4 if batched else 3))
    h, w, c = image.shape[-3:]
    if c != 3:
        raise InvalidInput(name, f"must have 3 channels (RGB) in its last dimension, got {c}")
    if h < multiple or w < multiple or h * w > MAX_IMAGE_PIXELS:
        raise InvalidInput(name, f"must be at least {multiple}x{multiple} and at most {MAX_IMAGE_PIXELS} pixels, "
                                 f"got {h}x{w}")
    if h % multiple or w % multiple:
        raise InvalidInput(name, f"height and width must be multiples of {multiple}, got {h}x{w}")
    if batched and not 1 <= image.shape[0] <= MAX_FACES_LIMIT:
        raise InvalidInput(name, f"must hold 1 to {MAX_FACES_LIMIT} images, got {image.shape[0]}")


def check_latents(name: str, latents: Any, channels: int, factor: int) -> None:
    """Latents [B, C, h, w] of the checkpoint's VAE: C channels, h and w for a [SIZE_MIN, SIZE_MAX] image."""
    check_shape(name, latents, (None, channels, None, None))
    lo, hi = max(1, SIZE_MIN // factor), SIZE_MAX // factor
    h, w = latents.shape[2:]
    if not (lo <= h <= hi and lo <= w <= hi):
        raise InvalidInput(name, f"latent height and width must be in [{lo}, {hi}], got {h}x{w}")
    check_finite(name, latents)


def check_strength(steps: int, strength: Any) -> None:
    """img2img strength in [0, 1] that runs at least one of `steps` (int(steps * strength) >= 1)."""
    check_float_range("strength", strength, 0.0, 1.0)
    if int(steps * strength) < 1:
        raise InvalidInput("strength", f"runs no step: steps x strength must be >= 1, got {steps} x {strength:g}")


def check_size(name: str, value: Any) -> None:
    check_int_range(name, value, SIZE_MIN, SIZE_MAX)
    if value % SIZE_MULTIPLE:
        raise InvalidInput(name, f"must be a multiple of {SIZE_MULTIPLE} in [{SIZE_MIN}, {SIZE_MAX}], got {value}")


@dataclass(frozen=True)
class DenoiseParams:
    """What the `denoise` model needs besides the conditioning tensors."""

    height: int
    width: int
    steps: int
    guidance_scale: float
    guidance_cutoff: float
    seeds: tuple[int, ...]
    strength: float = 1.0  # img2img strength: the last int(steps * strength) steps run (with an image)

    def __post_init__(self):
        for name in ("width", "height"):
            check_size(name, getattr(self, name))
        check_int_range("steps", self.steps, STEPS_MIN, STEPS_MAX)
        check_float_range("guidance_scale", self.guidance_scale, GUIDANCE_MIN, GUIDANCE_MAX)
        check_float_range("guidance_cutoff", self.guidance_cutoff, 0.0, 1.0)
        check_int_range("seeds", len(self.seeds), BATCH_MIN, BATCH_MAX)
        for seed in self.seeds:
            check_int_range("seeds", seed, 0, SEED_MAX)
        check_strength(self.steps, self.strength)


MAX_FACES_LIMIT = 8  # the VAE models batch up to 8 crops; the UNet 16 rows (CFG)
MARGIN_MIN, MARGIN_MAX = 0.0, 2.0

# identity (PhotoMaker V2)
MAX_ID_IMAGES = 4  # identity photos per request (PhotoMaker's demo takes up to 4 or so; each adds 2 prompt tokens)
STYLE_STRENGTH_MIN, STYLE_STRENGTH_MAX = 0.0, 100.0




def check_id_images(count: int, limit: int = MAX_ID_IMAGES) -> None:
    if count > limit:
        raise InvalidInput("id_images", f"at most {limit} identity photos, got {count}")




@dataclass(frozen=True)
class DetailParams(SamplingParams):
    """Stage 2 on one image: every face (largest first, up to `max_faces`) re-diffused at `work_size`; face i uses seed + i."""

    strength: float = 0.6  # img2img strength of the face pass: the last int(steps * strength) steps run
    max_faces: int = 4
    margin: float = 0.35  # added around the face box on every side, as a fraction of its larger side
    work_size: int = 1024  # the crop is magnified to this square (the checkpoint's native size by default)
    style_strength: float = 20.0  # identity only: % of the steps run on the text alone before the identity merges in

    def __post_init__(self):
        super().__post_init__()
        check_strength(self.steps, self.strength)
        check_float_range("style_strength", self.style_strength, STYLE_STRENGTH_MIN, STYLE_STRENGTH_MAX)
        check_int_range("max_faces", self.max_faces, 1, MAX_FACES_LIMIT)
        check_float_range("margin", self.margin, MARGIN_MIN, MARGIN_MAX)
        check_size("work_size", self.work_size)
        check_seed_offsets(self.seed, self.max_faces, "max_faces")

"""Request parameters: frozen dataclasses validated once, at the boundary (cf. diffusers' check_inputs).

These dataclasses are the request schema. Each request field is declared once, with `request_field`: its default,
its Triton datatype and its limits. Everything else is derived from them: the Triton models' input names
(`model_fields`), the clients' datatypes (`triton_types`), the CLI's and the UI's defaults (`field_defaults`), the
sweep's keys; tests/unit/test_schema.py checks the config.pbtxt files against `MODELS`. So a value the UI accepts
is a value the server accepts, and a new parameter is one new line here (plus its config.pbtxt input).

Torch- and numpy-free at import: the UI and the light BLS processes import it.
"""

from __future__ import annotations

import dataclasses
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
MAX_IMAGE_PIXELS = 4096 * 4096  # larger uploads are rejected before decoding; served images: image_pixel_limit()
MEGAPIXEL = 2**20  # the unit of the per-request cost budget (check_cost)
MAX_FACES_LIMIT = 8  # the VAE models batch up to 8 crops; the UNet 16 rows (CFG)
MARGIN_MIN, MARGIN_MAX = 0.0, 2.0
STRENGTH_MIN, STRENGTH_MAX = 0.0, 1.0  # img2img strength; it must also run one step (check_strength)

# identity (PhotoMaker V2)
MAX_ID_IMAGES = 4  # photos per identity (PhotoMaker's demo takes up to 4 or so; each adds 2 prompt tokens)
MAX_IDENTITIES = 4  # identities per request, one face each
ASSIGNMENTS = ("order", "match")  # how faces get identities (assign_faces in portrait/stages.py)
STYLE_STRENGTH_MIN, STYLE_STRENGTH_MAX = 0.0, 100.0

TRITON_TYPES = ("BYTES", "INT32", "INT64", "FP32")  # a request field is one scalar of one of these (dims [1])


# --- the schema ------------------------------------------------------------------------------------------------------

def request_field(default: Any = MISSING, *, triton: str, limits: tuple | None = None, multiple: int | None = None,
                  choices: tuple[str, ...] | None = None):
    """A request field: its `default` (none: required), its Triton datatype, and for numbers its inclusive `limits`
    (lo, hi) and the `multiple` it must be of. BYTES fields are prompts (check_prompt), or one of `choices`."""
    if triton not in TRITON_TYPES:
        raise ValueError(f"triton must be one of {TRITON_TYPES}, got {triton!r}")
    if (triton == "BYTES") != (limits is None):
        raise ValueError("numbers need limits; texts (BYTES) have none")
    if choices is not None and triton != "BYTES":
        raise ValueError("choices are for texts (BYTES)")
    metadata = {"triton": triton, "limits": limits, "multiple": multiple, "choices": choices}
    return dataclasses.field(default=default, metadata=metadata)


def _request_specs(cls) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(cls) if "triton" in f.metadata]


def request_fields(cls) -> tuple[str, ...]:
    """The request field names of a params class (instance or class), in declaration order."""
    return tuple(f.name for f in _request_specs(cls))


def triton_types(cls) -> dict[str, str]:
    """{field name: Triton datatype} of a params class's request fields."""
    return {f.name: f.metadata["triton"] for f in _request_specs(cls)}


def field_defaults(cls) -> dict[str, Any]:
    """{field name: default} of the request fields that have one (the others are required)."""
    return {f.name: f.default for f in _request_specs(cls) if f.default is not MISSING}


def field_limits(cls, name: str) -> tuple:
    """The inclusive (lo, hi) of a numeric request field."""
    return next(f.metadata["limits"] for f in _request_specs(cls) if f.name == name)


def field_choices(cls, name: str) -> tuple[str, ...] | None:
    """The values a choice field (BYTES with `choices`) takes; None for other fields."""
    return next(f.metadata.get("choices") for f in _request_specs(cls) if f.name == name)


def limits_text(cls, name: str) -> str:
    """'[lo, hi]' as the error messages write it (for help texts)."""
    lo, hi = field_limits(cls, name)
    return f"[{lo:g}, {hi:g}]" if isinstance(lo, float) else f"[{lo}, {hi}]"


def check_request_fields(params) -> None:
    """Every request field against its declaration, in declaration order: texts by check_prompt (required when the
    field has no default), numbers by their limits (and multiple)."""
    for spec in _request_specs(params):
        name, value = spec.name, getattr(params, spec.name)
        kind, limits, multiple = spec.metadata["triton"], spec.metadata["limits"], spec.metadata["multiple"]
        if kind == "BYTES" and spec.metadata.get("choices"):
            check_choice(name, value, spec.metadata["choices"])
        elif kind == "BYTES":
            check_prompt(name, value, required=spec.default is MISSING)
        elif kind == "FP32":
            check_float_range(name, value, *limits)
        else:
            check_int_range(name, value, *limits)
        if multiple and value % multiple:
            raise InvalidInput(name, f"must be a multiple of {multiple} in [{limits[0]}, {limits[1]}], got {value}")


@dataclass(frozen=True)
class SamplingParams:
    """What every diffusion request has: the text, the schedule, guidance and the seed."""

    prompt: str = request_field(triton="BYTES")
    negative_prompt: str = request_field("", triton="BYTES")
    steps: int = request_field(10, triton="INT32", limits=(STEPS_MIN, STEPS_MAX))
    guidance_scale: float = request_field(5.0, triton="FP32", limits=(GUIDANCE_MIN, GUIDANCE_MAX))
    guidance_cutoff: float = request_field(0.2, triton="FP32", limits=(0.0, 1.0))  # fraction of final steps without CFG
    seed: int = request_field(0, triton="INT64", limits=(0, SEED_MAX))

    def __post_init__(self):
        check_request_fields(self)

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

    # the models' default is the checkpoint's native size (read_sdxl_info(...).default_size), 1024 for SDXL
    width: int = request_field(1024, triton="INT32", limits=(SIZE_MIN, SIZE_MAX), multiple=SIZE_MULTIPLE)
    height: int = request_field(1024, triton="INT32", limits=(SIZE_MIN, SIZE_MAX), multiple=SIZE_MULTIPLE)
    batch_size: int = request_field(1, triton="INT32", limits=(BATCH_MIN, BATCH_MAX))

    def __post_init__(self):
        super().__post_init__()
        check_seed_offsets(self.seed, self.batch_size, "batch_size")
        check_cost(self.batch_size, self.height, self.width, self.steps, "batch_size")

    @property
    def seeds(self) -> list[int]:
        return [self.seed + i for i in range(self.batch_size)]


@dataclass(frozen=True)
class DetailParams(SamplingParams):
    """Stage 2 on one image: every face (largest first, up to `max_faces`) re-diffused at `work_size`; face i uses seed + i."""

    # img2img strength of the face pass: the last int(steps * strength) steps run
    strength: float = request_field(0.6, triton="FP32", limits=(STRENGTH_MIN, STRENGTH_MAX))
    max_faces: int = request_field(4, triton="INT32", limits=(1, MAX_FACES_LIMIT))
    # added around the face box on every side, as a fraction of its larger side
    margin: float = request_field(0.35, triton="FP32", limits=(MARGIN_MIN, MARGIN_MAX))
    # the crop is magnified to this square; the models' default is the checkpoint's native size
    work_size: int = request_field(1024, triton="INT32", limits=(SIZE_MIN, SIZE_MAX), multiple=SIZE_MULTIPLE)
    # identity only: % of the steps run on the text alone before the identity merges in
    style_strength: float = request_field(20.0, triton="FP32", limits=(STYLE_STRENGTH_MIN, STYLE_STRENGTH_MAX))
    # several identities: "order" gives identity k to the k-th face (largest first, then left to right, top to
    # bottom), "match" each identity to the face most like it (Hungarian assignment on ArcFace cosine similarity)
    assign: str = request_field("order", triton="BYTES", choices=ASSIGNMENTS)

    def __post_init__(self):
        super().__post_init__()
        check_strength(self.steps, self.strength)
        check_seed_offsets(self.seed, self.max_faces, "max_faces")
        check_cost(self.max_faces, self.work_size, self.work_size, steps_run(self.steps, self.strength), "max_faces")


# --- the models' inputs: which params each public model takes, and its inputs that are not parameters -----------------

@dataclass(frozen=True)
class ModelInput:
    """A config.pbtxt input that is not a request parameter (an image, a switch); `batched`: dims [-1], else [1]."""

    name: str
    triton: str  # Triton datatype, as a client names it (BYTES for TYPE_STRING)
    optional: bool = True
    batched: bool = False


@dataclass(frozen=True)
class ModelSchema:
    """A public model's request: the request fields of `params` (in order, each once) but `omitted`, plus `extra`."""

    params: tuple[type, ...]
    extra: tuple[ModelInput, ...] = ()
    omitted: tuple[str, ...] = ()

    @property
    def fields(self) -> tuple[str, ...]:
        names = dict.fromkeys(name for cls in self.params for name in request_fields(cls))
        return tuple(n for n in names if n not in self.omitted)

    def fields_of(self, cls) -> tuple[str, ...]:
        """The model's fields that `cls` declares (the fields a server reads into `cls`)."""
        declared = request_fields(cls)
        return tuple(n for n in self.fields if n in declared)

    @property
    def types(self) -> dict[str, str]:
        merged = {k: v for cls in self.params for k, v in triton_types(cls).items()}
        return {n: merged[n] for n in self.fields}


IDENTITY_INPUTS = (  # FaceIdentities: one identity or several, and per-face prompts
    ModelInput("id_images", "BYTES", batched=True),  # [N] encoded identity photos (PhotoMaker V2)
    ModelInput("id_groups", "INT32", batched=True),  # [N] the identity (0..K-1) each photo shows; absent: all 0
    ModelInput("face_prompts", "BYTES", batched=True),  # [K] a prompt per identity (or per face slot without any)
)
IDENTITY_INPUT_NAMES = tuple(i.name for i in IDENTITY_INPUTS)  # FaceIdentities.from_arrays's arguments, in order
MODELS = {
    "stage1": ModelSchema((Stage1Params,)),
    "face_detailer": ModelSchema((DetailParams,), (ModelInput("image", "BYTES", optional=False), *IDENTITY_INPUTS)),
    # one image per request (batch_size omitted); stage 2 takes the sampling fields from stage 1 (detail_params_for),
    # so only its own fields travel besides; `detail` false skips stage 2
    "portrait": ModelSchema((Stage1Params, DetailParams), (ModelInput("detail", "BOOL"), *IDENTITY_INPUTS),
                            omitted=("batch_size",)),
}


def model_fields(model: str) -> tuple[str, ...]:
    """The request fields a public model reads (its FIELDS)."""
    return MODELS[model].fields


def detail_params_for(base: SamplingParams, **stage2: Any) -> DetailParams:
    """Stage 2 of a portrait: the sampling fields (prompt, negative prompt, steps, guidance, seed) are stage 1's;
    `stage2` holds stage 2's own fields (strength, max_faces, margin, work_size, style_strength), the rest default.
    The `portrait` model, its HTTP twin in the client, the CLI, the UI and sweeps all build stage 2 by this rule."""
    shared = {name: getattr(base, name) for name in request_fields(SamplingParams)}
    return DetailParams(**shared, **stage2)


def stage1_params_for(base: Stage1Params, with_identity: bool) -> Stage1Params:
    """What stage 1 runs: with identity photos, the prompt without its trigger word (identity goes into stage 2 only)."""
    if not with_identity:
        return base
    from portrait.diffusion.trigger import text_only_prompt

    return dataclasses.replace(base, prompt=text_only_prompt(base.prompt))


def negative_is_zeros(negative_prompt: str, force_zeros_for_empty_prompt: bool) -> bool:
    """diffusers' SDXL rule: an empty negative prompt is zero embeddings when the checkpoint says so."""
    return not negative_prompt and force_zeros_for_empty_prompt


# --- checks ----------------------------------------------------------------------------------------------------------

def check_prompt(name: str, value: Any, *, required: bool) -> None:
    if not isinstance(value, str):
        raise InvalidInput(name, f"must be text, got {type(value).__name__}")
    if required and not value.strip():
        raise InvalidInput(name, "must not be empty")
    if len(value) > MAX_PROMPT_CHARS:
        raise InvalidInput(name, f"must be at most {MAX_PROMPT_CHARS} characters, got {len(value)}")
    if any(ord(c) < 32 and c not in "\t\n" for c in value):
        raise InvalidInput(name, "must not contain control characters")


def check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise InvalidInput(name, f"must be one of {', '.join(choices)}, got {value!r}")


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


def request_cost_limit() -> float:
    """The per-request budget in megapixel-steps (PORTRAIT_MAX_REQUEST_COST)."""
    from portrait.settings import get_settings

    return get_settings().max_request_cost


def check_cost(images: int, height: int, width: int, steps: int, images_name: str) -> None:
    """The per-request budget: height x width x images x the steps that run, in megapixel-steps (2^20 pixels x one
    step), at most PORTRAIT_MAX_REQUEST_COST, so one request cannot hold the UNet for minutes. Stage 1: the batch;
    stage 2 and denoise: the faces (rows) at work_size. Named after `steps`, the factor every request can lower."""
    cost, limit = height * width * images * steps / MEGAPIXEL, request_cost_limit()
    if cost > limit:
        raise InvalidInput("steps", f"the request costs {height} x {width} pixels x {images} ({images_name}) x {steps} "
                                    f"steps = {cost:g} megapixel-steps, over the per-request budget of {limit:g} "
                                    "(PORTRAIT_MAX_REQUEST_COST): lower the size, the images or the steps")


def image_pixel_limit() -> int:
    """Pixels of one image a model takes (PORTRAIT_MAX_IMAGE_PIXELS; never over MAX_IMAGE_PIXELS)."""
    from portrait.settings import get_settings

    return min(get_settings().max_image_pixels, MAX_IMAGE_PIXELS)


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
    """A uint8 RGB tensor [H, W, 3] (or [B, H, W, 3]) with 1..image_pixel_limit() pixels each, sides a multiple of
    `multiple`."""
    check_shape(name, image, (None,) * (4 if batched else 3))
    h, w, c = image.shape[-3:]
    if c != 3:
        raise InvalidInput(name, f"must have 3 channels (RGB) in its last dimension, got {c}")
    limit = image_pixel_limit()
    if h < multiple or w < multiple or h * w > limit:
        raise InvalidInput(name, f"must be at least {multiple}x{multiple} and at most {limit} pixels "
                                 f"(PORTRAIT_MAX_IMAGE_PIXELS), got {h}x{w}")
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


def steps_run(steps: int, strength: float) -> int:
    """img2img: the last int(steps x strength) steps of a `steps`-step schedule run (diffusers' get_timesteps).
    The one statement of the rule: validation, stage 2's identity merge step and the denoising loop use it."""
    return min(int(steps * strength), steps)


def check_strength(steps: int, strength: Any) -> None:
    """img2img strength in [0, 1] that runs at least one of `steps`."""
    check_float_range("strength", strength, STRENGTH_MIN, STRENGTH_MAX)
    if steps_run(steps, strength) < 1:
        raise InvalidInput("strength", f"runs no step: steps x strength must be >= 1, got {steps} x {strength:g}")


def check_size(name: str, value: Any) -> None:
    check_int_range(name, value, SIZE_MIN, SIZE_MAX)
    if value % SIZE_MULTIPLE:
        raise InvalidInput(name, f"must be a multiple of {SIZE_MULTIPLE} in [{SIZE_MIN}, {SIZE_MAX}], got {value}")


def check_id_images(count: int, limit: int = MAX_ID_IMAGES, which: str = "") -> None:
    if count > limit:
        raise InvalidInput("id_images", f"at most {limit} identity photos{which}, got {count}")


@dataclass(frozen=True)
class FaceIdentities:
    """Who the detailed faces become: K identities, each 1..MAX_ID_IMAGES encoded photos, and optional per-face
    prompts. On the wire (`to_arrays` / `from_arrays`, the one encoding): `id_images` [N] photos, `id_groups` [N] the
    identity 0..K-1 each photo shows (absent: all one identity, today's single-identity request), `face_prompts` [K]
    identity k's prompt ("" = the request's prompt); with no photos, face_prompts[k] is the k-th face's (in `order`).
    The structure is checked here; `check_with` checks it against stage 2's params. Torch- and numpy-free."""

    photos: tuple[tuple[bytes, ...], ...] = ()  # photos[k]: identity k's photos
    face_prompts: tuple[str, ...] = ()

    def __post_init__(self):
        if len(self.photos) > MAX_IDENTITIES:
            raise InvalidInput("id_groups", f"at most {MAX_IDENTITIES} identities, got {len(self.photos)}")
        for k, group in enumerate(self.photos):
            if not group:
                raise InvalidInput("id_images", f"identity {k + 1} has no photo (id_groups numbers the identities "
                                                f"0..K-1, each with 1 to {MAX_ID_IMAGES} photos)")
            check_id_images(len(group), MAX_ID_IMAGES, f" per identity (identity {k + 1})")
        for prompt in self.face_prompts:
            check_prompt("face_prompts", prompt, required=False)
        if self.photos and self.face_prompts and len(self.face_prompts) != len(self.photos):
            raise InvalidInput("face_prompts", f"must hold one prompt per identity ({len(self.photos)}), "
                                               f"got {len(self.face_prompts)}")
        if self.photos and self.face_prompts:
            from portrait.diffusion.trigger import text_only_prompt

            for k, prompt in enumerate(self.face_prompts):
                if prompt:
                    try:
                        text_only_prompt(prompt)
                    except InvalidInput as error:
                        raise InvalidInput("face_prompts", f"prompt {k + 1} (identity {k + 1}): {error.message}") from None

    @property
    def count(self) -> int:
        """K, the number of identities."""
        return len(self.photos)

    def prompt_of(self, k: int, default: str) -> str:
        """Identity k's (or face slot k's) prompt: its own, else `default` (the request's)."""
        return self.face_prompts[k] if k < len(self.face_prompts) and self.face_prompts[k] else default

    def check_with(self, max_faces: int, assign: str, prompt: str) -> None:
        """Against stage 2's params: an identity for each face at most, match needs identities, the request's prompt
        holds the trigger (its text-only form conditions stage 1 and the faces without an identity)."""
        if self.count > max_faces:
            raise InvalidInput("max_faces", f"must be at least the number of identities ({self.count}), got {max_faces}")
        if len(self.face_prompts) > max_faces:
            raise InvalidInput("face_prompts", f"at most max_faces ({max_faces}) prompts, got {len(self.face_prompts)}")
        if assign == "match" and not self.count:
            raise InvalidInput("assign", "match needs identity photos (id_images) to match the faces to")
        if self.count:
            from portrait.diffusion.trigger import text_only_prompt

            text_only_prompt(prompt)

    @classmethod
    def from_arrays(cls, id_images: Any, id_groups: Any, face_prompts: Any) -> FaceIdentities:
        """From the decoded inputs (numpy arrays or None): photos grouped by id_groups, prompts decoded."""
        photos = [] if id_images is None else [bytes(p) for p in id_images.reshape(-1)]
        if id_images is not None and not photos:
            raise InvalidInput("id_images", "is empty: send at least one identity photo, or leave the field out")
        if id_groups is None:
            groups = [0] * len(photos)
        else:
            if not photos:
                raise InvalidInput("id_groups", "needs id_images (the photos it assigns to identities)")
            groups = [int(g) for g in id_groups.reshape(-1)]
            if len(groups) != len(photos):
                raise InvalidInput("id_groups", f"must hold one identity index per photo in id_images ({len(photos)}), "
                                                f"got {len(groups)}")
            bad = [g for g in groups if not 0 <= g < MAX_IDENTITIES]
            if bad:
                raise InvalidInput("id_groups", f"identity indices must be in [0, {MAX_IDENTITIES - 1}], got {bad[0]}")
        count = max(groups) + 1 if groups else 0
        prompts = []
        for value in ([] if face_prompts is None else face_prompts.reshape(-1)):
            try:
                prompts.append(value.decode("utf-8") if isinstance(value, bytes) else str(value))
            except UnicodeDecodeError:
                raise InvalidInput("face_prompts", "must be UTF-8 text") from None
        if face_prompts is not None and not prompts:
            raise InvalidInput("face_prompts", "is empty: send one prompt per identity, or leave the field out")
        return cls(tuple(tuple(p for p, g in zip(photos, groups) if g == k) for k in range(count)), tuple(prompts))

    def to_arrays(self) -> dict[str, tuple[str, list]]:
        """{input name: (Triton datatype, values)} of the non-empty inputs; photos in identity order."""
        arrays: dict[str, tuple[str, list]] = {}
        if self.photos:
            arrays["id_images"] = ("BYTES", [p for group in self.photos for p in group])
            arrays["id_groups"] = ("INT32", [k for k, group in enumerate(self.photos) for _ in group])
        if self.face_prompts:
            arrays["face_prompts"] = ("BYTES", [p.encode("utf-8") for p in self.face_prompts])
        return arrays


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
        check_cost(len(self.seeds), self.height, self.width, steps_run(self.steps, self.strength), "seeds")

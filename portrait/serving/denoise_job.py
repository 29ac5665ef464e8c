"""A `denoise` request's tensors -> one request's denoising loop, every field checked against the checkpoint.

Triton-free: the `denoise` model hands in the decoded arrays and scalars, the scheduler runs the loop.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import numpy as np
import torch

from portrait.diffusion.conditioning import sdxl_time_ids
from portrait.diffusion.diffdiff import ImageGuide, make_image_guide, start_step
from portrait.diffusion.guidance import guided_steps
from portrait.diffusion.loop import Conditioning, UNetCall, denoise_steps
from portrait.diffusion.noise import initial_noise
from portrait.diffusion.schedules import make_scheduler
from portrait.errors import InvalidInput
from portrait.models.checkpoint import SDXLInfo
from portrait.models.unet_runner import UNetDims, check_finite, check_latent_size, check_width
from portrait.params import STEPS_MAX, DenoiseParams, check_int_range, steps_run
from portrait.serving.cancel import JOB_ID

EMBEDS = ("prompt_embeds", "pooled_prompt_embeds", "negative_prompt_embeds", "negative_pooled_prompt_embeds")
ID_INPUTS = ("id_prompt_embeds", "id_pooled_prompt_embeds")
SCALARS = ("height", "width", "steps", "guidance_scale", "guidance_cutoff", "strength", "start_merge_step", "job_id",
           "progress")
ARRAYS = ("seeds", *EMBEDS, *ID_INPUTS, "image_latents", "change_map")

Arrays = dict[str, np.ndarray | None]


def check_job_id(job: Any) -> str | None:
    if job is not None and not (isinstance(job, str) and JOB_ID.match(job)):
        raise InvalidInput("job_id", f"must be 32 hex digits, got {job!r}")
    return job


def decode_params(scalars: dict[str, Any], seeds: np.ndarray | None) -> DenoiseParams:
    values = {k: scalars.get(k) for k in ("height", "width", "steps", "guidance_scale", "guidance_cutoff", "strength")}
    if values["strength"] is None:
        del values["strength"]
    for name, v in values.items():
        if v is None:
            raise InvalidInput(name, "is required")
    if seeds is None:
        raise InvalidInput("seeds", "is required")
    return DenoiseParams(seeds=tuple(int(s) for s in seeds.reshape(-1)), **values)


def decode_conditioning(arrays: Arrays, scalars: dict[str, Any], params: DenoiseParams, dims: UNetDims) -> Conditioning:
    """The four text embeddings (+ identity), checked: present, one row per seed, the checkpoint's widths, finite."""
    embeds = []
    for name in EMBEDS:
        a = arrays.get(name)
        if a is None:
            raise InvalidInput(name, "is required")
        if a.shape[0] != len(params.seeds):
            raise InvalidInput(name, f"needs one row per seed ({len(params.seeds)}), got {a.shape[0]}")
        pooled = "pooled" in name
        check_width(name, a.shape, dims.pooled_dim if pooled else dims.cross_attention_dim,
                    "the pooled text embedding width" if pooled else "cross_attention_dim")
        check_finite(name, a)
        embeds.append(torch.from_numpy(np.ascontiguousarray(a, np.float32)))
    time_ids = sdxl_time_ids(params.height, params.width).expand(len(params.seeds), 6)
    identity = decode_identity(arrays, scalars.get("start_merge_step"), embeds[0], embeds[1])
    return Conditioning(embeds[0], embeds[1], embeds[2], embeds[3], time_ids, *identity)


def decode_identity(arrays: Arrays, merge: int | None, embeds: torch.Tensor, pooled: torch.Tensor) -> tuple:
    """PhotoMaker's fused embeddings and the step after which they replace the text-only ones (all optional)."""
    given = [k for k in ID_INPUTS if arrays.get(k) is not None]
    if not given:
        if merge is not None:
            raise InvalidInput("start_merge_step", "needs id_prompt_embeds and id_pooled_prompt_embeds")
        return None, None, 0
    if len(given) != len(ID_INPUTS):
        missing = next(k for k in ID_INPUTS if k not in given)
        raise InvalidInput(missing, f"is required with {given[0]}")
    for name, like in zip(ID_INPUTS, (embeds, pooled)):
        if tuple(arrays[name].shape) != tuple(like.shape):
            raise InvalidInput(name, f"must have shape {list(like.shape)}, got {list(arrays[name].shape)}")
        check_finite(name, arrays[name])
    merge = 0 if merge is None else merge
    check_int_range("start_merge_step", merge, 0, STEPS_MAX)
    return (*(torch.from_numpy(np.ascontiguousarray(arrays[k], np.float32)) for k in ID_INPUTS), merge)


def image_guide(arrays: Arrays, params: DenoiseParams, noise: torch.Tensor) -> ImageGuide | None:
    """Differential-diffusion inputs, checked against the latent shape; None for text-to-image."""
    latents, change = arrays.get("image_latents"), arrays.get("change_map")
    if latents is None:
        for name, unused in (("change_map", change is not None), ("strength", params.strength != 1.0)):
            if unused:
                raise InvalidInput(name, "needs image_latents")
        return None
    if tuple(latents.shape) != tuple(noise.shape):
        raise InvalidInput("image_latents", f"must have shape {list(noise.shape)}, got {list(latents.shape)}")
    if change is None:  # refused as change_map without image_latents is: text-to-image would run in silence
        raise InvalidInput("change_map", "is required with image_latents (all ones for plain img2img)")
    if change.shape != (noise.shape[0], 1, params.height, params.width):
        raise InvalidInput("change_map", f"must have shape {[noise.shape[0], 1, params.height, params.width]}, "
                                         f"got {list(change.shape)}")
    if not np.isfinite(change).all() or change.min() < 0 or change.max() > 1:
        raise InvalidInput("change_map", "values must lie in [0, 1] (high = more change)")
    return make_image_guide(torch.from_numpy(latents.copy()), torch.from_numpy(change.copy()), noise,
                            params.steps, params.strength)


def denoise_loop(arrays: Arrays, scalars: dict[str, Any], info: SDXLInfo,
                 dims: UNetDims) -> Generator[UNetCall, torch.Tensor, torch.Tensor]:
    """Check the whole request, then return its `denoise_steps` generator (nothing computed yet)."""
    params = decode_params(scalars, arrays.get("seeds"))
    f = info.vae_scale_factor  # sizes are multiples of 8 (DenoiseParams)
    # torch runs any latent size; a TensorRT engine only its profiles' (dims.latent_ranges): refused here, by field
    check_latent_size(dims, params.height // f, params.width // f, scale=f, fields=("height", "width"))
    cond = decode_conditioning(arrays, scalars, params, dims)
    if arrays.get("image_latents") is not None:
        check_finite("image_latents", arrays["image_latents"])
    noise = initial_noise(list(params.seeds), (info.latent_channels, params.height // f, params.width // f))
    scheduler = make_scheduler(info.scheduler_config, params.steps)
    guide = image_guide(arrays, params, noise)
    if guide is not None:  # img2img strength: start part-way down the schedule
        scheduler.set_begin_index(start_step(params.steps, params.strength))
    steps_that_run = steps_run(params.steps, params.strength if guide is not None else 1.0)
    cfg_steps = guided_steps(steps_that_run, params.guidance_scale, params.guidance_cutoff)
    return denoise_steps(scheduler, noise, cond, cfg_steps, params.guidance_scale, guide)

"""The denoising loop as a generator: it yields each UNet call and receives the prediction.

The same loop is driven synchronously by the in-process reference pipeline and asynchronously
by the Triton `denoise` model (one BLS `unet` request per step), so both follow one rule.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass

import torch

from portrait.diffusion.diffdiff import ImageGuide
from portrait.diffusion.guidance import combine_guidance


@dataclass(frozen=True)
class Conditioning:
    embeds: torch.Tensor  # [B, 77, D]
    pooled: torch.Tensor  # [B, P]
    negative_embeds: torch.Tensor  # [B, 77, D]
    negative_pooled: torch.Tensor  # [B, P]
    time_ids: torch.Tensor  # [B, 6]
    # identity (PhotoMaker V2): the fused embeddings replace embeds / pooled on steps after start_merge_step
    id_embeds: torch.Tensor | None = None  # [B, 77, D]
    id_pooled: torch.Tensor | None = None  # [B, P]
    start_merge_step: int = 0

    def positive(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The conditional rows' (embeds, pooled) at loop step `step`: text-only while step <= start_merge_step."""
        if self.id_embeds is not None and step > self.start_merge_step:
            return self.id_embeds, self.id_pooled
        return self.embeds, self.pooled


@dataclass(frozen=True)
class UNetCall:
    """One noise prediction request: rows are [neg..., pos...] on guided steps, [pos...] otherwise."""

    sample: torch.Tensor  # [R, C, h, w], already scaled by the scheduler
    timestep: torch.Tensor  # [R] float
    encoder_hidden_states: torch.Tensor  # [R, 77, D]
    text_embeds: torch.Tensor  # [R, P]
    time_ids: torch.Tensor  # [R, 6]
    step: int
    num_steps: int


def step_conditioning(cond: Conditioning, step: int, guided: bool, cache: dict) -> tuple[torch.Tensor, ...]:
    """(hidden states, pooled, time ids) of one step, [neg..., pos...] when guided; the same tensor objects on
    every step that needs the same rows, so no per-step copy (and the step scheduler can reuse its merge)."""
    key = (guided, cond.id_embeds is not None and step > cond.start_merge_step)
    if key not in cache:
        embeds, pooled = cond.positive(step)
        time_ids = cond.time_ids
        if guided:
            embeds, pooled = torch.cat([cond.negative_embeds, embeds]), torch.cat([cond.negative_pooled, pooled])
            time_ids = torch.cat([time_ids, time_ids])
        cache[key] = (embeds.contiguous(), pooled.contiguous(), time_ids.contiguous())
    return cache[key]


def denoise_steps(
    scheduler, latents: torch.Tensor, cond: Conditioning, guided: list[bool], guidance_scale: float,
    guide: ImageGuide | None = None,
) -> Generator[UNetCall, torch.Tensor, torch.Tensor]:
    """Euler sampling with CFG on the `guided` steps; yields UNetCall, receives noise [R, C, h, w]; returns latents.

    Text-to-image: `latents` is unit noise. With a `guide` (differential diffusion) the run starts at the
    scheduler's begin index (img2img strength) and the guide resets held pixels before every step (the
    published rule: none after the last); `latents` is then ignored (the first step holds every pixel).
    """
    begin = scheduler.begin_index or 0
    timesteps, sigmas = scheduler.timesteps[begin:], scheduler.sigmas[begin:]  # sigmas[i]: the level before step i
    latents = latents * scheduler.init_noise_sigma
    num_steps = len(timesteps)
    cache: dict = {}
    for i, t in enumerate(timesteps):
        if guide is not None:
            latents = guide.apply(latents, i, sigmas[i])
        sample = torch.cat([latents, latents]) if guided[i] else latents  # [R, C, h, w]
        sample = scheduler.scale_model_input(sample, t)
        embeds, pooled, time_ids = step_conditioning(cond, i, guided[i], cache)
        noise = yield UNetCall(sample, t.expand(sample.shape[0]).float(), embeds, pooled, time_ids, i, num_steps)
        if guided[i]:
            noise = combine_guidance(noise, guidance_scale)
        latents = scheduler.step(noise, t, latents, return_dict=False)[0]
    return latents


def run_denoise(steps: Generator[UNetCall, torch.Tensor, torch.Tensor],
                predict: Callable[[UNetCall], torch.Tensor]) -> torch.Tensor:
    """Drive `denoise_steps` synchronously with a UNet callable."""
    call = next(steps)
    while True:
        try:
            call = steps.send(predict(call))
        except StopIteration as done:
            return done.value

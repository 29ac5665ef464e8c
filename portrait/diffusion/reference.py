"""The in-process reference pipeline: stage 1 built from the same functions the Triton models call."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from portrait.diffusion.conditioning import sdxl_time_ids
from portrait.diffusion.guidance import guided_steps
from portrait.diffusion.loop import Conditioning, denoise_steps, run_denoise
from portrait.diffusion.noise import initial_noise
from portrait.diffusion.schedules import make_scheduler
from portrait.models.checkpoint import read_sdxl_info
from portrait.models.sdxl import TextEncoders, decode_latents, load_unet, load_vae, predict_noise
from portrait.params import Stage1Params, negative_is_zeros


@dataclass(frozen=True)
class Stage1Result:
    images: np.ndarray  # [B, H, W, 3] uint8
    truncated_tokens: int  # prompt tokens beyond the encoders' 77 that were dropped


def build_conditioning(text: TextEncoders, params: Stage1Params, force_zeros: bool) -> tuple[Conditioning, int]:
    """Encode prompt and negative prompt for `batch_size` images; zeros for an empty negative if the model says so."""
    n = params.batch_size
    pos = text([params.prompt])
    if negative_is_zeros(params.negative_prompt, force_zeros):
        neg_embeds, neg_pooled = torch.zeros_like(pos.embeds), torch.zeros_like(pos.pooled)
    else:
        neg = text([params.negative_prompt])
        neg_embeds, neg_pooled = neg.embeds, neg.pooled
    time_ids = sdxl_time_ids(params.height, params.width).expand(n, 6)
    cond = Conditioning(pos.embeds.expand(n, -1, -1), pos.pooled.expand(n, -1),
                        neg_embeds.expand(n, -1, -1), neg_pooled.expand(n, -1), time_ids)
    return cond, max(0, int(pos.token_counts[0]) - text.max_tokens)


class ReferencePipeline:
    """SDXL stage 1 in one process, no server: the baseline the Triton path is compared and benchmarked against."""

    def __init__(self, sdxl_dir: Path, device: str = "cpu", photomaker_file: Path | None = None):
        self.info = read_sdxl_info(sdxl_dir)
        self.text = TextEncoders(sdxl_dir, device)
        self.unet = load_unet(sdxl_dir, device, photomaker_file)
        self.vae = load_vae(sdxl_dir, device)

    def latent_shape(self, params: Stage1Params) -> tuple[int, int, int]:
        f = self.info.vae_scale_factor
        return (self.info.latent_channels, params.height // f, params.width // f)

    def generate(self, params: Stage1Params) -> Stage1Result:
        cond, truncated = build_conditioning(self.text, params, self.info.force_zeros_for_empty_prompt)
        scheduler = make_scheduler(self.info.scheduler_config, params.steps)
        noise = initial_noise(params.seeds, self.latent_shape(params))
        guided = guided_steps(params.steps, params.guidance_scale, params.guidance_cutoff)
        steps = denoise_steps(scheduler, noise, cond, guided, params.guidance_scale)
        latents = run_denoise(steps, lambda call: predict_noise(self.unet, call))
        return Stage1Result(decode_latents(self.vae, latents), truncated)

"""Differential diffusion (Levin & Fried 2023, "Differential Diffusion: Giving Each Pixel Its Strength").

The published rule (the paper's reference code, the seed system, diffusers' community pipeline
`pipeline_stable_diffusion_xl_differential_img2img.py`): with N the step count of the whole schedule
and M = int(N * strength) the steps that run, thresholds are arange(N) / N; at the i-th step that runs
(i = 0 .. M - 1, the loop counter) the latent pixels whose keep-map value is greater than i / N are reset
to the original re-noised to that step's noise level with one fixed noise draw; at i = 0 every pixel is
(img2img's start). There is no reset after the last step. The map reaches the latent grid by a bilinear
resize without antialiasing (torchvision's `Resize(antialias=None)` on a tensor).

Convention used everywhere outside this module: a change map holds values in [0, 1] and **high means more
change**. The published keep-map (high = held to the original longer) is `1 - change`, taken at pixel
resolution before the resize.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from portrait.params import steps_run


def start_step(num_steps: int, strength: float) -> int:
    """First step index that runs at img2img `strength` (params.steps_run: the last int(N * strength) run)."""
    return num_steps - steps_run(num_steps, strength)


def latent_keep_map(change: torch.Tensor, latent_hw: tuple[int, int]) -> torch.Tensor:
    """A pixel change map [B, 1, H, W] (high = more change) -> the published keep-map [B, 1, h, w], resized bilinearly."""
    keep = 1.0 - change.float()  # [B, 1, H, W]
    return F.interpolate(keep, size=latent_hw, mode="bilinear", align_corners=False, antialias=False)


def hold_masks(keep: torch.Tensor, num_steps: int, steps_run: int) -> torch.Tensor:
    """Where to reset to the re-noised original before each step that runs: [M, B, 1, h, w] bool, keep > i / N."""
    thresholds = torch.arange(num_steps, dtype=keep.dtype)[:steps_run] / num_steps  # [M], over the whole schedule
    masks = keep.unsqueeze(0) > thresholds.view(-1, 1, 1, 1, 1)
    masks[0] = True  # the first step starts from the re-noised original everywhere
    return masks


def renoise(original: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
    """x_sigma = x_0 + sigma * eps: the Euler (variance-exploding) forward process, as the scheduler's add_noise."""
    return original + sigma * noise


@dataclass(frozen=True)
class ImageGuide:
    """The original crop for differential diffusion: clean latents, one fixed noise draw, the hold masks."""

    original: torch.Tensor  # [B, C, h, w] clean, scaled latents
    noise: torch.Tensor  # [B, C, h, w]
    hold: torch.Tensor  # [M, B, 1, h, w] bool

    def apply(self, latents: torch.Tensor, step: int, sigma: torch.Tensor) -> torch.Tensor:
        """Before the `step`-th step that runs: reset the held pixels to the original re-noised to `sigma`."""
        return torch.where(self.hold[step], renoise(self.original, self.noise, sigma), latents)


def make_image_guide(original: torch.Tensor, change: torch.Tensor, noise: torch.Tensor, num_steps: int,
                     strength: float) -> ImageGuide:
    """The guide for clean latents [B, C, h, w] under a pixel change map [B, 1, H, W] at img2img `strength`."""
    keep = latent_keep_map(change, tuple(original.shape[2:]))
    return ImageGuide(original, noise, hold_masks(keep, num_steps, steps_run(num_steps, strength)))

"""Differential diffusion (Levin & Fried 2023, "Differential Diffusion: Giving Each Pixel Its Strength").

Convention used everywhere in this project: a change map holds values in [0, 1] and
**high means more change**. A pixel with change c is held to the original image, re-noised to
the current noise level, at every step boundary j (of the M steps that run) with j/M <= 1 - c;
it is denoised freely for the last c*M steps. So c = 1 is plain img2img at the same strength
(held only at boundary 0, which is img2img's start), c = 0 is never released and ends as the
original latents exactly (boundary M re-noises to sigma = 0). The official implementation reads
its map the other way (high = keep longer: `masks = map > i/N`); ours is its map as 1 - c.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


def start_step(num_steps: int, strength: float) -> int:
    """First step index that runs at img2img `strength` (diffusers' get_timesteps: int(N * strength) steps run)."""
    return num_steps - min(int(num_steps * strength), num_steps)


def latent_change_map(change: torch.Tensor, latent_hw: tuple[int, int]) -> torch.Tensor:
    """A pixel change map [B, 1, H, W] in [0, 1] -> latent resolution [B, 1, h, w] (area average)."""
    return F.interpolate(change.float(), size=latent_hw, mode="area").clamp(0.0, 1.0)


def hold_masks(change: torch.Tensor, steps_run: int) -> torch.Tensor:
    """Where to reset to the re-noised original at boundaries j = 0..M: [M + 1, B, 1, h, w] bool, j/M <= 1 - c."""
    fractions = torch.arange(steps_run + 1, dtype=torch.float64) / steps_run  # [M + 1]
    # compare as 1 - c >= j/M in float64 so c = 1 - j/M exactly (e.g. 0.5 at j = M/2) is held
    return (1.0 - change.double()).unsqueeze(0) >= fractions.view(-1, 1, 1, 1, 1) - 1e-9


def renoise(original: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
    """x_sigma = x_0 + sigma * eps: the Euler (variance-exploding) forward process, as the scheduler's add_noise."""
    return original + sigma * noise


@dataclass(frozen=True)
class ImageGuide:
    """The original crop for differential diffusion: clean latents, one fixed noise draw, the hold masks."""

    original: torch.Tensor  # [B, C, h, w] clean, scaled latents
    noise: torch.Tensor  # [B, C, h, w]
    hold: torch.Tensor  # [M + 1, B, 1, h, w] bool

    def apply(self, latents: torch.Tensor, boundary: int, sigma: torch.Tensor) -> torch.Tensor:
        """Reset the held pixels to the original re-noised to `sigma` (the noise level before step `boundary`)."""
        return torch.where(self.hold[boundary], renoise(self.original, self.noise, sigma), latents)

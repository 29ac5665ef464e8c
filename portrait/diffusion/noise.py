"""Initial noise drawn exactly as diffusers draws it, so a seed means the same image in both."""

from __future__ import annotations

import torch


def initial_noise(seeds: list[int], latent_shape: tuple[int, int, int]) -> torch.Tensor:
    """Unit Gaussian latents [B, C, h, w]: one CPU generator per image, as diffusers' randn_tensor with a generator list."""
    return torch.cat([
        torch.randn((1, *latent_shape), generator=torch.Generator("cpu").manual_seed(seed), dtype=torch.float32)
        for seed in seeds
    ])

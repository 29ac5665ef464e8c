"""Classifier-free guidance with a cutoff (Ho & Salimans 2022; dynamic CFG as in diffusers' callbacks).

The UNet batch of a guided step is grouped [neg_1..neg_n, pos_1..pos_n]; an unguided step runs
the conditional half only, so the last steps cost half the UNet work.
"""

from __future__ import annotations

import torch


def uses_cfg(guidance_scale: float) -> bool:
    """diffusers' rule: scales <= 1 mean no classifier-free guidance (conditional prediction only)."""
    return guidance_scale > 1.0


def unguided_step_count(num_steps: int, cutoff: float) -> int:
    """How many final steps run without guidance: round(cutoff * N); 0 = guidance never switched off."""
    return int(num_steps * cutoff + 0.5)


def guided_steps(num_steps: int, guidance_scale: float, cutoff: float) -> list[bool]:
    """Per step i: True where the step uses CFG (a doubled UNet batch)."""
    if not uses_cfg(guidance_scale):
        return [False] * num_steps
    first_unguided = num_steps - unguided_step_count(num_steps, cutoff)
    return [i < first_unguided for i in range(num_steps)]


def combine_guidance(noise_pred: torch.Tensor, guidance_scale: float) -> torch.Tensor:
    """eps = eps_uncond + s * (eps_cond - eps_uncond) for a [2N, ...] batch grouped [neg..., pos...]."""
    uncond, cond = noise_pred.chunk(2)  # [N, ...] each
    return uncond + guidance_scale * (cond - uncond)

"""Timestep schedules: Align-Your-Steps for SDXL, resampled to any number of steps."""

from __future__ import annotations

import numpy as np
from diffusers import EulerDiscreteScheduler

# Sabour et al. 2024, "Align Your Steps", the 10-step SDXL schedule (as in diffusers' AysSchedules).
AYS_SDXL_TIMESTEPS = (999, 845, 730, 587, 443, 310, 193, 116, 53, 13)


def resample_loglinear(anchors: np.ndarray, num_steps: int) -> np.ndarray:
    """Resample a decreasing schedule to `num_steps` points by interpolating log(t) (AYS paper, App. D)."""
    xs = np.linspace(0.0, 1.0, len(anchors))
    ys = np.log(np.asarray(anchors, dtype=np.float64)[::-1])
    new_ys = np.interp(np.linspace(0.0, 1.0, num_steps), xs, ys)
    return np.exp(new_ys)[::-1].copy()


def ays_timesteps(num_steps: int) -> list[float]:
    """AYS SDXL timesteps for `num_steps` (N = 10 gives the anchors; N = 1 is one step from t = 999)."""
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    if num_steps == 1:
        return [float(AYS_SDXL_TIMESTEPS[0])]
    # float32, as the scheduler stores them, so N = 10 is bit-exact integers
    return [float(t) for t in resample_loglinear(np.array(AYS_SDXL_TIMESTEPS), num_steps).astype(np.float32)]


def make_scheduler(scheduler_config: dict, num_steps: int) -> EulerDiscreteScheduler:
    """A fresh Euler discrete scheduler (one per request: it is stateful) set to the AYS timesteps."""
    scheduler = EulerDiscreteScheduler.from_config(scheduler_config)
    scheduler.set_timesteps(timesteps=ays_timesteps(num_steps))
    return scheduler

"""Start-up shared by the torch-backed Triton models: settings, threads, device."""

from __future__ import annotations

import torch

from portrait.settings import Settings, get_settings


def torch_setup(threads: int | None = None, heavy: bool = False) -> Settings:
    """Read settings once and size torch's thread pool.

    Each Triton model is its own process with its own thread pool, so on a small machine the pools
    add up: the UNet's process (`denoise`, heavy=True) gets PORTRAIT_TORCH_THREADS (0 = torch's default,
    one per core) and the light ones (text encoders, VAE, identity) PORTRAIT_LIGHT_THREADS (default 1),
    measured in docs/benchmarks.md. `threads` overrides both (0 = torch's default).
    """
    settings = get_settings()
    n = threads if threads is not None else settings.torch_threads if heavy else settings.light_threads
    if n > 0:
        torch.set_num_threads(n)
    torch.set_grad_enabled(False)
    return settings

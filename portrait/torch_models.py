"""Start-up shared by the torch-backed Triton models: settings, threads, device."""

from __future__ import annotations

import torch

from portrait.settings import Settings, get_settings


def torch_setup(threads: int | None = None) -> Settings:
    """Read settings once and size torch's thread pool (0 = torch's default)."""
    settings = get_settings()
    n = settings.torch_threads if threads is None else threads
    if n > 0:
        torch.set_num_threads(n)
    torch.set_grad_enabled(False)
    return settings

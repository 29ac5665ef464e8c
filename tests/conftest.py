"""Shared fixtures: the tiny default model set, a real Triton server for the session, diffusers' reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from portrait.models.tiny import build_tiny_model_set
from portrait.settings import get_settings

TOLERANCE = 3  # max absolute pixel difference, in uint8 levels (3/255)


@pytest.fixture(scope="session")
def models_dir():
    return build_tiny_model_set(get_settings().models_dir)


@pytest.fixture(scope="session")
def sdxl_dir(models_dir):
    return models_dir / "sdxl"


@pytest.fixture(scope="session")
def photomaker_file(models_dir):
    """The default set's photomaker-v2.bin: its LoRA is fused into the served UNet, so every reference fuses it too."""
    from portrait.models.checkpoint import find_photomaker_file

    return find_photomaker_file(models_dir)


@pytest.fixture(scope="session")
def server(models_dir):
    """The bundled tritonserver on free ports, started once per session and stopped at its end."""
    from portrait.serving.server import TritonServer

    with TritonServer.create(free_ports=True) as running:
        yield running


@pytest.fixture(scope="session")
def grpc_client(server):
    from clients import connect

    with connect(server.grpc_url, "grpc") as client:
        yield client


@pytest.fixture(scope="session")
def http_client(server):
    from clients import connect

    with connect(server.http_url, "http") as client:
        yield client


@pytest.fixture(scope="session")
def diffusers_pipe(sdxl_dir, photomaker_file):
    """diffusers' SDXL pipeline with PhotoMaker's LoRA loaded and fused the way PhotoMaker's own pipeline does."""
    from diffusers import StableDiffusionXLPipeline

    from portrait.models.identity import read_photomaker_file

    pipe = StableDiffusionXLPipeline.from_pretrained(sdxl_dir)
    if photomaker_file is not None:
        pipe.load_lora_weights(read_photomaker_file(photomaker_file)["lora_weights"], adapter_name="photomaker")
        pipe.fuse_lora()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def run_diffusers(pipe, params, output_type: str = "np"):
    """diffusers' SDXL pipeline on the same AYS timesteps, seeds and guidance cutoff as `params`."""
    from diffusers.callbacks import SDXLCFGCutoffCallback

    from portrait.diffusion.guidance import unguided_step_count
    from portrait.diffusion.schedules import ays_timesteps

    off = unguided_step_count(params.steps, params.guidance_cutoff) if params.guidance_scale > 1 else 0
    # the callback runs at the end of step k and switches CFG off from step k + 1 on
    callback = SDXLCFGCutoffCallback(cutoff_step_ratio=None, cutoff_step_index=params.steps - off - 1) if off else None
    guidance_scale = params.guidance_scale
    if off == params.steps:  # no guided step at all: the callback cannot act before step 0
        callback, guidance_scale = None, 1.0
    if callback is not None and params.batch_size != 1:
        raise ValueError("diffusers' SDXLCFGCutoffCallback keeps only the last row: batch 1 only")
    out = pipe(
        prompt=params.prompt, negative_prompt=params.negative_prompt or None,
        width=params.width, height=params.height, timesteps=ays_timesteps(params.steps),
        guidance_scale=guidance_scale,
        generator=[torch.Generator("cpu").manual_seed(s) for s in params.seeds],
        output_type=output_type, callback_on_step_end=callback,
    ).images
    if output_type == "np":
        return (out * 255).round().astype(np.uint8)
    return out


def max_diff(a: np.ndarray, b: np.ndarray) -> int:
    assert a.shape == b.shape, (a.shape, b.shape)
    return int(np.abs(a.astype(np.int16) - b.astype(np.int16)).max())

"""Helpers more than one test module uses (fixtures live in conftest.py; the prompt agent's fakes in
tests/unit/prompt_agent_fakes.py). Test modules import from here, never from each other."""

from __future__ import annotations

import importlib.util
import io
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np
import torch
from PIL import Image

TOLERANCE = 3  # max absolute pixel difference, in uint8 levels (3/255)


def max_diff(a: np.ndarray, b: np.ndarray) -> int:
    assert a.shape == b.shape, (a.shape, b.shape)
    return int(np.abs(a.astype(np.int16) - b.astype(np.int16)).max())


# --- photos ---------------------------------------------------------------------------------------------------------

def package_file(package: str, relative: str) -> np.ndarray:
    """An image shipped inside an installed package (real faces: skimage's astronaut, insightface's t1.jpg), RGB."""
    root = Path(importlib.util.find_spec(package).submodule_search_locations[0])
    return np.array(Image.open(root / relative).convert("RGB"))


def sample_photos() -> list[np.ndarray]:
    """[the astronaut (one face, 512 x 512), insightface's group photo t1.jpg (several people, 1280 x 886)]."""
    return [package_file("skimage", "data/astronaut.png"), package_file("insightface", "data/images/t1.jpg")]


def png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


ORIENTATION = 0x0112  # the EXIF tag
# EXIF's rule: with Orientation 6 the stored first row is the displayed right-hand column (the phone was held turned
# 90 degrees clockwise), i.e. the stored pixels are the upright picture turned 90 degrees counter-clockwise; 8 is the
# mirror case. np.rot90(upright, k) turns counter-clockwise for k = 1 (written out here, not taken from Pillow).
STORED_TURN = {6: 1, 8: -1}


def jpeg(pixels: np.ndarray, orientation: int | None = None) -> bytes:
    exif = Image.Exif()
    if orientation is not None:
        exif[ORIENTATION] = orientation
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=95, exif=exif)
    return buffer.getvalue()


def sideways(upright: np.ndarray, orientation: int) -> bytes:
    """What a phone writes: the pixels as the sensor read them, plus the tag that says how to show them."""
    return jpeg(np.ascontiguousarray(np.rot90(upright, STORED_TURN[orientation])), orientation)


# --- the command line -----------------------------------------------------------------------------------------------

PORTRAIT_CLI = [sys.executable, "-m", "portrait.app.cli"]


def run_cli(args, env=None, timeout=600) -> subprocess.CompletedProcess:
    """`portrait <args>` as a user runs it, in a subprocess (output captured as text)."""
    return subprocess.run(PORTRAIT_CLI + args, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


# --- the server's metrics -------------------------------------------------------------------------------------------

def metrics_text(server) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=10) as r:
        return r.read().decode()


def scheduler_counts(server) -> dict[str, float]:
    """The denoise step scheduler's counters (portrait_scheduler_* on the metrics port)."""
    from portrait.serving.step_scheduler import read_scheduler_metrics

    return read_scheduler_metrics(metrics_text(server))



def wait_scheduler_idle(server, timeout: float = 60.0) -> None:
    """Until the step scheduler holds no request (a cancelled stream of an earlier test may still be retiring), so
    counter deltas measured after it belong to the caller's requests alone."""
    import time

    deadline = time.monotonic() + timeout
    while scheduler_counts(server).get("portrait_scheduler_backlog", 0.0) > 0:
        if time.monotonic() > deadline:
            raise AssertionError(f"the step scheduler is still busy after {timeout:.0f} s")
        time.sleep(0.1)

def metric_total(server, names: tuple[str, ...], models: tuple[str, ...] | None = None) -> float:
    """The sum of the samples of the metric families `names` (every label set; only models `models` if given)."""
    total = 0.0
    for line in metrics_text(server).splitlines():
        if line.startswith("#") or not line.strip():
            continue
        series, value = line.rsplit(" ", 1)
        name, _, labels = series.partition("{")
        if name in names and (models is None or any(f'model="{m}"' in labels for m in models)):
            total += float(value)
    return total


# --- diffusers' SDXL pipeline as the reference ----------------------------------------------------------------------

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


# --- differential diffusion: the project's loop, as test_diffdiff and test_diffdiff_triton run it -------------------

DIFFDIFF_STEPS, DIFFDIFF_STRENGTH, DIFFDIFF_SCALE = 8, 0.75, 5.0


def run_diffdiff(ref, cond, original, noise, change, steps=DIFFDIFF_STEPS, strength=DIFFDIFF_STRENGTH, guide=None):
    """The project's loop (portrait.diffusion.loop) with the project's guide; `change` is a pixel change map."""
    from portrait.diffusion.diffdiff import make_image_guide, start_step
    from portrait.diffusion.guidance import guided_steps
    from portrait.diffusion.loop import denoise_steps, run_denoise
    from portrait.diffusion.schedules import make_scheduler
    from portrait.models.sdxl import predict_noise

    scheduler = make_scheduler(ref.info.scheduler_config, steps)
    begin = start_step(steps, strength)
    scheduler.set_begin_index(begin)
    guide = guide or make_image_guide(original, change, noise, steps, strength)
    loop = denoise_steps(scheduler, torch.zeros_like(noise), cond, guided_steps(steps - begin, DIFFDIFF_SCALE, 0.0),
                         DIFFDIFF_SCALE, guide)
    return run_denoise(loop, lambda call: predict_noise(ref.unet, call))

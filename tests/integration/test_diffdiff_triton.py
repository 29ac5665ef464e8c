"""Differential diffusion through the Triton `denoise` model (streamed) against the in-process loop."""

import numpy as np
import pytest
import torch

from portrait.diffusion.reference import ReferencePipeline, build_conditioning
from portrait.errors import InvalidInput
from portrait.params import Stage1Params
from tests.helpers import DIFFDIFF_SCALE, DIFFDIFF_STEPS, DIFFDIFF_STRENGTH, run_diffdiff

STEPS, STRENGTH, SCALE = DIFFDIFF_STEPS, DIFFDIFF_STRENGTH, DIFFDIFF_SCALE  # run_diffdiff's defaults


@pytest.fixture(scope="module")
def case(sdxl_dir, photomaker_file):
    ref = ReferencePipeline(sdxl_dir, photomaker_file=photomaker_file)
    params = Stage1Params(prompt="portrait of a woman, detailed face", negative_prompt="blurry", width=64, height=64, seed=21)
    cond, _ = build_conditioning(ref.text, params, force_zeros=True)
    g = torch.Generator().manual_seed(8)
    original = torch.randn(1, 4, 8, 8, generator=g) * 4
    change = torch.rand(1, 1, 64, 64, generator=g)
    return ref, cond, original, change


def denoise_inputs(cond, original, change, **over):
    arrays = {
        "prompt_embeds": ("FP32", cond.embeds.numpy()), "pooled_prompt_embeds": ("FP32", cond.pooled.numpy()),
        "negative_prompt_embeds": ("FP32", cond.negative_embeds.numpy()),
        "negative_pooled_prompt_embeds": ("FP32", cond.negative_pooled.numpy()),
        "seeds": ("INT64", np.array([21], np.int64)), "height": ("INT32", np.array([64], np.int32)),
        "width": ("INT32", np.array([64], np.int32)), "steps": ("INT32", np.array([STEPS], np.int32)),
        "guidance_scale": ("FP32", np.array([SCALE], np.float32)), "guidance_cutoff": ("FP32", np.array([0.0], np.float32)),
        "image_latents": ("FP32", original.numpy()), "change_map": ("FP32", change.numpy()),
        "strength": ("FP32", np.array([STRENGTH], np.float32)),
    }
    return {**arrays, **over}


def test_denoise_with_change_map_equals_the_library_loop(grpc_client, case):
    from portrait.diffusion.noise import initial_noise

    ref, cond, original, change = case
    events = list(grpc_client.stream("denoise", denoise_inputs(cond, original, change), ["step", "num_steps", "latents"]))
    steps = [int(e["step"][0]) for e in events if "step" in e]
    run = int(STEPS * STRENGTH)
    assert steps == list(range(1, run + 1)) and all(int(e["num_steps"][0]) == run for e in events if "num_steps" in e)
    served = torch.from_numpy(events[-1]["latents"].copy())
    expected = run_diffdiff(ref, cond, original, initial_noise([21], (4, 8, 8)), change)
    assert torch.allclose(served, expected, atol=1e-3), (served - expected).abs().max()


@pytest.mark.parametrize("over,field", [
    (dict(change_map=("FP32", np.full((1, 1, 64, 64), 1.5, np.float32))), "change_map"),
    (dict(change_map=("FP32", np.ones((1, 1, 32, 32), np.float32))), "change_map"),
    (dict(image_latents=("FP32", np.ones((1, 4, 4, 4), np.float32))), "image_latents"),
    (dict(strength=("FP32", np.array([0.05], np.float32))), "strength"),
    (dict(strength=("FP32", np.array([1.5], np.float32))), "strength"),
])
def test_bad_differential_inputs_are_named(grpc_client, case, over, field):
    _, cond, original, change = case
    with pytest.raises(InvalidInput) as caught:
        list(grpc_client.stream("denoise", denoise_inputs(cond, original, change, **over), ["latents"]))
    assert caught.value.field == field, str(caught.value)

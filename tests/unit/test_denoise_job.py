"""`denoise` and `unet` requests checked against the checkpoint before any work (issue 13), without a server."""

import numpy as np
import pytest
import torch

from portrait.errors import InvalidInput
from portrait.models.checkpoint import read_sdxl_info
from portrait.models.unet_runner import TorchPredictor, UNetDims, check_unet_inputs, warm_up
from portrait.serving.denoise_job import check_job_id, denoise_loop


@pytest.fixture(scope="module")
def dims(sdxl_dir):
    return UNetDims.read(sdxl_dir)


@pytest.fixture(scope="module")
def info(sdxl_dir):
    return read_sdxl_info(sdxl_dir)


def good(dims, rows=1, **over):
    d, p = dims.cross_attention_dim, dims.pooled_dim
    arrays = {"seeds": np.arange(rows, dtype=np.int64), "prompt_embeds": np.zeros((rows, 77, d), np.float32),
              "pooled_prompt_embeds": np.zeros((rows, p), np.float32),
              "negative_prompt_embeds": np.zeros((rows, 77, d), np.float32),
              "negative_pooled_prompt_embeds": np.zeros((rows, p), np.float32)}
    scalars = {"height": 64, "width": 64, "steps": 2, "guidance_scale": 5.0, "guidance_cutoff": 0.0}
    for k, v in over.items():
        (scalars if k in scalars or k in ("strength", "start_merge_step", "job_id") else arrays)[k] = v
    return arrays, scalars


def test_a_good_request_gives_a_loop(dims, info):
    call = next(denoise_loop(*good(dims, rows=2), info, dims))
    assert call.sample.shape == (4, 4, 8, 8) and call.num_steps == 2


@pytest.mark.parametrize("field,over,text", [
    ("prompt_embeds", lambda d: dict(prompt_embeds=np.full((1, 77, d.cross_attention_dim), np.nan, np.float32)), "finite"),
    ("negative_pooled_prompt_embeds",
     lambda d: dict(negative_pooled_prompt_embeds=np.full((1, d.pooled_dim), np.inf, np.float32)), "finite"),
    ("prompt_embeds", lambda d: dict(prompt_embeds=np.zeros((1, 77, d.cross_attention_dim + 1), np.float32)),
     "cross_attention_dim"),
    ("pooled_prompt_embeds", lambda d: dict(pooled_prompt_embeds=np.zeros((1, 7), np.float32)), "pooled"),
    ("negative_prompt_embeds", lambda d: dict(negative_prompt_embeds=np.zeros((2, 77, d.cross_attention_dim), np.float32)),
     "one row per seed (1), got 2"),
    ("id_pooled_prompt_embeds", lambda d: dict(id_prompt_embeds=np.zeros((1, 77, d.cross_attention_dim), np.float32)),
     "is required with id_prompt_embeds"),
    ("id_prompt_embeds", lambda d: dict(id_prompt_embeds=np.full((1, 77, d.cross_attention_dim), np.nan, np.float32),
                                        id_pooled_prompt_embeds=np.zeros((1, d.pooled_dim), np.float32)), "finite"),
    ("image_latents", lambda d: dict(image_latents=np.full((1, 4, 8, 8), np.nan, np.float32)), "finite"),
    ("change_map", lambda d: dict(image_latents=np.zeros((1, 4, 8, 8), np.float32)), "is required with image_latents"),
    ("width", lambda d: dict(width=0), "width"),
    ("height", lambda d: dict(height=68), "multiple of 8"),
    ("guidance_scale", lambda d: dict(guidance_scale=float("nan")), "finite"),
    ("prompt_embeds", lambda d: dict(prompt_embeds=None), "is required"),
    ("steps", lambda d: dict(steps=None), "is required"),
])
def test_bad_denoise_fields_are_named(dims, info, field, over, text):
    arrays, scalars = good(dims, **over(dims))
    with pytest.raises(InvalidInput) as caught:
        denoise_loop(arrays, scalars, info, dims)
    assert caught.value.field == field and text in str(caught.value), str(caught.value)


def test_job_id_must_be_hex():
    assert check_job_id("a" * 32) == "a" * 32 and check_job_id(None) is None
    with pytest.raises(InvalidInput, match="job_id"):
        check_job_id("../etc")


def unet_inputs(dims, rows=2, latent=8):
    return [np.zeros((rows, dims.in_channels, latent, latent), np.float32), np.full((rows, 1), 500, np.float32),
            np.zeros((rows, 77, dims.cross_attention_dim), np.float32), np.zeros((rows, dims.pooled_dim), np.float32),
            np.zeros((rows, 6), np.float32)]


@pytest.mark.parametrize("index,bad,field,text", [
    (0, lambda a: a[:, :3], "sample", "4 latent channels"),
    (0, lambda a: a[:, :, :0, :0], "sample", "at least 1"),
    (1, lambda a: np.full_like(a, np.nan), "timestep", "finite"),
    (0, lambda a: np.full_like(a, np.inf), "sample", "finite"),
    (2, lambda a: a[..., :-1], "encoder_hidden_states", "cross_attention_dim"),
    (3, lambda a: np.zeros((a.shape[0], 3), np.float32), "text_embeds", "pooled"),
    (2, lambda a: a[:1], "encoder_hidden_states", "one row per sample row (2), got 1"),
])
def test_bad_unet_inputs_are_named(dims, index, bad, field, text):
    arrays = unet_inputs(dims)
    arrays[index] = bad(arrays[index])
    with pytest.raises(InvalidInput) as caught:
        check_unet_inputs(dims, *arrays)
    assert caught.value.field == field and text in str(caught.value), str(caught.value)
    check_unet_inputs(dims, *unet_inputs(dims))


def test_torch_predictor_is_predict_noise(sdxl_dir, dims):
    from portrait.models.sdxl import load_unet, predict_noise

    unet = load_unet(sdxl_dir)
    predictor = TorchPredictor(unet)
    assert predictor.dims == dims
    warm_up(predictor, dims)
    call = next(denoise_loop(*good(dims), read_sdxl_info(sdxl_dir), dims))
    call = type(call)(call.sample + torch.randn_like(call.sample), *list(vars(call).values())[1:])
    assert torch.equal(predictor(call), predict_noise(unet, call))

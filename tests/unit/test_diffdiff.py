"""Differential diffusion in the shared denoise loop against a plain transcription of the published loop.

The reference is the loop of diffusers' community pipeline `pipeline_stable_diffusion_xl_differential_img2img.py`
(the paper's own code), transcribed step for step below, not imported: it is not shipped in diffusers' wheel.
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from portrait.diffusion.diffdiff import ImageGuide, hold_masks, latent_keep_map, start_step
from portrait.diffusion.guidance import combine_guidance
from portrait.diffusion.reference import ReferencePipeline, build_conditioning
from portrait.diffusion.schedules import make_scheduler
from portrait.models.sdxl import decode_latents, encode_images
from portrait.params import Stage1Params
from tests.helpers import DIFFDIFF_SCALE, DIFFDIFF_STEPS, DIFFDIFF_STRENGTH, TOLERANCE, run_diffdiff

STEPS, STRENGTH, SCALE = DIFFDIFF_STEPS, DIFFDIFF_STRENGTH, DIFFDIFF_SCALE  # run_diffdiff's (the project's loop) defaults
SIZE = 128  # pixels: a 16 x 16 latent grid


@pytest.fixture(scope="module")
def setup(sdxl_dir, photomaker_file):
    ref = ReferencePipeline(sdxl_dir, photomaker_file=photomaker_file)
    params = Stage1Params(prompt="portrait of a woman, detailed face", negative_prompt="blurry", width=SIZE, height=SIZE)
    cond, _ = build_conditioning(ref.text, params, force_zeros=True)
    g = torch.Generator().manual_seed(5)
    image = (torch.rand(1, SIZE, SIZE, 3, generator=g) * 255).to(torch.uint8).numpy()
    original = encode_images(ref.vae, image)  # [1, 4, 16, 16]
    noise = torch.randn(original.shape, generator=g)
    return ref, cond, original, noise, g


def face_like_change(size: int = SIZE) -> torch.Tensor:
    """A feathered disc: 1 (full change) at the centre falling to 0 at the border, [1, 1, size, size]."""
    yy, xx = np.mgrid[0:size, 0:size] / (size - 1) - 0.5
    change = np.clip(1.4 - 3.2 * np.hypot(yy, xx), 0.0, 1.0)
    return torch.from_numpy(change.astype(np.float32))[None, None]


def run_published(ref, cond, original, noise, change, steps=STEPS, strength=STRENGTH):
    """The community pipeline's loop written out (same UNet, embeddings, noise, timesteps and map).

    Its `map` is the keep-map (high = keep longer): our change map as 1 - c."""
    scheduler = make_scheduler(ref.info.scheduler_config, steps)
    total_time_steps = steps  # "begin diff diff change": N of the whole schedule
    t_start = steps - min(int(steps * strength), steps)  # get_timesteps
    timesteps = scheduler.timesteps[t_start:]
    keep = F.interpolate(1.0 - change, size=tuple(original.shape[2:]), mode="bilinear", align_corners=False)
    # one noise draw, the original re-noised to each step's own timestep (the file's get_timesteps sets no begin
    # index, so add_noise looks each timestep up, and the first step() finds its index the same way)
    original_with_noise = scheduler.add_noise(original, noise, timesteps)  # [M, C, h, w]
    thresholds = torch.arange(total_time_steps, dtype=keep.dtype) / total_time_steps
    masks = keep[0] > thresholds.view(-1, 1, 1, 1)  # [N, 1, h, w]
    for i, t in enumerate(timesteps):
        if i == 0:
            latents = original_with_noise[:1]
        else:
            mask = masks[i].unsqueeze(0).to(latents.dtype)
            latents = original_with_noise[i] * mask + latents * (1 - mask)
        x_in = scheduler.scale_model_input(torch.cat([latents] * 2), t)
        noise_pred = ref.unet(x_in, t, encoder_hidden_states=torch.cat([cond.negative_embeds, cond.embeds]),
                              added_cond_kwargs={"text_embeds": torch.cat([cond.negative_pooled, cond.pooled]),
                                                 "time_ids": torch.cat([cond.time_ids, cond.time_ids])}).sample
        uncond, text = noise_pred.chunk(2)
        latents = scheduler.step(uncond + SCALE * (text - uncond), t, latents).prev_sample
    return latents


def pixel_diff(ref, a: torch.Tensor, b: torch.Tensor) -> int:
    return int(np.abs(decode_latents(ref.vae, a).astype(int) - decode_latents(ref.vae, b).astype(int)).max())


def test_hold_masks_follow_the_published_rule():
    keep = 1.0 - torch.tensor([0.0, 0.25, 0.5, 1.0]).view(1, 1, 1, 4)  # change 0 .. 1
    assert hold_masks(keep, 4, 4)[:, 0, 0, 0].tolist() == [
        [True, True, True, True],  # the first step starts from the re-noised original everywhere
        [True, True, True, False],  # step 1: keep > 1/4
        [True, True, False, False],  # step 2: keep > 2/4
        [True, False, False, False],  # step 3: keep > 3/4; no reset after the last step
    ]
    # at strength 0.5 the 2 steps that run use the first thresholds of the whole schedule (0, 1/4), not (0, 1/2)
    assert hold_masks(keep, 4, 2)[:, 0, 0, 0].tolist() == [[True] * 4, [True, True, True, False]]


def test_keep_map_is_one_minus_change_resized_bilinearly():
    change = torch.zeros(1, 1, 8, 8)
    change[..., 0] = 1.0  # the first pixel column changes fully
    # bilinear without antialiasing samples at (j + 0.5) * 4 - 0.5 = 1.5, 5.5: the column is not seen;
    # an area average would give 0.75 on the left
    assert latent_keep_map(change, (2, 2)).view(-1).tolist() == [1.0, 1.0, 1.0, 1.0]
    change = torch.rand(1, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(latent_keep_map(change, (16, 16)), 1.0 - change)


@pytest.mark.parametrize("strength", [0.6, 1.0])
def test_matches_the_published_loop(setup, strength):
    ref, cond, original, noise, _ = setup
    steps = 10
    ours = run_diffdiff(ref, cond, original, noise, face_like_change(), steps, strength)
    published = run_published(ref, cond, original, noise, face_like_change(), steps, strength)
    assert pixel_diff(ref, ours, published) <= TOLERANCE
    # and it is neither the original nor plain img2img at that strength
    assert (ours - original).abs().max() > 1e-2
    assert (ours - run_diffdiff(ref, cond, original, noise, torch.zeros(1, 1, SIZE, SIZE), steps, strength)).abs().max() > 1e-2


def test_the_comparison_catches_the_old_rescaled_rule(setup):
    """The rule this project used before (thresholds over the M steps that run, an area-averaged map) is far off."""
    ref, cond, original, noise, _ = setup
    steps, strength = 10, 0.6
    run = steps - start_step(steps, strength)
    change = F.interpolate(face_like_change(), size=tuple(original.shape[2:]), mode="area")
    rescaled = (1.0 - change).unsqueeze(0) > (torch.arange(run) / run).view(-1, 1, 1, 1, 1)
    rescaled[0] = True
    old = run_diffdiff(ref, cond, original, noise, None, steps, strength, guide=ImageGuide(original, noise, rescaled))
    published = run_published(ref, cond, original, noise, face_like_change(), steps, strength)
    assert pixel_diff(ref, old, published) > TOLERANCE


def guided_eps(ref, cond, scheduler, latents, t):
    """diffusers' CFG noise prediction for one step (negative and positive rows in one UNet call)."""
    x_in = scheduler.scale_model_input(torch.cat([latents, latents]), t)
    eps = ref.unet(x_in, t, encoder_hidden_states=torch.cat([cond.negative_embeds, cond.embeds]),
                   added_cond_kwargs={"text_embeds": torch.cat([cond.negative_pooled, cond.pooled]),
                                      "time_ids": torch.cat([cond.time_ids, cond.time_ids])}).sample
    return combine_guidance(eps, SCALE)


def test_all_one_change_is_plain_img2img(setup):
    ref, cond, original, noise, _ = setup
    ours = run_diffdiff(ref, cond, original, noise, torch.ones(1, 1, SIZE, SIZE))
    scheduler = make_scheduler(ref.info.scheduler_config, STEPS)
    begin = start_step(STEPS, STRENGTH)
    scheduler.set_begin_index(begin)
    latents = scheduler.add_noise(original, noise, scheduler.timesteps[begin:begin + 1])  # diffusers' img2img start
    for t in scheduler.timesteps[begin:]:
        latents = scheduler.step(guided_eps(ref, cond, scheduler, latents, t), t, latents).prev_sample
    assert torch.allclose(ours, latents, atol=1e-4), (ours - latents).abs().max()


def test_all_zero_change_is_held_until_the_last_step(setup):
    """Keep = 1 exceeds every threshold: every step that runs starts from the re-noised original."""
    ref, cond, original, noise, _ = setup
    out = run_diffdiff(ref, cond, original, noise, torch.zeros(1, 1, SIZE, SIZE))
    scheduler = make_scheduler(ref.info.scheduler_config, STEPS)
    scheduler.set_begin_index(STEPS - 1)  # only the last step's denoising survives
    t = scheduler.timesteps[-1]
    latents = original + scheduler.sigmas[-2] * noise
    last = scheduler.step(guided_eps(ref, cond, scheduler, latents, t), t, latents).prev_sample
    assert torch.allclose(out, last, atol=1e-4), (out - last).abs().max()

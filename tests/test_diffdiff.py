"""Differential diffusion in the shared denoise loop against a plainly written per-step rule."""

import pytest
import torch

from portrait.denoise import denoise_steps, run_denoise
from portrait.diffdiff import ImageGuide, hold_masks, latent_change_map, start_step
from portrait.guidance import combine_guidance, guided_steps
from portrait.params import Stage1Params
from portrait.pipeline import ReferencePipeline, build_conditioning
from portrait.schedules import make_scheduler
from portrait.sdxl import encode_images, predict_noise

STEPS, STRENGTH, SCALE = 8, 0.75, 5.0


@pytest.fixture(scope="module")
def setup(sdxl_dir, photomaker_file):
    ref = ReferencePipeline(sdxl_dir, photomaker_file=photomaker_file)
    params = Stage1Params(prompt="portrait of a woman, detailed face", negative_prompt="blurry", width=64, height=64)
    cond, _ = build_conditioning(ref.text, params, force_zeros=True)
    g = torch.Generator().manual_seed(5)
    image = (torch.rand(1, 64, 64, 3, generator=g) * 255).to(torch.uint8).numpy()
    original = encode_images(ref.vae, image)  # [1, 4, 8, 8]
    noise = torch.randn(original.shape, generator=g)
    return ref, cond, original, noise, g


def run_ours(ref, cond, original, noise, change):
    scheduler = make_scheduler(ref.info.scheduler_config, STEPS)
    begin = start_step(STEPS, STRENGTH)
    scheduler.set_begin_index(begin)
    guide = ImageGuide(original, noise, hold_masks(change, STEPS - begin))
    steps = denoise_steps(scheduler, torch.zeros_like(noise), cond, guided_steps(STEPS - begin, SCALE, 0.0), SCALE, guide)
    return run_denoise(steps, lambda call: predict_noise(ref.unet, call))


def run_plain(ref, cond, original, noise, change):
    """The published rule, written out: before each of the M steps that run (and after the last), pixels whose
    change c satisfies j/M <= 1 - c take the original re-noised to that step's sigma; the others keep denoising."""
    scheduler = make_scheduler(ref.info.scheduler_config, STEPS)
    begin = start_step(STEPS, STRENGTH)
    scheduler.set_begin_index(begin)
    run = STEPS - begin
    latents = torch.empty_like(original)  # boundary 0 (0 <= 1 - c) sets every pixel
    for j in range(run + 1):
        sigma = scheduler.sigmas[begin + j]
        for y in range(change.shape[2]):
            for x in range(change.shape[3]):
                if j / run <= 1 - change[0, 0, y, x].item() + 1e-9:
                    latents[:, :, y, x] = original[:, :, y, x] + sigma * noise[:, :, y, x]
        if j == run:
            break
        t = scheduler.timesteps[begin + j]
        x_in = scheduler.scale_model_input(torch.cat([latents, latents]), t)
        eps = ref.unet(x_in, t, encoder_hidden_states=torch.cat([cond.negative_embeds, cond.embeds]),
                       added_cond_kwargs={"text_embeds": torch.cat([cond.negative_pooled, cond.pooled]),
                                          "time_ids": torch.cat([cond.time_ids, cond.time_ids])}).sample
        latents = scheduler.step(combine_guidance(eps, SCALE), t, latents).prev_sample
    return latents


def test_hold_masks_follow_the_rule():
    change = torch.tensor([0.0, 0.25, 0.5, 1.0]).view(1, 1, 1, 4)
    hold = hold_masks(change, 4)[:, 0, 0, 0]  # [5 boundaries, 4 pixels]
    assert hold.tolist() == [
        [True, True, True, True],  # boundary 0: everything starts from the re-noised original (img2img)
        [True, True, True, False],  # c = 1 is free from step 0 on
        [True, True, True, False],  # c = 0.5 is free for the last 2 of 4 steps
        [True, True, False, False],  # c = 0.25 for the last 1
        [True, False, False, False],  # c = 0 is held to the end
    ]


def test_latent_change_map_averages_blocks():
    change = torch.zeros(1, 1, 16, 16)
    change[..., :8, :8] = 1.0
    assert latent_change_map(change, (2, 2)).view(-1).tolist() == [1.0, 0.0, 0.0, 0.0]


def test_matches_the_plainly_written_rule(setup):
    ref, cond, original, noise, g = setup
    change = torch.rand(1, 1, 8, 8, generator=g)
    ours = run_ours(ref, cond, original, noise, change)
    plain = run_plain(ref, cond, original, noise, change)
    assert torch.allclose(ours, plain, atol=1e-4), (ours - plain).abs().max()
    # and it is not trivially the original or plain img2img
    assert (ours - original).abs().max() > 1e-2
    assert (ours - run_ours(ref, cond, original, noise, torch.ones_like(change))).abs().max() > 1e-2


def test_all_zero_change_leaves_the_original(setup):
    ref, cond, original, noise, _ = setup
    out = run_ours(ref, cond, original, noise, torch.zeros(1, 1, 8, 8))
    assert torch.equal(out, original)  # decoding it is the original's VAE round trip


def test_all_one_change_is_plain_img2img(setup):
    ref, cond, original, noise, _ = setup
    ours = run_ours(ref, cond, original, noise, torch.ones(1, 1, 8, 8))
    scheduler = make_scheduler(ref.info.scheduler_config, STEPS)
    begin = start_step(STEPS, STRENGTH)
    scheduler.set_begin_index(begin)
    latents = scheduler.add_noise(original, noise, scheduler.timesteps[begin:begin + 1])  # diffusers' img2img start
    for t in scheduler.timesteps[begin:]:
        x_in = scheduler.scale_model_input(torch.cat([latents, latents]), t)
        eps = ref.unet(x_in, t, encoder_hidden_states=torch.cat([cond.negative_embeds, cond.embeds]),
                       added_cond_kwargs={"text_embeds": torch.cat([cond.negative_pooled, cond.pooled]),
                                          "time_ids": torch.cat([cond.time_ids, cond.time_ids])}).sample
        latents = scheduler.step(combine_guidance(eps, SCALE), t, latents).prev_sample
    assert torch.allclose(ours, latents, atol=1e-4), (ours - latents).abs().max()

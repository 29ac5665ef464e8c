"""The in-process reference pipeline and its pieces against diffusers' StableDiffusionXLPipeline."""

import pytest
import torch

from portrait.diffusion.guidance import guided_steps
from portrait.diffusion.loop import denoise_steps
from portrait.diffusion.reference import ReferencePipeline, build_conditioning
from portrait.diffusion.schedules import make_scheduler
from portrait.models.tiny import TE1_HIDDEN, TE2_HIDDEN, tiny_sdxl_components
from portrait.params import Stage1Params
from tests.helpers import max_diff, run_diffusers

PROMPT = "portrait of a woman, oil painting, warm light"


@pytest.fixture(scope="module")
def reference(sdxl_dir, photomaker_file):
    return ReferencePipeline(sdxl_dir, photomaker_file=photomaker_file)


def test_tiny_components_are_deterministic():
    a, b = tiny_sdxl_components(), tiny_sdxl_components()
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        for (ka, va), (kb, vb) in zip(a[name].state_dict().items(), b[name].state_dict().items()):
            assert ka == kb and torch.equal(va, vb), f"{name}.{ka}"


def test_conditioning_shapes(reference):
    params = Stage1Params(prompt=PROMPT, width=320, height=192, batch_size=3)
    cond, truncated = build_conditioning(reference.text, params, force_zeros=True)
    assert cond.embeds.shape == cond.negative_embeds.shape == (3, 77, TE1_HIDDEN + TE2_HIDDEN)
    assert cond.pooled.shape == cond.negative_pooled.shape == (3, TE2_HIDDEN)
    assert cond.time_ids.tolist() == [[192, 320, 0, 0, 192, 320]] * 3
    assert torch.count_nonzero(cond.negative_embeds) == 0 and truncated == 0  # empty negative -> zeros


def test_guided_step_batches_are_neg_then_pos(reference):
    params = Stage1Params(prompt=PROMPT, negative_prompt="blurry", width=64, height=64, steps=4, batch_size=2)
    cond, _ = build_conditioning(reference.text, params, force_zeros=True)
    steps = denoise_steps(make_scheduler(reference.info.scheduler_config, 4), torch.randn(2, 4, 8, 8), cond,
                          guided_steps(4, 5.0, 0.5), 5.0)
    call = next(steps)
    assert call.sample.shape[0] == 4
    assert torch.equal(call.encoder_hidden_states[:2], cond.negative_embeds)
    assert torch.equal(call.encoder_hidden_states[2:], cond.embeds)
    call = steps.send(torch.zeros(4, 4, 8, 8))
    call = steps.send(torch.zeros(4, 4, 8, 8))
    assert call.sample.shape[0] == 2 and torch.equal(call.encoder_hidden_states, cond.embeds)  # step 3: cutoff


def test_long_prompts_are_truncated_and_counted(reference):
    params = Stage1Params(prompt=" ".join(["portrait"] * 100))
    _, truncated = build_conditioning(reference.text, params, force_zeros=True)
    assert truncated == 102 - 77  # 100 words + BOS + EOS


@pytest.mark.parametrize("kw", [
    dict(),
    dict(negative_prompt="blurry, low quality"),
    dict(width=320, height=192),
    dict(guidance_cutoff=0.0),
    dict(guidance_cutoff=0.5, steps=8),
    dict(guidance_scale=1.0),
])
def test_reference_equals_diffusers_pixels(reference, diffusers_pipe, kw):
    params = Stage1Params(**{**dict(prompt=PROMPT, width=256, height=256, seed=7), **kw})
    assert max_diff(reference.generate(params).images, run_diffusers(diffusers_pipe, params)) <= 1


@pytest.mark.parametrize("cutoff", [0.0, 0.2, 0.6])
def test_reference_latents_equal_diffusers_with_cutoff(reference, diffusers_pipe, cutoff):
    """Latent-level check: the cutoff's effect on pixels is small, on latents it is not."""
    params = Stage1Params(prompt=PROMPT, negative_prompt="blurry", width=128, height=128, seed=3, guidance_cutoff=cutoff)
    cond, _ = build_conditioning(reference.text, params, force_zeros=True)
    from portrait.diffusion.loop import run_denoise
    from portrait.diffusion.noise import initial_noise
    from portrait.models.sdxl import predict_noise

    ours = run_denoise(
        denoise_steps(make_scheduler(reference.info.scheduler_config, params.steps), initial_noise(params.seeds, (4, 16, 16)),
                      cond, guided_steps(params.steps, params.guidance_scale, cutoff), params.guidance_scale),
        lambda call: predict_noise(reference.unet, call))
    theirs = run_diffusers(diffusers_pipe, params, output_type="latent")
    assert torch.allclose(ours, theirs, atol=1e-4), (ours - theirs).abs().max()
    if cutoff:  # the comparison can tell cutoffs apart
        no_cutoff = run_diffusers(diffusers_pipe, Stage1Params(**{**params.__dict__, "guidance_cutoff": 0.0}), "latent")
        assert (no_cutoff - theirs).abs().max() > 10 * 1e-4


def test_batch_images_use_consecutive_seeds(reference):
    pair = reference.generate(Stage1Params(prompt=PROMPT, width=128, height=128, seed=10, batch_size=2)).images
    second = reference.generate(Stage1Params(prompt=PROMPT, width=128, height=128, seed=11)).images
    assert max_diff(pair[1:], second) <= 1
    assert max_diff(pair[:1], pair[1:]) > 50  # different seeds, different images

import pytest
import torch

from portrait.diffusion.guidance import combine_guidance, guided_steps, unguided_step_count


def test_cutoff_switches_off_the_final_fraction():
    assert guided_steps(10, 5.0, 0.2) == [True] * 8 + [False] * 2
    assert guided_steps(10, 5.0, 0.0) == [True] * 10
    assert guided_steps(10, 5.0, 1.0) == [False] * 10
    assert guided_steps(4, 5.0, 0.2) == [True] * 3 + [False]  # round(0.8) = 1 step off
    assert unguided_step_count(25, 0.2) == 5


@pytest.mark.parametrize("scale", [0.0, 0.5, 1.0])
def test_scales_up_to_one_mean_no_cfg(scale):
    # diffusers: do_classifier_free_guidance = guidance_scale > 1 (conditional prediction only)
    assert guided_steps(10, scale, 0.0) == [False] * 10


def test_guidance_combines_neg_then_pos_halves():
    torch.manual_seed(0)
    uncond, cond = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    out = combine_guidance(torch.cat([uncond, cond]), 7.5)
    assert torch.allclose(out, uncond + 7.5 * (cond - uncond))
    assert torch.allclose(combine_guidance(torch.cat([uncond, cond]), 1.0), cond, atol=1e-6)

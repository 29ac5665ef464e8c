"""stage1 through the real Triton server against diffusers, and batching that changes nothing."""

from concurrent.futures import ThreadPoolExecutor

import pytest

from portrait.params import Stage1Params
from tests.helpers import TOLERANCE, max_diff, run_diffusers, scheduler_counts, wait_scheduler_idle

PROMPT = "portrait of a man, charcoal drawing, dramatic light"


def params(**kw) -> Stage1Params:
    return Stage1Params(**{**dict(prompt=PROMPT, width=256, height=256, steps=10, seed=1234), **kw})


@pytest.mark.parametrize("size", [(256, 256), (320, 192)], ids=["square", "landscape"])
@pytest.mark.parametrize("negative", ["", "blurry, low quality, deformed"], ids=["no-neg", "neg"])
@pytest.mark.parametrize("cutoff", [0.0, 0.2])
def test_stage1_equals_diffusers(grpc_client, diffusers_pipe, size, negative, cutoff):
    p = params(width=size[0], height=size[1], negative_prompt=negative, guidance_cutoff=cutoff)
    out = grpc_client.stage1(p)
    assert out.images.shape == (1, size[1], size[0], 3)
    assert out.seeds == [1234] and out.truncated_tokens == 0
    assert max_diff(out.images, run_diffusers(diffusers_pipe, p)) <= TOLERANCE


def test_the_comparison_can_fail(grpc_client, diffusers_pipe):
    """Each knob the equivalence covers moves pixels by more than the tolerance.

    On the tiny random set, guidance acts mostly in the early high-noise steps, so fractional
    cutoffs move pixels by about one level; their rule is checked on latents against diffusers
    (test_reference_pipeline, the same guided_steps code). Here cutoff 1.0 shows the knob reaches the server.
    """
    base = grpc_client.stage1(params(negative_prompt="blurry", steps=6)).images
    for changed in (params(negative_prompt="", steps=6), params(negative_prompt="blurry", steps=6, guidance_cutoff=1.0),
                    params(negative_prompt="blurry", steps=6, seed=1235), params(negative_prompt="blurry", steps=6, prompt="a cat")):
        assert max_diff(base, grpc_client.stage1(changed).images) > TOLERANCE, changed
    p = params(negative_prompt="blurry", steps=6, guidance_cutoff=1.0)
    assert max_diff(grpc_client.stage1(p).images, run_diffusers(diffusers_pipe, p)) <= TOLERANCE


def test_http_twin_gives_the_same_image(grpc_client, http_client):
    p = params(seed=99)
    assert max_diff(grpc_client.stage1(p).images, http_client.stage1(p).images) <= TOLERANCE


def test_batch_of_two_equals_single_requests(grpc_client):
    pair = grpc_client.stage1(params(seed=500, batch_size=2))
    assert pair.seeds == [500, 501] and pair.images.shape[0] == 2
    assert max_diff(pair.images[:1], grpc_client.stage1(params(seed=500)).images) <= TOLERANCE
    assert max_diff(pair.images[1:], grpc_client.stage1(params(seed=501)).images) <= TOLERANCE


def test_concurrent_requests_batch_in_the_unet_and_change_nothing(grpc_client, server):
    from portrait.diffusion.guidance import guided_steps

    target = params(seed=777, steps=12)
    alone = grpc_client.stage1(target).images
    others = [params(seed=900 + i, steps=12, negative_prompt="blurry" if i % 2 else "") for i in range(4)]
    wait_scheduler_idle(server)
    before = scheduler_counts(server)
    with ThreadPoolExecutor(max_workers=5) as pool:
        futures = [pool.submit(grpc_client.stage1, p) for p in [target, *others]]
        results = [f.result() for f in futures]
    after = scheduler_counts(server)
    delta = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    assert max_diff(results[0].images, alone) <= TOLERANCE
    expected_rows = sum(sum(2 if g else 1 for g in guided_steps(p.steps, p.guidance_scale, p.guidance_cutoff))
                        for p in [target, *others])
    assert delta["portrait_scheduler_steps_total"] == 5 * 12  # one loop step per step per stage1 request
    assert delta["portrait_scheduler_unet_rows_total"] == expected_rows
    forwards = delta["portrait_scheduler_forwards_total"]
    assert forwards < 5 * 12, f"{forwards} UNet forwards for {5 * 12} steps: nothing was batched"
    assert after["portrait_scheduler_backlog"] == 0
    assert delta["portrait_scheduler_forward_seconds_total"] > 0  # the profile's UNet share (scripts/benchmark)
    for p, r in zip(others, results[1:]):
        assert r.seeds == [p.seed]


def test_unet_model_is_not_served_by_default(server):
    """`denoise` holds the UNet; the separate `unet` model (a second copy) is only served with PORTRAIT_SERVE_UNET."""
    import urllib.error
    import urllib.request

    base = f"http://127.0.0.1:{server.http_port}/v2/models"
    with urllib.request.urlopen(f"{base}/denoise/ready", timeout=10) as r:
        assert r.status == 200
    with pytest.raises(urllib.error.HTTPError):
        urllib.request.urlopen(f"{base}/unet/ready", timeout=10)


def test_overlong_prompt_is_truncated_and_reported(grpc_client):
    out = grpc_client.stage1(params(prompt=" ".join(["portrait"] * 90)))
    assert out.truncated_tokens == 92 - 77

"""The per-request cost budget (PORTRAIT_MAX_REQUEST_COST, megapixel-steps), checked once where params are built."""

import pytest

from portrait.errors import InvalidInput
from portrait.params import STEPS_MAX, DenoiseParams, DetailParams, Stage1Params
from portrait.settings import get_settings


def refused(build) -> InvalidInput:
    with pytest.raises(InvalidInput) as caught:
        build()
    assert caught.value.field == "steps"
    assert "PORTRAIT_MAX_REQUEST_COST" in str(caught.value) and "budget of 160" in str(caught.value), str(caught.value)
    return caught.value


def test_default_budget_refuses_the_starving_requests():
    assert get_settings().max_request_cost == 160
    # issue 20: 2048x2048, batch 8 (about 4 min and +6 GiB on the tiny set here)
    error = refused(lambda: Stage1Params(prompt="x", width=2048, height=2048, batch_size=8, steps=10))
    assert "2048 x 2048 pixels x 8 (batch_size) x 10 steps = 320 megapixel-steps" in str(error)
    # stage 2: faces x work_size^2 x the steps that run (int(20 x 0.6) = 12)
    error = refused(lambda: DetailParams(prompt="x", work_size=2048, max_faces=8, steps=20))
    assert "8 (max_faces) x 12 steps = 384" in str(error)
    refused(lambda: DenoiseParams(height=2048, width=2048, steps=50, guidance_scale=5, guidance_cutoff=0,
                                  seeds=tuple(range(8))))


def test_default_budget_keeps_ordinary_requests():
    Stage1Params(prompt="x", steps=STEPS_MAX)  # one native 1024x1024 image at the most steps: 150
    Stage1Params(prompt="x", batch_size=4, steps=40)  # 160, the edge
    Stage1Params(prompt="x", width=2048, height=2048, batch_size=2, steps=20)
    DetailParams(prompt="x", max_faces=8, steps=30)  # 8 x 1 MPix x 18 steps
    DenoiseParams(height=1024, width=1024, steps=150, guidance_scale=5, guidance_cutoff=0, seeds=(1,))


def test_budget_is_a_setting(monkeypatch):
    monkeypatch.setenv("PORTRAIT_MAX_REQUEST_COST", "1")
    get_settings.cache_clear()
    try:
        Stage1Params(prompt="x", width=1024, height=1024, steps=1)  # exactly 1 megapixel-step
        with pytest.raises(InvalidInput, match="over the per-request budget of 1 "):
            Stage1Params(prompt="x", width=1024, height=1024, steps=2)
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()

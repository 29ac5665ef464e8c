import numpy as np
import pytest

from portrait.diffusion.schedules import AYS_SDXL_TIMESTEPS, ays_timesteps, make_scheduler
from portrait.models.tiny import SDXL_SCHEDULER_CONFIG


@pytest.mark.parametrize("n", [2, 3, 5, 7, 10, 20, 37, 50, 100, 150])
def test_schedule_strictly_decreasing_with_fixed_endpoints(n):
    t = np.array(ays_timesteps(n))
    assert len(t) == n
    assert np.all(np.diff(t) < 0)
    assert t[0] == 999 and t[-1] == 13


def test_ten_steps_are_the_anchors():
    assert ays_timesteps(10) == [float(a) for a in AYS_SDXL_TIMESTEPS]


def test_resampling_is_loglinear():
    # halfway between two adjacent anchors in index space is their geometric mean
    t = ays_timesteps(19)  # anchors at even indices, midpoints at odd ones
    assert t[::2] == pytest.approx(list(AYS_SDXL_TIMESTEPS), abs=1e-3)
    for i in range(9):
        assert t[2 * i + 1] == pytest.approx(np.sqrt(AYS_SDXL_TIMESTEPS[i] * AYS_SDXL_TIMESTEPS[i + 1]), rel=1e-5)


def test_one_step_starts_from_pure_noise():
    assert ays_timesteps(1) == [999.0]
    with pytest.raises(ValueError):
        ays_timesteps(0)


def test_scheduler_uses_the_custom_timesteps():
    scheduler = make_scheduler(SDXL_SCHEDULER_CONFIG, 10)
    assert scheduler.timesteps.tolist() == [float(a) for a in AYS_SDXL_TIMESTEPS]
    assert len(scheduler.sigmas) == 11 and scheduler.sigmas[-1] == 0
    assert np.all(np.diff(scheduler.sigmas.numpy()) < 0)

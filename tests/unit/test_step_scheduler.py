"""The step scheduler with a fake UNet: batching changes nothing, fairness, admission, cancellation, failures."""

from __future__ import annotations

import threading

import pytest
import torch

from portrait.diffusion.guidance import guided_steps
from portrait.diffusion.loop import Conditioning, denoise_steps, run_denoise
from portrait.diffusion.noise import initial_noise
from portrait.diffusion.schedules import make_scheduler
from portrait.errors import Cancelled
from portrait.models.tiny import SDXL_SCHEDULER_CONFIG
from portrait.serving.step_scheduler import Job, ShuttingDown, StepScheduler, bucket_key, read_scheduler_metrics


class FakeUNet:
    """A per-row function of every input (so batching must not change a row) that records each forward."""

    def __init__(self, fail_if=None):
        self.forwards: list[tuple] = []  # (rows, latent shape, tags of the requests in it)
        self.fail_if = fail_if

    def __call__(self, call):
        if self.fail_if is not None and self.fail_if(call):
            raise RuntimeError("the UNet broke on these rows")
        self.forwards.append((call.sample.shape[0], tuple(call.sample.shape[1:]),
                              sorted({int(v) for v in call.time_ids[:, 0].tolist()})))
        t = call.timestep.reshape(-1, 1, 1, 1) / 1000
        e = call.encoder_hidden_states.mean(dim=(1, 2)).reshape(-1, 1, 1, 1)
        p = call.text_embeds.mean(dim=1).reshape(-1, 1, 1, 1)
        return 0.3 * call.sample + t + e - p


def loop(tag: int, steps: int = 4, size: int = 8, width: int = 16, seed: int = 0, scale: float = 5.0,
         cutoff: float = 0.0, batch: int = 1):
    """A denoise_steps generator; `tag` rides in time_ids so forwards can be traced back to requests."""
    g = torch.Generator().manual_seed(seed)
    embeds = lambda: torch.randn(batch, 77, width, generator=g)  # noqa: E731
    pooled = lambda: torch.randn(batch, 12, generator=g)  # noqa: E731
    time_ids = torch.full((batch, 6), float(tag))
    cond = Conditioning(embeds(), pooled(), embeds(), pooled(), time_ids)
    noise = initial_noise([seed + i for i in range(batch)], (4, size, size))
    return denoise_steps(make_scheduler(SDXL_SCHEDULER_CONFIG, steps), noise, cond,
                         guided_steps(steps, scale, cutoff), scale)


class Recorder:
    def __init__(self, tag):
        self.tag, self.progress, self.latents, self.error = tag, [], None, None
        self.ended = threading.Event()

    def job(self, steps, cancelled=lambda: False) -> Job:
        return Job(steps, lambda s, n: self.progress.append((s, n)), self.done, self.fail, cancelled)

    def done(self, latents):
        self.latents = latents
        self.ended.set()

    def fail(self, error):
        self.error = error
        self.ended.set()


def drain(scheduler: StepScheduler, limit: int = 1000) -> int:
    ticks = 0
    while scheduler.stats.backlog or scheduler._waiting or scheduler._active:
        scheduler.tick()
        ticks += 1
        assert ticks < limit
    return ticks


def alone(**kw) -> torch.Tensor:
    return run_denoise(loop(**kw), FakeUNet())


def test_rows_batched_across_requests_give_the_same_latents_as_alone():
    unet = FakeUNet()
    s = StepScheduler(unet, max_rows=16)
    specs = [dict(tag=1, seed=1), dict(tag=2, seed=2, cutoff=0.5), dict(tag=3, seed=3, scale=1.0),
             dict(tag=4, seed=4, batch=2, steps=6)]
    recs = [Recorder(k["tag"]) for k in specs]
    for r, k in zip(recs, specs):
        s.submit(r.job(loop(**k)))
    drain(s)
    for r, k in zip(recs, specs):
        assert r.error is None
        assert torch.allclose(r.latents, alone(**k), atol=1e-6, rtol=1e-5)
        assert [p[0] for p in r.progress] == list(range(1, k.get("steps", 4) + 1))
    # all four shared the first forward: 2 + 2 + 1 + 4 rows
    assert unet.forwards[0][0] == 9 and unet.forwards[0][2] == [1, 2, 3, 4]
    assert s.stats.forwards_total == len(unet.forwards) and s.stats.rows_total == sum(f[0] for f in unet.forwards)
    assert s.stats.forward_seconds > 0
    assert s.stats.steps_total == 4 + 4 + 4 + 6


def test_row_cap_is_respected_and_requests_take_turns():
    unet = FakeUNet()
    s = StepScheduler(unet, max_rows=4)
    recs = [Recorder(t) for t in (1, 2, 3)]
    for r in recs:
        s.submit(r.job(loop(tag=r.tag, steps=6, seed=r.tag)))  # 2 rows a step (CFG): two requests per forward
    drain(s)
    assert all(f[0] <= 4 for f in unet.forwards)
    served = {1: 0, 2: 0, 3: 0}
    for _rows, _, tags in unet.forwards:
        for t in tags:
            served[t] += 1
        assert max(served.values()) - min(served.values()) <= 1, (served, unet.forwards)  # round robin
    assert all(torch.allclose(r.latents, alone(tag=r.tag, steps=6, seed=r.tag), atol=1e-6, rtol=1e-5) for r in recs)


def test_a_request_larger_than_the_cap_runs_alone_in_chunks():
    unet = FakeUNet()
    s = StepScheduler(unet, max_rows=3)
    r = Recorder(1)
    s.submit(r.job(loop(tag=1, batch=4)))  # 8 rows per guided step
    drain(s)
    assert [f[0] for f in unet.forwards[:3]] == [3, 3, 2]
    assert s.stats.forwards_total == len(unet.forwards)
    assert torch.allclose(r.latents, alone(tag=1, batch=4), atol=1e-6, rtol=1e-5)


def test_different_latent_sizes_never_share_a_forward():
    unet = FakeUNet()
    s = StepScheduler(unet, max_rows=16)
    small, large, wide = Recorder(1), Recorder(2), Recorder(3)
    s.submit(small.job(loop(tag=1, size=8)))
    s.submit(large.job(loop(tag=2, size=16)))
    s.submit(wide.job(loop(tag=3, size=8, width=32)))  # another embedding width: another bucket
    s.submit(Recorder(4).job(loop(tag=4, size=8, seed=9)))
    drain(s)
    for _rows, shape, tags in unet.forwards:
        assert (2 in tags) == (shape == (4, 16, 16)) and (2 not in tags or tags == [2])
        assert 3 not in tags or tags == [3]
    assert any(tags == [1, 4] for _, _, tags in unet.forwards)  # same bucket did batch
    assert torch.allclose(large.latents, alone(tag=2, size=16), atol=1e-6, rtol=1e-5)
    assert torch.allclose(wide.latents, alone(tag=3, size=8, width=32), atol=1e-6, rtol=1e-5)


def test_buckets_are_served_in_turn():
    unet = FakeUNet()
    s = StepScheduler(unet, max_rows=16)
    for tag, size in ((1, 8), (2, 16)):
        s.submit(Recorder(tag).job(loop(tag=tag, size=size, steps=5)))
    drain(s)
    assert [tags for _, _, tags in unet.forwards] == [[1], [2]] * 5


def test_admission_happens_at_the_next_step_boundary():
    unet = FakeUNet()
    s = StepScheduler(unet, max_rows=16)
    first, second = Recorder(1), Recorder(2)
    s.submit(first.job(loop(tag=1, steps=5)))
    s.tick()
    s.tick()
    s.submit(second.job(loop(tag=2, steps=5, seed=3)))
    assert s.stats.waiting == 1 and s.stats.backlog == 2
    s.tick()
    assert unet.forwards[2][2] == [1, 2] and second.progress == [(1, 5)] and first.progress[-1] == (3, 5)
    drain(s)
    assert torch.allclose(second.latents, alone(tag=2, steps=5, seed=3), atol=1e-6, rtol=1e-5)


def test_max_active_keeps_the_rest_waiting_in_order():
    s = StepScheduler(FakeUNet(), max_rows=16, max_active=2)
    recs = [Recorder(t) for t in (1, 2, 3)]
    for r in recs:
        s.submit(r.job(loop(tag=r.tag, steps=3)))
    s.tick()
    assert (s.stats.active, s.stats.waiting, s.stats.backlog) == (2, 1, 3)
    assert recs[2].progress == []
    drain(s)
    assert all(r.latents is not None for r in recs) and s.stats.backlog == 0


def test_cancellation_stops_a_request_within_one_tick():
    unet = FakeUNet()
    s = StepScheduler(unet, max_rows=16)
    flag = threading.Event()
    victim, other = Recorder(1), Recorder(2)
    s.submit(victim.job(loop(tag=1, steps=8), cancelled=flag.is_set))
    s.submit(other.job(loop(tag=2, steps=8)))
    s.tick()
    s.tick()
    flag.set()
    s.tick()
    assert isinstance(victim.error, Cancelled) and "at step 2 of 8" in str(victim.error)
    assert all(1 not in tags for _, _, tags in unet.forwards[2:])
    drain(s)
    assert other.latents is not None and len(victim.progress) == 2


def test_a_failing_loop_fails_alone():
    def broken(tag):
        steps = loop(tag=tag)
        call = yield next(steps)
        yield steps.send(call)
        raise ValueError("this request's loop broke")

    s = StepScheduler(FakeUNet(), max_rows=16)
    bad, good = Recorder(1), Recorder(2)
    s.submit(bad.job(broken(1)))
    s.submit(good.job(loop(tag=2, seed=5)))
    drain(s)
    assert isinstance(bad.error, ValueError) and good.error is None
    assert torch.allclose(good.latents, alone(tag=2, seed=5), atol=1e-6, rtol=1e-5)


def test_a_failing_set_up_fails_alone():
    def bad_setup():
        raise ValueError("bad guide")
        yield  # pragma: no cover

    s = StepScheduler(FakeUNet(), max_rows=16)
    bad, good = Recorder(1), Recorder(2)
    s.submit(bad.job(bad_setup()))
    s.submit(good.job(loop(tag=2)))
    drain(s)
    assert str(bad.error) == "bad guide" and good.latents is not None


def test_a_forward_that_breaks_on_one_request_fails_only_that_request():
    unet = FakeUNet(fail_if=lambda call: bool((call.time_ids[:, 0] == 1).any()))
    s = StepScheduler(unet, max_rows=16)
    bad, good = Recorder(1), Recorder(2)
    s.submit(bad.job(loop(tag=1)))
    s.submit(good.job(loop(tag=2, seed=4)))
    drain(s)
    assert "UNet broke" in str(bad.error) and good.error is None
    assert torch.allclose(good.latents, alone(tag=2, seed=4), atol=1e-6, rtol=1e-5)


def test_a_broken_progress_callback_ends_only_its_request():
    s = StepScheduler(FakeUNet(), max_rows=16)
    gone, good = Recorder(1), Recorder(2)
    job = gone.job(loop(tag=1))
    job.on_progress = lambda *a: (_ for _ in ()).throw(ConnectionError("stream closed"))
    s.submit(job)
    s.submit(good.job(loop(tag=2)))
    drain(s)
    assert isinstance(gone.error, ConnectionError) and good.latents is not None


def test_the_thread_sleeps_when_idle_serves_submissions_and_stops():
    unet = FakeUNet()
    seen = []
    s = StepScheduler(unet, max_rows=16, observer=lambda st: seen.append(st.backlog)).start()
    try:
        recs = [Recorder(t) for t in (1, 2, 3)]
        for r in recs:
            s.submit(r.job(loop(tag=r.tag, steps=5, seed=r.tag)))
        assert all(r.ended.wait(30) for r in recs)
        forwards = len(unet.forwards)
        threading.Event().wait(0.2)
        assert len(unet.forwards) == forwards  # idle: no ticks without work
        assert s._thread.is_alive() and seen[-1] == 0
        for r in recs:
            assert torch.allclose(r.latents, alone(tag=r.tag, steps=5, seed=r.tag), atol=1e-6, rtol=1e-5)
        late = Recorder(4)
        s.submit(late.job(loop(tag=4)))
        assert late.ended.wait(30) and late.latents is not None
    finally:
        s.stop()
    assert not s._thread.is_alive()
    after = Recorder(5)
    s.submit(after.job(loop(tag=5)))
    assert isinstance(after.error, ShuttingDown)


def test_stop_fails_the_requests_in_flight():
    gate = threading.Event()

    def slow(call):
        gate.wait(10)
        return FakeUNet()(call)

    s = StepScheduler(slow, max_rows=16).start()
    r = Recorder(1)
    s.submit(r.job(loop(tag=1, steps=50)))
    stopper = threading.Thread(target=s.stop)
    stopper.start()
    gate.set()
    stopper.join(30)
    assert r.ended.wait(30) and isinstance(r.error, ShuttingDown)


def test_bucket_key_ignores_rows_only():
    a, b = next(loop(tag=1, batch=1)), next(loop(tag=1, batch=3))
    assert bucket_key(a) == bucket_key(b) and bucket_key(a) != bucket_key(next(loop(tag=1, size=16)))


def test_bad_limits_are_refused():
    with pytest.raises(ValueError):
        StepScheduler(FakeUNet(), max_rows=0)


def test_read_scheduler_metrics_sums_label_sets():
    text = ("# HELP portrait_scheduler_forwards_total x\n# TYPE portrait_scheduler_forwards_total counter\n"
            'portrait_scheduler_forwards_total{model="denoise"} 12\nportrait_scheduler_forwards_total{model="x"} 3\n'
            'portrait_scheduler_backlog{model="denoise"} 2\nnv_inference_count{model="unet"} 9\n')
    assert read_scheduler_metrics(text) == {"portrait_scheduler_forwards_total": 15.0, "portrait_scheduler_backlog": 2.0}


# --- admission policies, deadlines, the loader (issue 21, issue 20) -----------------------------------------------

def admitted_together(policy: str) -> list[list[int]]:
    """Three requests waiting, a fourth arriving after the first tick: which requests share each forward."""
    unet = FakeUNet()
    scheduler = StepScheduler(unet, max_rows=64, policy=policy)
    recorders = [Recorder(t) for t in range(4)]
    for r in recorders[:3]:
        scheduler.submit(r.job(loop(r.tag, steps=3)))
    scheduler.tick()
    scheduler.submit(recorders[3].job(loop(3, steps=3)))
    drain(scheduler)
    for r in recorders:
        assert r.error is None and r.latents is not None
        torch.testing.assert_close(r.latents, alone(tag=r.tag, steps=3), rtol=0, atol=0)
    return [tags for _, _, tags in unet.forwards]


def test_continuous_admits_at_the_next_step_boundary():
    assert admitted_together("continuous") == [[0, 1, 2], [0, 1, 2, 3], [0, 1, 2, 3], [3]]


def test_batch_starts_late_arrivals_together_after_the_running_batch():
    assert admitted_together("batch") == [[0, 1, 2], [0, 1, 2], [0, 1, 2], [3], [3], [3]]


def test_sequential_runs_one_request_at_a_time():
    assert admitted_together("sequential") == [[0]] * 3 + [[1]] * 3 + [[2]] * 3 + [[3]] * 3


def test_unknown_policy_is_refused():
    with pytest.raises(ValueError, match="policy must be one of continuous, batch, sequential"):
        StepScheduler(FakeUNet(), policy="fifo")


def test_a_request_past_its_deadline_fails_alone_with_unavailable():
    import time

    from portrait.errors import Unavailable

    scheduler = StepScheduler(FakeUNet(), max_rows=64)
    late, on_time = Recorder(0), Recorder(1)
    job = late.job(loop(0, steps=4))
    job.deadline = time.monotonic() + 0.05
    scheduler.submit(job)
    scheduler.submit(on_time.job(loop(1, steps=4)))
    scheduler.tick()
    time.sleep(0.1)
    drain(scheduler)
    assert isinstance(late.error, Unavailable) and "deadline" in str(late.error)
    assert late.progress == [(1, 4)]
    torch.testing.assert_close(on_time.latents, alone(tag=1, steps=4), rtol=0, atol=0)


def test_jobs_built_on_the_scheduler_thread_and_the_loader_runs_there():
    threads = {}

    def loader():
        threads["loader"] = threading.current_thread()
        return FakeUNet()

    def build():
        threads["build"] = threading.current_thread()
        return loop(5, steps=2)

    scheduler = StepScheduler(None, loader=loader).start()
    try:
        recorder = Recorder(5)
        scheduler.submit(recorder.job(build))
        assert recorder.ended.wait(30) and recorder.error is None
    finally:
        scheduler.stop()
    assert threads["loader"] is threads["build"] is scheduler._thread
    torch.testing.assert_close(recorder.latents, alone(tag=5, steps=2), rtol=0, atol=0)


def test_a_failing_loader_fails_start():
    def loader():
        raise OSError("no weights here")

    with pytest.raises(OSError, match="no weights here"):
        StepScheduler(None, loader=loader).start()

"""Continuous batching of denoising steps: one UNet forward per tick over the rows of every active request.

Each request is its own `portrait.diffusion.loop.denoise_steps` generator (schedule, guidance and cutoff,
differential-diffusion guide, identity merge step). The scheduler only decides, at step boundaries,
which requests join, which leave, and which rows share the next forward: rows of requests whose UNet
inputs agree in every dimension but the row count (latent channels and size, embedding widths) are
concatenated, up to a row cap, round robin across requests. Between forwards it admits waiting
requests, retires finished ones and stops cancelled ones. Idle, its thread waits on a condition.

All torch work of the process runs on the scheduler's thread: loading and warming up the UNet (`loader`), each
request's set-up (a Job's `steps` may be a function that builds the loop: noise, guides, conditioning tensors), the
forwards and the final latents. Every thread that enters torch's intra-op parallelism gets an OpenMP team of its own,
and two teams in one process fight for the cores (a forward on a worker thread took 2.4x longer once the main thread
had run torch ops, issue 21); the Triton stub's thread only hands over numpy arrays and callbacks.

Admission policies (the same scheduler, a different rule for who joins at a step boundary):
- `continuous`: any waiting request joins at the next step boundary (up to `max_active`);
- `batch`: request-level batching: the requests that arrived while a batch ran start together when it has finished
  (what NVIDIA's Triton Stable Diffusion example and dynamic batchers do);
- `sequential`: one request at a time (a script behind a server).

Pure Python + torch (no Triton): the `denoise` model adapts it, the tests drive it with a fake UNet.
"""

from __future__ import annotations

import inspect
import itertools
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Generator
from dataclasses import dataclass, field

import torch

from portrait.diffusion.loop import UNetCall
from portrait.errors import Cancelled, Unavailable

Predict = Callable[[UNetCall], torch.Tensor]  # rows in, noise [R, C, h, w] out
BucketKey = tuple
POLICIES = ("continuous", "batch", "sequential")


class ShuttingDown(Exception):
    """The scheduler stopped before the request finished."""


@dataclass(eq=False)
class Job:
    """One request's loop and where its results go (callbacks run on the scheduler's thread).

    `steps`: the loop, or a function that builds it, called on the scheduler's thread when the job is admitted (so
    the request's tensors are made there; a failure fails this job alone). `deadline`: a time.monotonic() after which
    the job fails with UNAVAILABLE (waiting or denoising)."""

    steps: Generator[UNetCall, torch.Tensor, torch.Tensor] | Callable[[], Generator[UNetCall, torch.Tensor, torch.Tensor]]
    on_progress: Callable[[int, int], None]  # (steps done, steps in the run)
    on_done: Callable[[torch.Tensor], None]  # final latents
    on_error: Callable[[BaseException], None]
    cancelled: Callable[[], bool] = lambda: False
    deadline: float | None = None
    call: UNetCall | None = field(default=None, repr=False)  # the pending UNet call once admitted
    seq: int = 0  # admission order, for FIFO tie-breaks

    @property
    def rows(self) -> int:
        return self.call.sample.shape[0]


def bucket_key(call: UNetCall) -> BucketKey:
    """Calls that may share one forward: equal in every dimension but the rows."""
    return (tuple(call.sample.shape[1:]), tuple(call.encoder_hidden_states.shape[1:]),
            tuple(call.text_embeds.shape[1:]), tuple(call.time_ids.shape[1:]))


CONDITIONING = ("encoder_hidden_states", "text_embeds", "time_ids")


class MergeCache:
    """The last merged conditioning: a loop hands the same tensor objects step after step, so while a batch keeps
    its members the 77 x 2048 hidden states are not copied again (a few MB per tick at SDXL sizes)."""

    def __init__(self):
        self.parts: list | None = None
        self.merged: tuple | None = None

    def get(self, calls: list[UNetCall]) -> tuple[torch.Tensor, ...]:
        parts = [getattr(c, n) for c in calls for n in CONDITIONING]
        if self.parts is None or len(parts) != len(self.parts) or any(a is not b for a, b in zip(parts, self.parts)):
            self.parts = parts
            self.merged = tuple(torch.cat([getattr(c, n) for c in calls]) for n in CONDITIONING)
        return self.merged


def merge_calls(calls: list[UNetCall], cache: MergeCache | None = None) -> UNetCall:
    """One UNetCall holding the rows of `calls` in order (each row keeps its own timestep)."""
    if len(calls) == 1:
        return calls[0]
    cond = cache.get(calls) if cache is not None else \
        tuple(torch.cat([getattr(c, n) for c in calls]) for n in CONDITIONING)
    return UNetCall(torch.cat([c.sample for c in calls]), torch.cat([c.timestep for c in calls]), *cond,
                    step=-1, num_steps=-1)


def slice_call(call: UNetCall, start: int, stop: int) -> UNetCall:
    return UNetCall(call.sample[start:stop], call.timestep[start:stop], call.encoder_hidden_states[start:stop],
                    call.text_embeds[start:stop], call.time_ids[start:stop], call.step, call.num_steps)


@dataclass
class SchedulerStats:
    """What the metrics export: gauges (active, waiting) and counters since start."""

    active: int = 0
    waiting: int = 0
    steps_total: int = 0  # loop steps advanced, summed over requests
    forwards_total: int = 0  # UNet forwards run
    rows_total: int = 0  # UNet rows evaluated
    forward_seconds: float = 0.0  # wall time of the UNet forwards (the profile's "UNet" share)

    @property
    def backlog(self) -> int:
        return self.active + self.waiting


class StepScheduler:
    """Admit at step boundaries; per tick one forward per chosen bucket; retire, cancel, fail alone.

    `predict`: the UNet, or None with `loader`: a function returning it, run first on the scheduler's thread (`start`
    waits for it and raises its error).
    `max_rows`: rows per forward (a request with more rows than that runs alone, in chunks of `max_rows`).
    `max_active`: requests in flight; the rest wait (FIFO) and count in the backlog.
    `policy`: who joins at a step boundary (POLICIES, above).
    `observer(stats)` is called after every change of the counters (on the thread that made it).
    """

    def __init__(self, predict: Predict | None = None, max_rows: int = 16, max_active: int = 32,
                 observer: Callable[[SchedulerStats], None] | None = None, policy: str = "continuous",
                 loader: Callable[[], Predict] | None = None):
        if max_rows < 1 or max_active < 1:
            raise ValueError("max_rows and max_active must be at least 1")
        if policy not in POLICIES:
            raise ValueError(f"policy must be one of {', '.join(POLICIES)}, got {policy!r}")
        if (predict is None) == (loader is None):
            raise ValueError("give the scheduler a predict function or a loader, not both")
        self.predict, self.max_rows, self.max_active, self.observer = predict, max_rows, max_active, observer
        self.policy, self.loader = policy, loader
        self._loaded = threading.Event()
        self._load_error: BaseException | None = None
        self.stats = SchedulerStats()
        self._waiting: deque[Job] = deque()
        self._active: deque[Job] = deque()  # round-robin order: served jobs move to the back
        self._lock = threading.Condition()
        self._seq = itertools.count()
        self._stopping: BaseException | None = None
        self._thread: threading.Thread | None = None
        self._merge_cache = MergeCache()

    # --- the request side (any thread) ---------------------------------------------------------

    def submit(self, job: Job) -> None:
        """Queue a job; it joins at the next step boundary."""
        with self._lock:
            if self._stopping is not None:
                stopped = self._stopping
            else:
                stopped = None
                job.seq = next(self._seq)
                self._waiting.append(job)
                self.stats.waiting = len(self._waiting)
                self._lock.notify()
        if stopped is not None:
            job.on_error(stopped)
            return
        self._observe()

    # --- the scheduler thread ------------------------------------------------------------------

    def start(self, name: str = "step-scheduler") -> StepScheduler:
        """Start the thread; with a loader, wait until it has loaded (its error is raised here)."""
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()
        self._loaded.wait()
        if self._load_error is not None:
            raise self._load_error
        return self

    def stop(self, error: BaseException | None = None, timeout: float = 30.0) -> None:
        """Stop after the current tick; every job not finished gets `error` (ShuttingDown by default)."""
        with self._lock:
            self._stopping = error or ShuttingDown("the denoise scheduler is shutting down")
            self._lock.notify()
        if self._thread is not None:
            self._thread.join(timeout)
        else:
            self._fail_all()

    def _run(self) -> None:
        try:
            if self.loader is not None:
                self.predict = self.loader()
        except BaseException as error:  # noqa: BLE001 - handed to start()'s caller
            self._load_error = error
            with self._lock:
                self._stopping = error
        finally:
            self._loaded.set()
        while self._load_error is None:
            with self._lock:
                while not self._waiting and not self._active and self._stopping is None:
                    self._lock.wait()  # idle: asleep until a submit or stop
                if self._stopping is not None:
                    break
            self.tick()
        self._fail_all()

    def _fail_all(self) -> None:
        with self._lock:
            jobs = [*self._active, *self._waiting]
            self._active.clear()
            self._waiting.clear()
            error = self._stopping
        for job in jobs:
            self._finish(job, error=error)
        self._update_gauges()

    def tick(self) -> int:
        """One step boundary: admit, cancel, one forward (one bucket), advance. Returns rows evaluated."""
        self._admit()
        self._cancel()
        batch = self._choose()
        if not batch:
            self._update_gauges()
            return 0
        rows = self._forward(batch)
        self._update_gauges()
        return rows

    def _admission_limit(self) -> int:
        """How many waiting requests may join now (under the lock)."""
        if self.policy == "continuous":
            return self.max_active - len(self._active)
        if self._active:  # batch, sequential: nobody joins a running batch
            return 0
        return self.max_active if self.policy == "batch" else 1

    def _admit(self) -> None:
        now = time.monotonic()
        with self._lock:
            expired = [j for j in self._waiting if j.deadline is not None and now > j.deadline]
            for job in expired:
                self._waiting.remove(job)
            joining = []
            limit = self._admission_limit()
            while self._waiting and len(joining) < limit:
                joining.append(self._waiting.popleft())
        for job in expired:
            self._finish(job, error=Unavailable("service unavailable (the request waited past its deadline, "
                                                "PORTRAIT_REQUEST_DEADLINE); retry later"))
        for job in joining:  # the loop's set-up (tensors, schedule, guide) runs here: a bad one fails alone
            try:
                if not inspect.isgenerator(job.steps):
                    job.steps = job.steps()
                job.call = next(job.steps)
            except StopIteration as done:  # a loop without steps
                self._finish(job, latents=done.value)
                continue
            except Exception as error:
                self._finish(job, error=error)
                continue
            with self._lock:
                self._active.append(job)

    def _cancel(self) -> None:
        now = time.monotonic()
        with self._lock:
            jobs = list(self._active)
        for job in jobs:
            if job.deadline is not None and now > job.deadline:
                self._remove(job)
                self._finish(job, error=Unavailable(
                    f"service unavailable (the request ran past its deadline at step {job.call.step} of "
                    f"{job.call.num_steps}, PORTRAIT_REQUEST_DEADLINE); retry with fewer steps or pixels"))
                continue
            try:
                stop = job.cancelled()
            except Exception as error:  # a broken cancel check ends its own request only
                self._remove(job)
                self._finish(job, error=error)
                continue
            if stop:
                self._remove(job)
                self._finish(job, error=Cancelled(
                    f"cancelled by the client at step {job.call.step} of {job.call.num_steps}"))

    def _choose(self) -> list[Job]:
        """The bucket of the longest-unserved job, filled in round-robin order up to the row cap."""
        with self._lock:
            if not self._active:
                return []
            first = self._active[0]
            key = bucket_key(first.call)
            batch, rows = [first], first.rows
            for job in itertools.islice(self._active, 1, None):
                if rows >= self.max_rows:
                    break
                if rows + job.rows <= self.max_rows and bucket_key(job.call) == key:
                    batch.append(job)
                    rows += job.rows
            for job in batch:  # served: to the back of the rotation
                self._active.remove(job)
                self._active.append(job)
            return batch

    def _forward(self, batch: list[Job]) -> int:
        merged = merge_calls([job.call for job in batch], self._merge_cache)
        start = time.perf_counter()
        try:
            noise = self._predict_chunked(merged)
            self.stats.forward_seconds += time.perf_counter() - start
        except Exception as error:
            if len(batch) == 1:
                self._remove(batch[0])
                self._finish(batch[0], error=error)
                return 0
            # a shared forward failed: run each request alone so only the one that breaks it fails
            return sum(self._forward([job]) for job in batch)
        rows = merged.sample.shape[0]
        self.stats.forwards_total += -(-rows // self.max_rows)
        self.stats.rows_total += rows
        start = 0
        for job in batch:
            part, start = noise[start:start + job.rows], start + job.rows
            self._advance(job, part)
        return rows

    def _predict_chunked(self, call: UNetCall) -> torch.Tensor:
        rows = call.sample.shape[0]
        if rows <= self.max_rows:
            out = self.predict(call)
        else:  # one request larger than the cap: consecutive forwards of at most max_rows
            out = torch.cat([self.predict(slice_call(call, s, min(s + self.max_rows, rows)))
                             for s in range(0, rows, self.max_rows)])
        if tuple(out.shape) != tuple(call.sample.shape):
            raise RuntimeError(f"the UNet returned shape {list(out.shape)} for rows {list(call.sample.shape)}")
        return out

    def _advance(self, job: Job, noise: torch.Tensor) -> None:
        done_step, num_steps = job.call.step + 1, job.call.num_steps
        self.stats.steps_total += 1
        try:
            job.call = job.steps.send(noise)
        except StopIteration as done:
            self._remove(job)
            self._progress(job, done_step, num_steps)
            self._finish(job, latents=done.value)
            return
        except Exception as error:
            self._remove(job)
            self._finish(job, error=error)
            return
        self._progress(job, done_step, num_steps)

    def _progress(self, job: Job, step: int, num_steps: int) -> None:
        try:
            job.on_progress(step, num_steps)
        except Exception as error:  # the client's stream is gone: stop computing for it
            if job in self._active:
                self._remove(job)
                self._finish(job, error=error)

    def _remove(self, job: Job) -> None:
        with self._lock:
            if job in self._active:
                self._active.remove(job)

    def _finish(self, job: Job, latents: torch.Tensor | None = None, error: BaseException | None = None) -> None:
        if inspect.isgenerator(job.steps):
            job.steps.close()
        job.call = None
        try:
            if error is None:
                job.on_done(latents)
            else:
                job.on_error(error)
        except Exception as callback_error:  # a broken callback must not stop the other requests
            if error is None:
                try:
                    job.on_error(callback_error)
                except Exception:
                    pass

    def _update_gauges(self) -> None:
        with self._lock:
            self.stats.active, self.stats.waiting = len(self._active), len(self._waiting)
        self._observe()

    def _observe(self) -> None:
        if self.observer is not None:
            try:
                self.observer(self.stats)
            except Exception:
                pass  # metrics never take a request down


METRIC_LINE = re.compile(r"^(portrait_scheduler_\w+)(?:\{[^}]*\})?\s+([0-9.eE+-]+|NaN)$")


def read_scheduler_metrics(prometheus_text: str) -> dict[str, float]:
    """The portrait_scheduler_* samples of a /metrics page, summed over label sets."""
    found: dict[str, float] = {}
    for line in prometheus_text.splitlines():
        m = METRIC_LINE.match(line.strip())
        if m:
            found[m.group(1)] = found.get(m.group(1), 0.0) + float(m.group(2))
    return found

"""The project's Prometheus metrics: written by the model processes, exported beside Triton's on the metrics port.

Why not Triton's custom-metrics API (`pb_utils.MetricFamily`): every `increment`/`set`/`observe` there is an IPC round
trip from the stub to tritonserver, and under concurrent requests that path crashes tritonserver (SIGSEGV, `std::
bad_alloc` or `boost::interprocess::lock_exception` in `ModelInstanceState::ProcessMetricRequest` ->
`Metric::~Metric`, issue 20; docs/reliability.md has the backtrace and the measurements). So the models never call
it: each process records into prometheus_client's multiprocess files (`PROMETHEUS_MULTIPROC_DIR`, set for the stubs
by `portrait serve`; an update is a write to an mmap'd file, no IPC, no lock shared with Triton), and the metrics
endpoint of `portrait serve` (portrait/serving/server.py `MetricsEndpoint`) serves Triton's own metrics followed by
these, merged over processes, on the one metrics port. Counters survive a Triton restart (their files stay); the
gauges of dead processes are dropped (`mark_process_dead`).

Triton counts a Python model's error response as a success (nv_inference_request_success), so outcomes are counted
here, at the one place errors are mapped (portrait.serving.triton_io). Metrics never fail a request.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

log = logging.getLogger("portrait.metrics")

OUTCOMES = ("success", "invalid_arg", "cancelled", "unavailable", "internal")
# seconds: a text encoding on a GPU (~10 ms) up to a full portrait on CPU (minutes)
DURATION_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
# ArcFace cosine of a detailed face to the identity it was given: unrelated faces sit near 0, the same person
# above ~0.3 with real weights (papers report 1 - cosine, e.g. 0.21 for InfiniteYou)
SIMILARITY_BUCKETS = (-0.2, 0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


class ModelMetrics:
    """The request metrics of this process (label model=<name>); every outcome's series exists from the start at 0,
    so `rate()` sees a model's first error."""

    def __init__(self, model: str):
        from prometheus_client import Counter, Gauge, Histogram

        self.model = model
        requests = Counter("portrait_requests", "Requests answered, by model and outcome "
                                                "(success, invalid_arg, cancelled, unavailable, internal)",
                           ["model", "outcome"])
        self.outcomes = {o: requests.labels(model, o) for o in OUTCOMES}
        self.duration = Histogram("portrait_request_duration_seconds",
                                  "Seconds from a request's execution start to its final response", ["model"],
                                  buckets=DURATION_BUCKETS).labels(model)
        self.in_flight = Gauge("portrait_in_flight_requests", "Requests being executed by the model now", ["model"],
                               multiprocess_mode="livesum").labels(model)
        self.faces = Counter("portrait_faces_detailed", "Faces re-diffused by stage 2", ["model"]).labels(model)
        self.identity = Counter("portrait_identity_requests", "Requests with identity photos (PhotoMaker V2)",
                                ["model"]).labels(model)
        self.cancellations = Counter("portrait_cancellations", "Requests cancelled by their client",
                                     ["model"]).labels(model)
        self.similarity = Histogram("portrait_identity_similarity",
                                    "ArcFace cosine similarity of each detailed face to the identity it was given "
                                    "(one observation per face with an identity)", ["model"],
                                    buckets=SIMILARITY_BUCKETS).labels(model)


class SchedulerMetrics:
    """portrait_scheduler_* of the denoise step scheduler, fed with its SchedulerStats after every change."""

    GAUGES = {"active_requests": "Requests denoising now", "waiting_requests": "Requests waiting to join the step scheduler",
              "backlog": "Requests waiting or denoising (the autoscaling signal)"}
    COUNTERS = {"steps": "Denoising steps advanced, summed over requests",
                "forwards": "UNet forwards run by the step scheduler",
                "unet_rows": "UNet rows evaluated (rows per forward = this / forwards_total)",
                "forward_seconds": "Wall time of the UNet forwards, on the scheduler's thread"}

    def __init__(self, model: str):
        from prometheus_client import Counter, Gauge

        self.gauges = {k: Gauge(f"portrait_scheduler_{k}", d, ["model"], multiprocess_mode="livesum").labels(model)
                       for k, d in self.GAUGES.items()}
        self.counters = {k: Counter(f"portrait_scheduler_{k}", d, ["model"]).labels(model) for k, d in self.COUNTERS.items()}
        self.counted = {k: 0 for k in self.COUNTERS}

    def update(self, stats) -> None:
        try:
            for k, v in (("active_requests", stats.active), ("waiting_requests", stats.waiting), ("backlog", stats.backlog)):
                self.gauges[k].set(v)
            for k, v in (("steps", stats.steps_total), ("forwards", stats.forwards_total), ("unet_rows", stats.rows_total),
                         ("forward_seconds", stats.forward_seconds)):
                if v > self.counted[k]:
                    self.counters[k].inc(v - self.counted[k])
                    self.counted[k] = v
        except Exception:  # metrics never take a request down
            log.warning("scheduler metrics not updated", exc_info=True)


_metrics: ModelMetrics | None = None
_disabled = False


def _get(model: str) -> ModelMetrics | None:
    global _metrics, _disabled
    if _metrics is None and not _disabled:
        try:
            _metrics = ModelMetrics(model)
        except Exception:  # e.g. prometheus_client missing: serving goes on without these metrics
            _disabled = True
            log.warning("portrait metrics disabled in this process", exc_info=True)
    return _metrics


def register(model: str) -> None:
    """Create this process's series at 0 (call in initialize): a counter that appears with its first request is a
    counter whose first increment `rate()` never sees."""
    _get(model)


def _apply(model: str, what: str, value: float, method: str = "inc") -> None:
    metrics = _get(model)
    if metrics is None:
        return
    try:
        getattr(getattr(metrics, what), method)(value)
    except Exception:
        log.warning("metric %s of %s not updated", what, model, exc_info=True)


def started(model: str, count: int = 1) -> float:
    """`count` requests began executing; returns the start time to pass to `finished`."""
    _apply(model, "in_flight", count)
    return time.monotonic()


def finished(model: str, outcome: str, start: float | None = None) -> None:
    """One request got its final response (or error); `start` from `started` (None: count the outcome only)."""
    if start is not None:
        _apply(model, "in_flight", 1, "dec")
        _apply(model, "duration", time.monotonic() - start, "observe")
    metrics = _get(model)
    if metrics is not None:
        try:
            metrics.outcomes[outcome if outcome in metrics.outcomes else "internal"].inc()
            if outcome == "cancelled":
                metrics.cancellations.inc()
        except Exception:
            log.warning("outcome of %s not counted", model, exc_info=True)


def faces_detailed(model: str, count: int) -> None:
    if count:
        _apply(model, "faces", count)


def identity_request(model: str) -> None:
    _apply(model, "identity", 1)


def identity_similarity(model: str, values) -> None:
    """Each detailed face's cosine similarity to its own identity (DetailResult.assigned_similarity)."""
    for value in values:
        _apply(model, "similarity", float(value), "observe")


# --- the exporting side (portrait serve) --------------------------------------------------------------------------

def prepare_directory(path: Path) -> Path:
    """The multiprocess directory at a supervisor's start: kept (counters carry on over restarts), except the live
    gauges of processes that no longer exist (every model process of an earlier run is gone when it starts)."""
    path.mkdir(parents=True, exist_ok=True)
    for stale in path.glob("gauge_live*.db"):
        stale.unlink(missing_ok=True)
    return path


def process_dead(path: Path, pid: int) -> None:
    """Drop a dead model process's live gauges (its counters stay)."""
    from prometheus_client import multiprocess

    try:
        multiprocess.mark_process_dead(pid, str(path))
    except OSError:
        pass


def exposition(path: Path) -> str:
    """The portrait_* metrics of every model process, merged, in Prometheus' text format."""
    from prometheus_client import CollectorRegistry, generate_latest, multiprocess

    if not path.is_dir():
        return ""
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(path))
    return generate_latest(registry).decode()


def in_model_process() -> bool:
    """True where updates go to the shared files (the stubs of portrait serve)."""
    return bool(os.environ.get(MULTIPROC_ENV))

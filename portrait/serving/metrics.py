"""The project's Prometheus metrics, exported by the Python models on Triton's metrics port (pb_utils.MetricFamily).

Triton counts a Python model's error response as a success (nv_inference_request_success), so outcomes are
counted here, at the one place errors are mapped (portrait.serving.triton_io). Every stub process creates the same
families; Triton merges equal names and label sets, so a counter of a model with 8 instances is one series.
Metrics never fail a request: if the backend refuses one, it is logged and dropped.
"""

from __future__ import annotations

import logging
import time

log = logging.getLogger("portrait.metrics")

OUTCOMES = ("success", "invalid_arg", "cancelled", "unavailable", "internal")
# seconds: a text encoding on a GPU (~10 ms) up to a full portrait on CPU (minutes)
DURATION_BUCKETS = [0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0]
# ArcFace cosine of a detailed face to the identity it was given: unrelated faces sit near 0, the same person
# above ~0.3 with real weights (papers report 1 - cosine, e.g. 0.21 for InfiniteYou)
SIMILARITY_BUCKETS = [-0.2, 0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]


class ModelMetrics:
    """The metrics of one model (label model=<name>) in this stub process."""

    def __init__(self, model: str):
        import triton_python_backend_utils as pb_utils

        family = pb_utils.MetricFamily
        self.model = model
        # the families must outlive their metrics (the backend refuses a metric whose family was deleted)
        self.families = {
            "requests": family(name="portrait_requests_total", kind=family.COUNTER,
                               description="Requests answered, by model and outcome "
                                           "(success, invalid_arg, cancelled, unavailable, internal)"),
            "duration": family(name="portrait_request_duration_seconds", kind=family.HISTOGRAM,
                               description="Seconds from a request's execution start to its final response"),
            "in_flight": family(name="portrait_in_flight_requests", kind=family.GAUGE,
                                description="Requests being executed by the model now"),
            "faces": family(name="portrait_faces_detailed_total", kind=family.COUNTER,
                            description="Faces re-diffused by stage 2"),
            "identity": family(name="portrait_identity_requests_total", kind=family.COUNTER,
                               description="Requests with identity photos (PhotoMaker V2)"),
            "cancellations": family(name="portrait_cancellations_total", kind=family.COUNTER,
                                    description="Requests cancelled by their client"),
            "similarity": family(name="portrait_identity_similarity", kind=family.HISTOGRAM,
                                 description="ArcFace cosine similarity of each detailed face to the identity it "
                                             "was given (one observation per face with an identity)"),
        }
        labels = {"model": model}
        self.outcomes = {o: self.families["requests"].Metric(labels={**labels, "outcome": o}) for o in OUTCOMES}
        self.duration = self.families["duration"].Metric(labels=labels, buckets=DURATION_BUCKETS)
        self.in_flight = self.families["in_flight"].Metric(labels=labels)
        self.faces = self.families["faces"].Metric(labels={})
        self.identity = self.families["identity"].Metric(labels=labels)
        self.cancellations = self.families["cancellations"].Metric(labels=labels)
        self.similarity = self.families["similarity"].Metric(labels=labels, buckets=SIMILARITY_BUCKETS)


_metrics: ModelMetrics | None = None
_disabled = False


def _get(model: str) -> ModelMetrics | None:
    global _metrics, _disabled
    if _metrics is None and not _disabled:
        try:
            _metrics = ModelMetrics(model)
        except Exception:  # e.g. outside a stub (unit tests), or a backend without custom metrics
            _disabled = True
            log.warning("custom metrics disabled in this process", exc_info=True)
    return _metrics


def initialise(model: str) -> None:
    """Create this process's metrics at load, every outcome's counter at 0: a series born on the first request is
    invisible to rate() and increase() (no earlier sample), so the first failure after a start would never count.
    Call once from the model's initialize (triton_io.setup)."""
    _get(model)


def _apply(model: str, what: str, value: float, method: str = "increment") -> None:
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
        _apply(model, "in_flight", -1)
        _apply(model, "duration", time.monotonic() - start, "observe")
    metrics = _get(model)
    if metrics is not None:
        try:
            metrics.outcomes[outcome if outcome in metrics.outcomes else "internal"].increment(1)
            if outcome == "cancelled":
                metrics.cancellations.increment(1)
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

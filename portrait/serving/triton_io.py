"""Helpers for the Python-backend adapters in model_repository/: decode inputs, encode errors, BLS calls.

Imported only inside the Triton Python-backend stub (it provides triton_python_backend_utils).
Kept free of torch so the light BLS models (stage1) start fast and small.

The one place errors are mapped to Triton errors: each is logged here once (internal ones with their
traceback), counted in portrait_requests_total{model, outcome} (portrait/serving/metrics.py), and answered with a
plain message (never a path or traceback text for internal errors).
"""

from __future__ import annotations

import functools
import hmac
import json
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

from portrait.errors import Cancelled, InvalidInput, ModelSetError, PortraitError, Unavailable
from portrait.logs import LOGGER, setup_logging
from portrait.serving import metrics
from portrait.serving.cancel import request_cancel

log = logging.getLogger(LOGGER)
INTERNAL_PARAMETER = "portrait_internal"  # set on every BLS request: child work of an accepted request
# its value: a random secret per server start, given to the stubs in their environment by portrait serve
# (server_environment), so an outside client cannot forge it; without it nothing counts as internal
INTERNAL_SECRET_ENV = "PORTRAIT_INTERNAL_SECRET"
ECHO_LIMIT = 500  # characters of a message that reach a client or a log line (a value a client sent may be in it)
_model: str | None = None


def setup(args: dict) -> None:
    """Call first in initialize: names this process's model for metrics and logs."""
    global _model
    _model = args.get("model_name") or _model
    setup_logging(f"portrait[{model_name()}]")  # stderr, which the stub shares with tritonserver's log
    metrics.register(model_name())  # every outcome's series at 0 from the start


def model_name() -> str:
    """This stub's model: from `setup`, else from the stub's command line (<repository>/<model>/<version>/model.py)."""
    global _model
    if _model is None:
        try:
            argv = Path("/proc/self/cmdline").read_bytes().split(b"\0")
            _model = Path(argv[1].decode()).parent.parent.name
        except (OSError, IndexError, UnicodeDecodeError):
            _model = "unknown"
    return _model


def bls_timeout() -> float:
    """Seconds a model waits for one answer of a model it calls (PORTRAIT_BLS_TIMEOUT)."""
    from portrait.settings import get_settings

    return get_settings().bls_timeout


def model_parameters(args: dict) -> dict[str, str]:
    """The `parameters { key: ... value: { string_value: ... } }` block of a model's config.pbtxt."""
    params = json.loads(args["model_config"]).get("parameters", {})
    return {k: v["string_value"] for k, v in params.items()}


def get_array(request, name: str) -> np.ndarray | None:
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return None if tensor is None else tensor.as_numpy()


def get_scalar(request, name: str) -> Any:
    """One value of an optional `dims: [1]` input as a Python scalar (None when absent)."""
    array = get_array(request, name)
    if array is None:
        return None
    if array.size != 1:
        raise InvalidInput(name, f"must hold exactly one value, got shape {list(array.shape)}")
    value = array.reshape(-1)[0]
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidInput(name, "must be UTF-8 text") from None
    return value.item()


def tensor(name: str, array: np.ndarray) -> pb_utils.Tensor:
    return pb_utils.Tensor(name, np.ascontiguousarray(array))


OUTCOMES = {}  # TritonError code -> outcome label; filled lazily (the codes are attributes of the stub's module)


def outcome_of(code: int) -> str:
    if not OUTCOMES:
        e = pb_utils.TritonError
        OUTCOMES.update({e.INVALID_ARG: "invalid_arg", e.CANCELLED: "cancelled", e.UNAVAILABLE: "unavailable"})
    return OUTCOMES.get(code, "internal")


class Tracked:
    """One request from execution start to its final response: in-flight gauge, duration, outcome."""

    def __init__(self, count: int = 1):
        self.start = metrics.started(model_name(), count)

    def succeeded(self) -> None:
        metrics.finished(model_name(), "success", self.start)

    def failed(self, error: Exception) -> pb_utils.InferenceResponse:
        return error_response(error, self)


def error_response(error: Exception, tracked: Tracked | None = None) -> pb_utils.InferenceResponse:
    """Bad input -> INVALID_ARG naming the field; cancellation -> CANCELLED; draining, a timed-out or dead callee
    -> UNAVAILABLE; a callee's error keeps its code; anything else -> INTERNAL. Logged and counted here."""
    triton_error = to_triton_error(error)
    outcome = outcome_of(triton_error.code())
    metrics.finished(model_name(), outcome, tracked.start if tracked is not None else None)
    return pb_utils.InferenceResponse(error=triton_error)


def respond_each(requests, handle: Callable) -> list:
    """One response per request: a request that fails gets its own error response; the others are unaffected.
    New requests are refused with UNAVAILABLE while the server drains (child requests of accepted work are not)."""
    tracked = Tracked(len(requests))
    responses = []
    for request in requests:
        try:
            refuse_if_draining(request)
            responses.append(handle(request))
            metrics.finished(model_name(), "success", tracked.start)
        except Exception as error:
            responses.append(error_response(error, tracked))
    return responses


class BlsError(PortraitError):
    """A called model answered with an error: its code and message travel on unchanged."""

    def __init__(self, model: str, code: int, message: str):
        super().__init__(message)
        self.model, self.code, self.message = model, code, message


def capped(text: str, limit: int = ECHO_LIMIT) -> str:
    """`text` cut to `limit` characters: the one cap on what a message echoes (a 5 MiB job_id is not sent back or
    logged in full)."""
    text = str(text)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters, cut)"


def to_triton_error(error: Exception) -> pb_utils.TritonError:
    E = pb_utils.TritonError
    model = model_name()
    if isinstance(error, E):
        return E(capped(error.message()), error.code())
    if isinstance(error, InvalidInput):
        log.info("INVALID_ARG %s", capped(error))
        return E(capped(error), E.INVALID_ARG)
    if isinstance(error, Cancelled):
        log.info("CANCELLED %s", capped(error))
        return E(capped(error), E.CANCELLED)
    if isinstance(error, Unavailable):
        log.warning("UNAVAILABLE %s", capped(error))
        return E(capped(error), E.UNAVAILABLE)
    if isinstance(error, BlsError):  # logged by the callee with its traceback; the code and message stay
        message = capped(error.message)
        log.warning("error from %s (%s): %s", error.model, outcome_of(error.code), message)
        return E(message, error.code)
    if isinstance(error, ModelSetError):
        log.error("%s unavailable: %s", model, capped(error))
        return E(f"{model} is unavailable on this server: its weights are not installed (see the server log)",
                 E.UNAVAILABLE)
    log.error("internal error in %s", model, exc_info=error)
    # plain: no paths or traceback text; and never of the "field: limit" form, so a client reading a stream (no
    # status code there) cannot mistake it for bad input
    return E(f"internal error in {model} ({type(error).__name__}); see the server log", E.INTERNAL)


def drain_file() -> str | None:
    """The flag the supervisor creates on SIGTERM (portrait/serving/server.py); set in the models' environment."""
    return os.environ.get("PORTRAIT_DRAIN_FILE") or None


def internal_secret() -> str:
    return os.environ.get(INTERNAL_SECRET_ENV, "")


def is_internal(request) -> bool:
    """Child work of an accepted request: its `portrait_internal` parameter holds this server's secret."""
    secret = internal_secret()
    try:
        value = json.loads(request.parameters() or "{}").get(INTERNAL_PARAMETER)
    except Exception:
        return False
    return bool(secret) and isinstance(value, str) and hmac.compare_digest(value.encode(), secret.encode())


def refuse_if_draining(request) -> None:
    path = drain_file()
    if path is not None and os.path.exists(path) and not is_internal(request):
        raise Unavailable("service unavailable (the server is shutting down); retry on another replica")


def bls_request(model: str, inputs: dict[str, np.ndarray], outputs: list[str],
                timeout: float | None = None, trace=None) -> pb_utils.InferenceRequest:
    """A BLS request marked internal (served while the server drains); Triton drops it with an error if it waits
    in a queue longer than `timeout` seconds (default PORTRAIT_BLS_TIMEOUT). `trace`: the calling request's
    `request.trace()`, so that with tracing on (PORTRAIT_OTEL_ENDPOINT) this request is a child span of it."""
    timeout = bls_timeout() if timeout is None else timeout
    traced = {} if trace is None else {"trace": trace}
    return pb_utils.InferenceRequest(
        model_name=model,
        inputs=[tensor(k, v) for k, v in inputs.items()],
        requested_output_names=outputs,
        parameters={INTERNAL_PARAMETER: internal_secret()},
        timeout=int(timeout * 1e6),
        **traced,
    )


def read_response(response, outputs: list[str], model: str = "a called model") -> dict[str, np.ndarray]:
    """The named outputs of a BLS response; a callee's error is raised as BlsError with its own code and message
    (a TritonError is not an exception in this Triton: it cannot be raised as it is)."""
    if response.has_error():
        error = response.error()
        raise BlsError(model, error.code(), error.message())
    found = {name: pb_utils.get_output_tensor_by_name(response, name) for name in outputs}
    return {name: t.as_numpy() for name, t in found.items() if t is not None}


def _in_thread(target: Callable[[queue.Queue], None]) -> queue.Queue:
    box: queue.Queue = queue.Queue()
    threading.Thread(target=target, args=(box,), daemon=True).start()
    return box


def _next(box: queue.Queue, model: str, timeout: float):
    """The next item a BLS thread put, within `timeout` seconds: a callee that died or wedged becomes UNAVAILABLE
    here instead of a caller waiting in silence (this Triton's BLS timeout only bounds queueing)."""
    try:
        ok, value = box.get(timeout=timeout)
    except queue.Empty:
        raise Unavailable(f"service unavailable ({model} did not answer within {timeout:g} s)") from None
    if not ok:
        if isinstance(value, PortraitError):
            raise value
        raise Unavailable(f"service unavailable (the call to {model} failed: {type(value).__name__})") from value
    return value


def bls(model: str, inputs: dict[str, np.ndarray], outputs: list[str], trace=None) -> dict[str, np.ndarray]:
    """A blocking BLS call to a non-decoupled model, bounded by PORTRAIT_BLS_TIMEOUT."""
    timeout = bls_timeout()
    request = bls_request(model, inputs, outputs, timeout, trace)

    def call(box: queue.Queue) -> None:
        try:
            box.put((True, request.exec()))
        except BaseException as error:
            box.put((False, error))

    return read_response(_next(_in_thread(call), model, timeout), outputs, model)


# Decoupled BLS streams' response iterators, held here once finished until the stub has dropped its own reference.
# Why: this Triton's python_backend (r24.10) keeps each iterator also in the stub's `response_iterator_map_`; when
# the stream ends it queues a cleanup that erases that entry on the stub's C++ stub-to-parent thread, which holds no
# GIL. If Python had already dropped the iterator, that erase destroys it there, with every response it kept, and
# their numpy arrays are freed without the GIL (`PbTensor::~PbTensor`; fixed upstream in r25.01, python_backend
# #390, "Hold GIL when deleting numpy array"): the heap corruption that killed the `portrait` stub under long stress
# (docs/reliability.md). Held here, Python's reference is the last one, and it is dropped by `settle`, on a Python
# thread, after a round trip through that same queue has proved the erase done.
_retired: list = []
_retired_lock = threading.Lock()
RETIRED_WARN = 1000  # finished streams waiting for a settle: many means no request has settled for a while


def _retire(responses) -> None:
    with _retired_lock:
        _retired.append(responses)
        waiting = len(_retired)
    if waiting == RETIRED_WARN:
        log.warning("%d finished BLS streams wait to be released: no request has settled them", waiting)


def retired_count() -> int:
    with _retired_lock:
        return len(_retired)


def settle(is_cancelled: Callable[[], bool] | None) -> int:
    """Release the finished streams retired so far, once the stub has erased its own references to them; returns
    how many were released.

    `is_cancelled` is a live request's cancel check (`request.is_cancelled` or its response sender's). Answered
    False, it went to the server through the stub's one stub-to-parent queue, which handles its messages in order:
    the cleanups queued when those streams ended (before they were retired) were done first. Answered True, it may
    have come from the stub's cache without that round trip, so nothing is released (a later request settles)."""
    if is_cancelled is None:
        return 0
    with _retired_lock:
        count = len(_retired)
    if not count:
        return 0
    try:
        if is_cancelled():
            return 0
    except Exception:  # a request already answered: no proof either
        return 0
    with _retired_lock:
        released = _retired[:count]
        del _retired[:count]
    del released  # the last references, dropped here with the GIL (outside the lock: a destructor may wait)
    return count


def bls_stream(model: str, inputs: dict[str, np.ndarray], outputs: list[str], trace=None,
               on_abandon: Callable[[], None] | None = None,
               fence: Callable[[], bool] | None = None) -> Iterator[dict[str, np.ndarray]]:
    """A BLS call to a decoupled model: yields each response's outputs, in order; each response must come within
    PORTRAIT_BLS_TIMEOUT of the previous one.

    Closed before its end (the caller stopped reading: a cancelled client, an error), it calls `on_abandon` (e.g.
    raise the callee's cancel flag) and waits, up to PORTRAIT_BLS_TIMEOUT, for the callee's last response: a caller
    does not answer its own request while a child stream still works and delivers for it, and only a stream whose
    end was seen can be released safely (below). Close it with `contextlib.closing` or `close()` before answering.

    The stream's iterator is retired when it ends and released by `settle(fence)` once the stream is over (`fence`:
    the calling request's `is_cancelled`); see `_retired`."""
    timeout = bls_timeout()
    request = bls_request(model, inputs, outputs, timeout, trace)
    done = object()

    def pump(box: queue.Queue) -> None:
        try:
            responses = request.exec(decoupled=True)
            for response in responses:
                box.put((True, response))
            # ended: retired before `done`, so the caller's settle after `done` covers it. (A stream that raised
            # midway is not retired: unfinished, the stub keeps it in its map, and a destructor would wait for its end.)
            _retire(responses)
            del responses
            box.put((True, done))
        except BaseException as error:
            box.put((False, error))

    box = _in_thread(pump)
    while (response := _next(box, model, timeout)) is not done:
        out = read_response(response, outputs, model)
        if not out:  # the last response may carry only the FINAL flag
            continue
        try:
            yield out
        except GeneratorExit:
            if on_abandon is not None:
                try:
                    on_abandon()
                except Exception:
                    log.warning("could not stop the %s stream", model, exc_info=True)
            if _drain(box, done, time.monotonic() + timeout):
                settle(fence)
            else:
                log.warning("%s did not end its stream within %g s of being abandoned", model, timeout)
            raise
    settle(fence)


def _drain(box: queue.Queue, done: object, deadline: float) -> bool:
    """Discard a stream's remaining responses until its end (or error); False if `deadline` came first."""
    while (remaining := deadline - time.monotonic()) > 0:
        try:
            ok, value = box.get(timeout=remaining)
        except queue.Empty:
            return False
        if not ok or value is done:
            return True
    return False


class BlsBackend:
    """portrait.stages.Backend over BLS calls to the models of this server."""

    TEXT = ["prompt_embeds", "pooled_prompt_embeds", "token_count"]

    def __init__(self, job_id: str | None = None, trace=None, fence: Callable[[], bool] | None = None):
        self.job_id = job_id  # passed to denoise so a cancelled caller can stop its loop (portrait/serving/cancel.py)
        self.trace = trace  # the calling request's request.trace(): every call below is a child span of it
        self.fence = fence  # the calling request's is_cancelled: settles finished streams (bls_stream, settle)

    def for_request(self, request) -> BlsBackend:
        """This backend for one request: its calls carry that request's trace, and its `is_cancelled` settles the
        streams they finish."""
        return BlsBackend(self.job_id, request.trace(), request.is_cancelled)

    def encode_text(self, prompt: str) -> dict[str, np.ndarray]:
        return bls("text_encoder", {"prompt": np.array([[prompt.encode("utf-8")]], dtype=object)}, self.TEXT,
                   trace=self.trace)

    def encode_text_with_trigger(self, prompt: str, num_id_images: int) -> dict[str, np.ndarray]:
        return bls("text_encoder", {"prompt": np.array([[prompt.encode("utf-8")]], dtype=object),
                                    "num_id_images": np.array([[num_id_images]], np.int32)},
                   [*self.TEXT, "class_tokens_mask"], trace=self.trace)

    def embed_faces(self, image: np.ndarray, keypoints: np.ndarray) -> np.ndarray:
        return bls("face_embedder", {"image": image, "keypoints": keypoints.astype(np.float32)}, ["embeddings"],
                   trace=self.trace)["embeddings"]

    def fuse_identity(self, photos: list[bytes], id_embeds: np.ndarray, prompt_embeds: np.ndarray,
                      class_tokens_mask: np.ndarray) -> np.ndarray:
        return bls("id_encoder", {"id_images": np.array(photos, dtype=object), "id_embeds": id_embeds,
                                  "prompt_embeds": prompt_embeds, "class_tokens_mask": class_tokens_mask},
                   ["id_prompt_embeds"], trace=self.trace)["id_prompt_embeds"]

    def denoise(self, inputs: dict[str, np.ndarray]) -> Iterator[dict[str, np.ndarray]]:
        stop = None
        if self.job_id is not None:
            inputs = {**inputs, "job_id": np.array([self.job_id.encode()], dtype=object)}
            stop = functools.partial(request_cancel, self.job_id)  # abandoned: the loop stops at its next step
        return bls_stream("denoise", inputs, ["latents", "step", "num_steps"], trace=self.trace, on_abandon=stop,
                          fence=self.fence)

    def decode(self, latents: np.ndarray) -> np.ndarray:
        return bls("vae_decoder", {"latents": latents}, ["image"], trace=self.trace)["image"]

    def encode_image(self, images: np.ndarray) -> np.ndarray:
        return bls("vae_encoder", {"image": images}, ["latents"], trace=self.trace)["latents"]

    def detect(self, image: np.ndarray, max_faces: int) -> dict[str, np.ndarray]:
        return bls("face_detector", {"image": image, "max_faces": np.array([max_faces], np.int32)},
                   ["boxes", "scores", "keypoints", "landmarks"], trace=self.trace)

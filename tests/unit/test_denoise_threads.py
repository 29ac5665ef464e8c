"""Every torch op of the `denoise` process runs on the step scheduler's thread (issue 21).

Each thread that enters torch's intra-op parallelism gets an OpenMP team of its own and two teams fight for the cores:
a UNet forward on a worker thread took 2.4x longer once the main thread had run torch ops. So the stub's thread (the
one calling `initialize` and `execute`) must run none: this drives model_repository/denoise/1/model.py with a
stand-in for the stub's module, records every aten op dispatched on the calling thread (dispatch modes are
thread-local: the scheduler's thread is not recorded), and checks the answer against the same loop run in-process.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import threading
import types

import numpy as np
import pytest
from torch.utils._python_dispatch import TorchDispatchMode

from portrait.settings import PROJECT_ROOT


class RecordOps(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


class Tensor:
    def __init__(self, name, array):
        self.name, self.array = name, array

    def as_numpy(self):
        return self.array


class Response:
    def __init__(self, output_tensors=None, error=None):
        self.outputs = {t.name: t.array for t in output_tensors or []}
        self.error_value = error


class Sender:
    def __init__(self):
        self.responses, self.final, self.threads = [], threading.Event(), set()
        self.cancel_threads: set[str] = set()
        self.cancel_after: int | None = None  # is_cancelled() answers True from this call on

    def is_cancelled(self):  # the response sender answers for its request (python_backend's ResponseSender)
        self.cancel_threads.add(threading.current_thread().name)
        if self.cancel_after is None:
            return False
        self.cancel_after -= 1
        return self.cancel_after < 0

    def send(self, response=None, flags=0):
        self.threads.add(threading.current_thread().name)
        self.responses.append(response)
        if flags:
            self.final.set()


class Request:
    def __init__(self, inputs: dict[str, np.ndarray]):
        self.inputs = {k: Tensor(k, v) for k, v in inputs.items()}
        self.sender = Sender()

    def get_response_sender(self):
        return self.sender

    def is_cancelled(self):
        return self.sender.is_cancelled()

    def parameters(self):
        return "{}"

    def trace(self):
        return None


class TritonError(Exception):
    UNKNOWN, INTERNAL, NOT_FOUND, INVALID_ARG, UNAVAILABLE, UNSUPPORTED, ALREADY_EXISTS, CANCELLED = range(8)

    def __init__(self, message, code=1):
        super().__init__(message)
        self._message, self._code = message, code

    def message(self):
        return self._message

    def code(self):
        return self._code


@pytest.fixture
def denoise_model(monkeypatch, models_dir):
    fake = types.SimpleNamespace(
        Tensor=Tensor, InferenceResponse=Response, TritonError=TritonError, TRITONSERVER_RESPONSE_COMPLETE_FINAL=1,
        get_input_tensor_by_name=lambda request, name: request.inputs.get(name))
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", fake)
    import portrait.serving.triton_io as triton_io

    importlib.reload(triton_io)
    spec = importlib.util.spec_from_file_location("denoise_model", PROJECT_ROOT / "model_repository/denoise/1/model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    yield module
    monkeypatch.delitem(sys.modules, "triton_python_backend_utils")


def stage1_inputs(dims, seed: int = 3, size: int = 64) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    embeds = lambda *shape: rng.standard_normal(shape).astype(np.float32)  # noqa: E731
    return {"seeds": np.array([seed], np.int64), "height": np.array([size], np.int32), "width": np.array([size], np.int32),
            "steps": np.array([3], np.int32), "guidance_scale": np.array([5.0], np.float32),
            "guidance_cutoff": np.array([0.2], np.float32),
            "prompt_embeds": embeds(1, 77, dims.cross_attention_dim), "pooled_prompt_embeds": embeds(1, dims.pooled_dim),
            "negative_prompt_embeds": embeds(1, 77, dims.cross_attention_dim),
            "negative_pooled_prompt_embeds": embeds(1, dims.pooled_dim)}


def test_the_stub_thread_runs_no_torch_op(denoise_model, sdxl_dir):
    from portrait.diffusion.loop import run_denoise
    from portrait.models.checkpoint import read_sdxl_info
    from portrait.models.unet_runner import UNetDims, load_predictor
    from portrait.serving.denoise_job import SCALARS, denoise_loop
    from portrait.settings import get_settings

    dims = UNetDims.read(sdxl_dir)
    inputs = stage1_inputs(dims)
    request = Request(inputs)
    model = denoise_model.TritonPythonModel()
    with RecordOps() as recorded:
        model.initialize({"model_name": "denoise", "model_config": json.dumps({"parameters": {}})})
        model.execute([request])
        assert request.sender.final.wait(120), "no final response"
    model.finalize()
    assert recorded.ops == [], f"the stub's thread ran {len(recorded.ops)} torch ops, first {recorded.ops[:5]}"

    final = request.sender.responses[-1]
    assert final.error_value is None, final.error_value
    steps = [r.outputs["step"][0] for r in request.sender.responses[:-1]]
    assert steps and steps == sorted(set(steps)) and steps[-1] == 3  # a waiting progress is replaced by a newer one
    # the same loop in-process on this thread: the scheduler's thread computed the same latents
    scalars = {k: (inputs[k].reshape(-1)[0].item() if k in inputs else None) for k in SCALARS}
    predict = load_predictor(get_settings())
    expected = run_denoise(denoise_loop(inputs, scalars, read_sdxl_info(sdxl_dir), dims), predict)
    np.testing.assert_allclose(final.outputs["latents"], expected.numpy(), rtol=0, atol=1e-5)


def load_model(name: str):
    spec = importlib.util.spec_from_file_location(f"{name}_model", PROJECT_ROOT / f"model_repository/{name}/1/model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(("name", "inputs"), [
    ("vae_decoder", {"latents": np.zeros((1, 4, 8, 8), np.float32)}),
    ("vae_encoder", {"image": np.zeros((1, 64, 64, 3), np.uint8)}),
])
def test_light_torch_models_compute_on_the_stub_thread_and_start_no_thread(denoise_model, name, inputs):
    """The models that compute in `execute` keep all their torch work on the stub's thread: one OpenMP team."""
    model = load_model(name).TritonPythonModel()
    before = set(threading.enumerate())
    with RecordOps() as recorded:
        model.initialize({"model_name": name, "model_config": json.dumps({"parameters": {}})})
        [response] = model.execute([Request(inputs)])
    assert response.error_value is None, response.error_value
    assert recorded.ops, "the mode saw no op: it would miss work on this thread too"
    assert set(threading.enumerate()) - before == set()


def run_requests(denoise_model, requests):
    model = denoise_model.TritonPythonModel()
    model.initialize({"model_name": "denoise", "model_config": json.dumps({"parameters": {}})})
    try:
        model.execute(requests)
        for request in requests:
            assert request.sender.final.wait(120), "no final response"
    finally:
        model.finalize()


def test_the_scheduler_thread_makes_no_round_trip_to_the_server(denoise_model, sdxl_dir):
    """`send` and `is_cancelled` are round trips to the server in Triton's Python backend: made on the scheduler's
    thread they stalled the next forward once per active request (issue 21); the courier's thread makes them."""
    from portrait.models.unet_runner import UNetDims

    dims = UNetDims.read(sdxl_dir)
    requests = [Request(stage1_inputs(dims, seed=s)) for s in (3, 4, 5)]
    run_requests(denoise_model, requests)
    for request in requests:
        assert request.sender.responses[-1].error_value is None
        assert request.sender.threads == {"courier"}
        assert request.sender.cancel_threads <= {"courier"}
    assert any(r.sender.cancel_threads for r in requests), "is_cancelled was never asked: cancellation would be missed"


def test_progress_false_sends_only_the_final_latents(denoise_model, sdxl_dir):
    from portrait.models.unet_runner import UNetDims

    dims = UNetDims.read(sdxl_dir)
    quiet, chatty = Request({**stage1_inputs(dims), "progress": np.array([False])}), Request(stage1_inputs(dims))
    run_requests(denoise_model, [quiet, chatty])
    assert [sorted(r.outputs) for r in quiet.sender.responses] == [["latents"]]
    *steps, final = chatty.sender.responses
    assert sorted(final.outputs) == ["latents"]
    # progress still waiting when a newer step comes is replaced by it: increasing steps, the last always sent
    seen = [int(r.outputs["step"][0]) for r in steps]
    assert seen and seen == sorted(set(seen)) and seen[-1] == 3
    # the same request: equal up to the float noise of sharing a forward or not
    np.testing.assert_allclose(quiet.sender.responses[-1].outputs["latents"],
                               chatty.sender.responses[-1].outputs["latents"], rtol=0, atol=1e-4)


def test_a_client_that_cancels_gets_cancelled_and_the_others_finish(denoise_model, sdxl_dir):
    from portrait.models.unet_runner import UNetDims

    dims = UNetDims.read(sdxl_dir)
    gone, stays = Request({**stage1_inputs(dims), "steps": np.array([50], np.int32)}), Request(stage1_inputs(dims, 4))
    gone.sender.cancel_after = 0
    run_requests(denoise_model, [gone, stays])
    error = gone.sender.responses[-1].error_value
    assert error is not None and error.code() == TritonError.CANCELLED and "cancelled by the client" in error.message()
    assert len(gone.sender.responses) < 50
    assert stays.sender.responses[-1].error_value is None


class BlsResponse:
    def __init__(self, step):
        self.step = step

    def has_error(self):
        return False


def test_an_abandoned_bls_stream_stops_its_callee_and_waits_for_its_end(denoise_model, monkeypatch):
    """bls_stream closed early (a cancelled client) raises the callee's cancel flag and returns only once the callee's
    stream has ended: a caller does not answer its request while a child stream still works for it, and only an
    ended stream can be released safely (the next test)."""
    import time

    import portrait.serving.triton_io as triton_io

    events, stopped = [], threading.Event()

    class Request:
        def exec(self, decoupled):
            assert decoupled
            for step in range(1, 1000):
                events.append(f"sent {step}")
                yield BlsResponse(step)
                if stopped.is_set():  # the callee sees its cancel flag at its next step, then ends its stream
                    time.sleep(0.2)
                    events.append("callee ended")
                    return
                time.sleep(0.01)

    monkeypatch.setattr(triton_io, "bls_request", lambda *a, **k: Request())
    monkeypatch.setattr(triton_io.pb_utils, "get_output_tensor_by_name",
                        lambda response, name: Tensor(name, np.array([response.step])), raising=False)
    stream = triton_io.bls_stream("denoise", {}, ["step"], on_abandon=lambda: (events.append("cancel"), stopped.set()))
    assert next(stream)["step"].tolist() == [1]
    stream.close()
    events.append("closed")
    assert "cancel" in events and events.index("callee ended") < events.index("closed"), events


def test_a_finished_bls_stream_is_released_only_after_a_round_trip(denoise_model, monkeypatch):
    """python_backend r24.10 erases a finished stream's iterator from its own map on a C++ thread without the GIL;
    if Python had dropped it first, the responses' numpy arrays were freed there (the `portrait` stub's heap
    corruption). So bls_stream retires the iterator, and `settle` drops it only after the request's `is_cancelled`
    answered False (a round trip through the queue that carries those erases); True may be the stub's cache."""
    import gc
    import weakref

    import portrait.serving.triton_io as triton_io

    iterators = []

    class Request:
        def exec(self, decoupled):
            def responses():
                yield from (BlsResponse(step) for step in (1, 2, 3))
            iterators.append(responses())
            return iterators[-1]

    monkeypatch.setattr(triton_io, "bls_request", lambda *a, **k: Request())
    monkeypatch.setattr(triton_io.pb_utils, "get_output_tensor_by_name",
                        lambda response, name: Tensor(name, np.array([response.step])), raising=False)
    answers = []

    def is_cancelled():
        return answers.pop(0)

    answers.append(True)  # a cancelled request: maybe no round trip, so it proves nothing
    assert [o["step"].tolist() for o in triton_io.bls_stream("denoise", {}, ["step"], fence=is_cancelled)] == [[1], [2], [3]]
    first = weakref.ref(iterators.pop())
    gc.collect()
    assert first() is not None and triton_io.retired_count() == 1 and not answers
    answers.append(False)  # the next stream's request is live: its round trip settles both
    stream = triton_io.bls_stream("denoise", {}, ["step"], fence=is_cancelled)
    assert next(stream)["step"].tolist() == [1]
    stream.close()  # abandoned: drained to its end, then settled
    second = weakref.ref(iterators.pop())
    gc.collect()
    assert first() is None and second() is None and triton_io.retired_count() == 0 and not answers

    def broken():
        raise RuntimeError("the request was already answered")

    list(triton_io.bls_stream("denoise", {}, ["step"], fence=broken))  # no proof: kept
    assert triton_io.retired_count() == 1
    assert triton_io.settle(None) == 0 and triton_io.settle(lambda: False) == 1 and triton_io.retired_count() == 0


def test_no_thread_but_the_stubs_holds_the_request_object(denoise_model, sdxl_dir):
    """A request object must be released on the stub's thread: released on a worker thread, Triton's Python backend
    freed its input tensors twice ("double free or corruption", docs/reliability.md). So nothing `execute` hands to
    the scheduler or the courier keeps it: once the caller drops it, it is gone while its job still runs."""
    import gc
    import weakref

    from portrait.models.unet_runner import UNetDims

    dims = UNetDims.read(sdxl_dir)
    request = Request({**stage1_inputs(dims), "steps": np.array([40], np.int32)})
    sender, alive = request.sender, weakref.ref(request)
    model = denoise_model.TritonPythonModel()
    model.initialize({"model_name": "denoise", "model_config": json.dumps({"parameters": {}})})
    try:
        model.execute([request])
        del request
        gc.collect()
        assert alive() is None, "a thread of the model still holds the request object"
        assert not sender.final.is_set(), "the job ended before the check: the test proves nothing"
        assert sender.final.wait(120)
    finally:
        model.finalize()
    assert sender.responses[-1].error_value is None

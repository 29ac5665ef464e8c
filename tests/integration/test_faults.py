"""Fault injection against `portrait serve` (the supervisor): a killed stub, SIGTERM with work in flight, closed APIs.

Uses servers of its own (free ports), never the shared session server: these tests kill things.
The soak (`make soak`) is marked `soak`, which the default run deselects (pyproject addopts).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from portrait.errors import InvalidInput, ServerError, Unavailable
from portrait.params import Stage1Params
from portrait.serving.server import (
    EXIT_FAILURE,
    EXIT_OK,
    Health,
    Stub,
    Supervisor,
    TritonServer,
    children_of,
    free_port,
    read_stub,
)
from portrait.settings import PROJECT_ROOT, get_settings

ERROR_BOUND = 30.0  # seconds: a client touched by a failure has its error within this
UNREADY_BOUND = 5.0  # seconds: health says not ready within this after a stub dies
START_BOUND = 600.0  # seconds: a (re)start of the whole server on this shared 2-core machine
API_KEY = "test-key-" + os.urandom(6).hex()
SLOW = Stage1Params(prompt="portrait of a woman", width=256, height=256, steps=40)  # a few seconds on the tiny set
QUICK = Stage1Params(prompt="portrait of a woman", width=64, height=64, steps=2)


class Served:
    """`portrait serve` as a subprocess on free ports."""

    def __init__(self, *args: str, grace: float = 120.0):
        self.http, self.grpc, self.metrics, self.health = (free_port() for _ in range(4))
        self.log = get_settings().cache_dir / f"serve-test-{self.grpc}.log"
        self.log.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "PORTRAIT_HTTP_PORT": str(self.http), "PORTRAIT_GRPC_PORT": str(self.grpc),
               "PORTRAIT_METRICS_PORT": str(self.metrics), "PORTRAIT_HEALTH_PORT": str(self.health),
               "PORTRAIT_API_KEY": API_KEY, "PORTRAIT_GRACE_PERIOD": str(grace)}
        with open(self.log, "wb") as out:
            self.process = subprocess.Popen([sys.executable, "-m", "portrait.app.cli", "serve", *args], env=env,
                                            stdout=out, stderr=subprocess.STDOUT, cwd=PROJECT_ROOT)

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc}"

    def health_status(self, what: str = "ready") -> int:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.health}/v2/health/{what}", timeout=2) as r:
                return r.status
        except urllib.error.HTTPError as error:
            return error.code
        except OSError:
            return 0

    def wait_ready(self, timeout: float = START_BOUND) -> float:
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            if self.process.poll() is not None:
                raise AssertionError(f"portrait serve exited {self.process.returncode}:\n{self.log_tail()}")
            if self.health_status() == 200:
                return time.monotonic() - start
            time.sleep(0.5)
        raise AssertionError(f"not ready after {timeout:.0f} s:\n{self.log_tail()}")

    def wait_unready(self, timeout: float) -> float:
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            if self.health_status() != 200:
                return time.monotonic() - start
            time.sleep(0.05)
        raise AssertionError(f"still ready {timeout:.0f} s after the failure")

    def triton_pid(self) -> int:
        children = children_of(self.process.pid)
        assert children, "the supervisor has no tritonserver child"
        return children[0]

    def stubs(self) -> list[Stub]:
        return [s for s in map(read_stub, children_of(self.triton_pid())) if s is not None]

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def client(self, protocol: str = "grpc", timeout: float = 120.0):
        from clients import connect

        return connect(self.grpc_url if protocol == "grpc" else f"127.0.0.1:{self.http}", protocol, timeout)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(120)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def forged_internal_requests(served: Served, protocol: str) -> list[str]:
    """stage1 requests from outside carrying `portrait_internal` (true, "true"): what each got back."""
    import tritonclient.grpc as g
    import tritonclient.http as h
    from tritonclient.utils import InferenceServerException

    module = g if protocol == "grpc" else h
    client = (g.InferenceServerClient(served.grpc_url) if protocol == "grpc"
              else h.InferenceServerClient(f"127.0.0.1:{served.http}", network_timeout=60))
    prompt = module.InferInput("prompt", [1], "BYTES")
    prompt.set_data_from_numpy(np.array([b"a portrait"], np.object_))
    answers = []
    for value in (True, "true"):
        try:
            client.infer("stage1", [prompt], parameters={"portrait_internal": value})
            answers.append("served")
        except InferenceServerException as error:
            answers.append(str(error))
    client.close()
    return answers


@pytest.fixture(scope="module")
def served(models_dir):
    running = Served()
    try:
        running.wait_ready()
        yield running
    finally:
        running.stop()


def in_background(call):
    """Run `call` in a thread; returns a dict that gets 'result' or 'error', and 'seconds'."""
    box: dict = {}

    def run():
        start = time.monotonic()
        try:
            box["result"] = call()
        except Exception as error:  # noqa: BLE001 (the test inspects it)
            box["error"] = error
        box["seconds"] = time.monotonic() - start

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    box["thread"] = thread
    return box


def wait_until_running(served: Served, model: str, timeout: float = 60.0) -> None:
    """Until the model has a request executing (portrait_in_flight_requests{model} > 0)."""
    from portrait.serving.server import TritonServer  # noqa: F401 (the metrics parser lives on it)

    deadline = time.monotonic() + timeout
    url = f"http://127.0.0.1:{served.metrics}/metrics"
    while time.monotonic() < deadline:
        with urllib.request.urlopen(url, timeout=5) as r:
            for line in r.read().decode().splitlines():
                if line.startswith(f'portrait_in_flight_requests{{model="{model}"}}') and float(line.split()[-1]) > 0:
                    return
        time.sleep(0.1)
    raise AssertionError(f"no {model} request started within {timeout:.0f} s")


def metric(served: Served, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{served.metrics}/metrics", timeout=5) as r:
        return sum(float(line.split()[-1]) for line in r.read().decode().splitlines() if line.startswith(name))


# --- closed by default ----------------------------------------------------------------------------------------------

RESTRICTED = [("GET", "/v2/logging"), ("POST", "/v2/repository/index"), ("GET", "/v2/systemsharedmemory/status"),
              ("GET", "/v2/trace/setting")]


def http_status(served: Served, method: str, path: str, key: str | None) -> int:
    request = urllib.request.Request(f"http://127.0.0.1:{served.http}{path}", method=method,
                                     data=b"{}" if method == "POST" else None,
                                     headers={"X-Portrait-Key": key} if key else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as error:
        return error.code


@pytest.mark.parametrize("method,path", RESTRICTED, ids=[p for _, p in RESTRICTED])
def test_restricted_http_apis_need_the_key(served, method, path):
    assert http_status(served, method, path, None) == 403
    assert http_status(served, method, path, "wrong") == 403
    assert http_status(served, method, path, API_KEY) == 200


def test_restricted_grpc_protocols_need_the_key(served):
    import tritonclient.grpc as g
    from tritonclient.utils import InferenceServerException

    client = g.InferenceServerClient(served.grpc_url)
    for call in (client.get_log_settings, client.get_system_shared_memory_status, client.get_model_repository_index):
        with pytest.raises(InferenceServerException) as caught:
            call()
        assert "restricted" in str(caught.value), caught.value  # Triton answers UNAVAILABLE, "... is restricted"
        with pytest.raises(InferenceServerException):
            call(headers={"triton-grpc-protocol-x-portrait-key": "wrong"})
        call(headers={"triton-grpc-protocol-x-portrait-key": API_KEY})  # works with it (Triton's gRPC header form)
    assert client.is_server_ready()  # health, metadata and inference stay open
    client.close()


def test_binds_to_localhost_only(served):
    """Every listening socket of the server and the supervisor is on 127.0.0.1 (PORTRAIT_HOST's default)."""
    ports = {served.http, served.grpc, served.metrics, served.health}
    listening = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, port = local.rsplit(":", 1)
            if state == "0A" and int(port, 16) in ports:
                listening[int(port, 16)] = address
    assert set(listening) == ports, listening
    loopback = ("0100007F", "0000000000000000FFFF00000100007F")  # 127.0.0.1 (little-endian hex), ::ffff:127.0.0.1
    assert all(a in loopback for a in listening.values()), listening


def test_server_command_is_closed_by_default(models_dir):
    server = TritonServer.create(get_settings(), free_ports=True)
    command = " ".join(server.command())
    for flag in ("--http-address=127.0.0.1", "--grpc-address=127.0.0.1", "--metrics-address=127.0.0.1",
                 "--model-control-mode=none", "--strict-readiness=true", "--exit-on-error=true",
                 f"--exit-timeout-secs={int(get_settings().grace_period)}",
                 f"--http-restricted-api=model-repository,shared-memory,logging,trace:X-Portrait-Key={server.api_key}"):
        assert flag in command
    other = TritonServer.create(get_settings(), free_ports=True)
    assert server.api_key and other.api_key != server.api_key  # unset PORTRAIT_API_KEY: a random key per server


# --- honest metrics -------------------------------------------------------------------------------------------------

def test_failures_are_counted_as_failures(served):
    ok = 'portrait_requests_total{model="stage1",outcome="success"}'
    bad = 'portrait_requests_total{model="stage1",outcome="invalid_arg"}'
    before_ok, before_bad = metric(served, ok), metric(served, bad)
    with served.client() as client:
        client.stage1(QUICK)
        with pytest.raises(InvalidInput, match="seed"):
            client.infer("stage1", {"prompt": ("BYTES", np.array([b"x"], np.object_)),
                                    "seed": ("INT64", np.array([2**63 - 1], np.int64)),
                                    "batch_size": ("INT32", np.array([2], np.int32))}, ["images"])
    assert metric(served, ok) == before_ok + 1
    assert metric(served, bad) == before_bad + 1
    assert metric(served, 'portrait_request_duration_seconds_count{model="stage1"}') >= 2


# --- a dead worker --------------------------------------------------------------------------------------------------

def kill_during_request(served: Served, model: str, call, running: str) -> None:
    """kill -9 the stub of `model` while `call` runs: the client errs within the bound, health goes unready at
    once, and the supervisor restarts the server, which serves again."""
    with served.client() as client:
        box = in_background(lambda: call(client))
        wait_until_running(served, running)
        victims = [s for s in served.stubs() if s.model == model]
        assert victims, f"no {model} stub among {[s.instance for s in served.stubs()]}"
        killed_at = time.monotonic()
        for stub in victims:  # every instance: the one holding the request among them
            os.kill(stub.pid, signal.SIGKILL)
        unready = served.wait_unready(UNREADY_BOUND)
        box["thread"].join(ERROR_BOUND)
        assert not box["thread"].is_alive(), f"the client got no answer within {ERROR_BOUND:.0f} s"
        assert "error" in box, f"a request touched by a dead {model} stub succeeded: {box}"
        assert isinstance(box["error"], ServerError), repr(box["error"])
        assert time.monotonic() - killed_at < ERROR_BOUND
        assert unready < UNREADY_BOUND
    served.wait_ready()
    assert served.process.poll() is None
    with served.client() as client:
        assert client.stage1(QUICK).images.shape == (1, 64, 64, 3)


@pytest.mark.parametrize("model,running", [("stage1", "stage1"), ("portrait", "portrait"), ("denoise", "stage1")])
def test_killed_stub_errors_unready_restarts(served, model, running):
    if model == "portrait":
        call = lambda client: client.portrait(SLOW, None)  # noqa: E731
    else:
        call = lambda client: client.stage1(SLOW)  # noqa: E731
    kill_during_request(served, model, call, running)


# --- graceful drain -------------------------------------------------------------------------------------------------

def test_sigterm_drains_in_flight_requests(served):
    """Last of the module's server tests (it ends that server): SIGTERM with 3 requests in flight."""
    served.wait_ready()
    regions = {s.shm_region for s in served.stubs()}
    assert len(regions) >= 10
    clients = [served.client() for _ in range(3)]
    boxes = [in_background(lambda c=c: c.stage1(SLOW)) for c in clients]
    wait_until_running(served, "stage1")
    time.sleep(1.0)  # all three accepted
    served.process.send_signal(signal.SIGTERM)
    served.wait_unready(UNREADY_BOUND)
    with served.client() as late, pytest.raises(Unavailable):
        late.stage1(QUICK)  # refused while draining
    for protocol in ("grpc", "http"):  # an outside request claiming to be internal is refused too (issue 20)
        answers = forged_internal_requests(served, protocol)
        assert all("service unavailable" in a and "shutting down" in a for a in answers), (protocol, answers)
    for box in boxes:
        box["thread"].join(300)
        assert "result" in box, f"an in-flight request did not complete: {box}\n{served.log_tail()}"
        assert box["result"].images.shape == (1, 256, 256, 3)
    assert served.process.wait(120) == EXIT_OK, served.log_tail()
    assert "in-flight work done" in served.log_tail()
    left = regions & set(os.listdir("/dev/shm"))
    assert not left, f"{len(left)} shared-memory regions left"
    for c in clients:
        c.close()


# --- the supervisor's logic, without Triton -------------------------------------------------------------------------

class FakeProcess:
    def __init__(self):
        self.returncode = None
        self.pid = 0

    def poll(self):
        return self.returncode


class FakeServer:
    """Enough of TritonServer for Supervisor: stubs that can die, a probe that can fail."""

    def __init__(self, settings):
        self.settings, self.process = settings, FakeProcess()
        self.alive = [Stub(100 + i, "m", f"m_0_{i}", f"region{i}", "S") for i in range(3)]
        self.starts = self.kills = 0
        self.probe_answer = None
        self.drain_file = settings.cache_dir / f"draining-fake-{os.getpid()}"
        self.grpc_url = self.http_url = "127.0.0.1:1"
        self.metrics_url = "http://127.0.0.1:1/metrics"
        self.log_path = settings.cache_dir / f"tritonserver-fake-{os.getpid()}.log"
        self.restarts = self.closed = 0

    def log_tail(self, lines=30):
        return "the fake server's last log line"

    def count_restart(self):
        self.restarts += 1
        return self.restarts

    def close(self):
        self.stop()
        self.closed += 1

    def start(self, timeout, abort=None):
        self.starts += 1
        self.process = FakeProcess()
        self.alive = [Stub(100 + 10 * self.starts + i, "m", f"m_0_{i}", f"region{i}", "S") for i in range(3)]

    def stubs(self):
        return list(self.alive)

    def ready(self, timeout=2.0):
        return True

    def expected_stubs(self):
        return 3

    def probe(self, timeout=10.0):
        return self.probe_answer

    def kill(self):
        self.kills += 1
        self.process.returncode = -9

    def in_flight(self, timeout=5.0):
        return 0

    def stop(self, timeout=30.0):
        self.process.returncode = 0
        self.drain_file.unlink(missing_ok=True)


def supervise(server, **kwargs) -> tuple[Supervisor, threading.Thread, dict]:
    supervisor = Supervisor(server, free_port(), poll=0.02, probe_every=0.05, **kwargs)
    supervisor.install_signal_handlers = lambda: None  # the test thread is not the main thread
    result: dict = {}
    thread = threading.Thread(target=lambda: result.setdefault("code", supervisor.run()), daemon=True)
    thread.start()
    return supervisor, thread, result


def wait_for(condition, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.01)
    raise AssertionError("condition not met")


@pytest.mark.parametrize("failure", ["dead", "zombie", "stopped", "wedged"])
def test_supervisor_exits_nonzero_on_failure_in_container_mode(failure):
    server = FakeServer(get_settings())
    supervisor, thread, result = supervise(server, exit_on_failure=True)
    wait_for(lambda: supervisor.health.ready)
    if failure == "dead":
        server.alive.pop(1)
    elif failure == "wedged":
        server.probe_answer = "probe failed: timeout"
    else:
        s = server.alive[1]
        server.alive[1] = Stub(s.pid, s.model, s.instance, s.shm_region, "Z" if failure == "zombie" else "T")
    thread.join(10)
    assert result["code"] == EXIT_FAILURE and server.kills == 1
    assert not supervisor.health.ready


def test_supervisor_restarts_by_default():
    server = FakeServer(get_settings())
    supervisor, thread, result = supervise(server)
    wait_for(lambda: supervisor.health.ready)
    server.alive.pop(0)
    wait_for(lambda: server.starts == 2 and supervisor.health.ready)
    assert server.kills == 1 and supervisor.restarts == 1
    supervisor.signals.append(signal.SIGTERM)
    thread.join(10)
    assert result["code"] == EXIT_OK


def test_supervisor_is_live_while_triton_loads():
    """A slow start (minutes with real weights) must not fail the liveness probe: the heartbeat turns meanwhile."""
    server = FakeServer(get_settings())
    beats, made = [], {}
    fake_start = server.start

    def slow_start(timeout, abort=None):
        wait_for(lambda: "supervisor" in made)  # supervise() starts the loop before it returns the supervisor
        for _ in range(5):
            assert not abort()
            beats.append(made["supervisor"].health.heartbeat)
            time.sleep(0.05)
        fake_start(timeout, abort)

    server.start = slow_start
    supervisor, thread, result = supervise(server)
    made["supervisor"] = supervisor
    wait_for(lambda: supervisor.health.ready)
    assert beats == sorted(beats) and beats[-1] > beats[0]
    supervisor.signals.append(signal.SIGTERM)
    thread.join(10)
    assert result["code"] == EXIT_OK


def test_drain_is_unready_first_and_flags_the_models():
    server = FakeServer(get_settings())
    seen = {}
    server.in_flight = lambda timeout=5.0: seen.setdefault("state", (supervisor.health.ready,
                                                                     server.drain_file.exists())) and 0
    supervisor, thread, result = supervise(server)
    wait_for(lambda: supervisor.health.ready)
    supervisor.signals.append(signal.SIGTERM)
    thread.join(10)
    assert seen["state"] == (False, True)  # unready and refusing while in-flight work is awaited
    assert result["code"] == EXIT_OK and not server.drain_file.exists()


def test_health_document():
    health = Health(triton_ready=True, stubs_alive=True)
    assert health.ready
    health.draining = True
    assert not health.ready and health.as_dict()["draining"]


# --- soak (make soak) -----------------------------------------------------------------------------------------------

def rss_kib(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total


@pytest.mark.soak
def test_soak(models_dir):
    from concurrent.futures import ThreadPoolExecutor

    total, concurrency, warmup = int(os.environ.get("PORTRAIT_SOAK", "300")), 4, 40
    served = Served()
    try:
        served.wait_ready()
        clients = [served.client() for _ in range(concurrency)]
        params = Stage1Params(prompt="portrait of a woman", width=64, height=64, steps=2)

        def one(i: int) -> None:
            clients[i % concurrency].stage1(params)

        def process_tree() -> list[int]:
            triton = served.triton_pid()
            return [triton, *children_of(triton)]

        failures = 0
        start = time.monotonic()
        with ThreadPoolExecutor(concurrency) as pool:
            for f in [pool.submit(one, i) for i in range(warmup)]:
                failures += f.exception() is not None
            rss_warm = rss_kib(process_tree())
            for f in [pool.submit(one, i) for i in range(total)]:
                failures += f.exception() is not None
        seconds = time.monotonic() - start
        rss_end = rss_kib(process_tree())
        growth = (rss_end - rss_warm) / rss_warm
        line = (f"soak: {total} stage1 requests (64x64, 2 steps) at concurrency {concurrency} after {warmup} warm-up: "
                f"{failures} failures, {seconds:.0f} s, RSS server+stubs {rss_warm / 1024:.0f} MiB -> "
                f"{rss_end / 1024:.0f} MiB ({100 * growth:+.2f} %)")
        print(line)
        Path(os.environ.get("PORTRAIT_SOAK_OUT", get_settings().cache_dir / "soak.txt")).write_text(line + "\n")
        assert failures == 0
        assert growth < 0.05
        for c in clients:
            c.close()
    finally:
        served.stop()


# --- the one place errors are mapped (portrait/serving/triton_io.py), with a stand-in for the stub's module ---------------

@pytest.fixture
def io_module(monkeypatch):
    import importlib
    import types

    class TritonError:
        UNKNOWN, INTERNAL, NOT_FOUND, INVALID_ARG, UNAVAILABLE, UNSUPPORTED, ALREADY_EXISTS, CANCELLED = range(8)

        def __init__(self, message, code=1):
            self._message, self._code = message, code

        def message(self):
            return self._message

        def code(self):
            return self._code

    class InferenceResponse:
        def __init__(self, output_tensors=None, error=None):
            self.error_value = error

        def has_error(self):
            return self.error_value is not None

        def error(self):
            return self.error_value

    fake = types.SimpleNamespace(TritonError=TritonError, InferenceResponse=InferenceResponse)
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", fake)
    import portrait.serving.triton_io

    module = importlib.reload(portrait.serving.triton_io)
    module._model = "stage1"
    yield module
    monkeypatch.delitem(sys.modules, "triton_python_backend_utils")


def test_internal_errors_are_plain_and_logged_with_traceback(io_module, caplog):
    import logging

    def fail():
        open("/work/secret/path/file.bin")

    try:
        fail()
    except OSError as error:
        caught = error
    with caplog.at_level(logging.ERROR, logger="portrait"):
        io_module.log.propagate = True
        response = io_module.error_response(caught)
    message = response.error().message()
    assert response.error().code() == io_module.pb_utils.TritonError.INTERNAL
    assert "/work" not in message and "Traceback" not in message and "stage1" in message, message
    assert any(r.exc_info for r in caplog.records), "the traceback goes to the server log"


def test_callee_errors_keep_their_code(io_module):
    E = io_module.pb_utils.TritonError
    for code in (E.INVALID_ARG, E.UNAVAILABLE, E.CANCELLED, E.INTERNAL):
        response = io_module.pb_utils.InferenceResponse(error=E("prompt: must not be empty", code))
        with pytest.raises(io_module.BlsError) as caught:  # was: TypeError, exceptions must derive from BaseException
            io_module.read_response(response, ["x"], "text_encoder")
        mapped = io_module.to_triton_error(caught.value)
        assert (mapped.code(), mapped.message()) == (code, "prompt: must not be empty")
    assert io_module.to_triton_error(InvalidInput("seed", "too big")).code() == E.INVALID_ARG
    assert io_module.to_triton_error(Unavailable("service unavailable (draining)")).code() == E.UNAVAILABLE


def test_a_silent_callee_becomes_unavailable(io_module):
    import queue as q

    with pytest.raises(Unavailable, match="did not answer within 0.1 s"):
        io_module._next(q.Queue(), "denoise", 0.1)


def test_drain_refuses_direct_requests_only(io_module, tmp_path, monkeypatch):
    class Request:
        def __init__(self, parameters):
            self.value = parameters

        def parameters(self):
            return self.value

    flag = tmp_path / "draining"
    monkeypatch.setenv("PORTRAIT_DRAIN_FILE", str(flag))
    monkeypatch.setenv("PORTRAIT_INTERNAL_SECRET", "s3cret-of-this-server")
    io_module.refuse_if_draining(Request("{}"))  # not draining yet
    flag.touch()
    with pytest.raises(Unavailable):
        io_module.refuse_if_draining(Request("{}"))
    io_module.refuse_if_draining(Request('{"portrait_internal": "s3cret-of-this-server"}'))  # child work (bls_request)
    # what an outside client can send: forged markers are refused (issue 20: `portrait_internal=true` bypassed the drain)
    for forged in ('{"portrait_internal": true}', '{"portrait_internal": "true"}', '{"portrait_internal": 1}',
                   '{"portrait_internal": "s3cret"}', '{"portrait_internal": ""}'):
        with pytest.raises(Unavailable):
            io_module.refuse_if_draining(Request(forged))
    monkeypatch.setenv("PORTRAIT_INTERNAL_SECRET", "")  # no secret (not started by portrait serve): nothing is internal
    with pytest.raises(Unavailable):
        io_module.refuse_if_draining(Request('{"portrait_internal": ""}'))


def test_echoed_values_are_capped(io_module, caplog):
    """A 5 MiB job_id is not echoed into a 5 MiB error message or log line (issue 20)."""
    import logging

    huge = "0" * (5 * 2**20)
    with caplog.at_level(logging.INFO, logger="portrait"):
        io_module.log.propagate = True
        for error in (InvalidInput("job_id", f"must be 32 hex digits, got {huge!r}"), Unavailable(huge),
                      io_module.BlsError("denoise", io_module.pb_utils.TritonError.INVALID_ARG, huge)):
            message = io_module.error_response(error).error().message()
            assert len(message) < 1000 and "characters, cut" in message, len(message)
    assert caplog.records and all(len(r.getMessage()) < 1000 for r in caplog.records)
    assert io_module.error_response(InvalidInput("job_id", "must be 32 hex digits")).error().message() == \
        "job_id: must be 32 hex digits"  # short messages unchanged


def test_client_maps_unavailable():
    from clients.triton import translate_error

    class Fake(Exception):
        def __init__(self, status, message):
            self._status, self._message = status, message

        def status(self):
            return self._status

        def message(self):
            return self._message

    assert isinstance(translate_error(Fake("StatusCode.UNAVAILABLE", "Socket closed")), Unavailable)
    assert isinstance(translate_error(Fake(None, "service unavailable (the server is shutting down)")), Unavailable)
    assert isinstance(translate_error(Fake(None, "prompt: must not be empty")), InvalidInput)

"""Start and stop the Triton server that ships inside the nvidia-pytriton wheel, and supervise it.

`Supervisor` is `portrait serve`: tritonserver as a child in its own process group, a watchdog over its
Python-backend stubs, a truthful health endpoint, crash-only recovery and a graceful drain on SIGTERM
(docs/reliability.md).
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from portrait.errors import ServerError
from portrait.serving import metrics
from portrait.settings import PROJECT_ROOT, Settings, get_settings

logger = logging.getLogger("portrait.serve")

MODEL_REPOSITORY = PROJECT_ROOT / "model_repository"
# the BLS model(s) chaining the stages: a second --model-repository (the layout the specification gives)
ENSEMBLES = PROJECT_ROOT / "ensembles"


def model_repositories(settings: Settings, cache: Path) -> list[Path]:
    """The repositories to serve. With `unet_dir` set, a merged copy (links) where that directory is `unet`:
    a deployment choice (e.g. a TensorRT plan) that no caller sees. The `unet` model is left out unless
    PORTRAIT_SERVE_UNET or `unet_dir` asks for it: `denoise` holds the UNet, `unet` would be a second copy."""
    if settings.unet_dir is None and settings.serve_unet:
        return [MODEL_REPOSITORY, ENSEMBLES]
    if settings.unet_dir is not None and not (settings.unet_dir / "config.pbtxt").exists():
        raise ServerError(f"PORTRAIT_UNET_DIR={settings.unet_dir} holds no config.pbtxt")
    merged = cache
    shutil.rmtree(merged, ignore_errors=True)
    merged.mkdir(parents=True)
    for model in sorted(p for p in MODEL_REPOSITORY.iterdir() if p.is_dir()):
        if model.name == "unet" and settings.unet_dir is None:
            continue
        (merged / model.name).symlink_to(settings.unet_dir if model.name == "unet" else model, target_is_directory=True)
    return [merged, ENSEMBLES]


def pytriton_root() -> Path:
    import pytriton

    return Path(pytriton.__file__).resolve().parent


def backend_directory(cache: Path) -> Path:
    """Triton's backends with the Python-backend stub for this Python placed beside libtriton_python.so."""
    server = pytriton_root() / "tritonserver"
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = server / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.exists():
        raise ServerError(f"nvidia-pytriton ships no Python-backend stub for Python {version}")
    target = cache / "backends"
    python_dir = target / "python"
    if not (python_dir / stub.name).exists():
        shutil.copytree(server / "backends", target, dirs_exist_ok=True)
        shutil.copy2(stub, python_dir / stub.name)
    return target


def server_environment(settings: Settings, drain_file: Path | None = None, internal_secret: str = "",
                       metrics_dir: Path | None = None) -> dict[str, str]:
    """The server's environment: its bundled libraries, this interpreter's libpython, the models' import paths,
    the drain flag the models check, the secret that marks their BLS requests internal (triton_io.is_internal: an
    outside client cannot forge it), where the models write their metrics (portrait/serving/metrics.py), and a
    temporary directory under PORTRAIT_CACHE_DIR (read-only root)."""
    env = dict(os.environ)
    env["PORTRAIT_INTERNAL_SECRET"] = internal_secret
    # the settings a caller may override in code (Settings is read once per process): passed on to the models
    env["PORTRAIT_FACE_DETECTOR"] = settings.face_detector
    env["PORTRAIT_ADMISSION"] = settings.admission
    if metrics_dir is not None:
        env[metrics.MULTIPROC_ENV] = str(metrics_dir)
    tmp = settings.cache_dir / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    env["TMPDIR"] = str(tmp)  # portrait/serving/cancel.py's flags and anything else a model writes to a temp file
    if drain_file is not None:
        env["PORTRAIT_DRAIN_FILE"] = str(drain_file)
    libs = [sysconfig.get_config_var("LIBDIR"), str(pytriton_root().parent / "nvidia_pytriton.libs")]
    env["LD_LIBRARY_PATH"] = os.pathsep.join([*libs, env.get("LD_LIBRARY_PATH", "")]).rstrip(os.pathsep)
    # read by the first lines of every model.py: the stub starts an isolated interpreter
    env["PORTRAIT_PYTHONPATH"] = os.pathsep.join([str(PROJECT_ROOT), sysconfig.get_paths()["purelib"]])
    env["PORTRAIT_MODELS"] = str(settings.models_dir)
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def connect_host(host: str) -> str:
    """Where a local client reaches a server bound to `host`."""
    return "127.0.0.1" if host in ("0.0.0.0", "::", "") else host


def trace_flags(settings: Settings) -> list[str]:
    """Triton's OpenTelemetry trace mode, exporting OTLP/HTTP to PORTRAIT_OTEL_ENDPOINT (none when unset). The BLS
    models pass their request's trace to the requests they make (portrait/serving/triton_io.py), so one trace holds them."""
    if not settings.otel_endpoint:
        return []
    return ["--trace-config=mode=opentelemetry", "--trace-config=level=TIMESTAMPS",
            f"--trace-config=rate={max(1, settings.otel_rate)}", "--trace-config=count=-1",
            f"--trace-config=opentelemetry,url={settings.otel_endpoint}",
            "--trace-config=opentelemetry,resource=service.name=portrait"]


SHM_PREFIX = "triton_python_backend_shm_region_"
RESTRICTED_APIS = ("model-repository", "shared-memory", "logging", "trace")
API_KEY_HEADER = "X-Portrait-Key"


@dataclass(frozen=True)
class Stub:
    """One Python-backend stub process of a server (from /proc: no psutil)."""

    pid: int
    model: str  # from the model.py path: <repository>/<model>/<version>/model.py
    instance: str  # e.g. stage1_0_3
    shm_region: str  # its /dev/shm region, triton_python_backend_shm_region_<uuid>
    state: str  # /proc/<pid>/stat state: R, S, D ... Z (dead, not reaped), T (stopped)


def read_stub(pid: int) -> Stub | None:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    if not argv or not argv[0].endswith(b"triton_python_backend_stub") or len(argv) < 10:
        return None
    args = [a.decode(errors="replace") for a in argv if a]  # cmdline ends with a NUL
    shm = next((a for a in args if a.startswith(SHM_PREFIX)), "")
    state = stat[stat.rindex(")") + 2:].split()[0]
    return Stub(pid, Path(args[1]).parent.parent.name, args[-2], shm, state)


def children_of(pid: int) -> list[int]:
    """Direct children of `pid` (every thread's children file: the stubs are forked by the backend's threads)."""
    found = []
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return []
    for task in tasks:
        try:
            found += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return sorted(set(found))


def python_stub_count(repositories: list[Path]) -> int:
    """How many Python-backend stubs these repositories start: the instance counts of their python models
    (a TensorRT `unet` has none)."""
    total = 0
    for repository in repositories:
        for config in sorted(repository.glob("*/config.pbtxt")):
            text = re.sub(r"#.*", "", config.read_text())
            if not re.search(r'backend:\s*"python"', text):
                continue
            group = re.search(r"instance_group\s*\[(.*?)\]", text, re.S)
            counts = re.findall(r"count:\s*(\d+)", group.group(1)) if group else []
            total += sum(int(c) for c in counts) if counts else 1
    return total


def port_open(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


class Aborted(ServerError):
    """A start interrupted by SIGTERM / SIGINT."""


@dataclass
class TritonServer:
    """A tritonserver child process serving model_repository/ and ensembles/."""

    settings: Settings
    http_port: int
    grpc_port: int
    metrics_port: int  # the public metrics port: MetricsEndpoint (Triton's metrics + the models' portrait_*)
    triton_metrics_port: int  # Triton's own metrics, on loopback only
    log_path: Path
    process: subprocess.Popen | None = None
    api_key: str = ""  # X-Portrait-Key of the restricted APIs: PORTRAIT_API_KEY, or random per server
    # Triton's own HTTP port, on 127.0.0.1 only: `http_port` is the validating front's (portrait/serving/http_front.py)
    triton_http_port: int = 0
    internal_secret: str = field(default_factory=lambda: secrets.token_urlsafe(32))  # BLS requests carry it
    front: object | None = None  # the running HttpFront
    shm_regions: set[str] = field(default_factory=set)  # every region its stubs were seen with
    endpoint: MetricsEndpoint | None = None  # started with the first start, kept over restarts
    stub_pids: set[int] = field(default_factory=set)  # every stub seen (their live gauges go when they die)

    @classmethod
    def create(cls, settings: Settings | None = None, *, free_ports: bool = False, log_path: Path | None = None):
        settings = settings or get_settings()
        ports = [free_port() for _ in range(3)] if free_ports else [settings.http_port, settings.grpc_port, settings.metrics_port]
        log = log_path or settings.cache_dir / f"tritonserver-{ports[1]}.log"
        internal = settings.triton_http_port if settings.triton_http_port and not free_ports else free_port()
        return cls(settings, *ports, free_port(), log_path=log, api_key=settings.api_key or secrets.token_urlsafe(24),
                   triton_http_port=internal)

    @property
    def host(self) -> str:
        return connect_host(self.settings.host)

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        """The public HTTP port: the validating front."""
        return f"{self.host}:{self.http_port}"

    @property
    def triton_http_url(self) -> str:
        """Triton's own HTTP port (loopback, internal)."""
        return f"127.0.0.1:{self.triton_http_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.host}:{self.metrics_port}/metrics"

    @property
    def drain_file(self) -> Path:
        return self.settings.cache_dir / f"draining-{self.grpc_port}"

    def command(self) -> list[str]:
        cache = self.settings.cache_dir / "triton"
        self.repositories = model_repositories(self.settings, cache / f"repository-{self.grpc_port}")
        repos = [f"--model-repository={r}" for r in self.repositories]
        host, restricted = self.settings.host, ",".join(RESTRICTED_APIS)
        return [
            str(pytriton_root() / "tritonserver" / "bin" / "tritonserver"), *repos,
            f"--backend-directory={backend_directory(cache)}",
            # Triton's HTTP and metrics on loopback only: the public HTTP port is the front's (Triton's JSON parser can
            # abort the server), the public metrics port the MetricsEndpoint's (Triton's metrics + the models' own)
            "--http-address=127.0.0.1", f"--grpc-address={host}", "--metrics-address=127.0.0.1",
            f"--http-port={self.triton_http_port}", f"--grpc-port={self.grpc_port}",
            f"--metrics-port={self.triton_metrics_port}",
            # closed by default: the APIs that change the server answer only with the key
            f"--http-restricted-api={restricted}:{API_KEY_HEADER}={self.api_key}",
            f"--grpc-restricted-protocol={restricted}:{API_KEY_HEADER.lower()}={self.api_key}",
            "--model-control-mode=none", "--strict-readiness=true", "--exit-on-error=true",
            f"--exit-timeout-secs={max(1, int(self.settings.grace_period))}", "--log-verbose=0",
            *trace_flags(self.settings),
        ]

    def start(self, timeout: float = 300.0, abort=None) -> TritonServer:
        """Start and wait until ready; `abort()` true (a signal arrived) stops the wait: the server is stopped."""
        from portrait.models.checkpoint import check_sdxl_dir

        check_sdxl_dir(self.settings.sdxl_dir)  # a clear message instead of every model failing to load
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        rotate_log(self.log_path)  # a crashed run's log stays (.1, .2, ...): its last lines are the evidence
        if self.endpoint is None:
            self.endpoint = MetricsEndpoint(self).start()
        log = open(self.log_path, "wb")
        self.drain_file.unlink(missing_ok=True)
        self.shm_regions.clear()
        self.process = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT,
                                        env=server_environment(self.settings, self.drain_file, self.internal_secret,
                                                               self.metrics_dir),
                                        start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.stubs()  # records each stub's shm region as it appears
            if self.process.poll() is not None:
                self.remove_shm_regions()
                raise ServerError(f"tritonserver exited with {self.process.returncode}; last log lines:\n{self.log_tail()}")
            if self.ready():
                self.stubs()
                self.start_front()
                return self
            if abort is not None and abort():
                self.stop(timeout=5)
                raise Aborted("start aborted by a signal")
            time.sleep(0.5)
        self.stop()
        raise ServerError(f"tritonserver not ready after {timeout:.0f} s; last log lines:\n{self.log_tail()}")

    def start_front(self) -> None:
        """The validating front on the public HTTP port, checking requests against the configs Triton now serves."""
        from portrait.serving.http_front import HttpFront, Limits, fetch_model_specs

        try:
            models = fetch_model_specs(self.triton_http_url, self.api_key)
            limits = Limits(self.settings.http_max_body, self.settings.http_max_json)
            self.front = HttpFront(self.settings.host, self.http_port, self.triton_http_url, self.api_key, models,
                                   limits).start()
        except Exception:
            self.stop(timeout=5)
            raise

    def ready(self, timeout: float = 2.0) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.triton_http_url}/v2/health/ready", timeout=timeout) as r:
                return r.status == 200
        except OSError:
            return False

    def expected_stubs(self) -> int:
        return python_stub_count(getattr(self, "repositories", None) or model_repositories(
            self.settings, self.settings.cache_dir / "triton" / f"repository-{self.grpc_port}"))

    def stubs(self) -> list[Stub]:
        """The server's Python-backend stubs now (dead-but-unreaped ones included, state Z)."""
        if self.process is None:
            return []
        found = [s for s in map(read_stub, children_of(self.process.pid)) if s is not None]
        self.shm_regions.update(s.shm_region for s in found if s.shm_region)
        self.stub_pids.update(s.pid for s in found)
        return found

    @property
    def metrics_dir(self) -> Path:
        """Where the model processes write their portrait_* metrics (portrait/serving/metrics.py)."""
        return self.settings.cache_dir / f"metrics-{self.grpc_port}"

    @property
    def restarts(self) -> int:
        """Restarts of tritonserver by its supervisor, kept in the metrics directory (it outlives the supervisor
        process inside a pod: the cache is an emptyDir)."""
        try:
            return int((self.metrics_dir / "restarts").read_text())
        except (OSError, ValueError):
            return 0

    def count_restart(self) -> int:
        self.metrics_dir.mkdir(parents=True, exist_ok=True)
        (self.metrics_dir / "restarts").write_text(str(self.restarts + 1))
        return self.restarts

    def forget_dead_stubs(self) -> None:
        """The live gauges (in flight, the scheduler's) of stubs that are gone stop counting."""
        alive = {s.pid for s in self.stubs() if s.state not in ("Z", "X")} if self.process is not None else set()
        for pid in self.stub_pids - alive:
            metrics.process_dead(self.metrics_dir, pid)
        self.stub_pids &= alive

    def triton_metrics_text(self, timeout: float = 5.0) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.triton_metrics_port}/metrics", timeout=timeout) as r:
            return r.read().decode()

    def remove_shm_regions(self) -> list[str]:
        """Unlink the /dev/shm regions of this server's stubs (a killed stub, or a server killed, leaves them)."""
        removed = []
        for name in sorted(self.shm_regions):
            try:
                (Path("/dev/shm") / name).unlink()
                removed.append(name)
            except FileNotFoundError:
                pass
            except OSError as error:
                logger.warning("could not remove /dev/shm/%s: %s", name, error)
        return removed

    def metrics_text(self, timeout: float = 5.0) -> str:
        with urllib.request.urlopen(self.metrics_url, timeout=timeout) as r:
            return r.read().decode()

    def in_flight(self, timeout: float = 5.0) -> int:
        """Requests being executed (portrait_in_flight_requests) plus those queued (nv_inference_pending_request_count)."""
        total = 0.0
        for line in self.metrics_text(timeout).splitlines():
            if line.startswith(("portrait_in_flight_requests{", "nv_inference_pending_request_count{")):
                total += float(line.rsplit(" ", 1)[1])
        return int(round(total))

    def probe(self, timeout: float = 10.0) -> str | None:
        """A cheap end-to-end check through the HTTP front and Triton into a stub: face_detector on an 8x8 image (a few
        ms). Marked internal (the secret) so a draining server still answers it. None when it answered, else why not."""
        body = json.dumps({"parameters": {"portrait_internal": self.internal_secret},
                           "inputs": [{"name": "image", "shape": [8, 8, 3], "datatype": "UINT8", "data": [0] * 192}],
                           "outputs": [{"name": "boxes"}]}).encode()
        request = urllib.request.Request(f"http://{self.http_url}/v2/models/face_detector/infer", data=body,
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as r:
                return None if r.status == 200 else f"probe answered HTTP {r.status}"
        except Exception as error:  # noqa: BLE001 (any failure is the answer)
            return f"probe failed: {type(error).__name__}: {error}"

    def kill(self) -> None:
        """SIGKILL the whole process group at once (crash-only: requests touched by a dead stub cannot finish)."""
        if self.process is None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.stop(timeout=0)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM (Triton unloads its models), then SIGKILL what is left of the server's process group, then remove
        its stubs' shared-memory regions. Drain first (Supervisor.drain): Triton's own SIGTERM handling unloads
        models under in-flight BLS work."""
        if self.front is not None:  # first: new HTTP requests are refused at the door, not cut inside
            self.front.stop()
            self.front = None
        if self.process is None:
            return
        self.stubs()
        if self.process.poll() is None and timeout > 0:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        # the server leads its own process group (start_new_session): whatever is left in it, a Python-backend
        # stub that did not exit with its server included, goes too
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait()
        deadline = time.monotonic() + 10  # SIGKILLed stubs vanish asynchronously (reaped by init): wait for the last
        while time.monotonic() < deadline:
            try:
                os.killpg(self.process.pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)
        self.remove_shm_regions()
        self.forget_dead_stubs()
        self.drain_file.unlink(missing_ok=True)

    def close(self) -> None:
        """Stop the server and its metrics endpoint."""
        self.stop()
        if self.endpoint is not None:
            self.endpoint.stop()
            self.endpoint = None

    def __enter__(self):
        return self.start() if self.process is None else self

    def __exit__(self, *exc):
        self.close()


def exit_status(code: int | None) -> str:
    """A child's return code as an operator reads it: -11 -> 'killed by SIGSEGV (-11)'."""
    if code is not None and code < 0:
        try:
            return f"killed by {signal.Signals(-code).name} ({code})"
        except ValueError:
            pass
    return f"exit code {code}"


def rotate_log(path: Path, keep: int = 5) -> None:
    """tritonserver.log -> .log.1 -> ... -> .log.<keep> (the oldest dropped), so a restart never erases a crash."""
    if not path.exists() or path.stat().st_size == 0:
        return
    for i in range(keep - 1, 0, -1):
        older = path.with_name(f"{path.name}.{i}")
        if older.exists():
            older.replace(path.with_name(f"{path.name}.{i + 1}"))
    path.replace(path.with_name(f"{path.name}.1"))


class MetricsEndpoint:
    """The public metrics port: Triton's own metrics (from its loopback port) followed by the models' portrait_*
    metrics (prometheus_client multiprocess files) and portrait_server_restarts_total. One scrape target, as before;
    it answers while Triton restarts (with the portrait_* part only)."""

    def __init__(self, server: TritonServer):
        self.server = server
        self.http: ThreadingHTTPServer | None = None

    def text(self) -> str:
        parts = []
        try:
            parts.append(self.server.triton_metrics_text())
        except OSError:
            pass  # Triton is (re)starting: the portrait_* part still answers
        parts.append(metrics.exposition(self.server.metrics_dir))
        parts.append("# HELP portrait_server_restarts_total Restarts of tritonserver by portrait serve's supervisor\n"
                     "# TYPE portrait_server_restarts_total counter\n"
                     f"portrait_server_restarts_total {self.server.restarts}\n")
        return "".join(p if p.endswith("\n") or not p else p + "\n" for p in parts)

    def start(self) -> MetricsEndpoint:
        metrics.prepare_directory(self.server.metrics_dir)
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's name)
                if self.path.split("?")[0].rstrip("/") != "/metrics":
                    self.send_error(404)
                    return
                data = endpoint.text().encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):  # scraped every few seconds
                pass

        self.http = QuietHTTPServer((self.server.settings.host, self.server.metrics_port), Handler)
        self.http.daemon_threads = True
        threading.Thread(target=self.http.serve_forever, daemon=True, name="metrics").start()
        return self

    def stop(self) -> None:
        if self.http is not None:
            self.http.shutdown()
            self.http.server_close()
            self.http = None


@dataclass
class Health:
    """What the health endpoint answers; written by the supervisor loop, read by the HTTP threads."""

    triton_ready: bool = False
    stubs_alive: bool = False
    draining: bool = False
    reason: str = "starting"
    heartbeat: float = field(default_factory=time.monotonic)

    @property
    def ready(self) -> bool:
        return self.triton_ready and self.stubs_alive and not self.draining

    def as_dict(self) -> dict:
        return {"ready": self.ready, "triton_ready": self.triton_ready, "stubs_alive": self.stubs_alive,
                "draining": self.draining, "reason": self.reason}


def health_handler(health: Health, live_after: float):
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            if self.path.rstrip("/") == "/v2/health/ready":
                ok, body = health.ready, health.as_dict()
            elif self.path.rstrip("/") == "/v2/health/live":
                ok = time.monotonic() - health.heartbeat < live_after  # the supervisor loop is turning
                body = {"live": ok}
            else:
                self.send_error(404)
                return
            data = json.dumps(body).encode()
            self.send_response(200 if ok else 503)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):  # probes every few seconds: not worth a log line each
            pass

    return Handler


class QuietHTTPServer(ThreadingHTTPServer):
    def handle_error(self, request, client_address):
        if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):  # a prober that gave up
            super().handle_error(request, client_address)


EXIT_OK, EXIT_DRAIN_CUT, EXIT_FAILURE = 0, 1, 3


class Supervisor:
    """`portrait serve`: one tritonserver child, watched.

    - Watchdog (every `poll` s): Triton's process, every stub counted when the server became ready (a stub that
      died is a zombie of tritonserver or gone; a stopped one, state T, is wedged), and every `probe_every` s an
      end-to-end probe (Triton's readiness and a tiny face_detector infer with a timeout; two misses in a row =
      wedged).
    - On a failure: unready at once, then crash-only: the whole process group is SIGKILLed (the clients of
      requests it held get a closed connection at once instead of silence), its shm regions removed, and Triton
      restarted (default) or the supervisor exits EXIT_FAILURE (`exit_on_failure`: a container's orchestrator
      restarts it).
    - SIGTERM / SIGINT: unready, the drain flag makes the entry models refuse new requests with UNAVAILABLE,
      in-flight work (portrait_in_flight_requests + Triton's pending count) finishes up to the grace period,
      then Triton stops, its shm regions are removed: EXIT_OK (EXIT_DRAIN_CUT if the grace ran out first).
    """

    def __init__(self, server: TritonServer, health_port: int, exit_on_failure: bool = False, poll: float = 0.5,
                 probe_every: float = 5.0, probe_timeout: float = 10.0, start_timeout: float = 600.0,
                 banner: str = ""):
        self.server, self.health_port, self.exit_on_failure = server, health_port, exit_on_failure
        self.poll, self.probe_every, self.probe_timeout, self.start_timeout = poll, probe_every, probe_timeout, start_timeout
        self.health = Health()
        self.signals: list[int] = []
        self.restarts = 0
        self.http: ThreadingHTTPServer | None = None
        self.banner = banner  # printed once, after the first ready line

    def say(self, message: str) -> None:
        logger.info(message)

    def install_signal_handlers(self) -> None:
        # lock-free: the handler only appends (an Event.set in a handler can deadlock on a second signal)
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda number, _frame: self.signals.append(number))

    def start_health(self) -> None:
        self.http = QuietHTTPServer((self.server.settings.host, self.health_port),
                                    health_handler(self.health, live_after=max(10.0, 10 * self.poll)))
        self.http.daemon_threads = True
        threading.Thread(target=self.http.serve_forever, daemon=True, name="health").start()

    def start_triton(self) -> None:
        self.health.reason = "starting"
        def abort() -> bool:  # called every 0.5 s while Triton loads: the supervisor is alive meanwhile
            self.health.heartbeat = time.monotonic()
            return bool(self.signals)

        self.server.start(self.start_timeout, abort=abort)
        stubs = self.server.stubs()
        self.expected = {s.pid: s.instance for s in stubs}  # pid -> instance: a dead stub's name is gone from /proc
        wanted = self.server.expected_stubs()
        # fewer than configured: one died while the others loaded (Triton's readiness does not see that)
        self.missing = wanted - len(stubs)
        self.health.triton_ready, self.health.stubs_alive, self.health.reason = True, True, "ready"
        self.say(f"Triton ready: gRPC {self.server.grpc_url}  HTTP {self.server.http_url}  metrics "
                 f"{self.server.metrics_url}  health http://{connect_host(self.server.settings.host)}:"
                 f"{self.health_port}/v2/health/ready  ({len(stubs)} Python-backend stubs watched)")
        if self.banner:
            self.say(self.banner)
            self.banner = ""

    def check(self) -> str | None:
        """Why the server is failing now, or None."""
        process = self.server.process
        if process is None or process.poll() is not None:
            return f"tritonserver exited ({exit_status(None if process is None else process.returncode)})"
        alive = {s.pid: s for s in self.server.stubs()}
        if self.missing > 0:
            return f"{self.missing} Python-backend stub(s) missing after the start (died while loading)"
        for pid in sorted(self.expected):
            stub = alive.get(pid)
            if stub is None or stub.state in ("Z", "X"):
                return f"Python-backend stub {pid} ({self.expected[pid]}, {'a zombie' if stub else 'gone'}) died"
            if stub.state in ("T", "t"):
                return f"Python-backend stub {pid} ({stub.instance}) is stopped (wedged)"
        return None

    def run(self) -> int:
        self.install_signal_handlers()
        self.start_health()
        try:
            return self.loop()
        finally:
            self.server.stop(timeout=5)
            self.server.close()
            if self.http is not None:
                self.http.shutdown()

    def loop(self) -> int:
        try:
            return self.watch()
        except Aborted:
            self.say("stopped during start")
            return EXIT_OK

    def watch(self) -> int:
        self.start_triton()
        next_probe, misses = time.monotonic() + self.probe_every, 0
        while True:
            self.health.heartbeat = time.monotonic()
            if self.signals:
                return self.drain()
            failure = self.check()
            if failure is None and time.monotonic() >= next_probe:
                problem = None if self.server.ready(self.probe_timeout) else "Triton reports not ready"
                problem = problem or self.server.probe(self.probe_timeout)
                misses = misses + 1 if problem else 0
                if misses >= 2:
                    failure = f"wedged: {problem}"
                next_probe = time.monotonic() + self.probe_every
            if failure is not None:
                self.health.triton_ready = self.health.stubs_alive = False
                self.health.reason = failure
                self.say(f"failure: {failure}; killing tritonserver (crash-only); the last lines of its log "
                         f"({self.server.log_path}, kept as .1 after the restart):\n{self.server.log_tail(25)}")
                self.server.kill()
                if self.exit_on_failure:
                    self.say(f"exiting {EXIT_FAILURE} (--exit-on-failure): the orchestrator restarts the server")
                    return EXIT_FAILURE
                self.restarts += 1
                self.say(f"restart {self.restarts} (portrait_server_restarts_total {self.server.count_restart()})")
                if self.signals:
                    return self.drain()
                self.start_triton()
                next_probe, misses = time.monotonic() + self.probe_every, 0
            time.sleep(self.poll)

    def drain(self) -> int:
        grace = self.server.settings.grace_period
        self.health.draining, self.health.reason = True, "draining"
        self.server.drain_file.parent.mkdir(parents=True, exist_ok=True)
        self.server.drain_file.touch()  # the entry models refuse new requests with UNAVAILABLE from now on
        self.say(f"draining (grace {grace:g} s): new requests get UNAVAILABLE, in-flight ones finish")
        deadline, clean, last = time.monotonic() + grace, False, None
        while time.monotonic() < deadline:
            self.health.heartbeat = time.monotonic()
            if self.server.process is None or self.server.process.poll() is not None:
                break
            try:
                last = self.server.in_flight()
            except OSError:
                last = None
            if last == 0:
                clean = True
                break
            time.sleep(0.2)
        self.say("in-flight work done; stopping Triton" if clean else
                 f"grace period over with {last} request(s) in flight; stopping Triton")
        self.server.stop(timeout=max(5.0, grace))
        self.say("stopped; shared-memory regions removed")
        return EXIT_OK if clean else EXIT_DRAIN_CUT

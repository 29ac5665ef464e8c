"""Start and stop the Triton server that ships inside the nvidia-pytriton wheel."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from portrait.errors import ServerError
from portrait.settings import PROJECT_ROOT, Settings, get_settings

MODEL_REPOSITORIES = (PROJECT_ROOT / "model_repository", PROJECT_ROOT / "ensembles")


def model_repositories(settings: Settings, cache: Path) -> list[Path]:
    """The repositories to serve. With `unet_dir` set, a merged copy (links) where that directory is `unet`:
    a deployment choice (e.g. a TensorRT plan) that no caller sees. The `unet` model is left out unless
    PORTRAIT_SERVE_UNET or `unet_dir` asks for it: `denoise` holds the UNet, `unet` would be a second copy."""
    if settings.unet_dir is None and settings.serve_unet:
        return list(MODEL_REPOSITORIES)
    if settings.unet_dir is not None and not (settings.unet_dir / "config.pbtxt").exists():
        raise ServerError(f"PORTRAIT_UNET_DIR={settings.unet_dir} holds no config.pbtxt")
    merged = cache
    shutil.rmtree(merged, ignore_errors=True)
    merged.mkdir(parents=True)
    for model in sorted(p for p in MODEL_REPOSITORIES[0].iterdir() if p.is_dir()):
        if model.name == "unet" and settings.unet_dir is None:
            continue
        (merged / model.name).symlink_to(settings.unet_dir if model.name == "unet" else model, target_is_directory=True)
    return [merged, *MODEL_REPOSITORIES[1:]]


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


def server_environment(settings: Settings) -> dict[str, str]:
    """The server's environment: its bundled libraries, this interpreter's libpython, and the models' import paths."""
    env = dict(os.environ)
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


def port_open(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


@dataclass
class TritonServer:
    """A tritonserver child process serving model_repository/ and ensembles/."""

    settings: Settings
    http_port: int
    grpc_port: int
    metrics_port: int
    log_path: Path
    process: subprocess.Popen | None = None

    @classmethod
    def create(cls, settings: Settings | None = None, *, free_ports: bool = False, log_path: Path | None = None):
        settings = settings or get_settings()
        ports = [free_port() for _ in range(3)] if free_ports else [settings.http_port, settings.grpc_port, settings.metrics_port]
        log = log_path or PROJECT_ROOT / ".cache" / f"tritonserver-{ports[1]}.log"
        return cls(settings, *ports, log_path=log)

    @property
    def grpc_url(self) -> str:
        return f"localhost:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"localhost:{self.http_port}"

    def command(self) -> list[str]:
        cache = PROJECT_ROOT / ".cache" / "triton"
        repos = [f"--model-repository={r}" for r in model_repositories(self.settings, cache / f"repository-{self.grpc_port}")]
        return [
            str(pytriton_root() / "tritonserver" / "bin" / "tritonserver"), *repos,
            f"--backend-directory={backend_directory(cache)}",
            f"--http-port={self.http_port}", f"--grpc-port={self.grpc_port}", f"--metrics-port={self.metrics_port}",
            "--exit-timeout-secs=10", "--log-verbose=0",
        ]

    def start(self, timeout: float = 300.0) -> "TritonServer":
        from portrait.checkpoint import check_sdxl_dir

        check_sdxl_dir(self.settings.sdxl_dir)  # a clear message instead of every model failing to load
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "wb")
        self.process = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT,
                                        env=server_environment(self.settings), start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServerError(f"tritonserver exited with {self.process.returncode}; last log lines:\n{self.log_tail()}")
            if self.ready():
                return self
            time.sleep(0.5)
        self.stop()
        raise ServerError(f"tritonserver not ready after {timeout:.0f} s; last log lines:\n{self.log_tail()}")

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.http_url}/v2/health/ready", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM (Triton drains in-flight requests), then SIGKILL what is left of the server's process group."""
        if self.process is None:
            return
        if self.process.poll() is None:
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

    def __enter__(self):
        return self.start() if self.process is None else self

    def __exit__(self, *exc):
        self.stop()

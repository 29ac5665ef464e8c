"""The one place that reads the environment; everything else receives a `Settings`."""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Settings:
    models_dir: Path  # PORTRAIT_MODELS: sdxl/, photomaker/, insightface/
    url: str  # PORTRAIT_URL: gRPC host:port of a running server
    http_port: int
    grpc_port: int
    metrics_port: int
    device: str  # "cpu" or "cuda"; selects the torch device inside the models
    torch_threads: int  # intra-op threads for the heavy models (0 = torch's default)
    unet_dir: Path | None  # PORTRAIT_UNET_DIR: a model directory served as `unet` instead (a TensorRT plan on GPU)
    store_dir: Path = PROJECT_ROOT / "store"  # PORTRAIT_STORE: the local productions store
    store_bucket: str | None = None  # PORTRAIT_STORE_S3_BUCKET: use an S3-compatible bucket instead
    store_prefix: str = ""  # PORTRAIT_STORE_S3_PREFIX
    store_endpoint: str | None = None  # PORTRAIT_STORE_S3_ENDPOINT (MinIO, Ceph ...; default: AWS)
    # serving (portrait serve, docs/reliability.md)
    host: str = "127.0.0.1"  # PORTRAIT_HOST: address HTTP, gRPC, metrics and health bind to
    health_port: int = 8003  # PORTRAIT_HEALTH_PORT: the supervisor's truthful /v2/health/{live,ready}
    grace_period: float = 30.0  # PORTRAIT_GRACE_PERIOD: seconds SIGTERM waits for in-flight requests
    api_key: str | None = None  # PORTRAIT_API_KEY: X-Portrait-Key of the restricted APIs (None: random per start)
    cache_dir: Path = PROJECT_ROOT / ".cache"  # PORTRAIT_CACHE_DIR: every path the server writes
    bls_timeout: float = 300.0  # PORTRAIT_BLS_TIMEOUT: seconds a model waits for one answer of a model it calls
    # the validating HTTP front on PORTRAIT_HTTP_PORT (portrait/serving/http_front.py); Triton's own HTTP port is internal
    triton_http_port: int = 0  # PORTRAIT_TRITON_HTTP_PORT: Triton's HTTP port on 127.0.0.1 (0: a free port per server)
    http_max_body: int = 64 * 2**20  # PORTRAIT_HTTP_MAX_BODY: bytes of one HTTP request body (binary tensors included)
    http_max_json: int = 8 * 2**20  # PORTRAIT_HTTP_MAX_JSON: bytes of its JSON part (parsed in memory: kept small)
    # limits per request (docs/reliability.md, "Limits")
    max_request_cost: float = 160.0  # PORTRAIT_MAX_REQUEST_COST: megapixel-steps (width x height x images x steps / 2^20)
    request_deadline: float = 600.0  # PORTRAIT_REQUEST_DEADLINE: seconds a request may denoise (0: none; the scheduler)
    max_image_pixels: int = 2048 * 2048  # PORTRAIT_MAX_IMAGE_PIXELS: pixels of one image input (vae_encoder, faces, uploads)
    # the denoise step scheduler (portrait/serving/step_scheduler.py, model_repository/denoise)
    max_rows: int = 16  # PORTRAIT_MAX_ROWS: UNet rows per forward (CFG doubles a request's rows)
    max_active: int = 32  # PORTRAIT_MAX_ACTIVE: requests denoising at once; later ones wait (the backlog)
    admission: str = "continuous"  # PORTRAIT_ADMISSION: continuous | batch | sequential (docs/benchmarks.md)
    face_detector: str = "auto"  # PORTRAIT_FACE_DETECTOR: auto (InsightFace if present, else MediaPipe) | insightface | mediapipe | haar
    unet_backend: str = "torch"  # PORTRAIT_UNET_BACKEND: torch | tensorrt (an engine run in-process, GPU only)
    unet_engine: Path | None = None  # PORTRAIT_UNET_ENGINE: the TensorRT engine file (scripts/export_unet_onnx.py --engine)
    serve_unet: bool = False  # PORTRAIT_SERVE_UNET=1: also serve the separate `unet` model (a second copy of the weights)
    light_threads: int = 1  # PORTRAIT_LIGHT_THREADS: intra-op threads of the light models (text, VAE, identity)
    # PORTRAIT_UNET_STORAGE=float16|bfloat16: the UNet's weights kept in that dtype, computed in the device's
    # (layerwise casting): half the UNet's CPU memory (docs/memory.md); unset = fp32 on CPU
    unet_storage: str | None = None
    # tracing (docs/deploy.md): Triton's OpenTelemetry mode, BLS child requests carry their parent's trace
    otel_endpoint: str | None = None  # PORTRAIT_OTEL_ENDPOINT: OTLP/HTTP traces URL, e.g. http://collector:4318/v1/traces
    otel_rate: int = 1  # PORTRAIT_OTEL_RATE: trace one request in N (Triton's trace rate)

    @property
    def sdxl_dir(self) -> Path:
        return self.models_dir / "sdxl"

    @property
    def photomaker_file(self) -> Path | None:
        from portrait.models.checkpoint import find_photomaker_file

        return find_photomaker_file(self.models_dir)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    env = os.environ
    return Settings(
        models_dir=Path(env.get("PORTRAIT_MODELS", PROJECT_ROOT / "weights" / "tiny")).expanduser().resolve(),
        url=env.get("PORTRAIT_URL", "localhost:8001"),
        http_port=int(env.get("PORTRAIT_HTTP_PORT", "8000")),
        grpc_port=int(env.get("PORTRAIT_GRPC_PORT", "8001")),
        metrics_port=int(env.get("PORTRAIT_METRICS_PORT", "8002")),
        device=env.get("PORTRAIT_DEVICE", "cpu"),
        torch_threads=int(env.get("PORTRAIT_TORCH_THREADS", "0")),
        unet_dir=Path(env["PORTRAIT_UNET_DIR"]).resolve() if env.get("PORTRAIT_UNET_DIR") else None,
        store_dir=Path(env.get("PORTRAIT_STORE", PROJECT_ROOT / "store")).expanduser().resolve(),
        store_bucket=env.get("PORTRAIT_STORE_S3_BUCKET") or None,
        store_prefix=env.get("PORTRAIT_STORE_S3_PREFIX", ""),
        store_endpoint=env.get("PORTRAIT_STORE_S3_ENDPOINT") or None,
        host=env.get("PORTRAIT_HOST", "127.0.0.1"),
        health_port=int(env.get("PORTRAIT_HEALTH_PORT", "8003")),
        grace_period=float(env.get("PORTRAIT_GRACE_PERIOD", "30")),
        api_key=env.get("PORTRAIT_API_KEY") or None,
        cache_dir=Path(env.get("PORTRAIT_CACHE_DIR", PROJECT_ROOT / ".cache")).expanduser().resolve(),
        bls_timeout=float(env.get("PORTRAIT_BLS_TIMEOUT", "300")),
        triton_http_port=int(env.get("PORTRAIT_TRITON_HTTP_PORT", "0")),
        http_max_body=int(env.get("PORTRAIT_HTTP_MAX_BODY", str(64 * 2**20))),
        http_max_json=int(env.get("PORTRAIT_HTTP_MAX_JSON", str(8 * 2**20))),
        max_request_cost=float(env.get("PORTRAIT_MAX_REQUEST_COST", "160")),
        request_deadline=float(env.get("PORTRAIT_REQUEST_DEADLINE", "600")),
        max_image_pixels=int(env.get("PORTRAIT_MAX_IMAGE_PIXELS", str(2048 * 2048))),
        max_rows=int(env.get("PORTRAIT_MAX_ROWS", "16")),
        max_active=int(env.get("PORTRAIT_MAX_ACTIVE", "32")),
        admission=env.get("PORTRAIT_ADMISSION", "continuous"),
        face_detector=env.get("PORTRAIT_FACE_DETECTOR", "auto"),
        unet_backend=env.get("PORTRAIT_UNET_BACKEND", "torch"),
        unet_engine=Path(env["PORTRAIT_UNET_ENGINE"]).expanduser().resolve() if env.get("PORTRAIT_UNET_ENGINE") else None,
        serve_unet=env.get("PORTRAIT_SERVE_UNET", "0").lower() in ("1", "true", "yes", "on"),
        light_threads=int(env.get("PORTRAIT_LIGHT_THREADS", "1")),
        unet_storage=env.get("PORTRAIT_UNET_STORAGE") or None,
        otel_endpoint=env.get("PORTRAIT_OTEL_ENDPOINT") or None,
        otel_rate=int(env.get("PORTRAIT_OTEL_RATE", "1")),
    )

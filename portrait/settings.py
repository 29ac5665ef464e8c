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

    @property
    def sdxl_dir(self) -> Path:
        return self.models_dir / "sdxl"

    @property
    def photomaker_file(self) -> Path | None:
        from portrait.checkpoint import find_photomaker_file

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
    )

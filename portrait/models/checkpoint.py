"""Reading an SDXL checkpoint's layout and configs without torch (the light BLS models need this)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from portrait.errors import ModelSetError

SUBFOLDERS = ("unet", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "scheduler")


def check_sdxl_dir(sdxl_dir: Path) -> Path:
    """Fail fast, naming what is missing, before any model loads."""
    missing = [s for s in SUBFOLDERS if not (Path(sdxl_dir) / s).is_dir()]
    if missing:
        raise ModelSetError(
            f"{sdxl_dir} is not an SDXL checkpoint in diffusers layout (missing {', '.join(missing)}); "
            "build the default set with `make weights` or point PORTRAIT_MODELS at real weights"
        )
    return Path(sdxl_dir)


def torch_dtype_name(device: str) -> str:
    """fp16 on GPU, fp32 on CPU (CPU kernels for fp16 are slow or missing)."""
    return "float16" if device.startswith("cuda") else "float32"


@dataclass(frozen=True)
class SDXLInfo:
    """What callers need to know about a checkpoint without loading its weights."""

    vae_scale_factor: int
    latent_channels: int
    default_size: int
    scheduler_config: dict
    force_zeros_for_empty_prompt: bool


def read_sdxl_info(sdxl_dir: Path) -> SDXLInfo:
    d = check_sdxl_dir(sdxl_dir)
    vae = json.loads((d / "vae" / "config.json").read_text())
    unet = json.loads((d / "unet" / "config.json").read_text())
    index_path = d / "model_index.json"
    index = json.loads(index_path.read_text()) if index_path.exists() else {}
    scale = 2 ** (len(vae["block_out_channels"]) - 1)
    return SDXLInfo(
        vae_scale_factor=scale,
        latent_channels=vae["latent_channels"],
        default_size=unet["sample_size"] * scale,
        scheduler_config=json.loads((d / "scheduler" / "scheduler_config.json").read_text()),
        force_zeros_for_empty_prompt=bool(index.get("force_zeros_for_empty_prompt", True)),
    )


PHOTOMAKER_FILES = ("photomaker-v2.bin", "photomaker-v2.safetensors")


def find_photomaker_file(models_dir: Path) -> Path | None:
    """<models>/photomaker/photomaker-v2.bin (or the flat .safetensors form), or None: identity is then unavailable."""
    for name in PHOTOMAKER_FILES:
        path = Path(models_dir) / "photomaker" / name
        if path.exists():
            return path
    return None

#!/usr/bin/env python3
"""Export the UNet of PORTRAIT_MODELS/sdxl to ONNX (the `unet` model's Triton contract), with PhotoMaker's LoRA
fused in when PORTRAIT_MODELS holds photomaker/ (the same UNet the Python `unet` model serves)."""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from portrait.export import export_unet_onnx  # noqa: E402
from portrait.sdxl import load_unet  # noqa: E402
from portrait.settings import get_settings  # noqa: E402

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("--out", type=Path, default=Path("out/onnx/unet.onnx"))
parser.add_argument("--opset", type=int, default=17)
args = parser.parse_args()
settings = get_settings()
print(export_unet_onnx(load_unet(settings.sdxl_dir, "cpu", settings.photomaker_file), args.out, args.opset))

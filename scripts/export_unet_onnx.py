#!/usr/bin/env python3
"""Export the UNet of PORTRAIT_MODELS/sdxl to ONNX (the `unet` model's Triton contract), with PhotoMaker's LoRA
fused in when PORTRAIT_MODELS holds photomaker/ (the same UNet `denoise` runs); with --engine, build the fp16
TensorRT engine that `denoise` runs in-process instead (PORTRAIT_UNET_BACKEND=tensorrt PORTRAIT_UNET_ENGINE=<file>;
GPU machine with the tensorrt wheel): the ONNX is then exported the way that TensorRT wants it (fp32 for 10.x, fp16
for 11+, portrait/models/export.py `engine_precision`). scripts/build_unet_trt.sh runs it per GPU family."""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from portrait.models.export import SDXL_PROFILES, EngineProfile, build_engine_from_unet, export_unet_onnx  # noqa: E402
from portrait.models.sdxl import load_unet  # noqa: E402
from portrait.models.unet_runner import UNetDims  # noqa: E402
from portrait.settings import get_settings  # noqa: E402

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("--out", type=Path, default=Path("out/onnx/unet.onnx"))
parser.add_argument("--opset", type=int, default=17)
parser.add_argument("--external-data", action="store_true", help="weights in <out>.data (automatic above 1.5 GB)")
parser.add_argument("--engine", type=Path, default=None, help="build a TensorRT engine here (the ONNX goes to --out)")
parser.add_argument("--hardware-compatible", action="store_true",
                    help="one engine for every GPU family from Ampere on (slower) instead of this GPU's family only")
parser.add_argument("--max-rows", type=int, default=get_settings().max_rows, help="rows per forward (PORTRAIT_MAX_ROWS)")
parser.add_argument("--latents", type=int, nargs=3, action="append", metavar=("MIN", "OPT", "MAX"),
                    help="a profile's latent side range (pixels / 8); repeatable; default 64-96-96 and 96-128-128")
args = parser.parse_args()
settings = get_settings()
unet = load_unet(settings.sdxl_dir, "cuda" if args.engine is not None else "cpu", settings.photomaker_file)
if args.engine is None:
    print(export_unet_onnx(unet, args.out, args.opset, external_data=True if args.external_data else None))
else:
    dims = UNetDims.read(settings.sdxl_dir)
    profiles = [EngineProfile(*r, max_rows=args.max_rows, opt_rows=max(1, args.max_rows // 4)) for r in args.latents] \
        if args.latents else [EngineProfile(p.min_latent, p.opt_latent, p.max_latent, args.max_rows,
                                            max(1, args.max_rows // 4)) for p in SDXL_PROFILES]
    print(build_engine_from_unet(unet, args.engine, args.out.parent, dims.cross_attention_dim, dims.pooled_dim,
                                 tuple(profiles), external_data=True if args.external_data else None,
                                 hardware_compatibility="AMPERE_PLUS" if args.hardware_compatible else None))

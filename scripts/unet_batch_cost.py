#!/usr/bin/env python3
"""In-process UNet cost per latent row at several batch sizes: what batching can save on this machine."""

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from portrait.models.checkpoint import read_sdxl_info  # noqa: E402
from portrait.models.export import UNetForExport, example_inputs  # noqa: E402
from portrait.models.sdxl import load_unet  # noqa: E402
from portrait.settings import get_settings  # noqa: E402

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("--rows", type=int, nargs="+", default=[1, 2, 4, 8, 16])
parser.add_argument("--repeats", type=int, default=5)
args = parser.parse_args()

sdxl = get_settings().sdxl_dir
latent = read_sdxl_info(sdxl).default_size // read_sdxl_info(sdxl).vae_scale_factor
unet = UNetForExport(load_unet(sdxl))
torch.set_grad_enabled(False)
print("| rows | ms per call | ms per row |\n|---:|---:|---:|")
for rows in args.rows:
    inputs = tuple(t[:1].expand(rows, *t.shape[1:]).contiguous() for t in example_inputs(unet.unet, 1, latent))
    unet(*inputs)  # warm-up
    start = time.perf_counter()
    for _ in range(args.repeats):
        unet(*inputs)
    ms = (time.perf_counter() - start) / args.repeats * 1000
    print(f"| {rows} | {ms:.1f} | {ms / rows:.1f} |")

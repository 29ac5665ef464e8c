#!/usr/bin/env python
"""How long one image input costs the models that take whole images (vae_encoder, face_detector, face_detailer's
decode), by side length: the measure behind PORTRAIT_MAX_IMAGE_PIXELS (docs/reliability.md, "Limits").

    .venv/bin/python scripts/image_cost.py [--sizes 512 1024 2048 3072] [--threads 1]

Runs the library code the models run, in this process (no server), on the configured model set (PORTRAIT_MODELS).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch


def timed(fn, repeat: int = 1) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 1024, 2048])
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (the light models use 1)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from portrait.images import decode_image, encode_png
    from portrait.models.faces import make_face_detector
    from portrait.models.sdxl import encode_images, load_vae
    from portrait.settings import get_settings

    settings = get_settings()
    vae = load_vae(settings.sdxl_dir)
    vae.decoder = vae.post_quant_conv = None
    detector = make_face_detector(settings.models_dir)
    rng = np.random.default_rng(0)
    print(f"model set {settings.models_dir}, torch threads {args.threads}, detector {type(detector).__name__}")
    print(f"{'side':>6} {'MPix':>6} {'vae_encoder s':>14} {'face_detector s':>16} {'decode PNG s':>13}")
    for side in args.sizes:
        image = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
        with torch.inference_mode():
            vae_s = timed(lambda image=image: encode_images(vae, image[None]))
        detect_s = timed(lambda image=image: detector(image, 4))
        data = encode_png(image)
        decode_s = timed(lambda data=data: decode_image(data))
        print(f"{side:>6} {side * side / 2**20:>6.2f} {vae_s:>14.2f} {detect_s:>16.2f} {decode_s:>13.2f}", flush=True)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""How many torch threads the light models should get: the UNet's process and a VAE process busy at once.

Two processes as the server runs them: one does UNet forwards with PORTRAIT_TORCH_THREADS-style threads (torch's
default: one per core), the other VAE decodes with 1 or 2 threads. Both run for the same seconds; the figures
are forwards/s and decodes/s of each setting, alternated so that both see the same machine.
"""

import argparse
import multiprocessing as mp
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def worker(kind: str, threads: int, seconds: float, start, out) -> None:
    import torch

    from portrait.models.export import UNetForExport, example_inputs
    from portrait.models.sdxl import load_unet, load_vae
    from portrait.settings import get_settings

    if threads:
        torch.set_num_threads(threads)
    torch.set_grad_enabled(False)
    sdxl = get_settings().sdxl_dir
    if kind == "unet":
        unet = UNetForExport(load_unet(sdxl))
        inputs = example_inputs(unet.unet, 2, 32)  # one CFG step at 256x256
        run = lambda: unet(*inputs)  # noqa: E731
    else:
        vae = load_vae(sdxl)
        latents = torch.randn(1, 4, 32, 32)
        run = lambda: vae.decode(latents)  # noqa: E731
    run()
    start.wait()
    done, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        run()
        done += 1
    out.put((kind, done / (time.perf_counter() - t0)))


def measure(light_threads: int, seconds: float) -> dict[str, float]:
    ctx = mp.get_context("spawn")
    start, out = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=worker, args=("unet", 0, seconds, start, out)),
             ctx.Process(target=worker, args=("vae", light_threads, seconds, start, out))]
    for p in procs:
        p.start()
    rates = dict(out.get() for _ in procs)
    for p in procs:
        p.join()
    return rates


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    print("| light threads | round | UNet CFG steps/s (2 threads) | VAE decodes/s |\n|---:|---:|---:|---:|")
    for r in range(args.rounds):
        for light in (1, 2):
            rates = measure(light, args.seconds)
            print(f"| {light} | {r + 1} | {rates['unet']:.2f} | {rates['vae']:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""What identity (PhotoMaker V2) adds to stage 2: face_detailer on the same photo with and without an identity
photo, requests interleaved so both see the same machine state; prints medians and their ratio (Markdown).

    scripts/benchmark_identity.py [--url host:port] [--runs 8] [--work-size 256] [--steps 10]
"""

import argparse
import datetime
import io
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from clients import connect  # noqa: E402
from portrait.params import DetailParams  # noqa: E402
from portrait.serving.server import TritonServer  # noqa: E402
from portrait.settings import get_settings  # noqa: E402


def photo() -> bytes:
    import skimage
    from PIL import Image

    buffer = io.BytesIO()
    Image.open(Path(skimage.__file__).parent / "data" / "astronaut.png").convert("RGB").save(buffer, format="PNG")
    return buffer.getvalue()


def measure(client, runs: int, work_size: int, steps: int) -> dict[str, list[float]]:
    image = photo()
    plain = DetailParams(prompt="portrait photo of a woman, detailed skin", steps=steps, work_size=work_size, seed=1)
    identity = DetailParams(prompt="portrait photo of a woman img, detailed skin", steps=steps, work_size=work_size,
                            seed=1)
    client.detail(image, plain)  # warm-up both paths
    client.detail(image, identity, faces=[image])
    times = {"without identity": [], "with identity": []}
    for _ in range(runs):
        for name, params, faces in (("without identity", plain, None), ("with identity", identity, [image])):
            start = time.perf_counter()
            client.detail(image, params, faces=faces)
            times[name].append(time.perf_counter() - start)
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=None)
    parser.add_argument("--runs", type=int, default=8)
    parser.add_argument("--work-size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    server = None
    url = args.url
    if url is None:
        server = TritonServer.create(get_settings(), free_ports=True).start()
        url = server.grpc_url
    try:
        with connect(url) as client:
            times = measure(client, args.runs, args.work_size, args.steps)
    finally:
        if server is not None:
            server.stop()
    medians = {k: statistics.median(v) * 1000 for k, v in times.items()}
    print(f"face_detailer on the astronaut photo (1 face), work_size {args.work_size}, {args.steps} steps x strength 0.6,"
          f" {args.runs} interleaved runs each; {platform.node()} ({platform.processor() or platform.machine()}), "
          f"{datetime.date.today()}, models {get_settings().models_dir.name}\n")
    print("| request | median ms | min ms |\n|---|---:|---:|")
    for name, values in times.items():
        print(f"| {name} | {medians[name]:.0f} | {min(values) * 1000:.0f} |")
    print(f"\nwith / without: **{medians['with identity'] / medians['without identity']:.2f}**")
    return 0


if __name__ == "__main__":
    sys.exit(main())

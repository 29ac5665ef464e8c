#!/usr/bin/env python
"""What the validating HTTP front (portrait/serving/http_front.py) adds per request: the same requests sent, in
alternation, to Triton's own HTTP port (internal, loopback) and to the public port through the front; one
keep-alive connection each. Prints the median and 90th percentile of each and their difference.

    .venv/bin/python scripts/http_front_latency.py [--requests 300]

Starts its own server on free ports (the tiny model set by default, PORTRAIT_MODELS). The requests are `face_detector`
calls: a 64x64 image as JSON data (12,288 numbers: the front parses and checks them all), the same image in the binary
extension, and a 512x512 image in binary (the front copies 768 KiB each way); plus a GET of the health route.
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import time

import numpy as np


def requests_to_time() -> dict[str, tuple[str, str, bytes, dict]]:
    small = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    big = np.random.default_rng(1).integers(0, 256, (512, 512, 3), dtype=np.uint8)

    def binary(image: np.ndarray) -> tuple[bytes, dict]:
        header = json.dumps({"inputs": [{"name": "image", "shape": list(image.shape), "datatype": "UINT8",
                                         "parameters": {"binary_data_size": image.nbytes}}],
                             "outputs": [{"name": "boxes", "parameters": {"binary_data": False}}]}).encode()
        return header + image.tobytes(), {"Inference-Header-Content-Length": str(len(header)),
                                          "Content-Type": "application/octet-stream"}

    as_json = json.dumps({"inputs": [{"name": "image", "shape": [64, 64, 3], "datatype": "UINT8",
                                      "data": small.reshape(-1).tolist()}], "outputs": [{"name": "boxes"}]}).encode()
    path = "/v2/models/face_detector/infer"
    return {"GET /v2/health/ready": ("GET", "/v2/health/ready", b"", {}),
            "infer 64x64 JSON": ("POST", path, as_json, {"Content-Type": "application/json"}),
            "infer 64x64 binary": ("POST", path, *binary(small)),
            "infer 512x512 binary": ("POST", path, *binary(big))}


def once(connection: http.client.HTTPConnection, method: str, path: str, body: bytes, headers: dict) -> float:
    start = time.perf_counter()
    connection.request(method, path, body=body or None, headers=headers)
    response = connection.getresponse()
    response.read()
    elapsed = time.perf_counter() - start
    assert response.status == 200, (response.status, path)
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300, help="of each kind, to each port")
    args = parser.parse_args()
    from portrait.serving.server import TritonServer

    with TritonServer.create(free_ports=True).start(timeout=1200) as server:  # a loaded machine starts slowly
        ports = {"triton": server.triton_http_port, "front": server.http_port}
        connections = {k: http.client.HTTPConnection("127.0.0.1", p, timeout=60) for k, p in ports.items()}
        print(f"{'request':<22} {'Triton ms (p50 / p90)':>22} {'front ms (p50 / p90)':>22} {'added ms (p50)':>15}")
        for name, request in requests_to_time().items():
            times: dict[str, list[float]] = {"triton": [], "front": []}
            for i in range(args.requests + 10):
                for key in ("triton", "front") if i % 2 else ("front", "triton"):
                    t = once(connections[key], *request)
                    if i >= 10:  # warm-up
                        times[key].append(t * 1e3)
            p = {k: (statistics.median(v), np.percentile(v, 90)) for k, v in times.items()}
            print(f"{name:<22} {p['triton'][0]:>10.2f} / {p['triton'][1]:<9.2f} {p['front'][0]:>10.2f} / "
                  f"{p['front'][1]:<9.2f} {p['front'][0] - p['triton'][0]:>15.2f}", flush=True)


if __name__ == "__main__":
    main()

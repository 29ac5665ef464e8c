#!/usr/bin/env python3
"""The gallery wall against a large store in S3: time to first paint and per further page, in headless Chromium.

Seeds COUNT productions (each saved to the gallery) into a moto S3 server on localhost, starts the Streamlit app on
that bucket with an empty thumbnail cache, opens /gallery and measures, from the navigation's start, when the first
page of tiles has painted (every image of it loaded), then, scrolling to the end of the wall each time, when each
further page has. Runs twice: a new app process (cold: thumbnails read from S3 and cached), then a reload (warm).

    .venv/bin/python scripts/measure_gallery.py --count 2000 --pages 5 [--screenshot docs/screenshots/gallery.png]
"""

from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from portrait.app.store import ProductionStore, S3Backend, ThumbnailCache  # noqa: E402
from portrait.serving.server import free_port, port_open  # noqa: E402

BUCKET = "portraits"
IDEAS = ["corporate confidence", "ocean calm", "dark melancholy", "fearless explorer", "winter solitude",
         "victorian elegance", "rainy noir", "joyful summer"]
WALL_IMAGES = ".st-key-wall img"


def portrait_like(i: int, size: int) -> np.ndarray:
    """The bundled astronaut photo, its colours turned per item (distinct images, distinct thumbnails)."""
    import skimage

    base = Image.open(Path(skimage.__file__).parent / "data" / "astronaut.png").convert("RGB").resize((size, size))
    hsv = np.array(base.convert("HSV"))
    hsv[..., 0] = (hsv[..., 0].astype(int) + i * 37) % 256
    return np.array(Image.fromarray(hsv, "HSV").convert("RGB"))


def seed(store: ProductionStore, count: int, size: int) -> None:
    faces = [store.save_face(_png(portrait_like(1000 + k, 96))) for k in range(3)]

    def one(i: int) -> None:
        image = portrait_like(i, size)
        production = store.save_production(  # the final image only: the wall shows no other
            {"image": image},
            {"idea": IDEAS[i % len(IDEAS)], "prompt": f"portrait of a person img, {IDEAS[i % len(IDEAS)]}",
             "keywords": IDEAS[i % len(IDEAS)].split() + ["studio light"], "seed": i,
             "faces": [faces[i % 3]], "identities": [[faces[i % 3]]], "faces_detailed": 1,
             "params": {"stage1": {"steps": 20, "guidance_scale": 5.0, "width": size, "height": size}}})
        store.promote(production.id)

    started = time.monotonic()
    with ThreadPoolExecutor(4) as pool:
        for done, _ in enumerate(pool.map(one, range(count)), 1):
            if done % 250 == 0:
                print(f"  seeded {done} of {count} ({time.monotonic() - started:.0f} s)", flush=True)


def _png(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(array).save(out, "PNG")
    return out.getvalue()


def measure(page, url: str, pages: int, per_page: int, count: int) -> list[float]:
    """Seconds from the navigation's start to each page of tiles painted: [first paint, page 2, ...]."""
    marks = []
    started = time.monotonic()
    page.goto(f"{url}/gallery")
    for k in range(1, pages + 1):
        want = min(k * per_page, count)
        if k > 1:
            page.evaluate("s => { const all = document.querySelectorAll(s); all[all.length - 1].scrollIntoView(); }",
                          WALL_IMAGES)
        page.wait_for_function("([s, n]) => { const all = Array.from(document.querySelectorAll(s)); "
                               "return all.length >= n && all.every(i => i.complete && i.naturalWidth > 0); }",
                               arg=[WALL_IMAGES, want], timeout=300_000, polling=50)
        marks.append(time.monotonic() - started)
    return marks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--size", type=int, default=384, help="the seeded images' side in px (the wall shows "
                        "384 px thumbnails of any size)")
    parser.add_argument("--pages", type=int, default=5)
    parser.add_argument("--screenshot", type=Path, help="a screenshot of the wall after the first page")
    args = parser.parse_args()

    import boto3
    from moto.server import ThreadedMotoServer
    from playwright.sync_api import sync_playwright

    from ui.common import WALL_PAGE as per_page
    work = Path(tempfile.mkdtemp(prefix="wall-"))
    credentials = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}
    os.environ.update(credentials)
    s3_port = free_port()
    import logging

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per S3 request
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=s3_port, verbose=False)
    moto.start()
    endpoint = f"http://127.0.0.1:{s3_port}"
    client = boto3.client("s3", endpoint_url=endpoint)
    client.create_bucket(Bucket=BUCKET)
    print(f"seeding {args.count} productions of {args.size}x{args.size} px into moto S3 at {endpoint} ...", flush=True)
    seed(ProductionStore(S3Backend(BUCKET, client=client), ThumbnailCache(None)), args.count, args.size)

    port = free_port()
    env = {**os.environ, "HOME": str(work), "PORTRAIT_STORE_S3_BUCKET": BUCKET, "PORTRAIT_STORE_S3_ENDPOINT": endpoint,
           "PORTRAIT_URL": "127.0.0.1:1"}  # no Triton: the wall never talks to it
    with open(work / "streamlit.log", "wb") as log:
        app = subprocess.Popen([sys.executable, "-m", "streamlit", "run", str(ROOT / "ui" / "app.py"),
                                "--server.port", str(port), "--server.headless", "true",
                                "--browser.gatherUsageStats", "false"], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        while not port_open("127.0.0.1", port):
            time.sleep(0.2)
        url = f"http://127.0.0.1:{port}"
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            results = {}
            for run in ("cold", "warm"):
                try:
                    results[run] = measure(page, url, args.pages, per_page, args.count)
                except Exception:
                    page.screenshot(path=str(work / "failed.png"))
                    print(f"failed: see {work / 'failed.png'} and {work / 'streamlit.log'}", file=sys.stderr)
                    raise
                if run == "cold" and args.screenshot:
                    page.evaluate("() => document.querySelector('[data-testid=\"stMain\"]')?.scrollTo(0, 0)")
                    page.wait_for_timeout(500)
                    page.screenshot(path=str(args.screenshot))
            columns = page.evaluate("s => new Set(Array.from(document.querySelectorAll(s)).map("
                                    "i => Math.round(i.getBoundingClientRect().left))).size", WALL_IMAGES)
            browser.close()
    finally:
        app.terminate()
        app.wait(15)
        moto.stop()
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"\n{args.count} productions in moto S3, {per_page} tiles a page, {columns} columns at 1400 px; "
          f"{os.cpu_count()} cores, load average {load}")
    print("| run | first paint | " + " | ".join(f"page {k}" for k in range(2, args.pages + 1)) + " |")
    print("|---|" + "---|" * args.pages)
    for run, marks in results.items():
        steps = [b - a for a, b in zip(marks, marks[1:])]
        print(f"| {run} | {marks[0]:.2f} s | " + " | ".join(f"+{s:.2f} s" for s in steps) + " |")


if __name__ == "__main__":
    main()

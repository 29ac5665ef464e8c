"""The Streamlit pages through Streamlit's AppTest (the Create page against the real server), and the running app
through a real headless Chromium."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from portrait.settings import PROJECT_ROOT, get_settings
from portrait.store import ProductionStore, LocalBackend

UI = PROJECT_ROOT / "ui"


@pytest.fixture
def ui_env(server, tmp_path, monkeypatch):
    """The pages see the test server and a fresh store (settings and Streamlit's caches are reset around it)."""
    import streamlit as st

    monkeypatch.setenv("PORTRAIT_URL", server.grpc_url)
    monkeypatch.setenv("PORTRAIT_STORE", str(tmp_path / "store"))
    get_settings.cache_clear()
    st.cache_resource.clear()
    yield ProductionStore(LocalBackend(tmp_path / "store"))
    get_settings.cache_clear()
    st.cache_resource.clear()


def app(page: str):
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(UI / page), default_timeout=300)
    return at.run()


def button(at, label: str):
    return next(b for b in at.button if b.label == label)


def test_create_page_renders_with_the_server_limits(ui_env):
    from portrait import params as P

    at = app("create.py")
    assert not at.exception
    assert at.title[0].value == "Create a portrait"
    assert at.number_input(key="steps").max == P.STEPS_MAX and at.number_input(key="steps").min == P.STEPS_MIN
    assert at.number_input(key="style_strength").max == P.STYLE_STRENGTH_MAX
    assert at.number_input(key="count").max == P.BATCH_MAX
    assert {b.label for b in at.button} >= {"Write prompt", "Generate"}


def test_create_page_validates_parameters(ui_env):
    at = app("create.py")
    at.text_area(key="prompt").set_value("portrait of a woman, oil painting")
    at.number_input(key="width").set_value(100)
    button(at, "Generate").click().run()
    assert [e.value for e in at.error] == ["width: must be a multiple of 8 in [64, 2048], got 100"]
    at.number_input(key="width").set_value(64)
    at.selectbox[0].set_value("astronaut (sample)")  # an identity photo: the prompt now needs the trigger word
    button(at, "Generate").click().run()
    assert "prompt: needs the trigger word 'img'" in at.error[0].value
    assert not at.exception


def test_create_page_generates_three_panels(ui_env):
    at = app("create.py")
    at.text_input(key="idea").set_value("corporate confidence")
    at.selectbox[0].set_value("astronaut (sample)")
    button(at, "Write prompt").click().run()
    prompt = at.text_area(key="prompt").value
    assert " img" in prompt  # the agent put the class word and the trigger word in
    for key, value in (("width", 64), ("height", 64), ("steps", 2), ("seed", 5)):
        at.number_input(key=key).set_value(value)
    button(at, "Generate").click().run()
    assert not at.exception and not at.error
    images = at.get("image")
    panels = [i for i in images if i.proto.imgs[0].caption in ("Base (stage 1)", "Mask", "Final")]
    assert len(panels) == 3
    [production] = ui_env.productions()
    assert production.meta["prompt"] == prompt and production.meta["seed"] == 5
    assert production.meta["keywords"] and production.meta["idea"] == "corporate confidence"
    assert len(production.meta["faces"]) == 1 and production.meta["timings"]["total_s"] > 0
    assert len([b for b in at.get("download_button")]) == 3
    button(at, "Save to gallery").click().run()
    items, pages = ui_env.gallery()
    assert [p.id for p, _ in items] == [production.id]


def saved_production(store, seed: int, keywords: list[str]):
    image = np.full((32, 32, 3), seed * 20, np.uint8)
    production = store.save_production({"image": image, "base": image, "mask": image[..., 0]},
                                       {"prompt": "p", "keywords": keywords, "seed": seed})
    store.promote(production.id)
    return production


def test_gallery_shows_saved_items_newest_first(ui_env):
    for seed in range(3):
        saved_production(ui_env, seed, [f"keyword{seed}", "studio light"])
    at = app("gallery.py")
    assert not at.exception
    captions = [i.proto.imgs[0].caption for i in at.get("image")]
    assert captions == ["keyword2, studio light", "keyword1, studio light", "keyword0, studio light"]


def test_gallery_pages(ui_env):
    for seed in range(13):
        saved_production(ui_env, seed, [f"k{seed}"])
    at = app("gallery.py")
    assert len(at.get("image")) == 12
    button(at, "Older").click().run()
    assert [i.proto.imgs[0].caption for i in at.get("image")] == ["k0"]


def test_sweep_page_rejects_bad_yaml(ui_env):
    at = app("sweep_page.py")
    at.text_area(key="sweep_yaml").set_value("ideas: [a]\ngrid: {cfg: [1, 2]}")
    button(at, "Validate").click().run()
    assert at.error[0].value.startswith("grid: unknown parameter(s) cfg; allowed: width, height, steps")
    at.text_area(key="sweep_yaml").set_value("ideas: [a]\ngrid: {guidance_scale: [3, 31]}")
    button(at, "Run sweep").click().run()
    assert at.error[0].value == "guidance_scale: must be in [0, 30], got 31"
    at.text_area(key="sweep_yaml").set_value("ideas: [a\n")
    button(at, "Validate").click().run()
    assert at.error[0].value.startswith("sweep: is not valid YAML")
    assert not ui_env.productions()  # nothing ran


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def running_app(server, tmp_path):
    port = free_port()
    env = {**os.environ, "PORTRAIT_URL": server.grpc_url, "PORTRAIT_STORE": str(tmp_path / "store")}
    process = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", str(UI / "app.py"), "--server.port", str(port),
         "--server.headless", "true", "--browser.gatherUsageStats", "false"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.3)
    yield f"http://127.0.0.1:{port}"
    process.terminate()
    process.wait(15)


CHROMIUM = Path("/usr/bin/chromium")


def test_real_browser_loads_the_app(running_app, tmp_path):
    """Headless Chromium (Debian's) renders the app: the Create page's widgets and the navigation are there."""
    from playwright.sync_api import sync_playwright

    assert CHROMIUM.exists(), "Debian's chromium is not installed (make install installs it)"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        page.goto(running_app)
        page.get_by_role("button", name="Generate").wait_for(timeout=60_000)
        assert page.get_by_text("Create a portrait").first.is_visible()
        assert page.get_by_role("link", name="Gallery").is_visible()
        page.screenshot(path=str(tmp_path / "create.png"))
        # Cancel really cancels: a long generation is stopped mid-way and nothing is stored
        page.get_by_label("Prompt", exact=True).fill("portrait of a woman, oil painting")
        steps = page.get_by_label("Steps", exact=True)
        steps.fill("150")
        steps.press("Enter")
        page.get_by_role("button", name="Generate").click()
        page.get_by_text("base: step").first.wait_for(timeout=60_000)
        page.get_by_role("button", name="Cancel").click()
        page.get_by_text("Generation cancelled").wait_for(timeout=60_000)
        page.get_by_role("link", name="Sweep").click()
        page.get_by_role("button", name="Validate").wait_for(timeout=30_000)
        browser.close()
    shot = np.array(Image.open(tmp_path / "create.png").convert("L"))
    assert shot.shape == (1000, 1280) and shot.std() > 10  # a rendered page, not a blank one
    assert ProductionStore(LocalBackend(tmp_path / "store")).productions() == []  # the cancelled run stored nothing

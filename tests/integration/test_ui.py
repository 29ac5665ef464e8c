"""The Streamlit pages through Streamlit's AppTest (the Create page against the real server), and the running app
through a real headless Chromium."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from portrait.app.store import LocalBackend, ProductionStore
from portrait.serving.server import free_port, port_open
from portrait.settings import PROJECT_ROOT, get_settings
from tests.helpers import package_file, sideways

UI = PROJECT_ROOT / "ui"


@pytest.fixture
def ui_env(server, store_env, monkeypatch):
    """The pages see the test server and a fresh store."""
    monkeypatch.setenv("PORTRAIT_URL", server.grpc_url)
    get_settings.cache_clear()
    return store_env


@pytest.fixture
def store_env(tmp_path, monkeypatch):
    """The pages see a fresh store and no server (settings and Streamlit's caches are reset around it)."""
    import streamlit as st

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
    # the tiny set's random weights draw no face: the page says so in plain words, next to the result
    assert production.meta["faces_detailed"] == 0
    assert [w.value for w in at.warning] == ["Stage 2 found no face in the base image, so nothing was detailed: the "
                                             "final image is the base image."]
    assert production.meta["keywords"] and production.meta["idea"] == "corporate confidence"
    assert len(production.meta["faces"]) == 1 and production.meta["timings"]["total_s"] > 0
    assert len([b for b in at.get("download_button")]) == 3
    button(at, "Save to gallery").click().run()
    items, pages = ui_env.gallery()
    assert [p.id for p, _ in items] == [production.id]


@pytest.mark.parametrize("setting,field,message", [
    ({"people": 2}, "id_images", "identity 2 has no photo"),  # person 2 added, no photo given
    ({"assign": "match", "sample_face": "none"}, "assign", "match needs identity photos"),
    ({"face_prompt_0": "a man"}, "face_prompts", "prompt 1 (identity 1): needs the trigger word"),
])
def test_create_page_checks_the_people_as_the_server_does(ui_env, setting, field, message):
    at = app("create.py")
    at.text_area(key="prompt").set_value("portrait of a woman img, oil painting")
    at.selectbox[0].set_value("astronaut (sample)")
    if "people" in setting:
        at.number_input(key="people").set_value(setting["people"]).run()
    if "assign" in setting:
        at.radio(key="assign").set_value(setting["assign"])
        at.selectbox[0].set_value(setting["sample_face"])
    if "face_prompt_0" in setting:
        at.text_input(key="face_prompt_0").set_value(setting["face_prompt_0"])
    button(at, "Generate").click().run()
    assert len(at.error) == 1 and at.error[0].value.startswith(f"{field}: ") and message in at.error[0].value, at.error
    assert not at.exception
    assert ui_env.productions() == []  # refused before anything was sent


def test_create_page_generates_with_two_people_and_shows_who_got_whom(ui_env):
    at = app("create.py")
    at.number_input(key="people").set_value(2).run()
    assert at.text_input(key="face_prompt_1") is not None and at.radio(key="assign").options == ["order", "match"]
    at.selectbox[0].set_value("astronaut (sample)")
    at.text_area(key="prompt").set_value("portrait of a woman img, oil painting")
    at.number_input(key="people").set_value(1)
    at.text_input(key="face_prompt_0").set_value("a smiling woman img")
    for key, value in (("width", 64), ("height", 64), ("steps", 2), ("seed", 721)):
        at.number_input(key=key).set_value(value)
    button(at, "Generate").click().run()
    assert not at.exception and not at.error
    [production] = ui_env.productions()
    assert production.meta["face_prompts"] == ["a smiling woman img"] and len(production.meta["identities"]) == 1
    check = production.meta["identity_check"]
    assert len(check) == production.meta["faces_detailed"]
    if check:  # a face in the base: its box is drawn, labelled with its identity and similarity
        captions = [i.proto.imgs[0].caption for i in at.get("image")]
        assert any(c.startswith("Who got whom") for c in captions)
        assert any("face 1: identity 1, similarity" in c.value for c in at.caption)


def saved_production(store, seed: int, keywords: list[str], idea: str | None = None, faces: list[str] = ()):
    image = np.full((32, 32, 3), seed * 20 % 256, np.uint8)
    image[seed % 32] = 255  # distinct images, distinct thumbnails
    production = store.save_production({"image": image, "base": image // 2, "mask": image[..., 0]},
                                       {"prompt": f"portrait of a person img, {', '.join(keywords)}", "keywords": keywords,
                                        "seed": seed, "idea": idea, "faces": list(faces), "identities": [list(faces)],
                                        "params": {"stage1": {"steps": 7, "guidance_scale": 4.5, "width": 64,
                                                              "height": 64},
                                                   "detail": {"strength": 0.35, "style_strength": 25.0}}})
    store.promote(production.id)
    return production


def test_gallery_shows_saved_items_newest_first(store_env):
    ui_env = store_env
    for seed in range(3):
        saved_production(ui_env, seed, [f"keyword{seed}", "studio light"])
    at = app("gallery.py")
    assert not at.exception
    captions = [i.proto.imgs[0].caption for i in at.get("image")]
    assert captions == ["keyword2, studio light", "keyword1, studio light", "keyword0, studio light"]


def test_gallery_wall_shows_a_page_and_filters(store_env):
    from portrait.images import encode_png
    from ui.common import WALL_PAGE as PER_PAGE

    ui_env = store_env

    face = ui_env.save_face(encode_png(np.full((16, 16, 3), 200, np.uint8)))
    for seed in range(PER_PAGE + 6):
        saved_production(ui_env, seed, [f"k{seed}"], idea="ocean calm" if seed % 3 else "dark melancholy",
                         faces=[face] if seed % 5 == 0 else [])
    at = app("gallery.py")
    assert not at.exception
    captions = [i.proto.imgs[0].caption for i in at.get("image")]
    assert captions == [f"k{seed}" for seed in range(PER_PAGE + 5, 5, -1)]  # the first page, newest first
    assert at.caption[0].value == f"{PER_PAGE} of {PER_PAGE + 6} portraits"
    at.selectbox(key="wall_idea").set_value("dark melancholy").run()
    assert [i.proto.imgs[0].caption for i in at.get("image")] == [f"k{s}" for s in range(27, -1, -3)]
    at.selectbox(key="wall_idea").set_value(None)
    at.selectbox(key="wall_face").set_value(face).run()
    shown = [i.proto.imgs[0].caption for i in at.get("image")]
    assert shown[1:] == [f"k{s}" for s in range(25, -1, -5)]  # after the chosen identity photo itself


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


@pytest.fixture
def running_app(server, tmp_path):
    """`streamlit run ui/app.py` on a free port against the test server; its log goes to a file (a pipe nobody
    reads would block the app once full)."""
    with streamlit_app(tmp_path, {"PORTRAIT_URL": server.grpc_url, "PORTRAIT_STORE": str(tmp_path / "store")}) as app:
        yield app


@contextlib.contextmanager
def streamlit_app(tmp_path: Path, env: dict[str, str]):
    port = free_port()
    log = tmp_path / "streamlit.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", str(UI / "app.py"), "--server.port", str(port),
             "--server.headless", "true", "--browser.gatherUsageStats", "false"],
            env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not port_open("127.0.0.1", port):
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.3)
        yield RunningApp(f"http://127.0.0.1:{port}", log)
    finally:
        process.terminate()
        process.wait(15)


@dataclass(frozen=True)
class RunningApp:
    url: str
    log: Path

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]


CHROMIUM = Path("/usr/bin/chromium")


def test_real_browser_loads_the_app(running_app, tmp_path):
    """Headless Chromium (Debian's) renders the app: the Create page's widgets and the navigation are there."""
    from playwright.sync_api import sync_playwright

    assert CHROMIUM.exists(), "Debian's chromium is not installed (make install installs it)"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        page.goto(running_app.url)
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


class PageWatch:
    """Every response of the page that answered 4xx/5xx (the favicon aside) and every request that failed."""

    def __init__(self, page):
        self.bad: list[str] = []
        page.on("response", lambda r: r.status >= 400 and "favicon" not in r.url
                and self.bad.append(f"{r.status} {r.request.method} {r.url}"))
        page.on("requestfailed", lambda r: "favicon" not in r.url
                and self.bad.append(f"failed {r.method} {r.url}: {r.failure}"))


def assert_images_load(page, watch: PageWatch, app: RunningApp, at_least: int) -> list[dict]:
    """What a person sees: every <img> on the page finished loading with real pixels (a broken image has
    naturalWidth 0), and no request of the page failed."""
    page.wait_for_function("n => document.images.length >= n", arg=at_least, timeout=60_000)  # all drawn
    page.wait_for_function("() => Array.from(document.images).every(i => i.complete)", timeout=30_000)
    images = page.evaluate("() => Array.from(document.images).map(i => ({src: i.currentSrc || i.src, "
                           "width: i.naturalWidth, height: i.naturalHeight}))")
    broken = [i["src"] for i in images if i["width"] == 0]
    assert not broken, f"broken images {broken}; failed requests {watch.bad}\n{app.log_tail()}"
    assert not watch.bad, f"failed requests {watch.bad}\n{app.log_tail()}"
    assert len(images) >= at_least, images
    return images


def wait_for_result(page, result, timeout: int):
    """Wait for `result` (a locator) or a message box, whichever comes first: a failure shows its message at once."""
    alert = page.locator('[data-testid="stAlertContentError"]')  # an error, not the no-face warning
    result.or_(alert).first.wait_for(timeout=timeout)
    assert result.count(), alert.all_inner_texts()


def test_real_browser_shows_every_image(running_app, tmp_path):
    """Headless Chromium through a newcomer's path on the tiny set and the real server: a generation with two
    identity photos (a phone photo stored sideways, and the sample; their thumbnails, then base, mask and final),
    Save to gallery and the Gallery page, a Sweep's contact sheet. Every image on each page loads, and no request
    answers an error."""
    from playwright.sync_api import sync_playwright

    assert CHROMIUM.exists(), "Debian's chromium is not installed (make install installs it)"
    phone = tmp_path / "phone.jpg"  # landscape, stored as a phone does: pixels turned, EXIF Orientation 6
    phone.write_bytes(sideways(package_file("insightface", "data/images/t1.jpg"), 6))
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 1400})
        watch = PageWatch(page)
        page.goto(running_app.url)
        page.get_by_role("button", name="Generate").wait_for(timeout=60_000)
        page.locator("input[type=file]").set_input_files(str(phone))
        page.get_by_text("person 1, photo 1").wait_for(timeout=30_000)
        page.get_by_role("combobox").first.click()
        page.get_by_role("option", name="astronaut (sample)").click()
        page.get_by_text("person 1, photo 2").wait_for(timeout=30_000)
        thumbnails = assert_images_load(page, watch, running_app, at_least=2)
        assert [(i["width"], i["height"]) for i in thumbnails] == [(96, 66), (96, 96)]  # upright: 1280x886 at 96 px
        page.get_by_label(re.compile("^Prompt")).fill("portrait of a woman img, oil painting")
        for label, value in (("Steps", "2"), ("Width", "64"), ("Height", "64")):
            box = page.get_by_label(label, exact=True)
            box.fill(value)
            box.press("Enter")
        page.get_by_role("button", name="Generate").click()
        wait_for_result(page, page.get_by_role("button", name="Save to gallery"), 300_000)
        page.get_by_text("Final", exact=True).wait_for(timeout=30_000)
        images = assert_images_load(page, watch, running_app, at_least=5)  # identities 1, 2, base, mask, final
        assert sum(i["width"] == 64 and i["height"] == 64 for i in images) == 3, images  # the three 64x64 panels
        page.screenshot(path=str(tmp_path / "create.png"), full_page=True)

        page.get_by_role("button", name="Save to gallery").click()
        page.get_by_text("Saved to the gallery.").wait_for(timeout=30_000)
        page.get_by_role("link", name="Gallery").click()
        page.get_by_text("1 of 1 portraits").wait_for(timeout=30_000)
        page.get_by_text("seed 0 ·").wait_for(timeout=30_000)
        assert_images_load(page, watch, running_app, at_least=1)

        page.get_by_role("link", name="Sweep").click()
        sweep = page.get_by_label("Sweep (YAML)")
        sweep.wait_for(timeout=30_000)
        sweep.fill("name: browser\nprompts: ['portrait of a man, oil painting']\n"
                   "params: {steps: 2, width: 64, height: 64}\ngrid: {guidance_scale: [3.0, 6.0]}\nseeds: [0]\n")
        sweep.press("Control+Enter")
        page.get_by_role("button", name="Run sweep").click()
        wait_for_result(page, page.get_by_text("contact sheet at"), 300_000)
        images = assert_images_load(page, watch, running_app, at_least=1)
        sheet = [i for i in images if i["width"] > 256]  # two columns of 256 px cells and the labels
        assert len(sheet) == 1, images
        page.screenshot(path=str(tmp_path / "sweep.png"), full_page=True)
        browser.close()
    store = ProductionStore(LocalBackend(tmp_path / "store"))
    assert len(store.productions()) == 3 and len(store.gallery()[0]) == 1


@pytest.fixture
def wall_app(tmp_path):
    """`streamlit run ui/app.py` on a store of WALL_PAGE + 36 saved productions (one identity photo, two ideas) and no
    Triton server (the Gallery and Production pages never call one); its own thumbnail cache (HOME)."""
    from portrait.images import encode_png
    from ui.common import WALL_PAGE

    store = ProductionStore(LocalBackend(tmp_path / "store"))
    face = store.save_face(encode_png(np.full((24, 24, 3), 180, np.uint8)))
    for seed in range(WALL_PAGE + 36):
        saved_production(store, seed, [f"k{seed}", "studio light"], idea="ocean calm" if seed % 2 else "rainy noir",
                         faces=[face])
    with streamlit_app(tmp_path, {"PORTRAIT_URL": "127.0.0.1:1", "PORTRAIT_STORE": str(tmp_path / "store"),
                                  "HOME": str(tmp_path / "home")}) as app:
        yield app, store


WALL_IMAGES = ".st-key-wall img"


def wall_columns(page) -> int:
    return page.evaluate("s => new Set(Array.from(document.querySelectorAll(s)).map("
                         "i => Math.round(i.getBoundingClientRect().left))).size", WALL_IMAGES)


def wait_for_wall(page, count: int) -> None:
    page.wait_for_function("([s, n]) => { const all = Array.from(document.querySelectorAll(s)); return all.length >= n"
                           " && all.every(i => i.complete && i.naturalWidth > 0); }", arg=[WALL_IMAGES, count],
                           timeout=120_000)


def test_real_browser_toolbar_addresses_wall_and_production(wall_app):
    """What a person sees: no Deploy button or developer menu; /sweep and /gallery open those pages; the wall fills
    the width, loads its next page as its end scrolls into view (no click), shows a new save without a reload; a
    tile opens its production (base, mask, final, prompt, parameters, identity photo) and "Use these settings"
    fills Create."""
    from playwright.sync_api import expect, sync_playwright

    from ui.common import WALL_PAGE

    running, store = wall_app
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        # Streamlit's client first asks for /<page>/_stcore/health and host-config, then the root's: those 404s
        # are its own probing of a page address
        watch = PageWatch(page)
        page.goto(running.url)
        page.get_by_role("button", name="Generate").wait_for(timeout=60_000)
        page.locator('[data-testid="stMainMenu"]').wait_for(timeout=30_000)
        assert page.locator('[data-testid="stAppDeployButton"]').count() == 0
        assert page.get_by_role("button", name="Deploy").count() == 0
        page.locator('[data-testid="stMainMenu"] button').first.click()
        menu = page.locator('[data-testid="stMainMenuPopover"]')
        menu.wait_for(timeout=10_000)
        assert not {"Rerun", "Clear cache", "Deploy this app"} & set(menu.inner_text().splitlines()), menu.inner_text()
        page.keyboard.press("Escape")

        # short enough that the first page's end is not already within the wall's 600 px prefetch margin
        page.set_viewport_size({"width": 1400, "height": 500})
        for address, shows in (("/sweep", page.get_by_role("button", name="Validate")),
                               ("/gallery", page.get_by_role("heading", name="Gallery"))):
            page.goto(running.url + address)
            shows.wait_for(timeout=60_000)
            assert page.get_by_text("Page not found").count() == 0

        wait_for_wall(page, WALL_PAGE)
        assert page.locator(WALL_IMAGES).count() == WALL_PAGE
        assert page.get_by_text(f"{WALL_PAGE} of {WALL_PAGE + 36} portraits").is_visible()
        wide = wall_columns(page)
        page.set_viewport_size({"width": 800, "height": 500})
        page.wait_for_timeout(1000)
        narrow = wall_columns(page)
        assert wide >= 4 and 1 <= narrow < wide, (wide, narrow)  # the columns follow the width
        page.set_viewport_size({"width": 1400, "height": 500})
        page.locator(WALL_IMAGES).last.scroll_into_view_if_needed()  # no click: the end of the wall came into view
        wait_for_wall(page, 2 * WALL_PAGE)

        [face] = store.gallery_choices()[0]
        fresh = saved_production(store, 77, ["freshly saved"], idea="ocean calm", faces=[face])  # saved elsewhere
        page.get_by_text("freshly saved").wait_for(timeout=30_000)  # appears without a reload

        page.locator(WALL_IMAGES).first.click()
        page.wait_for_url(re.compile(rf"/production\?id={fresh.id}$"), timeout=30_000)
        page.get_by_text("Final", exact=True).wait_for(timeout=60_000)
        images = assert_images_load(page, watch_ignoring_probes(watch), running, at_least=4)  # 3 panels, identity
        assert sum((i["width"], i["height"]) == (32, 32) for i in images) == 3, images
        page.get_by_text("portrait of a person img, freshly saved").first.wait_for(timeout=30_000)
        page.get_by_text("Identity photos").wait_for(timeout=30_000)
        page.get_by_role("button", name="Use these settings").click()
        page.get_by_role("button", name="Generate").wait_for(timeout=60_000)
        page.get_by_text(f"The prompt and parameters of production {fresh.id} are filled in below").wait_for()
        # Streamlit renders the page's elements as they arrive: a text area can show empty for a moment before its
        # value does, so wait for the values (expect retries) rather than read them once
        expect(page.get_by_label(re.compile("^Prompt"))).to_have_value("portrait of a person img, freshly saved",
                                                                      timeout=30_000)
        expect(page.get_by_label("Steps", exact=True)).to_have_value("7")
        expect(page.get_by_label("Seed", exact=True)).to_have_value("77")
        browser.close()


def watch_ignoring_probes(watch: PageWatch) -> PageWatch:
    """The watch without Streamlit's probes of a page address (/<page>/_stcore/health, /<page>/_stcore/host-config
    answer 404 before the client falls back to the root's)."""
    watch.bad[:] = [b for b in watch.bad if not re.search(r"^404 GET .*/\w+/_stcore/(health|host-config)$", b)]
    return watch

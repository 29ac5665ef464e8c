#!/usr/bin/env python3
"""Screenshots of the running UI for docs/: a newcomer's path through Create (sample face, idea, Write prompt,
Generate, Save to gallery), then that portrait opened from the Gallery's wall (its Production page; the wall on a
seeded store of 2,000 comes from scripts/measure_gallery.py --screenshot), then Sweep (the example sweep run to its
contact sheet), then Create with
two people on a group photo of one's own (insightface's t1.jpg, the people cropped from it, by match: each face's box
labelled with its identity and similarity). Needs `portrait ui` running (URL as the first argument). Refuses to write
a screenshot of a page with a broken image or a failed request."""

import re
import subprocess
import sys
import tempfile
from pathlib import Path

from playwright.sync_api import sync_playwright

url = sys.argv[1] if len(sys.argv) > 1 else "http://localhost:8501"
out = Path(sys.argv[2] if len(sys.argv) > 2 else "docs/screenshots")
only = sys.argv[3] if len(sys.argv) > 3 else None  # "create": the identities shot alone
out.mkdir(parents=True, exist_ok=True)
failed: list[str] = []


def shoot(page, name: str, images: int) -> None:
    """Once the page shows `images` images, all loaded: a screenshot, unless one is broken or a request failed."""
    page.wait_for_function("n => document.images.length >= n", arg=images, timeout=60_000)
    page.wait_for_function("() => Array.from(document.images).every(i => i.complete)", timeout=30_000)
    broken = page.evaluate("() => Array.from(document.images).filter(i => i.naturalWidth === 0).map(i => i.src)")
    if broken or failed:
        sys.exit(f"{name}: broken images {broken}, failed requests {failed}; no screenshot written")
    page.screenshot(path=str(out / f"{name}.png"), full_page=True)


with sync_playwright() as p:
    browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
    page = browser.new_page(viewport={"width": 1400, "height": 2000})  # the app scrolls inside: all of Create
    page.on("response", lambda r: r.status >= 400 and "favicon" not in r.url and failed.append(f"{r.status} {r.url}"))
    page.goto(url)
    page.get_by_role("button", name="Generate").wait_for(timeout=60_000)
    import skimage

    if only != "create":  # the prompt path, the production, the sweep
        page.locator("input[type=file]").set_input_files(str(Path(skimage.__file__).parent / "data" / "astronaut.png"))
        page.get_by_text("person 1, photo 1").wait_for(timeout=30_000)
        page.get_by_role("combobox").nth(1).click()
        page.get_by_role("option", name="woman").click()
        page.get_by_label("Idea (two words are enough)").fill("corporate confidence")
        page.get_by_label("Idea (two words are enough)").press("Enter")
        page.get_by_role("button", name="Write prompt").click()
        page.wait_for_function("() => document.querySelector('textarea').value.includes(' img')", timeout=300_000)
        page.get_by_role("button", name="Generate").click()
        page.get_by_role("button", name="Save to gallery").wait_for(timeout=300_000)
        page.wait_for_timeout(1500)
        shoot(page, "create_prompt", 4)  # the identity thumbnail, base, mask, final
        page.get_by_role("button", name="Save to gallery").first.click()
        page.get_by_text("Saved to the gallery.").wait_for(timeout=30_000)
        page.get_by_role("link", name="Gallery").click()
        page.locator(".st-key-wall img").first.wait_for(timeout=60_000)
        page.locator(".st-key-wall img").first.click()  # a tile opens its production
        page.get_by_role("button", name="Use these settings").wait_for(timeout=60_000)
        page.wait_for_timeout(1500)
        shoot(page, "production", 4)  # base, mask, final, the identity photo
        page.get_by_role("link", name="Sweep").click()
        page.get_by_role("button", name="Validate").wait_for(timeout=30_000)
        page.get_by_role("button", name="Validate").click()
        page.get_by_text("portraits:").wait_for(timeout=30_000)
        page.get_by_role("button", name="Run sweep").click()
        page.get_by_text("contact sheet at").wait_for(timeout=600_000)
        page.wait_for_timeout(1500)
        shoot(page, "sweep", 1)  # the contact sheet

    photos = Path(tempfile.mkdtemp())
    subprocess.run([sys.executable, str(Path(__file__).parent / "demo_photos.py"), str(photos)], check=True)
    page.get_by_role("link", name="Create").click()
    page.get_by_role("button", name="Generate").wait_for(timeout=60_000)
    page.get_by_text("a photo of mine (detail its faces)").click()
    page.get_by_text("Photo whose faces to detail").wait_for(timeout=30_000)
    page.locator("input[type=file]").nth(0).set_input_files(str(photos / "group.png"))
    people = page.get_by_label("People (identities: each gets one face)")
    people.fill("2")
    people.press("Enter")
    page.get_by_text("Person 2: face photos").wait_for(timeout=30_000)
    page.locator("input[type=file]").nth(1).set_input_files(str(photos / "person1.png"))
    page.get_by_text("person 1, photo 1").wait_for(timeout=30_000)
    page.locator("input[type=file]").nth(2).set_input_files(str(photos / "person2.png"))
    page.get_by_text("person 2, photo 1").wait_for(timeout=30_000)
    page.get_by_text("match", exact=True).click()
    page.get_by_label(re.compile("^Prompt")).fill("photo of a person img, detailed skin")
    steps = page.get_by_label("Steps", exact=True)
    steps.fill("4")
    steps.press("Enter")
    page.wait_for_timeout(1000)
    page.get_by_role("button", name="Generate").click()
    page.get_by_text("Who got whom").first.wait_for(timeout=600_000)
    page.wait_for_timeout(1500)
    page.set_viewport_size({"width": 1400, "height": 3000})  # down to the labelled faces under the three panels
    page.wait_for_timeout(1500)
    shoot(page, "create", 6)  # two people's photos, base (the photo), mask, final, the faces labelled
    browser.close()
print(f"screenshots in {out}")

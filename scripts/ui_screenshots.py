#!/usr/bin/env python3
"""Screenshots of the running UI for docs/: a newcomer's path through Create (sample face, idea, Write prompt,
Generate, Save to gallery), then Gallery, then Sweep (the example sweep run to its contact sheet). Needs `portrait ui`
running (URL as the first argument). Refuses to write a screenshot of a page with a broken image or a failed request."""

import sys
from pathlib import Path

from playwright.sync_api import sync_playwright

url = sys.argv[1] if len(sys.argv) > 1 else "http://localhost:8501"
out = Path(sys.argv[2] if len(sys.argv) > 2 else "docs/screenshots")
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

    page.locator("input[type=file]").set_input_files(str(Path(skimage.__file__).parent / "data" / "astronaut.png"))
    page.get_by_text("identity 1").wait_for(timeout=30_000)
    page.get_by_role("combobox").nth(1).click()
    page.get_by_role("option", name="woman").click()
    page.get_by_label("Idea (two words are enough)").fill("corporate confidence")
    page.get_by_label("Idea (two words are enough)").press("Enter")
    page.get_by_role("button", name="Write prompt").click()
    page.wait_for_function("() => document.querySelector('textarea').value.includes(' img')", timeout=300_000)
    page.get_by_role("button", name="Generate").click()
    page.get_by_role("button", name="Save to gallery").wait_for(timeout=300_000)
    page.wait_for_timeout(1500)
    shoot(page, "create", 4)  # the identity thumbnail, base, mask, final
    page.get_by_role("button", name="Save to gallery").first.click()
    page.get_by_text("Saved to the gallery.").wait_for(timeout=30_000)
    page.get_by_role("link", name="Gallery").click()
    page.get_by_text("page 1 of").wait_for(timeout=30_000)
    page.wait_for_timeout(1500)
    shoot(page, "gallery", 1)
    page.get_by_role("link", name="Sweep").click()
    page.get_by_role("button", name="Validate").wait_for(timeout=30_000)
    page.get_by_role("button", name="Validate").click()
    page.get_by_text("portraits:").wait_for(timeout=30_000)
    page.get_by_role("button", name="Run sweep").click()
    page.get_by_text("contact sheet at").wait_for(timeout=600_000)
    page.wait_for_timeout(1500)
    shoot(page, "sweep", 1)  # the contact sheet
    browser.close()
print(f"screenshots in {out}")

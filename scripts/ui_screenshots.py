#!/usr/bin/env python3
"""Screenshots of the running UI for docs/: a newcomer's path through Create (sample face, idea, Write prompt,
Generate, Save to gallery), then Gallery and Sweep. Needs `portrait ui` running (URL as the first argument)."""

import sys
from pathlib import Path

from playwright.sync_api import sync_playwright

url = sys.argv[1] if len(sys.argv) > 1 else "http://localhost:8501"
out = Path(sys.argv[2] if len(sys.argv) > 2 else "docs/screenshots")
out.mkdir(parents=True, exist_ok=True)
with sync_playwright() as p:
    browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
    page = browser.new_page(viewport={"width": 1400, "height": 1500})
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
    page.wait_for_function("() => document.querySelector('textarea').value.includes(' img')", timeout=60_000)
    page.get_by_role("button", name="Generate").click()
    page.get_by_text("Final").first.wait_for(timeout=300_000)
    page.wait_for_timeout(1500)
    page.screenshot(path=str(out / "create.png"), full_page=True)
    page.get_by_role("button", name="Save to gallery").first.click()
    page.get_by_text("Saved to the gallery.").wait_for(timeout=30_000)
    page.get_by_role("link", name="Gallery").click()
    page.get_by_text("page 1 of").wait_for(timeout=30_000)
    page.wait_for_timeout(1500)
    page.screenshot(path=str(out / "gallery.png"), full_page=True)
    page.get_by_role("link", name="Sweep").click()
    page.get_by_role("button", name="Validate").wait_for(timeout=30_000)
    page.get_by_role("button", name="Validate").click()
    page.get_by_text("portraits:").wait_for(timeout=30_000)
    page.screenshot(path=str(out / "sweep.png"), full_page=True)
    browser.close()
print(f"screenshots in {out}")

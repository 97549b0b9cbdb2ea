"""ahri play in a real browser: headless Chromium (the system's, never a downloaded one) driven by Playwright
opens the page of a tiny trained run, watches the dream, holds "right" and then "left" from the same start
and checks that the two lead to different frames. Skipped only when no Chromium is installed
(``apt-get install chromium``; ``AHRI_CHROMIUM=/path/to/chromium`` names another)."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest
from play_fixtures import CONTEXT, play_world, serving

CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/lib/chromium/chromium")


def find_chromium() -> str | None:
    named = os.environ.get("AHRI_CHROMIUM")
    if named:
        return named if Path(named).is_file() else None
    for c in CANDIDATES:
        if Path(c).is_file() and os.access(c, os.X_OK):
            return c
    return shutil.which("chromium") or shutil.which("chromium-browser")


CHROMIUM = find_chromium()
pytestmark = [pytest.mark.skipif(CHROMIUM is None, reason="no Chromium found (apt-get install chromium)"),
              pytest.mark.usefixtures("one_thread")]

# Every dreamed frame the page draws, as its pixels, by start and step (installed once the page runs).
CAPTURE = """() => {
  window.caught = {};
  window.ahri.onframe = (head, canvas) => {
    if (head.real) return;
    const px = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
    (window.caught[head.start] ||= {})[head.step] = {action: head.action, px: Array.from(px).join(",")};
  };
}"""
STEPS = 8  # dreamed frames per direction


def canvas_pixels(page) -> str:
    return page.evaluate(
        "() => { const c = document.getElementById('screen');"
        " return Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data).join(','); }"
    )


def hold(page, key: str) -> dict:
    """Hold ``key``, restart the session (R) and wait for STEPS dreamed frames of the new start."""
    start = page.evaluate("() => window.ahri.state.start")
    page.keyboard.down(key)
    page.keyboard.press("r")
    page.wait_for_function(
        f"() => window.caught[{start + 1}] && Object.keys(window.caught[{start + 1}]).length >= {STEPS}"
        f" && window.ahri.state.start === {start + 1} && window.ahri.state.step >= {STEPS + 2}",
        timeout=30_000,
    )
    page.keyboard.up(key)
    return page.evaluate(f"() => window.caught[{start + 1}]")


def test_steering_the_dream_in_a_browser(tmp_path_factory, tmp_path, monkeypatch):
    from playwright.sync_api import sync_playwright

    monkeypatch.setenv("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
    _, _, _, wm, start = play_world(tmp_path_factory)
    with serving(wm, start) as (server, _), sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]
        )
        try:
            page = browser.new_page(viewport={"width": 760, "height": 640})
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(server.page_url)  # the URL ahri play prints, with the token the socket needs
            # the real start, then the dream, frames arriving and the canvas changing
            page.wait_for_function("() => window.ahri.state.drawn > 0 && window.ahri.state.real", timeout=30_000)
            page.wait_for_function(f"() => !window.ahri.state.real && window.ahri.state.step > {CONTEXT}",
                                   timeout=30_000)
            before = canvas_pixels(page)
            seen = page.evaluate("() => window.ahri.state.frame")
            page.wait_for_function(f"() => window.ahri.state.frame >= {seen + 3}", timeout=30_000)
            assert canvas_pixels(page) != before
            assert page.locator("#badge").inner_text().lower() == "dream"
            assert "fps" in page.locator("#fps").inner_text() and "dream step" in page.locator("#step").inner_text()
            assert "idle" in page.locator("#action").inner_text()  # no key held: the run's no-op
            assert page.locator("#keys tr").count() == 10

            page.evaluate(CAPTURE)
            right = hold(page, "ArrowRight")
            assert page.locator("#action").inner_text() in ("right", "idle (no key)")
            left = hold(page, "ArrowLeft")
            common = sorted(set(right) & set(left), key=int)
            assert len(common) >= STEPS // 2, (sorted(right), sorted(left))
            for step in common:
                assert right[step]["action"] == "right" and left[step]["action"] == "left"
                assert right[step]["px"] != left[step]["px"], step  # the actions lead to different frames
            state = page.evaluate("() => window.ahri.state")
            assert state["connected"] and state["fps"] > 0 and not errors, errors
            page.screenshot(path=str(tmp_path / "play.png"))
            assert (tmp_path / "play.png").stat().st_size > 1000
            bare = browser.new_page()  # the page without the token: refused, and it says what to open
            bare.goto(server.url)
            bare.wait_for_function("() => !document.getElementById('error').hidden", timeout=30_000)
            assert "?token=" in bare.locator("#error").inner_text() and not bare.evaluate("window.ahri.state.connected")
            bare.close()
        finally:
            browser.close()
        for _ in range(100):  # the page went away with the browser: its session ends
            if not server.sessions:
                break
            time.sleep(0.05)
        assert server.sessions == {}

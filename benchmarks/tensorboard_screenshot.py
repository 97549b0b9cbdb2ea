"""The TensorBoard screenshot of README.md and docs/training.md, taken in a real browser.

Trains a short ``ahri demo`` in a workspace (or reuses one whose runs already have TensorBoard events), serves
``<workspace>/runs`` with the ``tensorboard`` command on 127.0.0.1, opens the page in headless Chromium (the
system's, ``apt-get install chromium``; ``AHRI_CHROMIUM`` names another) driven by Playwright, shows the
dynamics run's loss, next-frame validation and dream, and saves the page as a PNG::

    python benchmarks/tensorboard_screenshot.py --workspace /tmp/tb-demo --minutes 4 --out docs/tensorboard.png
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

SHOWN = "train/loss$|val/next$|preview/dream"  # the cards on the page (TensorBoard's tag filter, a regex)


def find_chromium() -> str:
    named = os.environ.get("AHRI_CHROMIUM")
    for c in ([named] if named else []) + ["/usr/bin/chromium", "/usr/bin/chromium-browser"]:
        if c and Path(c).is_file():
            return c
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        sys.exit("error: no Chromium found (apt-get install chromium, or set AHRI_CHROMIUM)")
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until_up(url: str, proc: subprocess.Popen, seconds: float = 60) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if proc.poll() is not None:
            sys.exit(f"error: tensorboard exited with code {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    sys.exit(f"error: tensorboard did not answer at {url} within {seconds:.0f} s")


def train_demo(ws: Path, minutes: float, clips: int) -> None:
    if any((ws / "runs").glob("*/tensorboard")):
        print(f"reusing the runs in {ws / 'runs'}")
        return
    cmd = [sys.executable, "-c", "from ahri_cli.main import entry; entry()", "--workspace", str(ws), "demo",
           "--minutes", str(minutes), "--clips", str(clips)]
    print("training:", " ".join(cmd[3:]))
    subprocess.run(cmd, check=True, env={**os.environ, "COLUMNS": "100"})


def screenshot(logdir: Path, out: Path, width: int, height: int) -> None:
    from playwright.sync_api import sync_playwright

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir), "--host", "127.0.0.1",
                             "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}/"
        wait_until_up(url, proc)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=find_chromium(), headless=True,
                                        args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
            page = browser.new_page(viewport={"width": width, "height": height})
            page.goto(url + "#timeseries", wait_until="networkidle")
            box = page.get_by_placeholder("Filter tags (regex)")
            box.fill(SHOWN)
            page.wait_for_selector("img", timeout=30_000)  # the dream card's picture
            page.wait_for_load_state("networkidle")
            time.sleep(2)  # the charts draw after their data arrive
            out.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(out))
            browser.close()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    print(f"{out}: {out.stat().st_size / 1024:.0f} KB")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workspace", type=Path, required=True, help="where the demo trains (reused when it has runs)")
    ap.add_argument("--minutes", type=float, default=4.0, help="the demo's budget")
    ap.add_argument("--clips", type=int, default=48, help="the demo's game clips")
    ap.add_argument("--out", type=Path, default=Path("docs/tensorboard.png"))
    ap.add_argument("--size", default="1280x860", help="the browser window, WxH")
    a = ap.parse_args()
    w, h = (int(v) for v in a.size.split("x"))
    train_demo(a.workspace, a.minutes, a.clips)
    screenshot(a.workspace / "runs", a.out, w, h)


if __name__ == "__main__":
    main()

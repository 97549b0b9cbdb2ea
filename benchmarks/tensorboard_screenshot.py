"""The TensorBoard screenshot of README.md and docs/training.md, taken in a real browser.

Trains a tokenizer and a dynamics model on the built-in game in a workspace, with ``ahri`` as a user would (or
reuses a workspace whose runs already have TensorBoard events), serves
``<workspace>/runs`` with the ``tensorboard`` command on 127.0.0.1, opens the page in headless Chromium (the
system's, ``apt-get install chromium``; ``AHRI_CHROMIUM`` names another) driven by Playwright, shows the
dynamics run's loss, next-frame validation and dream, and saves the page as a PNG::

    python benchmarks/tensorboard_screenshot.py --workspace /tmp/tb-shot --minutes 10 --out docs/tensorboard.png
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
RUN = "/dynamics/"  # the run whose curves are shown (a part of TensorBoard's run id)


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


def ahri(ws: Path, *args: str) -> None:
    cmd = [sys.executable, "-c", "from ahri_cli.main import entry; entry()", "--workspace", str(ws), *args]
    print("ahri", " ".join(args), flush=True)
    subprocess.run(cmd, check=True, env={**os.environ, "COLUMNS": "100"}, stdout=subprocess.DEVNULL)


def train_runs(ws: Path, minutes: float, clips: int) -> None:
    """The built-in game's clips, a cpu-preset tokenizer, its latents and a dynamics run validated often
    (so the dream is seen at many steps): a fifth of ``minutes`` for the tokenizer, the rest for dynamics."""
    if any((ws / "runs").glob("*/tensorboard")):
        print(f"reusing the runs in {ws / 'runs'}")
        return
    ahri(ws, "fetch", "--source", "game", "--clips", str(clips), "--frames", "160")
    ahri(ws, "train", "--stage", "tokenizer", "--preset", "cpu", "--run", "tokenizer", "--minutes",
         f"{minutes / 5:.2f}", "--val-every", "100")
    ahri(ws, "tokenize", "--tokenizer", "tokenizer")
    ahri(ws, "train", "--preset", "cpu", "--run", "dynamics", "--minutes", f"{minutes * 4 / 5:.2f}",
         "--val-every", "50", "--log-every", "10")


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
            page.locator('input[placeholder="Filter tags (regex)"]').first.fill(SHOWN)
            page.get_by_role("button", name="Close side pane").click()  # the settings
            page.locator("body").click(position={"x": 10, "y": height - 10})  # closes the tag list that opened
            others = page.locator(f'tb-data-table-content-row[data-id]:not([data-id*="{RUN}"]) input[type=checkbox]:checked')
            for _ in range(others.count()):  # only the dynamics run's curves
                others.first.click()
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
    ap.add_argument("--workspace", type=Path, required=True, help="where the runs train (reused when it has runs)")
    ap.add_argument("--minutes", type=float, default=10.0, help="training time of both runs together")
    ap.add_argument("--clips", type=int, default=32, help="built-in game clips to train on")
    ap.add_argument("--out", type=Path, default=Path("docs/tensorboard.png"))
    ap.add_argument("--size", default="1700x580", help="the browser window, WxH")
    a = ap.parse_args()
    w, h = (int(v) for v in a.size.split("x"))
    train_runs(a.workspace, a.minutes, a.clips)
    screenshot(a.workspace / "runs", a.out, w, h)


if __name__ == "__main__":
    main()

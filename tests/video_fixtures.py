"""Small generated videos for the video and fetch tests (no network, no data files)."""

from __future__ import annotations

import contextlib
import functools
import http.server
import threading
from pathlib import Path

import av
import numpy as np

BANDS = 8  # horizontal bands encode the frame index in binary (white = 1), robust to compression


def index_frame(i: int, height: int = 192, width: int = 320, edge: int = 48) -> np.ndarray:
    """A frame whose horizontal bands spell ``i`` in binary; red strips at the far left and right
    (outside any centre square crop) tell crop from squash."""
    f = np.zeros((height, width, 3), np.uint8)
    band = height // BANDS
    for b in range(BANDS):
        if (i >> b) & 1:
            f[b * band : (b + 1) * band, edge : width - edge] = 255
    f[:, :edge] = (255, 0, 0)
    f[:, width - edge :] = (255, 0, 0)
    return f


def decode_index(frame: np.ndarray, top: int = 0, rows: int | None = None) -> int:
    """Read back the index from a (possibly resized) frame; ``top``/``rows`` give the picture area."""
    h = frame.shape[0]
    rows = rows if rows is not None else h - top
    w = frame.shape[1]
    centre = frame[:, w // 3 : w - w // 3].astype(np.float32).mean(axis=(1, 2))
    value = 0
    for b in range(BANDS):
        r = top + int((b + 0.5) * rows / BANDS)
        if centre[r] > 127:
            value |= 1 << b
    return value


def encode(path: Path, frames, fps, codec: str = "libx264", fmt: str | None = None, options=None) -> Path:
    """Encode frames with PyAV directly (independent of ahri_core.video.write_video)."""
    frames = list(frames)
    h, w = frames[0].shape[:2]
    path.parent.mkdir(parents=True, exist_ok=True)
    c = av.open(str(path), "w", format=fmt, options=options or {})
    s = c.add_stream(codec, rate=fps)
    s.width, s.height, s.pix_fmt = w, h, "yuv420p"
    if codec == "libx264":
        s.options = {"crf": "18", "preset": "veryfast"}
    for f in frames:
        for p in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
            c.mux(p)
    for p in s.encode():
        c.mux(p)
    c.close()
    return path


def small_clip(path: Path, frames: int = 12, fps: int = 20, size=(48, 64), seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, (size[0], size[1], 3), dtype=np.uint8)
    return encode(path, [np.roll(base, 2 * i, axis=1) for i in range(frames)], fps)


def noise_clip(path: Path, frames: int = 120, size: int = 96, fps: int = 30, **kw) -> Path:
    """Incompressible frames, so that cutting the file in half cuts the frame data in half."""
    rng = np.random.default_rng(1)
    return encode(
        path, (rng.integers(0, 255, (size, size, 3), dtype=np.uint8) for _ in range(frames)), fps, **kw
    )


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # keep test output clean
        pass


@contextlib.contextmanager
def serve(directory: Path):
    """Serve ``directory`` on 127.0.0.1 (a free port) in a thread; yields the base URL."""
    handler = functools.partial(_QuietHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()

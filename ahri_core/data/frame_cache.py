"""The frame cache of tokenizer training: each video decoded once into a memory-mapped uint8 array.

A video resampled to fps and brought to H x W (:class:`FrameShape`: size and fit) is decoded once into
``<cache>/frames/<sha256[:16]>-<fps>fps-<H>x<W>-<fit>.npy`` (uint8 (T, H, W, 3), written atomically) and
memory-mapped on every later read, so training never waits for the video decoder. A video longer than
``MAX_CACHED_FRAMES`` keeps every k-th frame, so the cache stays bounded.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from ..errors import DataError
from ..fileio import atomic_path
from .videos import VideoRef, as_video_ref


class FrameShape(NamedTuple):
    """The frames a reader makes: ``height`` x ``width`` pixels, a source of another aspect brought to it by
    ``fit`` (``pad``: scaled to fit, the rest black, the whole frame kept; ``crop``: scaled to cover, the
    centre kept; ``squash``: stretched)."""

    height: int
    width: int
    fit: str = "pad"

    @property
    def size(self) -> tuple[int, int]:
        return self.height, self.width

    @property
    def tag(self) -> str:
        return f"{self.height}x{self.width}-{self.fit}"


def as_shape(size: int | tuple[int, int] | FrameShape | Any, fit: str | None = None) -> FrameShape:
    """A :class:`FrameShape` from an int (square), (height, width), a FrameShape, or a tokenizer config
    (anything with ``height``, ``width`` and ``fit``); ``fit`` overrides."""
    if isinstance(size, FrameShape):
        return size if fit is None else size._replace(fit=fit)
    if hasattr(size, "height") and hasattr(size, "width"):
        return FrameShape(int(size.height), int(size.width), fit or str(getattr(size, "fit", "pad")))
    if isinstance(size, (int, np.integer)):
        return FrameShape(int(size), int(size), fit or "pad")
    h, w = (int(x) for x in size)
    return FrameShape(h, w, fit or "pad")


def _fps_tag(fps: float) -> str:
    return f"{fps:g}".replace(".", "p")


# A long video is not cached whole for tokenizer training: past this many frames (at the rate it is read),
# every k-th frame is kept, k the smallest stride that brings it under the cap, so the cache of a video is
# bounded and still spans all of it (an hour at 20 fps keeps every 4th frame: 18,000 frames, ~200 MB at 48x80).
MAX_CACHED_FRAMES = 20_000


def cache_path(cache_dir: str | os.PathLike, ref: VideoRef, fps: float, size: Any, every: int = 1) -> Path:
    shape = as_shape(size)
    tail = f"-every{every}" if every > 1 else ""
    return Path(cache_dir) / "frames" / f"{ref.sha256[:16]}-{_fps_tag(fps)}fps-{shape.tag}{tail}.npy"


Decoder = Callable[[Path, float, FrameShape], Iterable[np.ndarray]]


def default_decoder(path: Path, fps: float, shape: FrameShape | Any) -> Iterable[np.ndarray]:
    """Frames of ``path`` resampled to fps and brought to the shape's height x width by its fit (uint8 HxWx3)."""
    from ..video import iter_frames

    shape = as_shape(shape)
    return iter_frames(path, fps=fps, size=shape.size, fit=shape.fit)


def cache_stride(ref: VideoRef, fps: float, max_frames: int | None) -> int:
    """Keep every k-th frame of the video in the cache: the smallest k with (frames at ``fps``) / k within
    ``max_frames`` (1 when the cap is None or the length is unknown)."""
    if not max_frames:
        return 1
    dur = ref.duration
    n = int(math.ceil(dur * fps))
    return max(1, math.ceil(n / max_frames)) if n > 0 else 1


def decode_to_cache(
    ref: VideoRef, fps: float, size: Any, dest: Path, decoder: Decoder | None = None, every: int = 1
) -> int:
    """Decode a whole video into ``dest`` (.npy, uint8 (T, H, W, 3)), atomically. Returns the frame count.

    ``every``: keep frames 0, k, 2k, ... only. Frames stream into a temporary raw file (a long video never
    sits in memory), which is then copied behind an .npy header under a temporary name and renamed onto
    ``dest``.
    """
    decoder = decoder or default_decoder
    shape = as_shape(size)
    want = (shape.height, shape.width, 3)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, raw_name = tempfile.mkstemp(prefix=f".{dest.stem}.", suffix=".raw", dir=dest.parent)
    raw = Path(raw_name)
    try:
        count = 0
        with os.fdopen(fd, "wb") as f:
            for i, fr in enumerate(decoder(ref.path, fps, shape)):
                if i % every:
                    continue
                a = np.asarray(fr, dtype=np.uint8)
                if a.shape != want:
                    raise DataError(f"{ref.path}: decoder returned a frame of shape {a.shape}, expected {want}")
                f.write(a.tobytes())
                count += 1
        if count == 0:
            raise DataError(f"{ref.path}: no frames could be decoded")
        header = {"descr": "|u1", "fortran_order": False, "shape": (count, *want)}
        with atomic_path(dest) as tmp, open(tmp, "wb") as out, open(raw, "rb") as src:
            np.lib.format.write_array_header_1_0(out, header)
            shutil.copyfileobj(src, out, 1 << 22)
    finally:
        raw.unlink(missing_ok=True)
    return count


def cached_frames(
    ref: VideoRef | Any,
    fps: float,
    size: Any,
    cache_dir: str | os.PathLike,
    decoder: Decoder | None = None,
    max_frames: int | None = None,
) -> np.ndarray:
    """uint8 (T, H, W, 3) frames of a video, memory-mapped from the cache (decoded on first use).

    ``size``: an int (square), (height, width) or a :class:`FrameShape` (with its fit). ``max_frames``:
    the cap of :data:`MAX_CACHED_FRAMES` kind; a longer video keeps every k-th frame (``cache_stride``).
    """
    ref = as_video_ref(ref)
    shape = as_shape(size)
    every = cache_stride(ref, fps, max_frames)
    path = cache_path(cache_dir, ref, fps, shape, every)
    if not path.is_file():
        decode_to_cache(ref, fps, shape, path, decoder, every)
    try:
        arr = np.load(path, mmap_mode="r")
    except (ValueError, OSError) as e:
        path.unlink(missing_ok=True)
        raise DataError(f"frame cache {path} was unreadable and has been removed; run again ({e})") from None
    if arr.ndim != 4 or arr.shape[1:] != (shape.height, shape.width, 3) or arr.dtype != np.uint8:
        path.unlink(missing_ok=True)
        raise DataError(f"frame cache {path} has shape {arr.shape}; it has been removed, run again")
    return arr

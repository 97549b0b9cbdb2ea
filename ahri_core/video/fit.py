"""Bringing frames to a size: the fits (pad, crop, squash), the resizer used while decoding, and the
frame conventions (uint8 (H, W, 3) RGB and the library's float (3, H, W) in [0, 1]).

Resizing uses swscale's area filter inside PyAV's ``reformat`` (colour conversion and resize in one C
pass), so decoding stays in the thousands of frames per second at small output sizes.
"""

from __future__ import annotations

from typing import Literal

import av
import numpy as np

Fit = Literal["pad", "crop", "squash", "letterbox"]
# pad: scale to fit inside, pad the rest with black (the whole frame is kept); crop: scale to cover, keep the
# centre; squash: stretch to the target. "letterbox" is an older name of "pad".
FITS = ("pad", "crop", "squash", "letterbox")


def _target_size(size: int | tuple[int, int] | None) -> tuple[int, int] | None:
    if size is None:
        return None
    if isinstance(size, (int, np.integer)):
        h = w = int(size)
    elif hasattr(size, "height") and hasattr(size, "width"):  # a frame shape (height, width, fit)
        h, w = int(size.height), int(size.width)
    else:
        h, w = (int(x) for x in size)
    if h < 1 or w < 1:
        raise ValueError(f"size must be positive, got {size!r}")
    return h, w


class _Resizer:
    """Turns decoded frames into uint8 (H, W, 3) RGB at the target size and fit."""

    def __init__(self, size: tuple[int, int] | None, fit: str) -> None:
        if fit not in FITS:
            raise ValueError(f"fit must be one of {', '.join(FITS)}, got {fit!r}")
        self.size = size
        self.fit = fit
        self._src: tuple[int, int] | None = None
        self._plan: tuple[int, int, int, int] = (0, 0, 0, 0)

    def _make_plan(self, w: int, h: int) -> None:
        th, tw = self.size  # type: ignore[misc]
        if self.fit == "squash":
            rw, rh = tw, th
        elif self.fit == "crop":  # scale to cover the target, then cut the centre
            s = max(tw / w, th / h)
            rw, rh = max(tw, round(w * s)), max(th, round(h * s))
        else:  # pad: scale to fit inside, then pad with black
            rw, rh = _fitted(w, h, tw, th)
        self._src = (w, h)
        self._plan = (rw, rh, abs(rw - tw) // 2, abs(rh - th) // 2)

    def __call__(self, frame) -> np.ndarray:
        if self.size is None:
            return frame.to_ndarray(format="rgb24")
        if self._src != (frame.width, frame.height):
            self._make_plan(frame.width, frame.height)
        rw, rh, ox, oy = self._plan
        th, tw = self.size
        img = frame.to_ndarray(width=rw, height=rh, format="rgb24", interpolation="AREA")
        if self.fit == "squash" or (rw == tw and rh == th):
            return np.ascontiguousarray(img)
        if self.fit == "crop":
            return np.ascontiguousarray(img[oy : oy + th, ox : ox + tw])
        out = np.zeros((th, tw, 3), np.uint8)
        out[oy : oy + rh, ox : ox + rw] = img
        return out


def _fitted(w: int, h: int, tw: int, th: int) -> tuple[int, int]:
    """(width, height) of a w x h picture scaled to fit inside tw x th, aspect kept."""
    s = min(tw / w, th / h)
    return min(tw, max(1, round(w * s))), min(th, max(1, round(h * s)))


def content_box(source: tuple[int, int], size: tuple[int, int], fit: str) -> tuple[int, int, int, int]:
    """(top, left, height, width) of the part of a ``size`` = (height, width) frame that shows the source
    picture of ``source`` = (width, height) pixels after ``fit``: the picture without the black bars of
    ``pad``; the whole frame for ``crop`` and ``squash``."""
    th, tw = (int(x) for x in size)
    if fit not in ("pad", "letterbox"):
        return 0, 0, th, tw
    rw, rh = _fitted(int(source[0]), int(source[1]), tw, th)
    return (th - rh) // 2, (tw - rw) // 2, rh, rw


def resize_frames(frames: np.ndarray, size: int | tuple[int, int], fit: Fit = "crop") -> np.ndarray:
    """Resize uint8 frames (T, H, W, 3) or one (H, W, 3) with the same area filter and fit as decoding."""
    arr = np.asarray(frames, dtype=np.uint8)
    single = arr.ndim == 3
    batch = arr[None] if single else arr
    resize = _Resizer(_target_size(size), fit)
    out = np.stack(
        [resize(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")) for f in batch]
    )
    return out[0] if single else out


def frames_to_float(frames: np.ndarray) -> np.ndarray:
    """uint8 (..., H, W, 3) -> float32 (..., 3, H, W) in [0, 1], the library's frame convention."""
    x = np.asarray(frames, dtype=np.float32) / 255.0
    return np.moveaxis(x, -1, -3)


def float_to_frames(x: np.ndarray) -> np.ndarray:
    """float (..., 3, H, W) in [0, 1] -> uint8 (..., H, W, 3), rounded and clipped."""
    x = np.moveaxis(np.asarray(x, dtype=np.float32), -3, -1)
    return np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)

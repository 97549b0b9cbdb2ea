"""Decoding: stream frames of a video resampled to a rate and brought to a size, read all of them, or
only those of a few frame ranges in one pass.

Frames are uint8 arrays of shape (height, width, 3), RGB. Everything streams: a video is never held in
memory unless the caller asks for it with :func:`read_frames`.
"""

from __future__ import annotations

import numbers
import os
from collections.abc import Container, Iterator, Sequence

import av.error
import numpy as np

from ..errors import VideoError
from .fit import Fit, _Resizer, _target_size
from .probe import _duration, _fail, _one_frame_per_packet, _open, _stream_fps
from .rates import _TIME_TOLERANCE, MAX_GAP, _as_rate


def iter_frames(
    path: str | os.PathLike,
    fps: float | None = None,
    size: int | tuple[int, int] | None = None,
    fit: Fit = "crop",
    max_frames: int | None = None,
) -> Iterator[np.ndarray]:
    """Stream uint8 (H, W, 3) RGB frames.

    fps: target frame rate (None: every decoded frame). size: an int for square frames or
    (height, width); None keeps the source size. fit: ``pad`` (scale to fit, pad with black: the whole
    frame is kept), ``crop`` (scale to cover, keep the centre) or ``squash`` (stretch).
    Arguments are checked at once (ValueError); the file is opened on the first ``next``. Raises
    :class:`VideoError` at open or mid-stream, with the source frame index reached.
    """
    resize = _Resizer(_target_size(size), fit)
    if fps is not None and not (isinstance(fps, numbers.Real) and fps > 0):
        raise ValueError(f"fps must be a positive number, got {fps!r}")
    return _iter_frames(path, fps, resize, max_frames)


def _iter_frames(
    path, fps, resize: _Resizer, max_frames: int | None, want: Container[int] | None = None
) -> Iterator[np.ndarray]:
    """Output frames 0 .. ``max_frames`` - 1 in order; with ``want``, only those whose index is in it.
    Unwanted frames are still decoded (resampling needs every timestamp) but never converted or kept."""
    if max_frames is not None and max_frames <= 0:
        return
    stop = max_frames
    container = _open(path)
    try:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        src_fps = _stream_fps(stream, _duration(container, stream), int(stream.frames or 0)) or 30.0
        header_frames = int(stream.frames or 0)
        strict = _one_frame_per_packet(container, stream)
        decoded = 0  # source frames decoded so far: the index reported on errors
        emitted = 0

        def frames():
            nonlocal decoded
            packets = 0
            try:
                for packet in container.demux(stream):
                    if packet.size:
                        packets += 1
                    for frame in packet.decode():
                        decoded += 1
                        yield frame
            except av.error.FFmpegError as e:
                raise _fail(path, "decode failed", e, decoded) from None
            # With frame threading the decoder drops damaged packets instead of raising: count them.
            if strict and decoded < packets:
                raise VideoError(path, f"decode failed: {packets - decoded} damaged frame(s)", decoded)
            if header_frames and packets < header_frames:
                raise VideoError(path, f"truncated: {packets} of {header_frames} frames present", decoded)

        if fps is None:
            for frame in frames():
                if want is None or emitted in want:
                    yield resize(frame)
                emitted += 1
                if stop is not None and emitted >= stop:
                    return
            if decoded == 0:
                raise VideoError(path, "contains no decodable frame", 0)
            return

        # Output frame k is at time k / fps; it shows the last source frame that started at or before it.
        step = 1.0 / float(_as_rate(fps))
        t0: float | None = None
        pending = None  # the source frame currently on screen
        pending_t = 0.0
        pending_dur = 1.0 / src_fps
        k = 0
        for frame in frames():
            if frame.pts is not None and frame.time_base is not None:
                t_abs = float(frame.pts * frame.time_base)
            else:
                t_abs = (decoded - 1) / src_fps
            if t0 is None:
                t0 = t_abs
            t = t_abs - t0
            if pending is not None and t - pending_t > MAX_GAP:  # a hole in the timeline: cut it out
                t0 += t - pending_t - 1.0 / src_fps
                t = pending_t + 1.0 / src_fps
            if pending is not None:
                img = None
                while k * step < t - _TIME_TOLERANCE:
                    if want is None or k in want:
                        img = resize(pending) if img is None else img.copy()
                        yield img
                    k += 1
                    if stop is not None and k >= stop:
                        return
            pending, pending_t = frame, t
            dur = getattr(frame, "duration", None)
            pending_dur = (
                float(dur * frame.time_base) if dur and frame.time_base is not None else 1.0 / src_fps
            )
            if pending_dur > MAX_GAP:  # the last frame's duration can carry a hole in the timeline too
                pending_dur = 1.0 / src_fps
        if pending is None:
            raise VideoError(path, "contains no decodable frame", 0)
        img = None
        end = pending_t + pending_dur
        while k * step < end - _TIME_TOLERANCE:
            if want is None or k in want:
                img = resize(pending) if img is None else img.copy()
                yield img
            k += 1
            if stop is not None and k >= stop:
                return
    finally:
        container.close()


def read_frames(
    path: str | os.PathLike,
    fps: float | None = None,
    size: int | tuple[int, int] | None = None,
    fit: Fit = "crop",
    max_frames: int | None = None,
) -> np.ndarray:
    """All frames (up to ``max_frames``) as one uint8 array (T, H, W, 3); see :func:`iter_frames`."""
    frames = list(iter_frames(path, fps=fps, size=size, fit=fit, max_frames=max_frames))
    if not frames:
        h, w = _target_size(size) or (0, 0)
        return np.zeros((0, h, w, 3), np.uint8)
    return np.stack(frames)


def read_ranges(
    path: str | os.PathLike,
    ranges: Sequence[tuple[int, int]],
    fps: float | None = None,
    size: int | tuple[int, int] | None = None,
    fit: Fit = "crop",
) -> list[np.ndarray]:
    """The frames ``start <= i < stop`` of each ``(start, stop)`` range, in one streaming pass.

    Frame indices are those of :func:`iter_frames` with the same ``fps``, ``size`` and ``fit`` (so
    ``read_ranges(p, [(a, b)])[0]`` equals ``read_frames(p)[a:b]``), but only the frames inside a range
    are converted and kept, and decoding stops after the last range: memory grows with the ranges, never
    with the video. Ranges may overlap and come in any order; one that runs past the end of the video
    comes back shorter (empty when it starts past the end). Frames between ranges are decoded but not
    converted. Returns one uint8 (n, H, W, 3) array per range.
    """
    spans = []
    for r in ranges:
        a, b = (int(x) for x in r)
        if a < 0 or b < a:
            raise ValueError(f"frame range {tuple(r)!r} must satisfy 0 <= start <= stop")
        spans.append((a, b))
    resize = _Resizer(_target_size(size), fit)
    if fps is not None and not (isinstance(fps, numbers.Real) and fps > 0):
        raise ValueError(f"fps must be a positive number, got {fps!r}")
    parts: list[list[np.ndarray]] = [[] for _ in spans]
    wanted = sorted({i for a, b in spans for i in range(a, b)})
    if wanted:
        # frames come out in index order, exactly the wanted ones until the video ends
        for i, img in zip(wanted, _iter_frames(path, fps, resize, wanted[-1] + 1, set(wanted)), strict=False):
            for j, (a, b) in enumerate(spans):
                if a <= i < b:
                    parts[j].append(img)
    if not any(parts):
        h, w = _target_size(size) or (0, 0)
    else:
        h, w = next(p for p in parts if p)[0].shape[:2]
    return [np.stack(p) if p else np.zeros((0, h, w, 3), np.uint8) for p in parts]


def read_range(
    path: str | os.PathLike,
    start: int,
    stop: int,
    fps: float | None = None,
    size: int | tuple[int, int] | None = None,
    fit: Fit = "crop",
) -> np.ndarray:
    """Frames ``start <= i < stop`` as one uint8 array (n, H, W, 3); see :func:`read_ranges`."""
    return read_ranges(path, [(start, stop)], fps=fps, size=size, fit=fit)[0]

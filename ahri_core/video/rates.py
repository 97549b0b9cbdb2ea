"""Frame rates: comparing and capping them, and which source frame each output frame shows.

Frame-rate resampling works on presentation timestamps. Output frame ``k`` is shown at time ``k / fps``
(relative to the first decoded frame) and takes the source frame on screen at that moment, i.e. the last
source frame whose timestamp is not later than it. Lower rates drop frames, higher rates repeat them.

A jump of more than :data:`MAX_GAP` seconds between two frames (a paused recording, a damaged file) is cut out:
the frame before it is shown for one frame period of the video's own rate and the frames after it follow at
once, so a video with an hour-long hole gives the frames it holds, never an hour of one repeated frame.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np

# A jump between two frames longer than this (seconds) is cut out of the timeline (see the module docstring).
MAX_GAP = 10.0

# Two timestamps closer than this (seconds) count as equal when choosing frames for a target rate.
_TIME_TOLERANCE = 1e-4


def _as_rate(fps: float | Fraction | int) -> Fraction:
    if isinstance(fps, Fraction):
        return fps
    if isinstance(fps, (int, np.integer)):
        return Fraction(int(fps))
    return Fraction(str(float(fps))).limit_denominator(1_000_000)


# Two frame rates closer than this (relative) count as the same rate: 29.97 and 30 fps, 59.94 and 60.
RATE_TOLERANCE = 0.002


def slow_videos_line(rates: dict[str, float], fps: float) -> str:
    """One line naming the videos read below ``fps`` at their own rate (the first five, then "...")."""
    shown = ", ".join(f"{i} ({r:g} fps)" for i, r in list(rates.items())[:5]) + (", ..." if len(rates) > 5 else "")
    return f"{len(rates)} video(s) slower than {fps:g} fps are read at their own rate: {shown}"


def same_rate(a: float, b: float) -> bool:
    """Whether two frame rates count as one (within :data:`RATE_TOLERANCE`)."""
    return abs(float(a) - float(b)) <= RATE_TOLERANCE * max(abs(float(a)), abs(float(b)))


def capped_fps(target: float, source: float | None) -> float:
    """The rate to read a video at: ``target``, but never above the video's own rate ``source``.

    Reading a video faster than it was recorded would repeat frames, so a slower video keeps its own rate
    (a 29.97 fps video read for a 30 fps target stays at 29.97). An unknown source rate (None or 0) gives
    ``target``.
    """
    target = float(target)
    if not source or source <= 0:
        return target
    return min(target, float(source))


def resampled_count(source_frames: int, source_fps: float, fps: float) -> int:
    """How many frames :func:`iter_frames` gives at ``fps`` for a constant-rate video of ``source_frames``
    frames at ``source_fps``: output frame k (at time k / fps) exists while k / fps < duration."""
    if source_frames <= 0:
        return 0
    if same_rate(source_fps, fps):
        return int(source_frames)
    duration = source_frames / float(source_fps)
    return max(1, math.ceil((duration - _TIME_TOLERANCE) * float(fps)))


def source_indices(count: int, source_fps: float, fps: float) -> np.ndarray:
    """Which source frame each of the first ``count`` output frames shows, int64 (count,).

    The rule of :func:`iter_frames` for a constant-rate source: output frame k is at time k / fps and shows
    the last source frame that started at or before it, i.e. source frame floor(k * source_fps / fps)
    (with the same timestamp tolerance). Equal rates (within :data:`RATE_TOLERANCE`) map k to k.
    """
    k = np.arange(int(count), dtype=np.int64)
    if same_rate(source_fps, fps):
        return k
    return np.floor((k / float(fps) + _TIME_TOLERANCE) * float(source_fps)).astype(np.int64)

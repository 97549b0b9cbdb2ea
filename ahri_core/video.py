"""Video I/O at the edge of the library (PyAV): probe, stream frames, write mp4.

Frames here are uint8 arrays of shape (height, width, 3), RGB. Everything streams: a video is never
held in memory unless the caller asks for it with :func:`read_frames`.

Frame-rate resampling works on presentation timestamps. Output frame ``k`` is shown at time ``k / fps``
(relative to the first decoded frame) and takes the source frame on screen at that moment, i.e. the last
source frame whose timestamp is not later than it. Lower rates drop frames, higher rates repeat them.

Resizing uses swscale's area filter inside PyAV's ``reformat`` (colour conversion and resize in one C
pass), so decoding stays in the thousands of frames per second at small output sizes.

Every PyAV failure, at open or in the middle of decoding, becomes :class:`VideoError` naming the file
and the index of the source frame that was being decoded.
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Container, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path
from typing import Literal

import av
import av.error
import numpy as np

from .errors import VideoError
from .fileio import atomic_path

Fit = Literal["pad", "crop", "squash", "letterbox"]
# pad: scale to fit inside, pad the rest with black (the whole frame is kept); crop: scale to cover, keep the
# centre; squash: stretch to the target. "letterbox" is an older name of "pad".
FITS = ("pad", "crop", "squash", "letterbox")
VIDEO_EXTENSIONS = (".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".ts", ".mpg", ".mpeg", ".flv", ".wmv")
# Codecs the mp4 muxer takes as they are (stream copy); anything else is re-encoded with libx264.
MP4_COPY_CODECS = ("h264", "hevc", "av1", "vp9", "mpeg4")
# Two timestamps closer than this (seconds) count as equal when choosing frames for a target rate.
_TIME_TOLERANCE = 1e-4


@dataclass(frozen=True)
class VideoInfo:
    path: str
    fps: float
    frames: int
    duration: float
    width: int
    height: int
    codec: str
    container: str
    frames_counted: bool  # True when ``frames`` was counted (or read from the header), False when estimated

    def to_dict(self) -> dict:
        return asdict(self)


def _fail(path, what: str, err: BaseException, frame_index: int | None = None) -> VideoError:
    detail = getattr(err, "strerror", None) or str(err) or type(err).__name__
    return VideoError(path, f"{what} ({detail})", frame_index)


def _open(path: str | os.PathLike):
    p = Path(path)
    if not p.is_file():
        raise VideoError(p, "no such file")
    try:
        container = av.open(str(p), mode="r")
    except (av.error.FFmpegError, UnicodeDecodeError, ValueError, OSError) as e:
        raise _fail(p, "cannot open as a video", e) from None
    if not container.streams.video:
        container.close()
        raise VideoError(p, "has no video stream")
    return container


def _snap_rate(fps: float) -> float:
    """Millisecond timestamps (Matroska) make 30 fps read as 30.003: snap to n or n*1000/1001 within 0.05%."""
    for nice in (round(fps), round(fps * 1.001) / 1.001):
        if nice > 0 and abs(fps - nice) <= 5e-4 * nice:
            return float(nice) if float(nice).is_integer() else round(nice, 6)
    return fps


def _stream_fps(stream, duration: float, frames: int) -> float:
    avg, guess = stream.average_rate, stream.guessed_rate
    if avg and guess and abs(float(avg) / float(guess) - 1) < 0.01:
        return _snap_rate(float(guess))  # the nominal rate; the average carries timestamp rounding
    for rate in (avg, guess, stream.base_rate):
        if rate:
            return _snap_rate(float(rate))
    if duration > 0 and frames > 0:
        return _snap_rate(frames / duration)
    return 0.0


def _duration(container, stream) -> float:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / av.time_base
    return 0.0


def _count_packets(path, container, stream) -> int:
    n = 0
    try:
        for packet in container.demux(stream):
            if packet.size:
                n += 1
    except av.error.FFmpegError as e:
        raise _fail(path, "cannot read packets", e, n) from None
    return n


def probe(path: str | os.PathLike, count: bool = True) -> VideoInfo:
    """Metadata of the first video stream.

    Some containers (mkv, webm, fragmented mp4) carry no frame count. Then the packets are counted
    (a demux pass: file I/O, no decoding) when ``count`` is true, else the count is estimated from the
    duration and ``frames_counted`` is False.
    """
    container = _open(path)
    try:
        stream = container.streams.video[0]
        duration = _duration(container, stream)
        frames = int(stream.frames or 0)
        counted = frames > 0
        if not counted and count:
            frames = _count_packets(path, container, stream)
            counted = True
        fps = _stream_fps(stream, duration, frames)
        if not counted:
            frames = int(round(duration * fps)) if fps > 0 else 0
        if duration <= 0 and fps > 0:
            duration = frames / fps
        cc = stream.codec_context
        return VideoInfo(
            path=str(path),
            fps=fps,
            frames=frames,
            duration=duration,
            width=int(cc.width),
            height=int(cc.height),
            codec=cc.name,
            container=container.format.name,
            frames_counted=counted,
        )
    finally:
        container.close()


def check_video(path: str | os.PathLike, full: bool = True) -> VideoInfo:
    """Open and decode a video to prove it is usable; return its :class:`VideoInfo` with an exact frame count.

    ``full`` decodes every frame (no colour conversion, so it is cheap); otherwise only keyframes are
    decoded while every packet is still read. Either way a file with fewer packets than its header
    announces (a truncated download) is refused. Raises :class:`VideoError`.
    """
    container = _open(path)
    try:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        if not full:
            stream.codec_context.skip_frame = "NONKEY"
        header_frames = int(stream.frames or 0)
        packets = decoded = 0
        try:
            for packet in container.demux(stream):
                if packet.size:
                    packets += 1
                for _ in packet.decode():
                    decoded += 1
        except av.error.FFmpegError as e:
            raise _fail(path, "decode failed", e, decoded if full else packets) from None
        if decoded == 0:
            raise VideoError(path, "contains no decodable frame")
        if full and decoded < packets and _one_frame_per_packet(container, stream):
            # frame threading drops damaged packets instead of raising
            raise VideoError(path, f"decode failed: {packets - decoded} damaged frame(s)", decoded)
        if header_frames and packets < header_frames:
            raise VideoError(path, f"truncated: {packets} of {header_frames} frames present", packets)
        duration = _duration(container, stream)
        fps = _stream_fps(stream, duration, packets)
        if duration <= 0 and fps > 0:
            duration = packets / fps
        cc = stream.codec_context
        return VideoInfo(
            path=str(path),
            fps=fps,
            frames=packets,
            duration=duration,
            width=int(cc.width),
            height=int(cc.height),
            codec=cc.name,
            container=container.format.name,
            frames_counted=True,
        )
    finally:
        container.close()


# ----------------------------------------------------------------------------------------------
# Decoding
# ----------------------------------------------------------------------------------------------


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


def _as_rate(fps: float | Fraction | int) -> Fraction:
    if isinstance(fps, Fraction):
        return fps
    if isinstance(fps, (int, np.integer)):
        return Fraction(int(fps))
    return Fraction(str(float(fps))).limit_denominator(1_000_000)


# Two frame rates closer than this (relative) count as the same rate: 29.97 and 30 fps, 59.94 and 60.
RATE_TOLERANCE = 0.002


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


def _one_frame_per_packet(container, stream) -> bool:
    """Containers and codecs where every packet holds exactly one shown frame, so a packet that gives
    no frame means damage (old AVI/MPEG streams can carry frameless or two-frame packets)."""
    fmt = container.format.name
    return stream.codec_context.name in ("h264", "hevc", "vp9", "av1") and ("mp4" in fmt or "matroska" in fmt)


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


# ----------------------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------------------


def write_video(
    path: str | os.PathLike,
    frames: np.ndarray | Iterable[np.ndarray],
    fps: float | Fraction,
    crf: int = 18,
    preset: str = "medium",
) -> int:
    """Encode uint8 (H, W, 3) RGB frames to an mp4 (libx264, yuv420p, moov at the front); return the frame count.

    ``frames`` is a (T, H, W, 3) array or any iterable of (H, W, 3) arrays. Height and width must be even
    (yuv420p). The file appears under its final name only once it is complete.
    """
    rate = _as_rate(fps)
    if rate <= 0:
        raise VideoError(path, f"fps must be positive, got {fps!r}")
    n = 0
    with atomic_path(path) as tmp:
        container = av.open(str(tmp), mode="w", format="mp4", options={"movflags": "+faststart"})
        try:
            stream = None
            for frame in frames:
                arr = np.asarray(frame)
                if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
                    raise VideoError(path, f"frames must be uint8 (H, W, 3), got {arr.dtype} {arr.shape}", n)
                h, w = arr.shape[:2]
                if stream is None:
                    if h % 2 or w % 2:
                        raise VideoError(path, f"height and width must be even for yuv420p, got {h}x{w}")
                    stream = container.add_stream("libx264", rate=rate)
                    stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
                    stream.options = {"crf": str(crf), "preset": preset}
                elif (h, w) != (stream.height, stream.width):
                    raise VideoError(
                        path, f"frame size changed from {stream.height}x{stream.width} to {h}x{w}", n
                    )
                vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(arr), format="rgb24")
                for packet in stream.encode(vf):
                    container.mux(packet)
                n += 1
            if stream is None:
                raise VideoError(path, "no frames to write")
            for packet in stream.encode():
                container.mux(packet)
        except av.error.FFmpegError as e:
            raise _fail(path, "encoding failed", e, n) from None
        finally:
            container.close()
    return n


def _with_dts(packets, step: int):
    """Yield packets with decode timestamps. Matroska/WebM leave the first dts of a stream with
    reordering delay unset, which mp4 refuses: give those packets dts values one frame apart just
    before the first known dts (never after their pts), and patch any later gap to stay increasing."""
    pending: list = []
    last = None
    for packet in packets:
        if not packet.size:
            continue
        if packet.dts is None and last is None:
            pending.append(packet)
            continue
        if packet.dts is None:
            packet.dts = last + step if packet.pts is None else max(last + 1, min(packet.pts, last + step))
        if pending:
            for j, q in enumerate(pending):
                q.dts = packet.dts - (len(pending) - j) * step
                if q.pts is None:
                    q.pts = q.dts
                yield q
            pending = []
        if packet.pts is None:
            packet.pts = packet.dts
        last = packet.dts
        yield packet
    for j, q in enumerate(pending):  # no packet had a dts at all
        q.dts = q.pts if q.pts is not None else j * step
        if q.pts is None:
            q.pts = q.dts
        yield q


def to_mp4(src: str | os.PathLike, dst: str | os.PathLike, crf: int = 18) -> None:
    """Store the video stream of ``src`` as an mp4 at ``dst`` (atomic), dropping audio and other streams.

    Codecs mp4 can hold are copied packet by packet (no quality loss, fast); others are re-encoded with
    libx264 (yuv420p, sizes rounded down to even). The result has a frame count in its header even when
    the source (mkv, webm, fragmented mp4) did not.
    """
    info = probe(src, count=False)
    if info.codec in MP4_COPY_CODECS:
        container = _open(src)
        n = 0
        try:
            with atomic_path(dst) as tmp:
                out = av.open(str(tmp), mode="w", format="mp4", options={"movflags": "+faststart"})
                try:
                    in_stream = container.streams.video[0]
                    out_stream = out.add_stream_from_template(in_stream)
                    tick = in_stream.time_base or Fraction(1, 90000)
                    step = max(1, round(1 / ((info.fps or 30.0) * tick)))
                    for packet in _with_dts(container.demux(in_stream), step):
                        packet.stream = out_stream
                        out.mux(packet)
                        n += 1
                finally:
                    out.close()
        except av.error.FFmpegError as e:
            raise _fail(src, "cannot copy into mp4", e, n) from None
        finally:
            container.close()
        return
    w, h = info.width - info.width % 2, info.height - info.height % 2
    if w < 2 or h < 2:
        raise VideoError(src, f"frame size {info.width}x{info.height} is too small to store")
    frames = (
        iter_frames(src, size=(h, w), fit="crop") if (w, h) != (info.width, info.height) else iter_frames(src)
    )
    write_video(dst, frames, _as_rate(info.fps) if info.fps > 0 else Fraction(30), crf=crf)


def frames_to_float(frames: np.ndarray) -> np.ndarray:
    """uint8 (..., H, W, 3) -> float32 (..., 3, H, W) in [0, 1], the library's frame convention."""
    x = np.asarray(frames, dtype=np.float32) / 255.0
    return np.moveaxis(x, -1, -3)


def float_to_frames(x: np.ndarray) -> np.ndarray:
    """float (..., 3, H, W) in [0, 1] -> uint8 (..., H, W, 3), rounded and clipped."""
    x = np.moveaxis(np.asarray(x, dtype=np.float32), -3, -1)
    return np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)


__all__ = [
    "VideoInfo",
    "VIDEO_EXTENSIONS",
    "RATE_TOLERANCE",
    "same_rate",
    "capped_fps",
    "resampled_count",
    "source_indices",
    "probe",
    "check_video",
    "iter_frames",
    "read_frames",
    "read_range",
    "read_ranges",
    "resize_frames",
    "write_video",
    "to_mp4",
    "frames_to_float",
    "float_to_frames",
]

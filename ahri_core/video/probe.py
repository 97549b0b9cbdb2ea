"""Probing and checking video files (PyAV): metadata of the first video stream, a decode pass that proves
a file usable, and the errors of both.

Every PyAV failure, at open or in the middle of decoding, becomes :class:`VideoError` naming the file
and the index of the source frame that was being decoded.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

import av
import av.error

from ..errors import VideoError

# An average rate this many times below the stream's nominal rate means holes in the timeline, not a slow video.
GAP_RATIO = 10

VIDEO_EXTENSIONS = (".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".ts", ".mpg", ".mpeg", ".flv", ".wmv")


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
    if avg and guess and float(avg) * GAP_RATIO < float(guess):
        # a jump in the timestamps (a paused recording) pulls the average down; reading cuts such jumps out
        return _snap_rate(float(guess))
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


def _one_frame_per_packet(container, stream) -> bool:
    """Containers and codecs where every packet holds exactly one shown frame, so a packet that gives
    no frame means damage (old AVI/MPEG streams can carry frameless or two-frame packets)."""
    fmt = container.format.name
    return stream.codec_context.name in ("h264", "hevc", "vp9", "av1") and ("mp4" in fmt or "matroska" in fmt)

"""Writing video: encode frames to an mp4, and store another video's stream as an mp4."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable
from fractions import Fraction

import av
import av.error
import numpy as np

from ..errors import VideoError, WriteError
from ..fileio import atomic_path, disk_full, write_failure
from .probe import _fail, _open, probe
from .rates import _as_rate
from .read import iter_frames

# Codecs the mp4 muxer takes as they are (stream copy); anything else is re-encoded with libx264.
MP4_COPY_CODECS = ("h264", "hevc", "av1", "vp9", "mpeg4")


def write_video(
    path: str | os.PathLike,
    frames: np.ndarray | Iterable[np.ndarray],
    fps: float | Fraction,
    crf: int = 18,
    preset: str = "medium",
    on_bytes: Callable[[int], None] | None = None,
) -> int:
    """Encode uint8 (H, W, 3) RGB frames to an mp4 (libx264, yuv420p, moov at the front); return the frame count.

    ``frames`` is a (T, H, W, 3) array or any iterable of (H, W, 3) arrays. Height and width must be even
    (yuv420p). The file appears under its final name only once it is complete. ``on_bytes(n)`` hears the size
    of each encoded packet as it is written (the file on disk grows in large steps, behind the encoder).
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
                _mux(container, stream.encode(vf), on_bytes)
                n += 1
            if stream is None:
                raise VideoError(path, "no frames to write")
            _mux(container, stream.encode(), on_bytes)
        except av.error.FFmpegError as e:
            _close_quietly(container)
            raise _write_fail(path, "encoding failed", e, n) from None
        except BaseException:
            _close_quietly(container)
            raise
        try:
            container.close()  # the index goes to the front of the file here (faststart): a full disk can show now
        except (av.error.FFmpegError, OSError) as e:
            raise _write_fail(path, "cannot finish the file", e, n) from None
    return n


def _close_quietly(container) -> None:  # noqa: ANN001 - an av output container
    """Close after a failure: that failure is the one to report (the file is removed anyway)."""
    with contextlib.suppress(av.error.FFmpegError, OSError):
        container.close()


def _write_fail(path, what: str, err: BaseException, n: int) -> Exception:  # noqa: ANN001
    """A full disk is a :class:`WriteError` (callers that skip a bad video must stop: no later file fits
    either); any other failure a :class:`VideoError` naming the frame."""
    if disk_full(err):
        return WriteError(write_failure(path, err, "nothing is left under that name"))
    return _fail(path, what, err, n)


def _mux(container, packets, on_bytes: Callable[[int], None] | None) -> None:
    """Mux encoded packets; ``on_bytes`` hears each packet's size (a recording's size cap counts them)."""
    for packet in packets:
        size = packet.size
        container.mux(packet)
        if on_bytes is not None:
            on_bytes(size)


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

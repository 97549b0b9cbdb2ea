"""Recording an ``ahri play`` session to mp4 (:class:`Recorder`), naming the files (:func:`recording_path`)
and the caps that stop a recording (:class:`RecordLimits`).
"""

from __future__ import annotations

import os
import queue
import shutil
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np

from ..errors import DataError
from ..visual import Column, grid_video
from .frames import Frame

__all__ = [
    "RecordLimits",
    "Recorder",
    "free_bytes",
    "recording_path",
]


class Recorder:
    """Writes a session's frames to an mp4 as they come, from a thread of its own.

    Frames are upscaled ``scale`` times with a label band; real frames have a green border, dreamed ones a
    red border (:func:`~ahri_core.visual.grid_video`). The file appears under its name only when complete.
    """

    def __init__(self, path: str | os.PathLike, fps: float, title: str, scale: int = 4) -> None:
        self.path = Path(path)
        self.fps = float(fps)
        self.title = title
        self.scale = int(scale)
        self.frames = 0  # frames encoded so far
        self.added = 0  # frames handed to the recorder (the length of the video once all are written)
        self.bytes = 0  # encoded so far (the encoder holds a few dozen frames before its first output)
        self.error: str | None = None
        self._ended = False
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._write, name="ahri-play-recorder", daemon=True)
        self._thread.start()

    def add(self, frame: Frame) -> None:
        self.added += 1
        self._queue.put(frame)

    @property
    def seconds(self) -> float:
        """The length of the video so far, at its frame rate."""
        return self.added / self.fps if self.fps > 0 else 0.0

    def _compose(self) -> Iterable[np.ndarray]:
        while True:
            f = self._queue.get()
            if f is None:
                self._ended = True
                return
            status = f"real {f.step}" if f.real else f"dream +{f.step} {f.action}"
            col = Column(self.title, f.image[None], np.array([not f.real]))
            self.frames += 1
            yield grid_video([col], scale=self.scale, status=[status])[0]

    def _count(self, n: int) -> None:
        self.bytes += n

    def _write(self) -> None:
        from ..video import write_video

        try:
            write_video(self.path, self._compose(), self.fps, on_bytes=self._count)
        except Exception as e:  # noqa: BLE001 - reported by close(); the session goes on
            self.error = str(e) if self.frames else None  # no frame at all: nothing to write, no error
            while not self._ended and self._queue.get() is not None:  # let close() finish
                pass

    def close(self) -> Path | None:
        """Finish the file; returns its path, or None when no frame was recorded (no file is left)."""
        self._queue.put(None)
        self._thread.join()
        if self.error:
            raise DataError(f"recording {self.path} failed: {self.error}")
        return self.path if self.frames and self.path.is_file() else None


_TAKEN: set[Path] = set()  # recording names handed out in this process (their files appear only when done)
_TAKEN_LOCK = threading.Lock()


def recording_path(folder: Path) -> Path:
    """``<folder>/<date-time>.mp4``, with a suffix when that name is taken (on disk or by another session)."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    with _TAKEN_LOCK:
        p, i = Path(folder) / f"{stamp}.mp4", 2
        while p.exists() or p in _TAKEN:
            p, i = Path(folder) / f"{stamp}-{i}.mp4", i + 1
        _TAKEN.add(p)
    return p


def free_bytes(folder: str | os.PathLike) -> int:
    """Free bytes on the disk that holds ``folder`` (or its nearest existing parent: a recording's folder is
    made when its first file is written)."""
    p = Path(folder).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return int(shutil.disk_usage(p).free)


def _size(n: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{int(n)} bytes"


@dataclass(frozen=True)
class RecordLimits:
    """When a recording stops by itself: its length (minutes of video), its file's size, and the free space
    it leaves on the disk (checked before it starts and while it runs). Every page may record, so without
    caps one left open could fill the disk."""

    minutes: float = 30.0
    bytes: int = 2 * 10**9
    keep_free: int = 10**9

    def refuse(self, folder: Path) -> str | None:
        """Why a recording into ``folder`` may not start (None: it may)."""
        free = free_bytes(folder)
        if free < self.keep_free:
            return (f"not recording: {_size(free)} free on the disk of {folder}, less than the "
                    f"{_size(self.keep_free)} a recording leaves free")
        return None

    def stop(self, rec: Recorder) -> str | None:
        """Why ``rec`` must stop now (None: it goes on)."""
        if rec.seconds >= 60 * self.minutes - 1e-6:  # 1e-6: a cap of whole frames is not missed by rounding
            return f"recording stopped at its cap of {self.minutes:g} minutes (--record-minutes); V starts another"
        if rec.bytes >= self.bytes:
            return f"recording stopped at its cap of {_size(self.bytes)} (--record-gb); V starts another"
        free = free_bytes(rec.path.parent)
        if free < self.keep_free:
            return (f"recording stopped: {_size(free)} free on the disk of {rec.path.parent}, less than the "
                    f"{_size(self.keep_free)} a recording leaves free")
        return None

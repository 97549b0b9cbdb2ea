"""Recording an ``ahri play`` session to mp4 (:class:`Recorder`) and naming the files
(:func:`recording_path`).
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path

import numpy as np

from ..errors import DataError
from ..visual import Column, grid_video
from .frames import Frame

__all__ = [
    "Recorder",
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
        self.frames = 0
        self.error: str | None = None
        self._ended = False
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._write, name="ahri-play-recorder", daemon=True)
        self._thread.start()

    def add(self, frame: Frame) -> None:
        self._queue.put(frame)

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

    def _write(self) -> None:
        from ..video import write_video

        try:
            write_video(self.path, self._compose(), self.fps)
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

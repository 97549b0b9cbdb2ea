"""The frames an ``ahri play`` session shows (:class:`Frame`) and the slot that holds only the newest of
them (:class:`LatestFrame`).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "Frame",
    "LatestFrame",
]


@dataclass(frozen=True)
class Frame:
    """One frame shown on the page."""

    index: int  # frames this session has made, counted from 1 (never reset)
    image: np.ndarray  # (h, w, 3) uint8
    real: bool  # a real frame of the start clip (else dreamed)
    step: int  # real: its place in the start clip (from 1); dreamed: frames dreamed since the (re)start
    action: str  # the meaning of the action that made the frame ("" when a real frame has none)
    start: int = 1  # which start of the session it belongs to: 1, then one more at each reset
    seconds: dict[str, float] = field(default_factory=dict)  # model / decode time of a dreamed frame


class LatestFrame:
    """The newest frame, overwritten by each new one: readers never see a queue, only the latest."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._frame: Frame | None = None

    def put(self, frame: Frame) -> None:
        with self._cond:
            self._frame = frame
            self._cond.notify_all()

    def get(self) -> Frame | None:
        with self._cond:
            return self._frame

    def wait_newer(self, index: int, timeout: float | None = None) -> Frame | None:
        """The latest frame once its index is above ``index``; None after ``timeout`` seconds."""
        with self._cond:
            self._cond.wait_for(lambda: self._frame is not None and self._frame.index > index, timeout)
            f = self._frame
            return f if f is not None and f.index > index else None

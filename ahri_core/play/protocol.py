"""The WebSocket messages between an ``ahri play`` page and the server.

All JSON text, except frames:

- server -> page: ``hello`` (run, frame rate, size, the actions and their keys), then one binary message per
  frame: a little-endian uint32 header length, the JSON header (frame index, real or dreamed, step, action,
  rates) and the frame as raw RGB bytes; ``state`` after a control message, ``recorded``, ``error``.
- page -> server: ``keys`` (the ``KeyboardEvent.code`` of every held key, oldest first), ``reset``,
  ``pause``, ``record`` and ``ack`` (the frame index just drawn). At most two frames are unacknowledged; the
  newest frame is sent when the page is ready, so a slow page skips frames instead of lagging behind.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from .frames import Frame

__all__ = [
    "MAX_IN_FLIGHT",
    "frame_message",
    "parse_frame_message",
]


MAX_IN_FLIGHT = 2  # frames sent and not yet drawn: one on the wire while the page draws the other


def frame_message(frame: Frame, stats: dict[str, Any]) -> bytes:
    """A frame as one binary WebSocket message: uint32 LE header length, JSON header, raw RGB bytes."""
    h, w = frame.image.shape[:2]
    head = {
        "frame": frame.index, "start": frame.start, "real": frame.real, "step": frame.step, "action": frame.action, "width": w,
        "height": h, "ms": {k: round(1e3 * v, 2) for k, v in frame.seconds.items()}, **stats,
    }
    hb = json.dumps(head, separators=(",", ":")).encode()
    return len(hb).to_bytes(4, "little") + hb + np.ascontiguousarray(frame.image, np.uint8).tobytes()


def parse_frame_message(data: bytes) -> tuple[dict[str, Any], np.ndarray]:
    """The inverse of :func:`frame_message` (clients and tests)."""
    n = int.from_bytes(data[:4], "little")
    head = json.loads(data[4 : 4 + n])
    img = np.frombuffer(data[4 + n :], np.uint8).reshape(head["height"], head["width"], 3)
    return head, img

"""Progress reporting without printing.

Library functions accept ``progress: Progress | None``. The CLI passes an object that draws rich
progress bars; tests pass nothing (``NullProgress``) or a recorder.
"""

from __future__ import annotations

from typing import Any, Protocol


class Progress(Protocol):
    def start(self, task: str, total: float | None = None, **fields: Any) -> None:
        """Begin a named task with an optional total (frames, steps, videos...)."""

    def advance(self, task: str, amount: float = 1, **fields: Any) -> None:
        """Move a task forward; ``fields`` are live values to show (loss, psnr, frames/s...)."""

    def finish(self, task: str, **fields: Any) -> None:
        """Mark a task as done."""

    def log(self, message: str) -> None:
        """A one-line note for the user (skipped file, checkpoint written...)."""


class NullProgress:
    """Progress that ignores everything."""

    def start(self, task: str, total: float | None = None, **fields: Any) -> None:
        pass

    def advance(self, task: str, amount: float = 1, **fields: Any) -> None:
        pass

    def finish(self, task: str, **fields: Any) -> None:
        pass

    def log(self, message: str) -> None:
        pass


class RecordingProgress(NullProgress):
    """Keeps every event; handy in tests and notebooks."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, dict]] = []
        self.messages: list[str] = []

    def start(self, task: str, total: float | None = None, **fields: Any) -> None:
        self.events.append(("start", task, {"total": total, **fields}))

    def advance(self, task: str, amount: float = 1, **fields: Any) -> None:
        self.events.append(("advance", task, {"amount": amount, **fields}))

    def finish(self, task: str, **fields: Any) -> None:
        self.events.append(("finish", task, dict(fields)))

    def log(self, message: str) -> None:
        self.messages.append(message)


def ensure(progress: Progress | None) -> Progress:
    return progress if progress is not None else NullProgress()

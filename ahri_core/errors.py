"""Project errors. Each carries a one-line message meant for the user.

The CLI maps ``ConfigError`` to exit code 2 and every other ``AhriError`` to exit code 1.
"""

from __future__ import annotations


class AhriError(Exception):
    """Base class: a failure the user can understand and act on."""

    exit_code = 1


class ConfigError(AhriError):
    """A setting or argument is invalid; raised before any work starts."""

    exit_code = 2


class VideoError(AhriError):
    """A video file cannot be opened or decoded."""

    def __init__(self, path, message: str, frame_index: int | None = None):
        self.path = str(path)
        self.frame_index = frame_index
        where = f" at frame {frame_index}" if frame_index is not None else ""
        super().__init__(f"{self.path}: {message}{where}")


class FetchError(AhriError):
    """Downloading or importing videos failed."""


class CheckpointError(AhriError):
    """A checkpoint is missing, damaged or does not match the model it is loaded into."""


class DataError(AhriError):
    """Training or evaluation data is missing or inconsistent."""


class WriteError(AhriError):
    """A file could not be written (the disk is full, a quota is reached); the file it would replace is kept."""


class BusyError(AhriError):
    """Another process is writing the same run or latent set. Exit code 1 like any failure: the arguments are
    fine, and the same command works once the other process has ended."""

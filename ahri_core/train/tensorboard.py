"""TensorBoard event files of a training run, under ``runs/<name>/tensorboard/``: every number of the train
and validation records that ``metrics.jsonl`` holds, as scalars grouped by record kind (``train/loss``,
``train/lr``, ``val/psnr``, ``val/next``; a validation key loses its ``val_`` prefix), and at each validation
the objective's preview pictures (``preview/<name>``).

The ``tensorboard`` package is optional (``pip install "ahri[tensorboard]"``): without it :func:`open_log`
returns no log and the note to show the user. Only the process that writes files (rank 0) opens a log. A
resumed run purges what the stopped process wrote after the checkpoint it resumes from, as ``metrics.jsonl``
is trimmed, so no step appears twice.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

DIRNAME = "tensorboard"
MISSING_NOTE = ("TensorBoard logging is off: the tensorboard package is not installed "
                "(pip install tensorboard; --no-tensorboard turns it off without this note)")
_NOT_SCALARS = ("kind", "step")


def tag(kind: str, key: str) -> str:
    """The TensorBoard tag of a record's key: ``<kind>/<key>``, a validation key without its ``val_`` prefix."""
    if kind == "val" and key.startswith("val_"):
        key = key[len("val_"):]
    return f"{kind}/{key}"


def scalar_items(rec: dict[str, Any]) -> dict[str, float]:
    """The tags and values a record logs: its numbers (not flags, strings or missing values)."""
    kind = str(rec.get("kind", "train"))
    return {tag(kind, k): float(v) for k, v in rec.items()
            if k not in _NOT_SCALARS and isinstance(v, (int, float)) and not isinstance(v, bool)}


class TensorBoardLog:
    """A run's event writer: :meth:`scalars` for a metrics record, :meth:`images` for preview pictures."""

    def __init__(self, writer: Any) -> None:
        self.writer = writer

    def scalars(self, rec: dict[str, Any]) -> None:
        step = int(rec["step"])
        for name, value in scalar_items(rec).items():
            self.writer.add_scalar(name, value, step)
        self.writer.flush()

    def images(self, step: int, pictures: dict[str, np.ndarray] | None) -> None:
        """Pictures (H, W, 3) uint8, each under ``preview/<name>``."""
        for name, img in (pictures or {}).items():
            self.writer.add_image(f"preview/{name}", np.ascontiguousarray(img), step, dataformats="HWC")
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def open_log(run_dir: str | Path, resume_step: int | None) -> tuple[TensorBoardLog | None, str | None]:
    """The run's event log, or (None, a note for the user) when the tensorboard package is missing.

    ``resume_step``: the checkpoint step a resumed run continues from. Its records up to that step stay;
    what the stopped process wrote later is purged (a restart with no checkpoint purges every step).
    """
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None, MISSING_NOTE
    log_dir = Path(run_dir) / DIRNAME
    purge: int | None = None
    if resume_step is not None:
        purge = resume_step + 1  # the checkpoint step's records were written before the checkpoint, once
    elif log_dir.is_dir():
        purge = 0  # a run restarted before its first checkpoint: metrics.jsonl starts afresh too
    return TensorBoardLog(SummaryWriter(log_dir=str(log_dir), purge_step=purge)), None

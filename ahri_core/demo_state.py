"""The record of one ``ahri demo`` flow on disk, so that the same command after Ctrl-C continues it.

A flow is named by what it was asked to do: the videos it takes (a folder, a URL, or the built-in game) and
its settings, so the same command finds its own record again and any other command starts a new flow. The
record (``<workspace>/demo/<key>.json``, written atomically after every change) holds the names of the flow's
runs, the outputs of every stage done, the minutes each training stage was given, and the seconds the
earlier sessions spent, which count against the one budget. A finished flow's record stays (with the path of
its summary) until the same command starts a new flow in its place.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from pathlib import Path
from typing import Any

from .fileio import write_json_atomic

STATE_FORMAT = "ahri-demo-state/1"


def flow_key(source: str | None, settings: dict[str, Any]) -> str:
    """A short name for the flow of ``source`` (None: the built-in game) with ``settings``."""
    text = json.dumps({"source": source, "settings": settings}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


class FlowState:
    """One flow's record: :meth:`open` finds the unfinished one of the same command, or starts a new one."""

    def __init__(self, path: Path, data: dict[str, Any], resumed: bool) -> None:
        self.path, self.data, self.resumed = path, data, resumed

    @classmethod
    def open(cls, root: Path, source: str | None, settings: dict[str, Any]) -> FlowState:
        key = flow_key(source, settings)
        path = Path(root) / "demo" / f"{key}.json"
        old = _read(path)
        if old is not None and old.get("format") == STATE_FORMAT and not old.get("finished"):
            old["sessions"] = int(old.get("sessions") or 1) + 1
            return cls(path, old, resumed=True)
        now = datetime.now()
        data = {"format": STATE_FORMAT, "key": key, "source": source, "settings": settings,
                "started": now.isoformat(timespec="seconds"), "stamp": now.strftime("%Y%m%d-%H%M%S"),
                "sessions": 1, "elapsed_s": 0.0, "stages": {}, "seconds": {}, "plan": {}, "finished": None}
        return cls(path, data, resumed=False)

    @property
    def stamp(self) -> str:
        return str(self.data["stamp"])

    @property
    def elapsed_before(self) -> float:
        """Seconds the earlier sessions of this flow spent."""
        return float(self.data.get("elapsed_s") or 0.0)

    def done(self, stage: str) -> dict[str, Any] | None:
        """The outputs of ``stage`` when an earlier session (or this one) finished it, else None."""
        return self.data["stages"].get(stage)

    def mark(self, stage: str, outputs: dict[str, Any]) -> None:
        self.data["stages"][stage] = outputs

    def add_seconds(self, stage: str, seconds: float) -> None:
        """Seconds spent on ``stage`` (summed over sessions: an interrupted stage's part counts too)."""
        self.data["seconds"][stage] = float(self.data["seconds"].get(stage, 0.0)) + float(seconds)

    def seconds(self) -> dict[str, float]:
        return dict(self.data["seconds"])

    def planned(self, key: str) -> Any:
        """A decision an earlier session made (e.g. a training stage's minutes), or None."""
        return self.data["plan"].get(key)

    def plan(self, key: str, value: Any) -> Any:
        self.data["plan"][key] = value
        return value

    def save(self, elapsed_s: float, finished: bool = False) -> None:
        """Write the record; ``elapsed_s``: seconds of the whole flow so far, every session included."""
        self.data["elapsed_s"] = float(elapsed_s)
        if finished:
            self.data["finished"] = datetime.now().isoformat(timespec="seconds")
        write_json_atomic(self.path, self.data)


def _read(path: Path) -> dict[str, Any] | None:
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # none yet, or unreadable: a new flow (its runs get new names, nothing is overwritten)
    return d if isinstance(d, dict) and isinstance(d.get("stages"), dict) else None

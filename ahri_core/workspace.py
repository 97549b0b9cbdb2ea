"""The workspace: one directory holding videos, latents and runs.

Default: the platformdirs user-data dir for "ahri"; ``AHRI_HOME`` or ``--workspace`` override it.
Every command also takes explicit paths, so this layout is a convenience, not a requirement.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import platformdirs


def read_run_meta(run_dir: str | os.PathLike) -> dict:
    """A run's ``run.json`` as a dict; {} when it is missing, unreadable or not an object."""
    try:
        data = json.loads((Path(run_dir) / "run.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def run_status(meta: dict) -> tuple[str, str | None]:
    """(status, reason) of a run: run.json ``status`` (running, finished, interrupted, diverged, failed),
    else read from ``finished`` / ``stopped`` as older runs wrote them, else "unknown"."""
    st = meta.get("status")
    if isinstance(st, str) and st:
        reason = meta.get("reason")
        return st, str(reason) if reason else None
    if meta.get("stopped"):
        return "interrupted", str(meta["stopped"])
    if meta.get("finished") is True:
        return "finished", None
    return "unknown", None


def default_root() -> Path:
    env = os.environ.get("AHRI_HOME")
    if env:
        return Path(env).expanduser()
    return Path(platformdirs.user_data_dir("ahri", appauthor=False))


@dataclass(frozen=True)
class Workspace:
    root: Path

    @classmethod
    def resolve(cls, root: str | os.PathLike | None = None) -> Workspace:
        return cls(Path(root).expanduser() if root is not None else default_root())

    @property
    def videos(self) -> Path:
        return self.root / "videos"

    @property
    def latents(self) -> Path:
        return self.root / "latents"

    @property
    def runs(self) -> Path:
        return self.root / "runs"

    @property
    def cache(self) -> Path:
        return self.root / "cache"

    def source_dir(self, source: str) -> Path:
        return self.videos / source

    def run_dir(self, name: str) -> Path:
        return self.runs / name

    def summary(self) -> dict:
        """What the workspace holds: videos per source, latent sets, runs (with their stage)."""
        videos = {}
        if self.videos.is_dir():
            for d in sorted(p for p in self.videos.iterdir() if p.is_dir()):
                videos[d.name] = sum(1 for f in d.glob("*.mp4") if not f.name.startswith("."))
        latents = {}
        if self.latents.is_dir():
            for d in sorted(p for p in self.latents.iterdir() if p.is_dir()):
                latents[d.name] = sum(1 for f in d.glob("*.safetensors") if not f.name.startswith("."))
        runs = {}
        if self.runs.is_dir():
            for d in sorted(p for p in self.runs.iterdir() if p.is_dir()):
                runs[d.name] = read_run_meta(d).get("stage", "?")
        return {"root": str(self.root), "videos": videos, "latents": latents, "runs": runs}

"""The workspace: one directory holding videos, latents and runs.

Default: the platformdirs user-data dir for "ahri"; ``AHRI_HOME`` or ``--workspace`` override it.
Every command also takes explicit paths, so this layout is a convenience, not a requirement.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import platformdirs
from pydantic import BaseModel, ConfigDict, Field

from .errors import DataError
from .filecheck import read_json_object, validated


class RunMetaCheck(BaseModel):
    """The types of the ``run.json`` fields that readers use (unknown keys, newer ones included, are kept)."""

    model_config = ConfigDict(extra="allow")

    stage: str | None = None
    settings: dict[str, Any] | None = None
    created: str | None = None
    status: str | None = None
    reason: str | None = None
    step: int | None = Field(None, ge=0)
    checkpoint_step: int | None = Field(None, ge=0)
    epochs: float | None = None
    seconds: float | None = None
    latents: dict[str, Any] | None = None
    tokenizer_id: str | None = None
    budget: dict[str, Any] | None = None
    best: dict[str, Any] | None = None
    val: dict[str, Any] | None = None
    weights_sha256: dict[str, str | list[str]] | None = None
    split_videos: dict[str, Any] | None = None
    val_fraction_given: bool | None = None


RUN_FIX = "restore the file, or remove the run folder and train again"


def load_run_meta(run_dir: str | os.PathLike) -> dict[str, Any]:
    """A run's ``run.json`` as a dict, its known fields checked; {} when there is none. :class:`DataError`
    naming the file when it is not JSON, not an object or has a known field of the wrong type."""
    path = Path(run_dir) / "run.json"
    if not path.is_file():
        return {}
    data = read_json_object(path, RUN_FIX)
    return {**data, **validated(RunMetaCheck, data, path, RUN_FIX).model_dump(exclude_unset=True)}


def read_run_meta(run_dir: str | os.PathLike) -> dict:
    """A run's ``run.json`` as a dict; {} when it is missing or unusable (see :func:`load_run_meta`): for
    listings, where one damaged run must not hide the others."""
    try:
        return load_run_meta(run_dir)
    except DataError:
        return {}


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


def writer_identity() -> dict:
    """What run.json records of the process that trains a run: its pid and this machine's name."""
    return {"pid": os.getpid(), "host": socket.gethostname()}


def _pid_alive(pid: int) -> bool | None:
    if os.name == "nt":  # os.kill(pid, 0) would end the process there
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    except OSError:
        return None
    return True


def writer_gone(meta: dict, run_dir: str | os.PathLike) -> bool:
    """Whether the process that last wrote a "running" run has gone without recording how it ended (killed by
    the kernel for memory, SIGKILL, a power cut). Known only on the machine that trains it: from the pid and
    host run.json records, or else from the pid in the run's writer lock file (a writer that ends removes
    that file; a killed one leaves it behind). False when this machine cannot tell."""
    from .locking import LOCK_NAME, holder_pid

    held_by = holder_pid(run_dir)
    if held_by is not None and _pid_alive(held_by):  # e.g. a resume that has not recorded its own pid yet
        return False
    pid, host = meta.get("pid"), meta.get("host")
    if isinstance(pid, int) and not isinstance(pid, bool) and isinstance(host, str):
        return host == socket.gethostname() and _pid_alive(pid) is False
    if held_by is not None:
        return _pid_alive(held_by) is False
    lock = Path(run_dir) / LOCK_NAME
    return not lock.exists() and meta.get("status") == "running" and os.name != "nt"


def run_liveness(meta: dict, run_dir: str | os.PathLike) -> tuple[str, str | None]:
    """:func:`run_status`, with a "running" run whose process has gone (:func:`writer_gone`) as "stopped"."""
    status, reason = run_status(meta)
    if status == "running" and writer_gone(meta, run_dir):
        return "stopped", "its process has gone (killed?); continue with --resume"
    return status, reason


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

    def check_writable(self, origin: str = "--workspace") -> None:
        """Check, before any work, that the workspace folder can be written (or, when it does not exist yet, made
        in its nearest existing parent); a :class:`~ahri_core.errors.ConfigError` naming it (and ``origin``:
        where it came from) otherwise. Nothing is left behind."""
        import tempfile

        from .errors import ConfigError

        base = self.root.absolute()
        while not base.exists() and base.parent != base:
            base = base.parent
        try:
            if not base.is_dir():
                raise NotADirectoryError(20, "Not a directory", str(base))
            with tempfile.TemporaryFile(dir=base):
                pass
        except OSError as e:
            why = e.strerror or type(e).__name__
            raise ConfigError(f"{origin} {self.root}: cannot write there ({why}); give a folder you can write "
                              "to, e.g. -w ~/ahri") from None

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

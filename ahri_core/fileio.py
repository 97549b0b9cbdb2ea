"""Atomic file writes and hashing. Nothing half-written ever appears under its final name.

An atomic write is durable too: the temporary file is flushed to the disk (fsync) before it is renamed, and its
folder after, so that a power cut leaves either the old file or the new one, never an empty or partial file
under the final name (a rename can reach the disk before the data it points to).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def current_umask() -> int:
    """The process umask: from /proc on Linux, else by setting it and setting it straight back."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed onto ``path``.

    The temporary name keeps the final extension (some writers pick the format from it)
    and starts with ``.`` so that directory scans skip it. On any exception it is removed. The final
    file has the permissions a plain ``open()`` would give it (``0o666`` less the umask).
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    ext = suffix if suffix is not None else final.suffix
    fd, tmp_name = tempfile.mkstemp(prefix=f".{final.stem}.", suffix=f".part{ext}", dir=final.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        if tmp.exists():  # mkstemp makes 0600; the final file gets what open() would give (umask)
            os.chmod(tmp, 0o666 & ~current_umask())
            fsync_path(tmp)
        os.replace(tmp, final)
        fsync_path(final.parent, directory=True)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def fsync_path(path: str | os.PathLike, directory: bool = False) -> None:
    """Flush a file's data, or a folder's entries, to the disk.

    Errors of a file's fsync propagate (a full disk can first show here, when the filesystem allocates late);
    a folder's fsync is best effort, as some filesystems and systems refuse to open or sync folders.
    """
    if directory:
        flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0)
        try:
            fd = os.open(path, flags)
        except OSError:
            return
        try:
            os.fsync(fd)
        except OSError as e:
            if e.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF, errno.EACCES):
                raise
        finally:
            os.close(fd)
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# The temporary names of atomic_path (".<stem>.<random>.part<ext>") and of raw latent or frame files
# (".<stem>.<random>.raw"): what a killed writer leaves behind. safetensors (0.8) writes a weights file through a
# temporary of its own in the same folder, ".tmp" and six letters or digits, renamed when done: a writer killed
# while saving weights leaves that one.
LEFTOVER = re.compile(r"^(\..+\.(part(\.[^.]*)?|raw)|\.tmp[A-Za-z0-9]{6})$")


def remove_leftovers(folder: str | os.PathLike) -> list[Path]:
    """Remove the temporary files a killed writer left directly in ``folder``; returns those removed.

    Call it only while holding the folder's writer lock (:mod:`ahri_core.locking`): then no live writer owns one.
    """
    removed: list[Path] = []
    try:
        entries = list(Path(folder).iterdir())
    except OSError:
        return removed
    for p in entries:
        if LEFTOVER.match(p.name) and p.is_file():
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
                removed.append(p)
    return removed


def disk_full(e: BaseException) -> bool:
    """Whether an error says that the disk (or the user's quota) is full, whatever library raised it."""
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(e)
    return "No space left on device" in text or "Disk quota exceeded" in text


def write_failure(path: str | os.PathLike, e: BaseException, kept: str = "the previous file is kept") -> str:
    """One line about a failed write of ``path``: the error's own words (first line), the free space, and
    what is kept. torch.save and safetensors raise their own error types with longer texts."""
    if isinstance(e, OSError) and e.strerror:
        detail = e.strerror
    else:
        lines = str(e).strip().splitlines()
        detail = lines[0] if lines else ""
    detail = " ".join(detail.split())[:200] or type(e).__name__
    try:
        free = f"; {shutil.disk_usage(Path(path).parent).free / 2**20:.0f} MB free there"
    except OSError:
        free = ""
    return f"cannot write {path}: {detail}{free}; {kept}"


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def append_jsonl(path: str | os.PathLike, record: dict) -> None:
    """Append one JSON record as a line (metrics logs; a torn last line is tolerated by readers)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with open(p, "a", encoding="utf-8") as f:
        f.write(json.dumps(record, default=float) + "\n")


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    out = []
    p = Path(path)
    if not p.exists():
        return out
    for line in p.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()

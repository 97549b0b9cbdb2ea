"""One writer per run and per latent set: an exclusive lock on ``<folder>/.writer.lock``.

The lock is the operating system's (``flock``), so it goes with the process: a process killed with
SIGKILL, or a machine that restarts, leaves no stale lock behind. The holder writes its pid into the file,
so a second writer is refused at once with a line that names the folder and that pid. A writer that ends
removes the file (a killed one leaves it, unlocked, with its pid: the next writer takes it over); since a
process may have opened the file just before it was removed, a lock counts only once the name still leads
to the very file locked (else the lock is taken again on the new file).

``filelock`` is not used: it truncates the lock file when it opens it, before locking, so a refused process
would erase the holder's pid. Readers (eval, rollout, play) never take the lock; under torchrun only rank 0
does (the other ranks do not write the folder's files).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from .errors import BusyError
from .fileio import remove_leftovers

LOCK_NAME = ".writer.lock"

try:
    import fcntl
except ImportError:  # Windows: msvcrt locks a byte range instead, released with the process too
    fcntl = None  # type: ignore[assignment]


def _try_lock(fd: int) -> bool:
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        else:
            import msvcrt

            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
    except OSError:
        return False
    return True


def holder_pid(folder: str | os.PathLike) -> int | None:
    """The pid written in a folder's lock file (None when there is none or it cannot be read)."""
    try:
        text = (Path(folder) / LOCK_NAME).read_text(encoding="ascii").strip()
        return int(text.split()[0])
    except (OSError, ValueError, IndexError):
        return None


class WriterLock:
    """The exclusive writer lock of ``folder`` (``what``: "run", "latent set"; it names the folder in the
    refusal). ``acquire`` creates the folder, takes the lock or raises :class:`BusyError`, then removes the
    temporary files of an earlier writer that was killed (none is alive: the lock says so)."""

    def __init__(self, folder: str | os.PathLike, what: str) -> None:
        self.folder = Path(folder)
        self.what = what
        self.fd: int | None = None
        self.removed: list[Path] = []

    @property
    def path(self) -> Path:
        return self.folder / LOCK_NAME

    @property
    def held(self) -> bool:
        return self.fd is not None

    def acquire(self) -> WriterLock:
        if self.fd is not None:
            return self
        self.folder.mkdir(parents=True, exist_ok=True)
        while True:
            # no O_TRUNC: opening must not erase the pid of a holder
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            if not _try_lock(fd):
                os.close(fd)
                pid = holder_pid(self.folder)
                who = f"pid {pid}" if pid is not None else "a process that has not written its pid yet"
                raise BusyError(
                    f"{self.what} {self.folder} is being written by another ahri process ({who}); wait for it to "
                    "end or stop it, then run this again"
                )
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)  # the file was removed by a writer that ended meanwhile: lock the new one
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, f"{os.getpid()}\n".encode("ascii"))
        self.fd = fd
        self.removed = remove_leftovers(self.folder)
        return self

    def release(self) -> None:
        if self.fd is None:
            return
        fd, self.fd = self.fd, None
        with contextlib.suppress(OSError):  # removed while still locked: see the module docstring
            self.path.unlink()
        os.close(fd)  # closing the descriptor releases the lock

    def __enter__(self) -> WriterLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()

"""Several processes from one command: ``--nproc N`` relaunches it under torchrun's launcher; rank checks."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Annotated

import typer

from .output import info, out, quote_arg
from .state import STATE

NprocOption = Annotated[
    int | None,
    typer.Option("--nproc", min=1, max=1024, metavar="N",
                 help="Run N processes on this machine (one per GPU, or CPU processes) through torchrun's launcher; "
                      "the same as `torchrun --standalone --nproc-per-node N $(which ahri) -- <this command>`."),
]


def launch_nproc(nproc: int | None) -> int | None:
    """``--nproc N`` (N > 1, not already under torchrun): run this same command as N processes with torchrun's
    own launcher (``python -m torch.distributed.run --standalone``, through :mod:`.workers`) and return its exit
    code; else None.

    The launcher runs in its own session, so a Ctrl-C in the terminal or a SIGTERM reaches this process alone,
    which passes it on once: the launcher sends SIGTERM to every worker, each stops at the same step, rank 0
    writes the checkpoint, and this returns 130. A second signal kills the launcher and the workers at once (no
    checkpoint at the stop; the last one is kept)."""
    if nproc is None or nproc <= 1 or "WORLD_SIZE" in os.environ:
        return None
    args, skip = [], False
    for a in STATE.argv:
        if skip:
            skip = False
            continue
        if a == "--nproc":
            skip = True
            continue
        if a.startswith("--nproc="):
            continue
        args.append(a)
    cmd = [sys.executable, "-m", "ahri_cli.workers", "--standalone", f"--nproc-per-node={nproc}",
           "-m", "ahri_cli.main", "--", *args]
    info(f"launching {nproc} processes: {' '.join(quote_arg(c) for c in cmd[1:])}")
    # the workers' own time to stop cleanly (a validation and a checkpoint) before the launcher kills them
    env = {**os.environ, "TORCH_ELASTIC_SHUTDOWN_TIMEOUT": os.environ.get("TORCH_ELASTIC_SHUTDOWN_TIMEOUT", "600")}
    proc = subprocess.Popen(cmd, start_new_session=True, env=env)
    signals: list[int] = []

    def forward(signum: int, frame: object) -> None:
        signals.append(signum)
        if len(signals) == 1:
            info(f"stopping the {nproc} processes: they write a checkpoint first (Ctrl-C again to kill them now)")
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)
        else:
            for pid in [*_children(proc.pid), proc.pid]:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)

    old = {}
    if threading.current_thread() is threading.main_thread():
        old = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        code = proc.wait()
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    return 130 if signals else code


def _children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (Linux's /proc; elsewhere none are found)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid:
                found.append(int(stat.parent.name))
    return found


def other_rank() -> bool:
    """Whether this process is a rank other than 0 of a torchrun launch (it shows nothing but errors)."""
    return os.environ.get("RANK", "0") not in ("", "0") and os.environ.get("WORLD_SIZE", "1") not in ("", "1")


def quiet_other_ranks() -> None:
    """Under torchrun, rank 0 alone prints progress and results; the other ranks keep only errors."""
    if other_rank():
        STATE.quiet = True
        out.quiet = True

"""Several processes from one command: ``--nproc N`` relaunches it under torchrun's launcher; rank checks."""

from __future__ import annotations

import os
import sys
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
    own launcher (``python -m torch.distributed.run --standalone``) and return its exit code; else None."""
    if nproc is None or nproc <= 1 or "WORLD_SIZE" in os.environ:
        return None
    import subprocess

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
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "-m", "ahri_cli.main", "--", *args]
    info(f"launching {nproc} processes: {' '.join(quote_arg(c) for c in cmd[1:])}")
    return subprocess.call(cmd)


def other_rank() -> bool:
    """Whether this process is a rank other than 0 of a torchrun launch (it shows nothing but errors)."""
    return os.environ.get("RANK", "0") not in ("", "0") and os.environ.get("WORLD_SIZE", "1") not in ("", "1")


def quiet_other_ranks() -> None:
    """Under torchrun, rank 0 alone prints progress and results; the other ranks keep only errors."""
    if other_rank():
        STATE.quiet = True
        out.quiet = True

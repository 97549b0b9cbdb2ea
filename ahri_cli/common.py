"""Helpers shared by the subcommands: global state, rich progress, error mapping."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from ahri_core.workspace import Workspace

console = Console(stderr=True)
out = Console()


@dataclass
class State:
    workspace: Workspace = field(default_factory=Workspace.resolve)
    config: Path | None = None
    verbose: bool = False


STATE = State()


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        if v != 0 and (abs(v) < 1e-3 or abs(v) >= 1e5):
            return f"{v:.3e}"
        return f"{v:.4g}"
    return str(v)


class RichProgress:
    """Implements ahri_core.progress.Progress with rich progress bars."""

    def __init__(self, console: Console = console, transient: bool = False) -> None:
        self.console = console
        self._p = Progress(
            SpinnerColumn(),
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[info]}"),
            console=console,
            transient=transient,
        )
        self._tasks: dict[str, TaskID] = {}
        self._t0: dict[str, float] = {}

    def __enter__(self) -> RichProgress:
        self._p.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._p.stop()

    def _info(self, fields: dict) -> str:
        return "  ".join(f"{k}={_fmt(v)}" for k, v in fields.items())

    def start(self, task: str, total: float | None = None, **fields: Any) -> None:
        if task in self._tasks:
            self._p.reset(self._tasks[task], total=total, info=self._info(fields))
        else:
            self._tasks[task] = self._p.add_task(task, total=total, info=self._info(fields))
        self._t0[task] = time.perf_counter()

    def advance(self, task: str, amount: float = 1, **fields: Any) -> None:
        if task not in self._tasks:
            self.start(task)
        kw = {"info": self._info(fields)} if fields else {}
        self._p.update(self._tasks[task], advance=amount, **kw)

    def finish(self, task: str, **fields: Any) -> None:
        if task not in self._tasks:
            return
        tid = self._tasks[task]
        t = self._p.tasks[self._tasks_index(tid)]
        kw = {"info": self._info(fields)} if fields else {}
        self._p.update(tid, total=t.completed if t.total is None else t.total, completed=t.total or t.completed, **kw)

    def _tasks_index(self, tid: TaskID) -> int:
        for i, t in enumerate(self._p.tasks):
            if t.id == tid:
                return i
        raise KeyError(tid)

    def log(self, message: str) -> None:
        self._p.console.print(message, markup=False, highlight=False)

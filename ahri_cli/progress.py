"""Progress on the terminal and in run logs: the rich progress display (:class:`RichProgress`) and
:func:`run_log`, which copies what the consoles show into a run's ``log.txt``."""

from __future__ import annotations

import contextlib
import os
import re
import sys
import threading
import traceback
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

import typer
from rich.console import Console, NewLine, RenderableType
from rich.control import Control
from rich.live_render import LiveRender
from rich.progress import BarColumn, Progress, ProgressColumn, SpinnerColumn, Task, TaskID, TextColumn
from rich.table import Column
from rich.text import Text

from ahri_core.errors import AhriError, ConfigError

from .launch import other_rank
from .output import add_log, console, out, quote_arg, remove_log, to_logs
from .state import STATE


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        if v != v:
            return "nan"
        if v != 0 and (abs(v) < 1e-3 or abs(v) >= 1e5):
            return f"{v:.3e}"
        return f"{v:.4g}"
    return str(v)


def _clock(seconds: float | None) -> str:
    if seconds is None:
        return "-:--"
    s = int(seconds)
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m}:{sec:02d}"


class _CountColumn(ProgressColumn):
    """``done/total`` (or just ``done`` without a total)."""

    def render(self, task: Task) -> Text:
        done = int(task.completed)
        if task.total is None:
            return Text(f"{done}", style="progress.download")
        return Text(f"{done}/{int(task.total)}", style="progress.download")


class _RateColumn(ProgressColumn):
    """Items per second, over the last seconds."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        if not speed:
            return Text("-/s", style="progress.data.speed")
        if speed >= 100:
            s = f"{speed:.0f}/s"
        elif speed >= 1:
            s = f"{speed:.1f}/s"
        else:
            s = f"{1 / speed:.1f}s each"
        return Text(s, style="progress.data.speed")


class _TimeColumn(ProgressColumn):
    """Elapsed time and, with a total, the estimated time left: ``1:23 eta 4:56``."""

    max_refresh = 0.5

    def render(self, task: Task) -> Text:
        elapsed = task.finished_time if task.finished else task.elapsed
        t = Text(_clock(elapsed), style="progress.elapsed")
        if task.total is not None and not task.finished:
            t.append(" eta ", style="dim")
            t.append(_clock(task.time_remaining), style="progress.remaining")
        return t


class _Display(Progress):
    """One line per task (name, bar, count, rate, time) and, beneath it, the task's latest fields."""

    def get_renderables(self) -> Iterator[RenderableType]:
        for task in self.tasks:
            yield self.make_tasks_table([task])
            fields = task.fields.get("info", "")
            if fields:
                yield Text("  " + fields, style="dim", no_wrap=True, overflow="ellipsis")


class RichProgress:
    """Implements :class:`ahri_core.progress.Progress` with a rich display on stderr.

    Each task shows on its first line the name, a bar, ``done/total``, the rate and elapsed time with an
    ETA; those fit in 80 columns (the bar shrinks first). The ``fields`` of the latest update that had any
    (loss, tau, val...) go on a second line, so a field the caller stopped passing disappears.
    ``log`` lines print above the display; with ``--quiet`` the display is off and only log lines that
    report a problem (failed, skipped, warning...) are shown. Everything but the live display also goes to
    an active :func:`run_log`.
    """

    def __init__(self, console: Console = console, transient: bool = False, quiet: bool | None = None) -> None:
        self.console = console
        self.quiet = STATE.quiet if quiet is None else quiet
        self._p = _Display(
            SpinnerColumn(),
            TextColumn("[bold]{task.description}", table_column=Column(no_wrap=True, overflow="ellipsis", max_width=24)),
            BarColumn(bar_width=None, table_column=Column(ratio=1, min_width=4)),
            _CountColumn(table_column=Column(no_wrap=True, justify="right")),
            _RateColumn(table_column=Column(no_wrap=True, justify="right")),
            _TimeColumn(table_column=Column(no_wrap=True)),
            console=console,
            transient=transient,
            expand=True,
            disable=self.quiet,
        )
        self._tasks: dict[str, TaskID] = {}

    def __enter__(self) -> RichProgress:
        self._p.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._p.stop()

    @staticmethod
    def _info(fields: dict) -> str:
        return "  ".join(f"{k}={_fmt(v)}" for k, v in fields.items())

    def start(self, task: str, total: float | None = None, **fields: Any) -> None:
        if task in self._tasks:
            self._p.reset(self._tasks[task], total=total, info=self._info(fields))
        else:
            self._tasks[task] = self._p.add_task(task, total=total, info=self._info(fields))

    def advance(self, task: str, amount: float = 1, **fields: Any) -> None:
        if task not in self._tasks:
            self.start(task)
        kw = {"info": self._info(fields)} if fields else {}
        self._p.update(self._tasks[task], advance=amount, **kw)

    def finish(self, task: str, **fields: Any) -> None:
        if task not in self._tasks:
            return
        tid = self._tasks[task]
        t = self._task(tid)
        kw = {"info": self._info(fields)} if fields else {}
        total = t.completed if t.total is None else t.total
        self._p.update(tid, total=total, completed=total, **kw)
        done = self._task(tid)
        line = f"{task}: {int(done.completed)}/{int(total)} in {_clock(done.finished_time or done.elapsed)}"
        info_text = kw.get("info") or done.fields.get("info")
        to_logs(Text(line + (f"  {info_text}" if info_text else "")))

    def _task(self, tid: TaskID) -> Task:
        return next(t for t in self._p.tasks if t.id == tid)

    _ATTENTION = re.compile(r"\b(fail\w*|skip\w*|warning|error|stopped|interrupted|diverged|not found|not held out)\b", re.I)

    def log(self, message: str) -> None:
        if self.quiet and not self._ATTENTION.search(message):
            to_logs(Text(message))
            return
        self._p.console.print(message, markup=False, highlight=False, soft_wrap=True)


class RunLog:
    """Appends what the consoles show (not the live display) to a text file, without colour codes.

    The file is opened at the first line written, so a command refused before any work leaves no file.
    """

    def __init__(self, path: Path, width: int = 120) -> None:
        self.path = Path(path)
        self.width = width
        self._fh: TextIO | None = None
        self._console: Console | None = None
        self._lock = threading.RLock()

    def _open(self) -> Console:
        if self._console is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = open(self.path, "a", encoding="utf-8", buffering=1)  # noqa: SIM115 - closed in close()
            self._console = Console(
                file=self._fh, width=self.width, color_system=None, force_terminal=False, force_jupyter=False,
                no_color=True, highlight=False, emoji=False, legacy_windows=False,
            )
            stamp = datetime.now().isoformat(sep=" ", timespec="seconds")
            args = " ".join(quote_arg(a) for a in sys.argv[1:]) if sys.argv else ""
            self._fh.write(f"--- {stamp}  ahri {args}\n")
        return self._console

    def write(self, renderable: RenderableType) -> None:
        with self._lock:
            try:
                c = self._open()
                if isinstance(renderable, Text):
                    c.print(renderable, end=renderable.end, soft_wrap=True)
                else:
                    c.print(renderable)
            except OSError:  # a full disk must not stop the run; the console still shows everything
                pass

    def write_line(self, line: str) -> None:
        self.write(Text(line))

    # rich render hook: sees every renderable a console prints
    def process_renderables(self, renderables: list) -> list:
        for r in renderables:
            if isinstance(r, (Control, LiveRender, NewLine)):  # the live display's own output
                continue
            self.write(r)
        return renderables

    @property
    def opened(self) -> bool:
        return self._console is not None

    def close(self) -> None:
        with self._lock:
            if self._fh is not None:
                with contextlib.suppress(OSError):
                    self._fh.close()
            self._fh = None
            self._console = None


def _remove_hook(c: Console, hook: RunLog) -> None:
    # pop_render_hook() removes the newest hook, which may be a live display's; remove ours by identity
    with c._lock:
        hooks = c._render_hooks
        for i in range(len(hooks) - 1, -1, -1):
            if hooks[i] is hook:
                del hooks[i]
                break


@contextlib.contextmanager
def run_log(path: str | os.PathLike) -> Iterator[RunLog | None]:
    """Within the block, everything printed on ``console`` and ``out`` (messages, tables, progress ``log``
    lines; not the live progress bar) is also appended to ``path`` as plain text. An error or an
    interruption that ends the block is written too, before it propagates.

    Example: ``with run_log(run_dir / "log.txt"): ...``  (under torchrun, rank 0 alone writes the log)
    """
    if other_rank():
        yield None
        return
    log = RunLog(Path(path))
    for c in (console, out):
        c.push_render_hook(log)
    add_log(log)
    try:
        yield log
    except BaseException as e:
        _log_exit(log, e)
        raise
    finally:
        for c in (console, out):
            _remove_hook(c, log)
        remove_log(log)
        log.close()


def _log_exit(log: RunLog, e: BaseException) -> None:
    if isinstance(e, ConfigError) and not log.opened:
        return  # refused before any work: leave no log behind
    if isinstance(e, AhriError):
        log.write_line(f"error: {e}")
    elif isinstance(e, KeyboardInterrupt):
        log.write_line("interrupted")
    elif isinstance(e, (typer.Exit, SystemExit)):
        code = getattr(e, "exit_code", None)
        code = getattr(e, "code", 0) if code is None else code
        if code:
            log.write_line(f"exit code {code}")
    else:
        log.write_line("error: " + "".join(traceback.format_exception(type(e), e, e.__traceback__)).rstrip())

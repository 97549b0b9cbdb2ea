"""Helpers shared by the subcommands: global state, option types, console output, progress bars, run logs.

Output rules: results (tables, paths written) go to stdout (``out``); messages, warnings, errors and the
live progress bar go to stderr (``console``). ``--quiet`` keeps only warnings, errors and results on the
terminal. A reader that goes away (a closed pipe) silences the console but never stops the work.
"""

from __future__ import annotations

import ast
import contextlib
import errno
import importlib
import importlib.util
import io
import os
import re
import sys
import threading
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, TextIO

import typer
from rich.console import Console, NewLine, RenderableType
from rich.control import Control
from rich.live_render import LiveRender
from rich.markup import escape
from rich.progress import BarColumn, Progress, ProgressColumn, SpinnerColumn, Task, TaskID, TextColumn
from rich.table import Column
from rich.text import Text

from ahri_core.errors import AhriError, ConfigError
from ahri_core.workspace import Workspace

# ---------------------------------------------------------------------------------------------- streams


class GuardedStream(io.TextIOBase):
    """Forwards to ``sys.stdout`` or ``sys.stderr`` (looked up at each write, so test captures work).

    When the reader has gone (EPIPE), the stream stops writing for good and points the file descriptor at
    the null device, so that later writes from anywhere, and the flush at exit, cannot fail either.
    """

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name
        self.broken = False

    def target(self) -> TextIO:
        f = getattr(sys, self.name)
        return getattr(f, "rich_proxied_file", f)  # a live progress display wraps sys.stdout/sys.stderr

    def _gone(self) -> None:
        self.broken = True
        with contextlib.suppress(OSError, ValueError, AttributeError, io.UnsupportedOperation):
            fd = self.target().fileno()
            null = os.open(os.devnull, os.O_WRONLY)
            try:
                os.dup2(null, fd)
            finally:
                os.close(null)

    def _guard(self, fn, *args: Any) -> Any:
        if self.broken:
            return None
        try:
            return fn(*args)
        except BrokenPipeError:
            self._gone()
        except OSError as e:
            if e.errno not in (errno.EPIPE, errno.EINVAL):
                raise
            self._gone()
        except ValueError:  # the stream was closed under us
            self._gone()
        return None

    def write(self, text: str) -> int:
        self._guard(lambda: self.target().write(text))
        return len(text)

    def flush(self) -> None:
        self._guard(lambda: self.target().flush())

    def isatty(self) -> bool:
        if self.broken:
            return False
        try:
            return bool(self.target().isatty())
        except (ValueError, AttributeError, OSError):
            return False

    def fileno(self) -> int:
        return self.target().fileno()

    def writable(self) -> bool:
        return True

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self.target(), "encoding", None) or "utf-8"


console = Console(file=GuardedStream("stderr"))
out = Console(file=GuardedStream("stdout"))


# ---------------------------------------------------------------------------------------------- state


@dataclass
class State:
    workspace: Workspace = field(default_factory=Workspace.resolve)
    workspace_given: bool = False  # --workspace on the command line (repeated in "next:" hints)
    config: Path | None = None
    verbose: bool = False
    quiet: bool = False
    argv: list[str] = field(default_factory=list)  # the command line after "ahri" (for --nproc)


STATE = State()


# ---------------------------------------------------------------------------------------------- choices


class DeviceChoice(str, Enum):
    """Where a model runs. ``cuda:N`` (a GPU by index) is accepted as well; see :data:`DeviceOption`."""

    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"
    mps = "mps"


DEVICE_HELP = "auto, cpu, cuda, cuda:N or mps (auto: the first GPU if there is one, else the CPU)."


def check_device(value: str | None) -> str | None:
    """``--device`` values: the :class:`DeviceChoice` names or ``cuda:N``; anything else is a usage error."""
    if value is None:
        return None
    v = value.strip().lower()
    if v in {c.value for c in DeviceChoice} or re.fullmatch(r"cuda:\d+", v):
        return v
    raise typer.BadParameter(f"{value!r} is not a device; choose from auto, cpu, cuda, cuda:N, mps")


class PrecisionChoice(str, Enum):
    """Numeric precision. ``auto`` is resolved by the library per machine and model."""

    auto = "auto"
    bf16 = "bf16"
    fp32 = "fp32"


PRECISION_HELP = "auto (chosen per machine and model), bf16 (autocast) or fp32."


class FitChoice(str, Enum):
    """How a frame of another aspect is made the tokenizer's H x W."""

    pad = "pad"
    crop = "crop"
    squash = "squash"


def check_size(value: str | None) -> str | None:
    """``--size``: HxW in pixels or one number for a square; anything else is a usage error."""
    if value is None:
        return None
    from ahri_core.errors import ConfigError
    from ahri_core.models.tokenizer import parse_size

    try:
        h, w = parse_size(value)  # type: ignore[misc]
    except ConfigError as e:
        raise typer.BadParameter(str(e).removeprefix("--size ")) from None
    return f"{h}x{w}"

# Shared option types. Commands give the default, e.g. ``device: DeviceOption = "auto"``.
DeviceOption = Annotated[
    str | None, typer.Option("--device", help=DEVICE_HELP, metavar="<auto|cpu|cuda|cuda:N|mps>", callback=check_device)
]
PrecisionOption = Annotated[PrecisionChoice, typer.Option("--precision", help=PRECISION_HELP)]
# Options of the commands that sample a trained run (eval, rollout, play).
TokenizerOption = Annotated[
    str | None,
    typer.Option("--tokenizer", help="Tokenizer: a run name, run directory or weights file. \\[default: the run's]"),
]
TauCtxOption = Annotated[
    float | None, typer.Option("--tau-ctx", help="Context corruption noise level (0 = off). \\[default: 0.1]")
]
ThreadsOption = Annotated[
    int | None,
    typer.Option(
        "--threads", min=1, max=1024, help="CPU threads for torch. \\[default: every core this process may use]"
    ),
]


def setup_threads(n: int | None) -> int:
    """Apply ``--threads`` (None: every core this process may use); returns the thread count in use."""
    from ahri_core.runtime import apply_threads

    return apply_threads(n)


def resolve_precision(precision: PrecisionChoice | str, device: Any) -> str:
    """The precision string handed to inference code (evaluate, rollout, tokenize).

    ``auto`` is resolved here with :func:`ahri_core.runtime.choose_precision` (no timed step: bf16 on a GPU
    that supports it, else fp32), because the sampler and the tokenizer's encoder accept only bf16 or fp32.
    """
    value = precision.value if isinstance(precision, PrecisionChoice) else str(precision)
    if value != "auto":
        return value
    import torch

    from ahri_core.runtime import choose_precision, resolve_device

    dev = device if isinstance(device, torch.device) else resolve_device(str(device))
    return choose_precision("auto", dev).precision


def _preset_names(module: str) -> list[str]:
    """The keys of ``module.PRESETS``, without importing the module (and torch) when it is not loaded yet."""
    mod = sys.modules.get(module)
    if mod is not None and hasattr(mod, "PRESETS"):
        return list(mod.PRESETS)
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:  # pragma: no cover - broken installation
        raise ImportError(f"cannot find {module}")
    tree = ast.parse(Path(spec.origin).read_text(encoding="utf-8"))
    for node in tree.body:
        target = node.target if isinstance(node, ast.AnnAssign) else (node.targets[0] if isinstance(node, ast.Assign) else None)
        if isinstance(target, ast.Name) and target.id == "PRESETS" and isinstance(node.value, ast.Dict):
            return [k.value for k in node.value.keys if isinstance(k, ast.Constant) and isinstance(k.value, str)]
    return list(importlib.import_module(module).PRESETS)


TokenizerPreset = Enum(  # type: ignore[misc]
    "TokenizerPreset", {n: n for n in _preset_names("ahri_core.models.tokenizer")}, type=str, module=__name__
)
TokenizerPreset.__doc__ = "Tokenizer presets (ahri_core.models.tokenizer.PRESETS)."
DynamicsPreset = Enum(  # type: ignore[misc]
    "DynamicsPreset", {n: n for n in _preset_names("ahri_core.models.dynamics")}, type=str, module=__name__
)
DynamicsPreset.__doc__ = "Dynamics presets (ahri_core.models.dynamics.PRESETS)."


# ---------------------------------------------------------------------------------------------- paths


def existing_path(path: Path | None, flag: str, what: str = "file or folder") -> Path | None:
    """``path`` expanded, or a settings error (exit 2) naming the flag when it does not exist."""
    if path is None:
        return None
    p = Path(path).expanduser()
    if not p.exists():
        raise ConfigError(f"{flag} {path}: no such {what}")
    return p


def run_or_path(value: str | Path | None, flag: str) -> Path | None:
    """A run given as a path or as a run name in the workspace; a settings error when it is neither."""
    if value is None:
        return None
    p = Path(value).expanduser()
    if p.exists():
        return p
    q = STATE.workspace.run_dir(str(value))
    if q.exists():
        return q
    raise ConfigError(f"{flag} {value}: neither a path nor a run in {STATE.workspace.runs}")


# ---------------------------------------------------------------------------------------------- messages


def info(message: str, **kw: Any) -> None:
    """An informational line on stderr (rich markup allowed); with --quiet it goes only to the run log."""
    if STATE.quiet:
        _to_logs(Text.from_markup(message))
    else:
        console.print(message, highlight=False, soft_wrap=True, **kw)


def warn(message: str) -> None:
    """A warning on stderr, shown even with --quiet. ``message`` is plain text (no markup)."""
    console.print(f"[yellow]warning:[/] {escape(message)}", highlight=False, soft_wrap=True)


def error_line(message: str) -> None:
    """An error on stderr; ``message`` is plain text (no markup)."""
    console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)


def command_line(*args: str) -> str:
    """``ahri ARGS`` as the user would type it next, with --workspace when they gave one."""
    parts = ["ahri"]
    if STATE.workspace_given:
        parts += ["-w", _quote(str(STATE.workspace.root))]
    if STATE.config is not None:
        parts += ["-c", _quote(str(STATE.config))]
    return " ".join(parts + [_quote(a) for a in args])


def _quote(s: str) -> str:
    import shlex

    return s if re.fullmatch(r"[\w@%+=:,./-]+", s) else shlex.quote(s)


def next_step(*args: str) -> None:
    """The command to run next, e.g. ``next_step("tokenize", "--tokenizer", name)``."""
    info(f"[bold]next:[/] {escape(command_line(*args))}")


# ---------------------------------------------------------------------------------------------- progress


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
        _to_logs(Text(line + (f"  {info_text}" if info_text else "")))

    def _task(self, tid: TaskID) -> Task:
        return next(t for t in self._p.tasks if t.id == tid)

    _ATTENTION = re.compile(r"\b(fail\w*|skip\w*|warning|error|stopped|interrupted|diverged|not found|not held out)\b", re.I)

    def log(self, message: str) -> None:
        if self.quiet and not self._ATTENTION.search(message):
            _to_logs(Text(message))
            return
        self._p.console.print(message, markup=False, highlight=False, soft_wrap=True)


# ---------------------------------------------------------------------------------------------- run logs


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
            args = " ".join(_quote(a) for a in sys.argv[1:]) if sys.argv else ""
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


_ACTIVE_LOGS: list[RunLog] = []


def _to_logs(renderable: RenderableType) -> None:
    for log in list(_ACTIVE_LOGS):
        log.write(renderable)


def _remove_hook(c: Console, hook: RunLog) -> None:
    # pop_render_hook() removes the newest hook, which may be a live display's; remove ours by identity
    with c._lock:
        hooks = c._render_hooks
        for i in range(len(hooks) - 1, -1, -1):
            if hooks[i] is hook:
                del hooks[i]
                break


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
    info(f"launching {nproc} processes: {' '.join(_quote(c) for c in cmd[1:])}")
    return subprocess.call(cmd)


def other_rank() -> bool:
    """Whether this process is a rank other than 0 of a torchrun launch (it shows nothing but errors)."""
    return os.environ.get("RANK", "0") not in ("", "0") and os.environ.get("WORLD_SIZE", "1") not in ("", "1")


def quiet_other_ranks() -> None:
    """Under torchrun, rank 0 alone prints progress and results; the other ranks keep only errors."""
    if other_rank():
        STATE.quiet = True
        out.quiet = True


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
    _ACTIVE_LOGS.append(log)
    try:
        yield log
    except BaseException as e:
        _log_exit(log, e)
        raise
    finally:
        for c in (console, out):
            _remove_hook(c, log)
        with contextlib.suppress(ValueError):
            _ACTIVE_LOGS.remove(log)
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


__all__ = [
    "STATE",
    "State",
    "console",
    "out",
    "GuardedStream",
    "DeviceChoice",
    "DeviceOption",
    "check_device",
    "PrecisionChoice",
    "PrecisionOption",
    "ThreadsOption",
    "setup_threads",
    "resolve_precision",
    "TokenizerPreset",
    "DynamicsPreset",
    "existing_path",
    "run_or_path",
    "info",
    "warn",
    "error_line",
    "command_line",
    "next_step",
    "RichProgress",
    "RunLog",
    "run_log",
    "escape",
]

"""Terminal output: the guarded streams, the two consoles and the message helpers.

Output rules: results (tables, paths written) go to stdout (``out``); messages, warnings, errors and the
live progress bar go to stderr (``console``). ``--quiet`` keeps only warnings, errors and results on the
terminal. A reader that goes away (a closed pipe) silences the console but never stops the work.
Messages also go to the open run logs (``progress.run_log``).
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import re
import sys
from typing import Any, TextIO

from rich.console import Console, RenderableType
from rich.markup import escape
from rich.text import Text

from .state import STATE


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


_ACTIVE_LOGS: list[Any] = []  # the open run logs (progress.RunLog), newest last


def to_logs(renderable: RenderableType) -> None:
    """Write ``renderable`` to every open run log (not to the terminal)."""
    for log in list(_ACTIVE_LOGS):
        log.write(renderable)


def add_log(log: Any) -> None:
    """Make ``log`` (a run log) receive what :func:`to_logs` writes."""
    _ACTIVE_LOGS.append(log)


def remove_log(log: Any) -> None:
    with contextlib.suppress(ValueError):
        _ACTIVE_LOGS.remove(log)


def result(text: str) -> None:
    """A result line on stdout, plain text: never wrapped or cut at the terminal's width, so that a path in it
    stays whole for a script or a copy-paste (a long line runs past the edge instead)."""
    out.print(text, highlight=False, markup=False, soft_wrap=True)


def info(message: str, **kw: Any) -> None:
    """An informational line on stderr (rich markup allowed); with --quiet it goes only to the run log."""
    if STATE.quiet:
        to_logs(Text.from_markup(message))
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
        parts += ["-w", quote_arg(str(STATE.workspace.root))]
    if STATE.config is not None:
        parts += ["-c", quote_arg(str(STATE.config))]
    return " ".join(parts + [quote_arg(a) for a in args])


def quote_arg(s: str) -> str:
    """``s`` as a shell word: unchanged when safe, else quoted."""
    import shlex

    return s if re.fullmatch(r"[\w@%+=:,./-]+", s) else shlex.quote(s)


def next_step(*args: str) -> None:
    """The command to run next, e.g. ``next_step("tokenize", "--tokenizer", name)``."""
    info(f"[bold]next:[/] {escape(command_line(*args))}")

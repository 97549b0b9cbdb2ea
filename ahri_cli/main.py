"""Entry point: ``ahri [GLOBAL OPTIONS] COMMAND [ARGS]``.

Exit codes (the same for every command): 0 done; 1 failed (data or runtime); 2 usage or settings
(a bad flag, a bad value, a missing file or folder); 130 interrupted (Ctrl-C or SIGTERM; training first
writes a checkpoint).
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Annotated

import typer
from typer.core import TyperCommand

import ahri_core
from ahri_core.errors import AhriError, ConfigError
from ahri_core.workspace import Workspace

from .helpfmt import Command, Group
from .launch import other_rank, quiet_other_ranks
from .output import console, error_line, out
from .state import STATE

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
EXIT_CODES = (
    "Exit codes: 0 done; 1 failed (data or runtime); 2 usage or settings (bad flag or value, missing "
    "file); 130 interrupted (Ctrl-C or SIGTERM, after a clean checkpoint)."
)

app = typer.Typer(
    name="ahri",
    help=(
        "Learn a world model of a game from gameplay video.\n\n"
        "Example, on a fresh machine with no network:  ahri demo\n\n"
        "The full flow:  ahri fetch --channel domisumReplay-Garen;  ahri train --stage tokenizer;  "
        "ahri tokenize --tokenizer RUN;  ahri train --alternating --long-ratio 0.1;  ahri eval RUN;  "
        "ahri rollout clip.mp4 --steps 4"
    ),
    epilog=EXIT_CODES + "  More: ahri help COMMAND, docs/cli.md.",
    add_completion=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
    cls=Group,
)


# The commands that write into the workspace: an unwritable one is a usage error before any work.
WRITES_WORKSPACE = {"fetch", "train", "tokenize", "demo"}


def _version(value: bool) -> None:
    if value:
        out.print(f"ahri {ahri_core.__version__}", highlight=False)
        raise typer.Exit()


@app.callback(invoke_without_command=True)
def _global(
    ctx: typer.Context,
    workspace: Annotated[
        Path | None,
        typer.Option("--workspace", "-w", help="Workspace directory. \\[default: $AHRI_HOME or the user data dir]"),
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config", "-c", help="TOML file with one table per component (\\[train], \\[data], ...); see docs/cli.md."
        ),
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show tracebacks and debug details.")] = False,
    quiet: Annotated[
        bool,
        typer.Option("--quiet", "-q", help="For scripts: no progress display; only warnings, errors and results."),
    ] = False,
    version: Annotated[
        bool,
        typer.Option("--version", "-V", help="Show the version and exit.", is_eager=True, callback=_version),
    ] = False,
) -> None:
    if ctx.invoked_subcommand is None:  # bare "ahri": the help, as a usage error (the same in every typer)
        text = ctx.get_help()
        if text:
            typer.echo(text)
        raise typer.Exit(EXIT_USAGE)
    STATE.workspace = Workspace.resolve(workspace)
    STATE.workspace_given = workspace is not None
    STATE.config = config
    STATE.verbose = verbose
    STATE.quiet = quiet or other_rank()
    if config is not None:
        from ahri_core.config.check import check_config_file

        if not config.is_file():
            raise ConfigError(f"config file {config} does not exist (--config)")
        check_config_file(config)
    if ctx.invoked_subcommand in WRITES_WORKSPACE and not {"-h", "--help"} & set(STATE.argv):
        origin = "--workspace" if workspace is not None else "workspace (AHRI_HOME)" if "AHRI_HOME" in os.environ \
            else "workspace (the default)"
        STATE.workspace.check_writable(origin)


def help_(
    ctx: typer.Context,
    command: Annotated[
        str | None, typer.Argument(help="The command to explain (default: all of them).", metavar="COMMAND")
    ] = None,
) -> None:
    """Show the help of ahri or of one command (the same as ahri COMMAND --help).

    Example:  ahri help train
    """
    root = ctx.find_root()
    group = root.command
    if command is None:
        text = root.get_help()  # typer's rich help prints itself and returns ""
        if text:
            typer.echo(text)
        return
    sub = group.get_command(root, command)  # type: ignore[attr-defined]
    if sub is None:
        names = ", ".join(group.list_commands(root))  # type: ignore[attr-defined]
        raise typer.BadParameter(f"no command {command!r}; the commands are: {names}", param_hint="COMMAND")
    with sub.make_context(command, ["--help"], parent=root):  # prints the help and exits 0
        pass


def _register() -> None:
    # A subcommand is registered only once it works end to end.
    from . import info

    info.register(app)
    for name in ("fetch", "train", "tokenize", "eval", "rollout", "play", "demo", "runs"):
        try:
            mod = __import__(f"ahri_cli.{name}_cmd", fromlist=["register"])
        except ModuleNotFoundError as e:
            if e.name == f"ahri_cli.{name}_cmd":
                continue
            raise
        mod.register(app)
    app.command("help")(help_)
    for cmd in app.registered_commands:
        cmd.callback = _catch_interrupt(cmd.callback)
        if cmd.cls in (None, TyperCommand):
            cmd.cls = Command


class _Interrupted(Exception):
    """Ctrl-C or SIGTERM inside a command, carried past typer (whose handling differs between versions)."""


def _catch_interrupt(fn):  # noqa: ANN001, ANN202
    if fn is None or getattr(fn, "_ahri_guarded", False):
        return fn

    @functools.wraps(fn)
    def run(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        try:
            return fn(*args, **kwargs)
        except KeyboardInterrupt:
            raise _Interrupted() from None

    run._ahri_guarded = True  # type: ignore[attr-defined]
    return run


_register()


def _interrupted(e: BaseException) -> bool:
    """Whether an exit came from Ctrl-C (typer turns KeyboardInterrupt into exit code 130)."""
    seen: set[int] = set()
    cur: BaseException | None = e
    while cur is not None and id(cur) not in seen:
        if isinstance(cur, KeyboardInterrupt):
            return True
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__
    return False


def _lost_peer(e: BaseException) -> bool:
    """Whether ``e`` is a collective of several processes failing because another process is gone (its own
    error, if it had one, is shown by that process; this one needs no traceback)."""
    import os
    import traceback

    if os.environ.get("WORLD_SIZE", "1") in ("", "1"):
        return False
    text = str(e)
    if any(m in text for m in ("Connection closed by peer", "Connection reset by peer", "Broken pipe", "gloo", "NCCL")):
        return True  # the collective may fail inside autograd (DDP's gradient hooks), not only in torch.distributed
    frames = traceback.extract_tb(e.__traceback__)
    return bool(frames) and "torch/distributed" in frames[-1].filename.replace("\\", "/")


def _sigterm(signum, frame) -> None:  # noqa: ANN001
    raise KeyboardInterrupt  # the same clean stop as Ctrl-C (training installs its own handler meanwhile)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit code (see :data:`EXIT_CODES`). Errors are one line on stderr."""
    if argv is None:
        argv = sys.argv[1:]
    if argv[:1] == ["--"]:  # `torchrun ... $(which ahri) -- train ...` (the launcher may pass the "--" on)
        argv = argv[1:]
    quiet_other_ranks()
    STATE.argv = list(argv)
    old_term = None
    if threading.current_thread() is threading.main_thread():
        with contextlib.suppress(ValueError, OSError):
            old_term = signal.signal(signal.SIGTERM, _sigterm)
    try:
        try:
            app(args=argv, prog_name="ahri", standalone_mode=True)
            return EXIT_OK
        except SystemExit as e:  # typer ends every run with one, usage errors included (already shown)
            code = e.code
            if code is None:
                return EXIT_OK
            if not isinstance(code, int):
                error_line(str(code))
                return EXIT_FAILED
            if code == EXIT_INTERRUPTED and _interrupted(e):
                console.print("[yellow]interrupted[/]", highlight=False)
            return code
        except AhriError as e:
            if STATE.verbose:
                console.print_exception()
            error_line(str(e))
            return e.exit_code
        except (KeyboardInterrupt, _Interrupted):
            console.print("[yellow]interrupted[/]", highlight=False)
            return EXIT_INTERRUPTED
        except RuntimeError as e:
            if not _lost_peer(e):
                raise
            if STATE.verbose:
                console.print_exception()
            error_line(f"the connection to another process of this run was lost ({str(e).splitlines()[0][:160]}); "
                       "the launcher stops the run and names the process that failed")
            return EXIT_FAILED
        except OSError as e:  # disk full, permission denied...: the operating system's own words
            if STATE.verbose:
                console.print_exception()
            where = f": {e.filename}" if getattr(e, "filename", None) else ""
            error_line(f"{e.strerror or e}{where}")
            return EXIT_FAILED
    finally:
        if old_term is not None:
            with contextlib.suppress(ValueError, OSError):
                signal.signal(signal.SIGTERM, old_term)
        with contextlib.suppress(Exception):
            console.file.flush()
            out.file.flush()


def entry() -> None:
    code = main()
    if os.environ.get("WORLD_SIZE", "1") not in ("", "1"):
        _leave_now(code)
    sys.exit(code)


def _leave_now(code: int) -> None:
    """End a process of a torchrun launch at once, once its command has returned: leave the process group,
    flush what was printed, then ``os._exit``. A normal interpreter exit runs C++ static destructors after the
    process group's worker threads, and a gloo run on the CPU now and then aborted there ("terminate called
    without an active exception", SIGABRT) on a rank that had finished its run and written everything, so
    ``ahri train --nproc 2`` failed with exit code 1 after a complete run. Files are all closed by now (each one
    is written to a temporary name and renamed); nothing that remains to run at exit matters to the run."""
    import logging

    from ahri_core.train import distributed

    distributed.leave()
    with contextlib.suppress(Exception):
        logging.shutdown()
    for f in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            f.flush()
    os._exit(code)


if __name__ == "__main__":
    entry()

__all__ = ["app", "main", "entry", "EXIT_CODES"]

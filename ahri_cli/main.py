"""Entry point: ``ahri [GLOBAL OPTIONS] COMMAND [ARGS]``."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from ahri_core.errors import AhriError, ConfigError
from ahri_core.workspace import Workspace

from . import common
from .common import STATE, console

app = typer.Typer(
    name="ahri",
    help=(
        "Learn a world model of a game from gameplay video.\n\n"
        "Example, on a fresh machine with no network:  ahri demo\n\n"
        "The full flow:  ahri fetch --channel domisumReplay-Garen;  ahri train --stage tokenizer;  "
        "ahri tokenize --tokenizer RUN;  ahri train --alternating --long-ratio 0.1;  ahri eval RUN;  "
        "ahri rollout clip.mp4 --steps 4"
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)


@app.callback()
def _global(
    workspace: Annotated[
        Path | None,
        typer.Option("--workspace", "-w", help="Workspace directory (default: $AHRI_HOME or the user data dir)."),
    ] = None,
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="TOML file with one table per component (\\[train], \\[data], ...).")
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show tracebacks and debug details.")] = False,
) -> None:
    STATE.workspace = Workspace.resolve(workspace)
    STATE.config = config
    STATE.verbose = verbose
    if config is not None and not config.is_file():
        raise ConfigError(f"config file {config} does not exist")


def _register() -> None:
    # A subcommand is registered only once it works end to end.
    from . import info

    info.register(app)
    for name in ("fetch", "train", "tokenize", "eval", "rollout", "demo"):
        try:
            mod = __import__(f"ahri_cli.{name}_cmd", fromlist=["register"])
        except ModuleNotFoundError as e:
            if e.name == f"ahri_cli.{name}_cmd":
                continue
            raise
        mod.register(app)


_register()


def main(argv: list[str] | None = None) -> int:
    """Run the app, mapping project errors to one-line messages and exit codes (2: settings, 1: others)."""
    try:
        rc = app(args=argv, standalone_mode=False)
        if isinstance(rc, int):
            return rc
    except AhriError as e:
        if STATE.verbose:
            console.print_exception()
        console.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
        return e.exit_code
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]")
        return 130
    except SystemExit as e:  # typer.Exit inside commands
        return int(e.code or 0)
    except Exception as e:  # click usage errors arrive here in non-standalone mode
        import click

        if isinstance(e, click.exceptions.ClickException):
            e.show()
            return e.exit_code
        if isinstance(e, click.exceptions.Abort):
            console.print("[yellow]aborted[/]")
            return 1
        if isinstance(e, click.exceptions.Exit):
            return e.exit_code
        raise
    return 0


def entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry()

__all__ = ["app", "main", "entry", "common"]

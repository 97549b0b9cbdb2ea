"""The state of one ``ahri`` invocation: workspace, config file and output flags, set by the main callback."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ahri_core.workspace import Workspace


@dataclass
class State:
    workspace: Workspace = field(default_factory=Workspace.resolve)
    workspace_given: bool = False  # --workspace on the command line (repeated in "next:" hints)
    config: Path | None = None
    verbose: bool = False
    quiet: bool = False
    argv: list[str] = field(default_factory=list)  # the command line after "ahri" (for --nproc)


STATE = State()

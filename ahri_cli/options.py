"""Option types and checks shared by the subcommands: choices (device, precision, fit, presets), size and
path checks, and the renamed options' old spellings (hidden, with a note)."""

from __future__ import annotations

import re
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer

from ahri_core.config.presets import PRESET_NAMES
from ahri_core.errors import ConfigError

from .state import STATE


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


class OptimizerChoice(str, Enum):
    """The optimizer of a training run."""

    adamw = "adamw"
    muon = "muon"


class CompileWhen(str, Enum):
    """Whether training runs through torch.compile. ``auto`` is measured in the run by the library."""

    auto = "auto"
    on = "on"
    off = "off"


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
    from ahri_core.models.tokenizer import parse_size

    try:
        h, w = parse_size(value)  # type: ignore[misc]
    except ConfigError as e:
        raise typer.BadParameter(str(e).removeprefix("--size ")) from None
    return f"{h}x{w}"


def check_square_size(value: str | None) -> int | None:
    """``--size`` of square clips (fetch, demo): one number or NxN, the same spelling as train's HxW."""
    if value is None:
        return None
    m = re.fullmatch(r"\s*(\d+)\s*(?:[xX]\s*(\d+)\s*)?", str(value))
    if not m:
        raise typer.BadParameter(f"{value!r} is not a frame size; give N or NxN pixels")
    h, w = int(m[1]), int(m[2] or m[1])
    if h != w:
        raise typer.BadParameter(f"{value}: these clips are square; give N or NxN")
    return h


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


TokenizerPreset = Enum("TokenizerPreset", {n: n for n in PRESET_NAMES}, type=str, module=__name__)  # type: ignore[misc]
TokenizerPreset.__doc__ = "Tokenizer presets (ahri_core.config.presets)."
DynamicsPreset = Enum("DynamicsPreset", {n: n for n in PRESET_NAMES}, type=str, module=__name__)  # type: ignore[misc]
DynamicsPreset.__doc__ = "Dynamics presets (ahri_core.config.presets)."


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


# ---------------------------------------------------------------------------------------------- renamed options
def _given(value: Any) -> bool:
    return value is not None and value != [] and value is not False


def renamed(old: str, new: str) -> Callable[[Any], Any]:
    """The callback of an option kept under its old spelling (hidden from --help, so old scripts keep working):
    when it is used, one line on stderr says the new name."""

    def note(value: Any) -> Any:
        if _given(value):
            from .output import console

            console.print(f"note: {old} is now {new}", markup=False, highlight=False, soft_wrap=True)
        return value

    return note


def either(new: Any, old: Any, new_flag: str, old_flag: str) -> Any:
    """The value of a renamed option: the new spelling's, else the old one's; both with different values is a
    settings error."""
    if not _given(old):
        return new
    if _given(new) and new != old:
        raise ConfigError(f"{old_flag} is the old name of {new_flag}; give {new_flag} only")
    return old


def run_argument(positional: str | None, option: str | None) -> str | None:
    """A run named as the positional RUN or with ``--run`` (both: they must agree)."""
    if positional is not None and option is not None and positional != option:
        raise ConfigError(f"two runs given: RUN {positional} and --run {option}; give one")
    return positional if positional is not None else option


RunOption = Annotated[
    str | None, typer.Option("--run", help="Dynamics run (the same as RUN).", show_default=False)
]

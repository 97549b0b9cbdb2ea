"""Validated settings, one pydantic model per component.

Precedence, lowest first: the model's defaults < a TOML config file (``--config``, one table per
component, e.g. ``[train]``) < ``AHRI_<SECTION>_<FIELD>`` environment variables < command-line flags.
Every model forbids unknown keys, so a typo in a config file is an error rather than a silent default.
Invalid values raise :class:`ConfigError` with a one-line message naming field, value and what is allowed.
"""

from __future__ import annotations

import contextlib
import contextvars
import difflib
import os
import re
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from ..errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

_CONFIG_FILE: contextvars.ContextVar[Path | None] = contextvars.ContextVar("ahri_config_file", default=None)


def read_toml(path: str | os.PathLike) -> dict:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {p} does not exist")
    try:
        return tomllib.loads(p.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"config file {p} is not valid TOML: {e}") from None
    except OSError as e:
        raise ConfigError(f"config file {p} cannot be read: {e.strerror or e}") from None


class _TomlSection(PydanticBaseSettingsSource):
    """Reads the component's table from the active config file (see :func:`config_file`)."""

    def get_field_value(self, field, field_name):  # pragma: no cover - unused, __call__ does the work
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        path = _CONFIG_FILE.get()
        if path is None:
            return {}
        section = self.settings_cls.section
        table = read_toml(path).get(section, {})
        if not isinstance(table, dict):
            line = _line_of(Path(path), [section])
            raise ConfigError(f"{_where(path, line)}: {section} must be a table ([{section}] followed by its settings)")
        return table


class Section(BaseSettings):
    """Base for every component's settings."""

    section: ClassVar[str] = ""
    model_config = SettingsConfigDict(extra="forbid", validate_default=True, env_ignore_empty=True)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.section:
            cls.model_config = {**cls.model_config, "env_prefix": f"AHRI_{cls.section.upper()}_"}

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, _TomlSection(settings_cls))


@contextlib.contextmanager
def config_file(path: str | os.PathLike | None) -> Iterator[None]:
    """Make ``path`` the TOML file that settings read inside the ``with`` block."""
    token = _CONFIG_FILE.set(Path(path) if path is not None else None)
    try:
        yield
    finally:
        _CONFIG_FILE.reset(token)


def format_validation_error(
    err: ValidationError, section: str, fields: Iterable[str] | None = None, config: str | os.PathLike | None = None
) -> str:
    """One line for the first error: the setting, the value given and what is allowed.

    ``fields``: the section's field names, for "did you mean" on an unknown key; ``config``: the config
    file, to name the line an unknown key is on.
    """
    e = err.errors()[0]
    loc = ".".join(str(x) for x in e.get("loc", ()))
    name = f"{section}.{loc}" if loc else section
    value = e.get("input")
    msg = e.get("msg", "invalid value")
    if e.get("type") == "extra_forbidden":
        key = str(e.get("loc", ("",))[0])
        where = ""
        if config is not None:
            line = _line_of(Path(config), [section, key])
            if line is not None:
                where = f" ({_where(config, line)})"
        return f"unknown setting {name}{where}{_key_hint(key, section, sorted(fields or ()))}"
    if isinstance(value, dict):
        return f"invalid setting {name}: {msg}"
    return f"invalid setting {name}={value!r}: {msg}"


# ----------------------------------------------------------------------------------------------
# The whole config file: every table and key must be known
# ----------------------------------------------------------------------------------------------

# Modules that define Section subclasses outside this file; imported by known_sections().
SECTION_MODULES = ("ahri_core.train.tokenizer", "ahri_core.demo")


def known_sections() -> dict[str, list[str]]:
    """Every config table (a :class:`Section` subclass's ``section``) and its field names, sorted."""
    import importlib

    for mod in SECTION_MODULES:
        importlib.import_module(mod)
    found: dict[str, set[str]] = {}
    stack: list[type[Section]] = list(Section.__subclasses__())
    while stack:
        cls = stack.pop()
        stack.extend(cls.__subclasses__())
        if cls.section:
            found.setdefault(cls.section, set()).update(cls.model_fields)
    return {k: sorted(v) for k, v in sorted(found.items())}


def _where(path: str | os.PathLike, line: int | None) -> str:
    return f"config file {path}, line {line}" if line is not None else f"config file {path}"


_KEY_PART = r"""(?:"[^"]*"|'[^']*'|[A-Za-z0-9_-]+)"""
_HEADER = re.compile(rf"^\s*\[\[?\s*({_KEY_PART}(?:\s*\.\s*{_KEY_PART})*)\s*\]\]?\s*(?:#.*)?$")
_KEY = re.compile(rf"^\s*({_KEY_PART}(?:\s*\.\s*{_KEY_PART})*)\s*=")


def _parts(dotted: str) -> list[str]:
    return [p.strip("\"'") for p in re.findall(_KEY_PART, dotted)]


def _line_of(path: Path, target: list[str]) -> int | None:
    """The first line (1-based) that defines the table or key ``target`` (e.g. ["train", "lr"]), if found."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return None
    current: list[str] = []
    for i, raw in enumerate(lines, 1):
        m = _HEADER.match(raw)
        if m:
            current = _parts(m.group(1))
            full = current
        else:
            k = _KEY.match(raw)
            if not k:
                continue
            full = current + _parts(k.group(1))
        if full[: len(target)] == target:
            return i
    return None


def _close(word: str, choices: Iterable[str]) -> list[str]:
    choices = list(choices)
    # whole words first ("lr" for "lr_rate", "seq_len" for "seq"), then spelling ("max_height" for "max_heigth")
    near = [c for c in choices if word.startswith(c + "_") or c.startswith(word + "_")]
    near += [c for c in difflib.get_close_matches(word, choices, n=2, cutoff=0.6) if c not in near]
    return near[:3]


def _key_hint(key: str, section: str, fields: list[str], sections: dict[str, list[str]] | None = None) -> str:
    hint = ""
    near = _close(key, fields)
    if near:
        hint += f"; did you mean {' or '.join(near)}?"
    if sections is not None:
        elsewhere = [f"[{name}]" for name, fs in sections.items() if name != section and key in fs]
        if elsewhere:
            hint += f"; {key} is a setting of {', '.join(elsewhere)}"
    if fields:
        hint += f" (settings of [{section}]: {', '.join(fields)})"
    return hint


def config_problems(path: str | os.PathLike) -> list[str]:
    """Every unknown table or key in the config file at ``path``, one message each (empty: the file is fine).

    Values are not checked here; each component validates its own table when it loads its settings.
    """
    p = Path(path)
    data = read_toml(p)
    sections = known_sections()
    tables = ", ".join(f"[{n}]" for n in sections)
    problems: list[str] = []
    for name, value in data.items():
        line = _line_of(p, [name])
        if name not in sections:
            if isinstance(value, dict):
                near = _close(name, sections)
                hint = f"; did you mean {' or '.join(f'[{n}]' for n in near)}?" if near else ""
                problems.append(f"{_where(p, line)}: unknown table [{name}]{hint} (tables: {tables})")
            else:
                owners = [f"[{n}]" for n, fs in sections.items() if name in fs]
                hint = f"; put it under {' or '.join(owners)}" if owners else ""
                problems.append(
                    f"{_where(p, line)}: setting {name} is outside any table{hint} (every setting belongs to a table: {tables})"
                )
            continue
        if not isinstance(value, dict):
            problems.append(f"{_where(p, line)}: {name} must be a table ([{name}] followed by its settings)")
            continue
        fields = sections[name]
        for key in value:
            if key not in fields:
                kline = _line_of(p, [name, key])
                problems.append(f"{_where(p, kline)}: unknown setting {name}.{key}{_key_hint(key, name, fields, sections)}")
    return problems


def check_config_file(path: str | os.PathLike) -> None:
    """Raise :class:`ConfigError` naming the file, line and known names at the first unknown table or key."""
    problems = config_problems(path)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise ConfigError(problems[0] + more)


S = TypeVar("S", bound=Section)


def load(cls: type[S], flags: dict[str, Any] | None = None, config: str | os.PathLike | None = None) -> S:
    """Build ``cls`` from defaults, the config file, the environment and ``flags`` (None values skipped)."""
    given = {k: v for k, v in (flags or {}).items() if v is not None}
    try:
        if config is not None:
            with config_file(config):
                return cls(**given)
        return cls(**given)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, cls.section, cls.model_fields, config)) from None
    except ValueError as e:  # malformed env values (e.g. bad JSON list)
        raise ConfigError(f"invalid setting in [{cls.section}]: {e}") from None


def is_power_of_two(n: int) -> bool:
    return n > 0 and (n & (n - 1)) == 0


# ----------------------------------------------------------------------------------------------
# Components
# ----------------------------------------------------------------------------------------------


class FetchSettings(Section):
    section: ClassVar[str] = "fetch"
    max_height: int = Field(720, ge=64, le=4320, description="highest video height to download")
    max_videos: int | None = Field(None, ge=1, description="stop after this many videos per source")
    match_title: str | None = Field(None, description="only videos whose title matches this regex")
    sleep_interval: float = Field(3.0, ge=0, description="seconds to wait before each download (min)")
    max_sleep_interval: float = Field(8.0, ge=0, description="seconds to wait before each download (max)")
    sleep_requests: float = Field(1.0, ge=0, description="seconds between metadata requests")
    retries: int = Field(3, ge=0, le=20)
    socket_timeout: float = Field(20.0, gt=0)
    connect_timeout: float = Field(5.0, gt=0, le=120, description="seconds for the reachability check")
    verify: Literal["full", "quick"] = Field("full", description="decode every frame of new videos, or keyframes")
    count: int = Field(16, ge=1, le=100_000, description="clips to record (game, gym)")
    frames: int = Field(200, ge=2, le=1_000_000, description="frames per clip (game, gym)")
    size: int | None = Field(None, ge=16, le=2048, description="frame size of recorded clips (game: 64)")
    seed: int = Field(0, ge=0, description="first seed of recorded clips (game, gym)")
    env: str = Field("ALE/Pong-v5", min_length=1, description="Gymnasium environment id (gym)")

    @field_validator("size")
    @classmethod
    def _even(cls, v: int | None) -> int | None:
        if v is not None and v % 2:
            raise ValueError("must be even (mp4 stores yuv420p)")
        return v

    @field_validator("match_title")
    @classmethod
    def _regex(cls, v: str | None) -> str | None:
        if v is None:
            return v
        import re

        try:
            re.compile(v)
        except re.error as e:
            raise ValueError(f"not a valid regular expression ({e})") from None
        return v

    @model_validator(mode="after")
    def _sleep_order(self) -> FetchSettings:
        if self.max_sleep_interval < self.sleep_interval:
            raise ValueError("max_sleep_interval must be >= sleep_interval")
        return self


Precision = Literal["auto", "bf16", "fp32"]  # auto: measured per machine and model (ahri_core.runtime)


class TrainSettings(Section):
    """The optimisation loop, shared by the tokenizer and dynamics stages."""

    section: ClassVar[str] = "train"
    stage: Literal["tokenizer", "dynamics"] = "dynamics"
    preset: str = Field("cpu", description="model preset (tiny, cpu, small, medium...)")
    run: str | None = Field(None, description="run name (default: stage + timestamp)")
    max_steps: int | None = Field(None, ge=1)
    minutes: float | None = Field(None, gt=0)
    epochs: float | None = Field(None, gt=0)
    batch_size: int = Field(16, ge=1)
    lr: float = Field(1e-3, gt=0, le=1.0)
    weight_decay: float = Field(0.01, ge=0)
    warmup_steps: int = Field(100, ge=0)
    min_lr_ratio: float = Field(0.1, ge=0, le=1)
    grad_clip: float = Field(1.0, gt=0)
    ema: float = Field(0.0, ge=0, lt=1, description="EMA decay of weights; 0 turns EMA off")
    seed: int = 0
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N")
    precision: Precision = Field("auto", description="auto (measured per machine and model), bf16 or fp32")
    threads: int | None = Field(None, ge=1, le=1024, description="CPU threads (default: the cores this process may use)")
    grad_checkpointing: bool = False
    checkpoint_every: int = Field(500, ge=1, description="steps between checkpoints")
    val_every: int = Field(250, ge=1, description="steps between validations")
    log_every: int = Field(10, ge=1)
    resume: bool = False
    max_bad_steps: int = Field(5, ge=1, le=1000, description="non-finite steps in a row that stop a run as diverged")
    grad_accum: int = Field(1, ge=1, le=4096, description="batches whose gradients add up to one optimizer step")
    fsdp: bool = Field(False, description="shard parameters and optimizer state across processes (FSDP2; torchrun)")
    compile: bool = Field(False, description="compile the model with torch.compile (GPU; slow to start on CPU)")

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if v in ("auto", "cpu", "cuda", "mps") or (v.startswith("cuda:") and v[5:].isdigit()):
            return v
        raise ValueError("allowed: auto, cpu, cuda, cuda:N, mps")


class DataSettings(Section):
    """Windows of latents for dynamics training."""

    section: ClassVar[str] = "data"
    seq_len: int = Field(16, ge=2)
    stride: int = Field(8, ge=1)
    alternating: bool = False
    seq_len_short: int = Field(32, ge=2)
    seq_len_long: int = Field(64, ge=2)
    batch_size_short: int = Field(2, ge=1)
    batch_size_long: int = Field(1, ge=1)
    long_ratio: float = Field(0.1, ge=0, le=1)
    val_fraction: float = Field(0.1, ge=0, lt=1, description="fraction of videos held out")
    num_workers: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _lengths(self) -> DataSettings:
        if self.alternating and self.seq_len_long < self.seq_len_short:
            raise ValueError("seq_len_long must be >= seq_len_short")
        return self


class DiffusionSettings(Section):
    """Diffusion forcing and shortcut forcing (tau = 0 clean, tau = 1 noise)."""

    section: ClassVar[str] = "diffusion"
    shortcut: bool = Field(True, description="shortcut forcing: few-step sampling (eval and rollout use 4 steps)")
    k_max: int = Field(64, ge=1, le=4096, description="finest step count; d_min = 1/k_max")
    step_sampling: Literal["inverse", "uniform"] = "inverse"
    bootstrap_fraction: float = Field(0.25, ge=0, le=1)
    single_image_fraction: float = Field(0.1, ge=0, le=1, description="items trained as single images (0.1: +0.6 dB over 0.3 in the demo)")
    bootstrap_warmup: int = Field(0, ge=0, description="steps of plain flow loss before bootstrap starts")
    ema_teacher: bool = False
    context_fraction: float = Field(0.3, ge=0, le=1, description="fraction of frames drawn as nearly-clean context")
    context_tau_max: float = Field(0.2, ge=0, le=1, description="context frames draw tau ~ U[0, context_tau_max]")
    loss_weight: Literal["ramp", "uniform"] = Field(
        "ramp", description="per-frame loss weight: ramp (1 - 0.9 tau, the paper's) or uniform"
    )

    @field_validator("k_max")
    @classmethod
    def _k_max(cls, v: int) -> int:
        if not is_power_of_two(v):
            raise ValueError("must be a power of two (1, 2, 4, ..., 4096)")
        return v


class SamplingSettings(Section):
    """Autoregressive rollouts: eval, rollout and training previews."""

    section: ClassVar[str] = "sampling"
    steps: list[int] = Field(default_factory=lambda: [4])
    tau_ctx: float = Field(0.1, ge=0, lt=1)
    context: int = Field(16, ge=1)
    horizon: int = Field(16, ge=1)
    clips: int = Field(8, ge=1)
    seed: int = 0
    batch_size: int = Field(8, ge=1)

    @field_validator("steps")
    @classmethod
    def _steps(cls, v: list[int]) -> list[int]:
        if not v:
            raise ValueError("give at least one step count")
        for k in v:
            if not is_power_of_two(k):
                raise ValueError(f"step count {k} is not a power of two (1, 2, 4, 8, ...)")
        return v


class LatentActionSettings(Section):
    """Latent actions inferred from video (docs/actions.md): dynamics training and the few-label map."""

    section: ClassVar[str] = "latent_actions"
    enabled: bool = Field(False, description="train an inverse-dynamics encoder jointly; its codes are the actions")
    codes: int = Field(16, ge=2, le=64, description="code-book size (FSQ grid): 2, 3, 4, 6, 8, 9, 12, 16, 25, 27, 32, 64")
    quantize: bool = Field(True, description="False: a continuous code of the same number of dimensions (no rounding)")
    dropout: float = Field(0.1, ge=0, le=1, description="share of items trained with 'no action' instead of their codes")
    ignore_actions: bool = Field(False, description="ignore the latent set's real actions (train as if from video alone)")
    label_share: float = Field(0.1, gt=0, le=1, description="action map: share of training videos whose real actions are used")
    forward_weight: float = Field(
        1.0, ge=0, description="weight of the encoder's forward-model loss (0: no forward head; trained by the dynamics loss alone)"
    )
    forward_mixing: int = Field(
        4, description="token-mixing groups in the forward head: 0 (each token from itself alone), 1, 2, 4, 8 or 16"
    )
    history: int = Field(
        2, ge=0, le=4, description="frames before t - 1 whose changes the encoder also reads (0 to 4; 0: t - 1 and t only)"
    )

    @field_validator("codes")
    @classmethod
    def _codes(cls, v: int) -> int:
        allowed = (2, 3, 4, 6, 8, 9, 12, 16, 25, 27, 32, 64)
        if v not in allowed:
            raise ValueError(f"allowed: {', '.join(map(str, allowed))}")
        return v

    @field_validator("forward_mixing")
    @classmethod
    def _mixing(cls, v: int) -> int:
        if v not in (0, 1, 2, 4, 8, 16):
            raise ValueError("allowed: 0, 1, 2, 4, 8, 16")
        return v

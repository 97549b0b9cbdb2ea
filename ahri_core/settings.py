"""Validated settings, one pydantic model per component.

Precedence, lowest first: the model's defaults < a TOML config file (``--config``, one table per
component, e.g. ``[train]``) < ``AHRI_<SECTION>_<FIELD>`` environment variables < command-line flags.
Every model forbids unknown keys, so a typo in a config file is an error rather than a silent default.
Invalid values raise :class:`ConfigError` with a one-line message naming field, value and what is allowed.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from .errors import ConfigError

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


class _TomlSection(PydanticBaseSettingsSource):
    """Reads the component's table from the active config file (see :func:`config_file`)."""

    def get_field_value(self, field, field_name):  # pragma: no cover - unused, __call__ does the work
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        path = _CONFIG_FILE.get()
        if path is None:
            return {}
        table = read_toml(path).get(self.settings_cls.section, {})
        if not isinstance(table, dict):
            raise ConfigError(f"config file {path}: [{self.settings_cls.section}] must be a table")
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


def format_validation_error(err: ValidationError, section: str) -> str:
    e = err.errors()[0]
    loc = ".".join(str(x) for x in e.get("loc", ()))
    name = f"{section}.{loc}" if loc else section
    value = e.get("input")
    msg = e.get("msg", "invalid value")
    if e.get("type") == "extra_forbidden":
        return f"unknown setting {name} (not a field of [{section}])"
    if isinstance(value, dict):
        return f"invalid setting {name}: {msg}"
    return f"invalid setting {name}={value!r}: {msg}"


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
        raise ConfigError(format_validation_error(e, cls.section)) from None
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
    compile: bool = False

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
    shortcut: bool = False
    k_max: int = Field(64, ge=1, le=4096, description="finest step count; d_min = 1/k_max")
    step_sampling: Literal["inverse", "uniform"] = "inverse"
    bootstrap_fraction: float = Field(0.25, ge=0, le=1)
    single_image_fraction: float = Field(0.3, ge=0, le=1)
    bootstrap_warmup: int = Field(0, ge=0, description="steps of plain flow loss before bootstrap starts")
    ema_teacher: bool = False
    context_fraction: float = Field(0.3, ge=0, le=1, description="fraction of frames drawn as nearly-clean context")
    context_tau_max: float = Field(0.2, ge=0, le=1, description="context frames draw tau ~ U[0, context_tau_max]")

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

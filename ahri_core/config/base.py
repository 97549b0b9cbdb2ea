"""Settings machinery: the :class:`Section` base, TOML config files, loading and one-line error messages.

Precedence, lowest first: the model's defaults < the preset's defaults (``config/presets.py``; only for the
fields a preset sets, applied by the training stages) < a TOML config file (``--config``, one table per
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
from typing import Any, ClassVar, TypeVar

from pydantic import ValidationError
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
            line = line_of(Path(path), [section])
            raise ConfigError(f"{where_in_file(path, line)}: {section} must be a table ([{section}] followed by its settings)")
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
    err: ValidationError, section: str, fields: Iterable[str] | None = None, config: str | os.PathLike | None = None,
    flags: Iterable[str] = (),
) -> str:
    """One line for the first error: the setting, the value given and what is allowed.

    ``fields``: the section's field names, for "did you mean" on an unknown key; ``config``: the config
    file, to name the line of an unknown key, or of a bad value that came from it (not from ``flags``: the
    settings given on the command line).
    """
    flags = set(flags)
    e = err.errors()[0]
    loc = ".".join(str(x) for x in e.get("loc", ()))
    name = f"{section}.{loc}" if loc else section
    value = e.get("input")
    msg = e.get("msg", "invalid value")
    if e.get("type") == "extra_forbidden":
        key = str(e.get("loc", ("",))[0])
        where = ""
        if config is not None:
            line = line_of(Path(config), [section, key])
            if line is not None:
                where = f" ({where_in_file(config, line)})"
        return f"unknown setting {name}{where}{key_hint(key, section, sorted(fields or ()))}"
    msg = str(msg).removeprefix("Value error, ")  # pydantic's prefix for a validator's own message
    where = ""
    top = str(e.get("loc", ("",))[0]) if e.get("loc") else ""
    if config is not None and top and top not in flags:  # a value given on the command line wins over the file's
        line = line_of(Path(config), [section, top])
        if line is not None:
            where = f" ({where_in_file(config, line)})"
    if isinstance(value, dict):
        return f"invalid setting {name}{where}: {msg}"
    return f"invalid setting {name}={value!r}{where}: {msg}"


def where_in_file(path: str | os.PathLike, line: int | None) -> str:
    return f"config file {path}, line {line}" if line is not None else f"config file {path}"


_KEY_PART = r"""(?:"[^"]*"|'[^']*'|[A-Za-z0-9_-]+)"""
_HEADER = re.compile(rf"^\s*\[\[?\s*({_KEY_PART}(?:\s*\.\s*{_KEY_PART})*)\s*\]\]?\s*(?:#.*)?$")
_KEY = re.compile(rf"^\s*({_KEY_PART}(?:\s*\.\s*{_KEY_PART})*)\s*=")


def _parts(dotted: str) -> list[str]:
    return [p.strip("\"'") for p in re.findall(_KEY_PART, dotted)]


def line_of(path: Path, target: list[str]) -> int | None:
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


def close_matches(word: str, choices: Iterable[str]) -> list[str]:
    choices = list(choices)
    # whole words first ("lr" for "lr_rate", "seq_len" for "seq"), then spelling ("max_height" for "max_heigth")
    near = [c for c in choices if word.startswith(c + "_") or c.startswith(word + "_")]
    near += [c for c in difflib.get_close_matches(word, choices, n=2, cutoff=0.6) if c not in near]
    return near[:3]


def key_hint(key: str, section: str, fields: list[str], sections: dict[str, list[str]] | None = None) -> str:
    hint = ""
    near = close_matches(key, fields)
    if near:
        hint += f"; did you mean {' or '.join(near)}?"
    if sections is not None:
        elsewhere = [f"[{name}]" for name, fs in sections.items() if name != section and key in fs]
        if elsewhere:
            hint += f"; {key} is a setting of {', '.join(elsewhere)}"
    if fields:
        hint += f" (settings of [{section}]: {', '.join(fields)})"
    return hint


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
        raise ConfigError(format_validation_error(e, cls.section, cls.model_fields, config, given)) from None
    except ValueError as e:  # malformed env values (e.g. bad JSON list)
        raise ConfigError(f"invalid setting in [{cls.section}]: {e}") from None


def is_power_of_two(n: int) -> bool:
    return n > 0 and (n & (n - 1)) == 0

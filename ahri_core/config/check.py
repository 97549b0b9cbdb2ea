"""The whole config file: every table and key must be known, with a hint naming the nearest known name."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import ConfigError
from . import settings  # noqa: F401  (defines every Section subclass, so that all are known)
from .base import Section, close_matches, key_hint, line_of, read_toml, where_in_file


def known_sections() -> dict[str, list[str]]:
    """Every config table (a :class:`Section` subclass's ``section``) and its field names, sorted."""
    found: dict[str, set[str]] = {}
    stack: list[type[Section]] = list(Section.__subclasses__())
    while stack:
        cls = stack.pop()
        stack.extend(cls.__subclasses__())
        if cls.section:
            found.setdefault(cls.section, set()).update(cls.model_fields)
    return {k: sorted(v) for k, v in sorted(found.items())}


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
        line = line_of(p, [name])
        if name not in sections:
            if isinstance(value, dict):
                near = close_matches(name, sections)
                hint = f"; did you mean {' or '.join(f'[{n}]' for n in near)}?" if near else ""
                problems.append(f"{where_in_file(p, line)}: unknown table [{name}]{hint} (tables: {tables})")
            else:
                owners = [f"[{n}]" for n, fs in sections.items() if name in fs]
                hint = f"; put it under {' or '.join(owners)}" if owners else ""
                problems.append(
                    f"{where_in_file(p, line)}: setting {name} is outside any table{hint} (every setting belongs to a table: {tables})"
                )
            continue
        if not isinstance(value, dict):
            problems.append(f"{where_in_file(p, line)}: {name} must be a table ([{name}] followed by its settings)")
            continue
        fields = sections[name]
        for key in value:
            if key not in fields:
                kline = line_of(p, [name, key])
                problems.append(f"{where_in_file(p, kline)}: unknown setting {name}.{key}{key_hint(key, name, fields, sections)}")
    return problems


def check_config_file(path: str | os.PathLike) -> None:
    """Raise :class:`ConfigError` naming the file, line and known names at the first unknown table or key."""
    problems = config_problems(path)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise ConfigError(problems[0] + more)


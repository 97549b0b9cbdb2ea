"""Checks of the files ahri reads back (latent indexes, video sidecars, run.json): a JSON object read and
validated against a pydantic model, and file names written inside such a file kept inside its folder.

Every failure is one :class:`~ahri_core.errors.DataError` line naming the file, what is wrong and what to do:
``<file>: <field>: <what is wrong>; <what to do>``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from .errors import DataError

M = TypeVar("M", bound=BaseModel)


def _type_name(value: Any) -> str:
    return {list: "a list", str: "a string", int: "a number", float: "a number", bool: "true/false",
            type(None): "null"}.get(type(value), type(value).__name__)


def read_json_object(path: str | os.PathLike, fix: str) -> dict[str, Any]:
    """The JSON object in ``path``; :class:`DataError` (naming the file, ending in ``fix``) when it cannot be
    read, is not JSON or holds something other than an object."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise DataError(f"{path}: cannot be read ({e.strerror or e}); {fix}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: not valid JSON ({e}); {fix}") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: holds {_type_name(data)}, not a JSON object; {fix}")
    return data


def problem(err: ValidationError) -> str:
    """The first problem of a pydantic error as ``field: message`` (with how many more there are)."""
    errors = err.errors()
    e = errors[0]
    loc = ".".join(str(x) for x in e.get("loc", ())) or "the object"
    msg = str(e.get("msg", "invalid")).removeprefix("Value error, ")
    if e.get("type") != "missing" and "input" in e:
        msg += f" (got {_type_name(e['input'])} {json.dumps(e['input'], default=str)[:40]})"
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{loc}: {msg}{more}"


def validated(model: type[M], data: Any, path: str | os.PathLike, fix: str) -> M:
    """``data`` as ``model``; :class:`DataError` naming ``path`` and the first wrong field otherwise."""
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise DataError(f"{path}: {problem(e)}; {fix}") from None


def inside(folder: str | os.PathLike, name: Any, source: str | os.PathLike, field: str) -> Path:
    """``folder / name`` when ``name`` is a relative file name that stays inside ``folder`` (after resolving
    ``..`` and links); :class:`DataError` naming ``source`` (the file that holds the name) otherwise."""
    folder = Path(folder)
    if not isinstance(name, str) or not name or Path(name).is_absolute():
        raise DataError(f"{source}: {field} {name!r} is not a file name inside {folder}; only names of files in that "
                        "folder are accepted")
    path = folder / name
    if not path.resolve().is_relative_to(folder.resolve()):
        raise DataError(f"{source}: {field} {name!r} points outside {folder}; only names of files in that folder "
                        "are accepted")
    return path

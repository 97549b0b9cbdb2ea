"""Checkpoints: weights in safetensors with the model config inside, training state in a second file.

- ``<name>.safetensors``: the model's tensors; metadata ``ahri_kind`` (e.g. "tokenizer", "dynamics"),
  ``config`` (the full model config as JSON) and any extra JSON fields. A checkpoint alone rebuilds its model.
- ``<name>.state.pt``: optimizer, step, RNG states, data position, EMA... saved with ``torch.save`` and read
  with ``torch.load(weights_only=True)`` so that loading never runs pickled code.
Loading is strict: missing, unexpected or reshaped tensors and config mismatches are refused, and so are
non-finite tensors. The tensors' names and shapes are read from the file's header and compared with the model
before any tensor is read, and :func:`check_shapes` compares them with a model built on the ``meta`` device
(no memory) before the real one is built, so a damaged config cannot make the loader allocate a huge model. Where a weights file is written into a run, its sha256 is recorded in the run's
``run.json`` (``weights_sha256``: file name -> the last two hashes, so a crash between the two writes never
condemns a good file), and loading checks it: a damaged file is refused, naming it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

import ahri_core

from .errors import CheckpointError, WriteError
from .fileio import atomic_path, sha256_file, write_failure, write_json_atomic


def _listing(names: list[str], n: int = 4) -> str:
    head = ", ".join(sorted(names)[:n])
    return head + (f" and {len(names) - n} more" if len(names) > n else "")


def state_dict_for_save(model: nn.Module) -> dict[str, torch.Tensor]:
    """Detached, contiguous CPU copies (safetensors refuses tensors that share memory)."""
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}


def _record_sha(registry: Path, name: str, sha: str) -> None:
    from .workspace import load_run_meta

    data = load_run_meta(registry.parent)  # the registry is always the run's run.json
    shas = data.setdefault("weights_sha256", {}) or {}
    data["weights_sha256"] = shas
    prev = shas.get(name) or []
    if isinstance(prev, str):
        prev = [prev]
    shas[name] = [sha] + [x for x in prev if x != sha][:1]
    write_json_atomic(registry, data)


def recorded_shas(path: str | os.PathLike) -> list[str] | None:
    """The sha256 values recorded for a weights file in the ``run.json`` beside it (None: nothing recorded);
    :class:`DataError` naming that ``run.json`` when it is damaged."""
    from .workspace import load_run_meta

    path = Path(path)
    entry = (load_run_meta(path.parent).get("weights_sha256") or {}).get(path.name)
    if not entry:
        return None
    return [entry] if isinstance(entry, str) else list(entry)


def verify_sha(path: str | os.PathLike) -> None:
    """Refuse a weights file whose sha256 differs from the one its run recorded when writing it."""
    path = Path(path)
    known = recorded_shas(path)
    if known is None:
        return
    sha = sha256_file(path)
    if sha not in known:
        raise CheckpointError(
            f"checkpoint {path} is damaged: its sha256 ({sha[:12]}...) is not the one recorded in "
            f"{path.parent / 'run.json'} when it was written ({known[0][:12]}...); restore the file or retrain"
        )


def save_weights(
    path: str | os.PathLike,
    tensors: dict[str, torch.Tensor] | nn.Module,
    kind: str,
    config: dict[str, Any],
    extra: dict[str, Any] | None = None,
    registry: str | os.PathLike | None = None,
) -> Path:
    """Write weights + config atomically. ``extra`` values are stored as JSON strings.

    ``registry``: a run's ``run.json``; the file's sha256 is recorded there before it takes its final name.
    """
    if isinstance(tensors, nn.Module):
        tensors = state_dict_for_save(tensors)
    else:
        tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    meta = {"ahri_kind": kind, "config": json.dumps(config, sort_keys=True), "ahri_version": ahri_core.__version__}
    for k, v in (extra or {}).items():
        meta[k] = json.dumps(v, sort_keys=True, default=str)
    path = Path(path)
    try:
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata=meta)
            if registry is not None:
                _record_sha(Path(registry), path.name, sha256_file(tmp))
    except (SafetensorError, OSError) as e:  # a full disk: safetensors raises its own type, not OSError
        raise WriteError(write_failure(path, e, "the previous checkpoint is kept")) from None
    return path


def read_metadata(path: str | os.PathLike) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """Return (kind, config, extra) of a weights file without loading the tensors."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"checkpoint {path} is not a readable safetensors file ({e})") from None
    if "ahri_kind" not in meta or "config" not in meta:
        raise CheckpointError(f"checkpoint {path} has no ahri metadata (kind and config); was it written by ahri?")
    try:
        config = json.loads(meta["config"])
    except json.JSONDecodeError as e:
        raise CheckpointError(f"checkpoint {path}: its stored config is not valid JSON ({e}); restore the file or retrain") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"checkpoint {path}: its stored config is not a JSON object; restore the file or retrain")
    extra = {}
    for k, v in meta.items():
        if k in ("ahri_kind", "config", "ahri_version"):
            continue
        try:
            extra[k] = json.loads(v)
        except json.JSONDecodeError:
            extra[k] = v
    extra["ahri_version"] = meta.get("ahri_version")
    return meta["ahri_kind"], config, extra


def config_mismatch(expected: dict[str, Any], found: dict[str, Any]) -> list[str]:
    """Names of fields that differ between two configs (missing counts as different)."""
    keys = sorted(set(expected) | set(found))
    return [k for k in keys if expected.get(k, "<missing>") != found.get(k, "<missing>")]


def load_weights(
    path: str | os.PathLike,
    model: nn.Module,
    kind: str | None = None,
    config: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Strictly load weights into ``model``. Returns the stored config.

    Refuses: another kind of checkpoint, a stored config that differs from ``config`` (when given),
    missing or unexpected tensors, and shape mismatches; each with a message naming what differs.
    """
    path = Path(path)
    found_kind, found_config, _ = read_metadata(path)
    if kind is not None and found_kind != kind:
        raise CheckpointError(f"checkpoint {path} holds a {found_kind} model, not a {kind} model")
    if config is not None:
        diff = config_mismatch(config, found_config)
        if diff:
            d = ", ".join(f"{k}: checkpoint {found_config.get(k, '<missing>')!r} vs model {config.get(k, '<missing>')!r}" for k in diff[:4])
            raise CheckpointError(f"checkpoint {path} was made with another model config ({d})")
    verify_sha(path)
    compare_shapes(path, {k: tuple(v.shape) for k, v in model.state_dict().items()}, "the model expects")
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"checkpoint {path} cannot be read ({e})") from None
    bad = [k for k, t in tensors.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        raise CheckpointError(f"checkpoint {path} is damaged: tensor {bad[0]} holds non-finite values"
                              + (f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""))
    model.load_state_dict(tensors, strict=True)
    return found_config


def stored_shapes(path: str | os.PathLike) -> dict[str, tuple[int, ...]]:
    """{tensor name: shape} of a safetensors file, from its header alone (no tensor is read)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"checkpoint {path} is not a readable safetensors file ({e})") from None


def compare_shapes(path: str | os.PathLike, expected: dict[str, tuple[int, ...]], whose: str) -> None:
    """Refuse a file whose tensors (names and shapes, from its header) are not exactly ``expected``."""
    stored = stored_shapes(path)
    missing = [k for k in expected if k not in stored]
    unexpected = [k for k in stored if k not in expected]
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks {len(missing)} tensor(s) of the model: {_listing(missing)}")
    if unexpected:
        raise CheckpointError(f"checkpoint {path} has {len(unexpected)} tensor(s) the model does not: {_listing(unexpected)}")
    for k, shape in expected.items():
        if tuple(stored[k]) != tuple(shape):
            raise CheckpointError(f"checkpoint {path}: tensor {k} has shape {tuple(stored[k])}, {whose} {tuple(shape)}")


def check_shapes(path: str | os.PathLike, build: Callable[[], nn.Module]) -> None:
    """Compare the tensors of ``path`` with those of the model ``build`` makes, built on the ``meta`` device
    (shapes only, no memory), before the real model is built: a config that does not fit the stored tensors
    (a damaged or edited file) is refused naming the first tensor that differs."""
    with torch.device("meta"):
        model = build()
    compare_shapes(path, {k: tuple(v.shape) for k, v in model.state_dict().items()},
                   "the config stored with it implies")


def save_state(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Save training state (tensors, numbers, strings, lists, dicts only) atomically."""
    path = Path(path)
    try:
        with atomic_path(path) as tmp:
            torch.save(state, tmp)
    except (RuntimeError, OSError) as e:  # a full disk: torch.save raises RuntimeError ("unexpected pos ...")
        raise WriteError(write_failure(path, e, "the previous training state is kept")) from None
    return path


def load_state(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"training state {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means a damaged or foreign file
        raise CheckpointError(f"training state {path} cannot be loaded safely ({type(e).__name__}: {e})") from None

"""Dynamics model files: :func:`save_dynamics` and :func:`load_dynamics` (one safetensors file with the config
inside, loaded strictly), and :func:`load_dynamics_run` (a trained run's inference weights and what samplers and
evaluators need to know about them)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..checkpoint import check_shapes, config_mismatch, load_weights, read_metadata
from ..errors import CheckpointError
from .dynamics import KIND, DynamicsModel
from .dynamics_config import DynamicsConfig, one_line


def save_dynamics(path: str | os.PathLike, model: DynamicsModel, extra: dict[str, Any] | None = None) -> Path:
    """Atomic safetensors with the model config inside (``ahri_core.checkpoint``)."""
    from ..checkpoint import save_weights

    return save_weights(path, model, kind=KIND, config=model.config.model_dump(mode="json"), extra=extra)


def load_dynamics(
    path: str | os.PathLike,
    expect: DynamicsConfig | None = None,
    grad_checkpointing: bool | None = None,
) -> DynamicsModel:
    """Rebuild a model from its checkpoint alone, strictly. ``expect`` (optional) must match the stored
    config in every field that shapes the weights; a mismatch is refused naming the fields."""
    kind, stored, _ = read_metadata(path)
    if kind != KIND:
        raise CheckpointError(f"checkpoint {path} holds a {kind} model, not a {KIND} model")
    try:
        cfg = DynamicsConfig(**stored)
    except ValidationError as e:
        raise CheckpointError(f"checkpoint {path} has an invalid dynamics config ({one_line(e)}); "
                              "restore the file or retrain") from None
    if expect is not None:
        diff = config_mismatch(expect.weights_fields(), cfg.weights_fields())
        if diff:
            d = ", ".join(f"{k}: checkpoint {getattr(cfg, k)!r} vs expected {getattr(expect, k)!r}" for k in diff[:4])
            raise CheckpointError(f"checkpoint {path} was made with another dynamics config ({d})")
    if grad_checkpointing is not None:
        cfg = cfg.model_copy(update={"grad_checkpointing": grad_checkpointing})
    check_shapes(path, lambda: DynamicsModel(cfg))  # before any memory is given to the model
    model = DynamicsModel(cfg)
    load_weights(path, model, kind=KIND, config=stored)
    return model


# ---------------------------------------------------------------------------------------------- loading
def weights_path(run_or_path: str | os.PathLike) -> Path:
    """A run directory's inference weights (``ema.safetensors`` when the run keeps an EMA, else
    ``model.safetensors``), or the weights file itself."""
    p = Path(run_or_path)
    if p.is_dir():
        for name in ("ema.safetensors", "model.safetensors"):
            if (p / name).is_file():
                return p / name
        raise CheckpointError(f"run {p} has no model.safetensors (has it trained a step yet?)")
    if p.is_file():
        return p
    raise CheckpointError(f"{p} is neither a run directory nor a checkpoint file")


def load_dynamics_run(
    run_or_path: str | os.PathLike, device: str | torch.device = "cpu"
) -> tuple[DynamicsModel, dict[str, Any]]:
    """Rebuild a trained dynamics model from a run directory or its ``model.safetensors``, strictly.

    Returns ``(model, info)``, the model in eval mode on ``device``; ``info`` holds what samplers and
    evaluators need: ``k_max``, ``shortcut``, ``max_frames``, ``tokenizer_id``, ``latents`` (the set's
    path and shape), ``settings``, ``step``, ``weights`` ("ema" or "raw"), ``config``, ``run_dir``, ``path``.
    """
    path = weights_path(run_or_path)
    model = load_dynamics(path).to(device).eval()  # strict: kind, config, tensors, sha256
    _, stored, extra = read_metadata(path)
    return model, run_info(path, model.config, stored, extra)


class _ExtraCheck(BaseModel):
    """The types and bounds of the metadata beside a dynamics checkpoint's config (unknown keys are kept)."""

    model_config = ConfigDict(extra="allow")

    k_max: int | None = Field(None, ge=1, le=4096)
    shortcut: bool = False
    max_frames: int | None = Field(None, ge=1, le=100_000)
    tokenizer_id: str | None = None
    latents: dict[str, Any] | None = None
    settings: dict[str, Any] | None = None
    step: int | None = Field(None, ge=0)
    weights: str | None = None


def run_info(path: Path, cfg: DynamicsConfig, stored: Any, extra: dict[str, Any]) -> dict[str, Any]:
    """The ``info`` of a loaded dynamics checkpoint (see :func:`load_dynamics_run`) from its metadata."""
    try:
        x = _ExtraCheck.model_validate(extra)
    except ValidationError as e:
        raise CheckpointError(f"checkpoint {path}: metadata {one_line(e)}; restore the file or retrain") from None
    return {
        "k_max": x.k_max or cfg.k_max,
        "shortcut": x.shortcut,
        "max_frames": x.max_frames or cfg.max_frames,
        "tokenizer_id": x.tokenizer_id or "",
        "latents": x.latents or {},
        "settings": x.settings or {},
        "step": x.step,
        "weights": x.weights or "raw",
        "config": stored,
        "path": str(path),
        "run_dir": str(path.parent),
    }

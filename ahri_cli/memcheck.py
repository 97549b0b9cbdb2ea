"""Before a training run on the CPU: one warning line when its estimated memory exceeds what the machine has free.

The estimate (``ahri_core.train.memory``) is rough; it is meant to name a run that cannot fit before it starts,
rather than leave the kernel to kill it later. A run on a GPU is not checked here (its memory is the card's).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from ahri_core.config.presets import DYNAMICS_MAX_TOKENS, DYNAMICS_PRESETS, TOKENIZER_PRESETS
from ahri_core.train.memory import estimate_training_memory, memory_warning

from .launch import other_rank
from .output import warn


def _on_cpu(device: str) -> bool:
    from ahri_core.runtime import resolve_device

    try:
        return resolve_device(device).type == "cpu"
    except Exception:  # a bad device name is refused later, with its own message
        return False


def _warn(est: Any, hint: str) -> None:
    if other_rank():  # under torchrun rank 0 says it once
        return
    msg = memory_warning(est)
    if msg:
        warn(f"{msg}; {hint}")


def check_dynamics(tset: Any, dset: Any, shape: dict[str, int], lat_path: Path | None) -> None:
    """Warn when a dynamics run of preset ``tset.preset`` with the model ``shape`` and the windows of ``dset``
    would not fit in the memory available now."""
    if tset.preset not in DYNAMICS_PRESETS or not _on_cpu(tset.device):
        return
    from ahri_core.train.common import with_preset_data, with_preset_defaults

    tset, dset = with_preset_defaults(tset, "dynamics"), with_preset_data(dset, tset.preset)
    cfg = {**DYNAMICS_PRESETS[tset.preset], **shape}
    tokens = DYNAMICS_MAX_TOKENS.get(tset.preset, 16)
    if lat_path is not None:
        from ahri_core.data.index import LatentIndex

        with contextlib.suppress(Exception):  # an unreadable set is reported when training reads it
            tokens = min(tokens, LatentIndex.read(lat_path).tokens)
    tokens += int(cfg.get("registers", 0))
    if dset.alternating:
        shapes = [(dset.seq_len_short, dset.batch_size_short), (dset.seq_len_long, dset.batch_size_long)]
    else:
        shapes = [(dset.seq_len, tset.batch_size)]
    frames, batch = max(shapes, key=lambda fb: fb[0] * fb[1])
    est = estimate_training_memory(
        dim=int(cfg["dim"]), depth=int(cfg["depth"]), heads=int(cfg["heads"]), mlp_ratio=float(cfg["mlp_ratio"]),
        tokens=tokens, frames=frames, batch=batch, ema=bool(tset.ema), grad_checkpointing=bool(tset.grad_checkpointing),
    )
    _warn(est, "a smaller --preset, batch or window (--batch-size, --seq-len), or --grad-checkpointing, needs less")


def check_tokenizer(tset: Any) -> None:
    """Warn when a tokenizer run of preset ``tset.preset`` at ``tset.batch_size`` would not fit."""
    if tset.preset not in TOKENIZER_PRESETS or not _on_cpu(tset.device):
        return
    from ahri_core.train.common import with_preset_defaults

    tset = with_preset_defaults(tset, "tokenizer")
    cfg = TOKENIZER_PRESETS[tset.preset]
    patches = (int(cfg["image_size"]) // int(cfg["patch_size"])) ** 2
    est = estimate_training_memory(
        dim=int(cfg["dim"]), depth=int(cfg["depth"]) + int(cfg["decoder_depth"]), heads=int(cfg["heads"]),
        mlp_ratio=4.0, tokens=patches + int(cfg["tokens"]), frames=1, batch=int(tset.batch_size),
        ema=bool(tset.ema),
    )
    _warn(est, "a smaller --preset or --batch-size needs less")

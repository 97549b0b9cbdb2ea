"""Small stores of built-in game clips and tiny tokenizer runs for the tokenizer and tokenize tests."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from ahri_core.config.settings import TrainSettings
from ahri_core.sources.game import ACTION_MEANINGS, GAME_FPS, render_clip
from ahri_core.sources.store import list_videos, store_frames


@functools.lru_cache(maxsize=32)
def _clip(seed: int, frames: int, size: int):
    c = render_clip(seed, frames, size)
    return c.frames, c.actions


def make_store(directory: Path, n: int = 4, frames: int = 24, size: int = 32, first_seed: int = 0):
    """``n`` game clips stored as mp4 + sidecar + actions under ``directory``; returns their records."""
    directory.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        fr, act = _clip(first_seed + i, frames, size)
        store_frames(
            directory, f"clip{i:02d}", fr, GAME_FPS, {"source": "game", "origin": f"test:{first_seed + i}"},
            actions=act, action_meanings=ACTION_MEANINGS,
        )
    return list_videos(directory)


def tiny_train(**kw) -> TrainSettings:
    base = dict(stage="tokenizer", preset="tiny", max_steps=8, batch_size=8, lr=3e-3, warmup_steps=2,
                log_every=2, val_every=4, checkpoint_every=4, device="cpu", seed=0, precision="fp32")
    base.update(kw)
    return TrainSettings(**base)


def frames_of(path: Path, size: int = 32) -> np.ndarray:
    from ahri_core.video import read_frames

    return read_frames(path, fps=GAME_FPS, size=size, fit="crop")


def tokenizer_workspace(root: Path, n: int, frames: int) -> Path:
    """A workspace with ``n`` game clips (with actions) and an untrained tiny tokenizer run ``tok1``."""
    import json

    import torch

    from ahri_core.checkpoint import save_weights
    from ahri_core.models.tokenizer import build_tokenizer

    make_store(root / "videos" / "game", n=n, frames=frames)
    torch.manual_seed(0)
    m = build_tokenizer("tiny")
    run = root / "runs" / "tok1"
    run.mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({"stage": "tokenizer"}))
    save_weights(run / "model.safetensors", m, "tokenizer", m.cfg.to_dict(), {"val_fraction": 0.2})
    return root

"""The training steps the benchmarks time: ``ahri train``'s own objectives (:class:`DynamicsObjective`,
:class:`TokenizerObjective`) and step (:class:`TrainStep`: gradient accumulation, clipping, the non-finite skip,
AdamW and the EMA with its warm-up), fed the benchmark's latents or frames instead of a data set's."""

from __future__ import annotations

import tempfile
from typing import Any

import numpy as np
import torch

from ahri_core.config.settings import (
    DataSettings,
    DiffusionSettings,
    LatentActionSettings,
    TokenizerSettings,
    TrainSettings,
)
from ahri_core.data.frames import FrameData, FrameSet
from ahri_core.data.windows import Batch, LatentSet, LatentVideo
from ahri_core.models.dynamics import DynamicsModel
from ahri_core.models.tokenizer import TokenizerConfig
from ahri_core.train.common import RunDir
from ahri_core.train.objectives.dynamics import DynamicsObjective
from ahri_core.train.objectives.tokenizer import TokenizerObjective
from ahri_core.train.step import StepResult, TrainStep


class BenchStep:
    """Calls of ``ahri train``'s step on ``obj``; each successful call counts one step (the EMA warm-up, the
    bootstrap warm-up). The learning rate is ``train.lr`` throughout: a schedule changes no timing."""

    def __init__(self, obj: DynamicsObjective, train: TrainSettings, precision: str) -> None:
        self.obj, self.model, self.device = obj, obj.model, obj.device
        self.train_step = TrainStep.build(obj, train, precision)
        self.lr = train.lr
        self.step = 0

    @classmethod
    def on_model(cls, model: DynamicsModel, train: TrainSettings, precision: str,
                 diffusion: DiffusionSettings | None = None,
                 latent_actions: LatentActionSettings | None = None) -> BenchStep:
        """The step for ``model`` (built by the caller, on its device), given its batches at each call."""
        cfg = model.config
        device = next(model.parameters()).device
        data = DataSettings()
        # the objective needs a latent set to build its (unused) loader: one blank video of one window
        video = LatentVideo("synthetic", torch.zeros(data.seq_len, cfg.tokens, cfg.channels, dtype=torch.float16))
        lset = LatentSet(train=[video], val=[], tokens=cfg.tokens, channels=cfg.channels,
                         action_kind=cfg.action_kind, action_count=cfg.action_count, action_dim=cfg.action_dim)
        obj = DynamicsObjective(cfg, lset, train, data, diffusion or DiffusionSettings(), {}, device, latent_actions,
                                model=model)
        return cls(obj, train, precision)

    def __call__(self, latents: torch.Tensor | None = None, actions: torch.Tensor | None = None,
                 precision: str | None = None) -> StepResult:
        """One step on ``latents`` (batch, frames, tokens, channels) and ``actions``; without latents, on the
        objective's own batches. ``precision``: another precision from this step on."""
        if precision is not None:
            self.train_step.precision = precision
        feed: Any = None
        if latents is not None:
            batch = Batch(latents, actions, "S", [])
            feed = lambda: batch  # noqa: E731
        res = self.train_step(self.step, self.lr, feed)
        if res.ok:
            self.step += 1
        return res


def bootstrap_items(res: StepResult) -> float:
    """The fraction of a step's items that took the shortcut teacher's target (its two extra forwards)."""
    vals = [o.stats["bootstrap_items"] for o in res.outs]
    return sum(vals) / max(len(vals), 1)


class TokenizerBenchStep:
    """Calls of ``ahri train --stage tokenizer``'s step (its objective: MAE masking drawn as the preset says, the
    loss normalised by its running RMS) on the benchmark's frames, (batch, 3, H, W) in [0, 1]."""

    def __init__(self, cfg: TokenizerConfig, train: TrainSettings, precision: str,
                 device: torch.device | str = "cpu") -> None:
        h, w = cfg.size
        blank = FrameSet([np.zeros((2, h, w, 3), dtype=np.uint8)], ["synthetic"])  # the (unused) frame set
        data = FrameData(train=blank, val=blank, split={}, failed={}, val_is_heldout=False)
        self.run_dir = tempfile.TemporaryDirectory(prefix="ahri-bench-")
        self.obj = TokenizerObjective(cfg, data, train, TokenizerSettings(), RunDir(self.run_dir.name),
                                      torch.device(device), None)
        self.model = self.obj.model
        self.train_step = TrainStep.build(self.obj, train, precision)
        self.lr = train.lr
        self.step = 0

    def __call__(self, frames: torch.Tensor, precision: str | None = None) -> StepResult:
        if precision is not None:
            self.train_step.precision = precision
        res = self.train_step(self.step, self.lr, lambda: frames)
        if res.ok:
            self.step += 1
        return res

"""The dynamics training step the benchmarks time: ``ahri train``'s own objective (:class:`DynamicsObjective`)
and step (:class:`TrainStep`: gradient accumulation, clipping, the non-finite skip, AdamW and the EMA with its
warm-up), fed the benchmark's latents instead of a latent set's windows."""

from __future__ import annotations

from typing import Any

import torch

from ahri_core.config.settings import DataSettings, DiffusionSettings, LatentActionSettings, TrainSettings
from ahri_core.data.windows import Batch, LatentSet, LatentVideo
from ahri_core.models.dynamics import DynamicsModel
from ahri_core.train.objectives.dynamics import DynamicsObjective
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

"""One optimisation step of training, as an object: :class:`TrainStep`.

The training loop builds one and calls it once per step; the benchmarks build and call the same object, so
what they time is what ``ahri train`` computes. One call sets the learning rate, forwards ``grad_accum``
batches through the objective and adds up their gradients (each loss divided by the count), clips the
gradient norm, skips the step when the loss or the norm is not finite (the gradients are dropped and the
optimizer is untouched), takes the optimizer's step (AdamW, or Muon chained with AdamW: ``train.optimizer``)
and updates the EMA weights with the bias-corrected warm-up (decay ``min(ema, (1 + step) / (10 + step))``: early averages do not drag the random init along).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..config.settings import TrainSettings
from . import distributed
from .common import EMA, lr_factor, make_optimizer, set_lr
from .objectives.base import Objective, StepOut


@dataclass
class StepResult:
    """What one call of :class:`TrainStep` did."""

    ok: bool  # False: a non-finite loss or gradient norm, the step was skipped
    outs: list[StepOut]  # one per batch forwarded (fewer than grad_accum when a loss was not finite)
    grad_norm: float  # NaN when skipped
    lr: float
    bad: str = ""  # what was not finite when skipped: "loss" or "gradient norm"


class TrainStep:
    """One optimisation step of ``obj``'s model with ``opt`` (and ``ema``) under ``precision`` (see the module
    docstring). ``after_backward(step, model)`` runs between backward and the finiteness check."""

    def __init__(self, obj: Objective, opt: torch.optim.Optimizer, train: TrainSettings, precision: str,
                 ema: EMA | None = None, after_backward: Callable[[int, nn.Module], None] | None = None) -> None:
        self.obj, self.model, self.opt, self.ema = obj, obj.model, opt, ema
        self.precision = precision
        self.base_lr, self.warmup, self.min_lr_ratio = train.lr, train.warmup_steps, train.min_lr_ratio
        self.grad_clip, self.ema_decay = train.grad_clip, train.ema
        self.accum = int(getattr(train, "grad_accum", 1) or 1)
        self.after_backward = after_backward

    @classmethod
    def build(cls, obj: Objective, train: TrainSettings, precision: str,
              after_backward: Callable[[int, nn.Module], None] | None = None) -> TrainStep:
        """The optimizer (``train.optimizer``) and (with ``train.ema`` > 0) the EMA for ``obj``'s model, as the loop
        makes them; sets ``obj.ema``."""
        opt = make_optimizer(obj.model, train.optimizer, train.lr, train.weight_decay)
        ema = EMA(obj.model, train.ema) if train.ema > 0 else None
        obj.ema = ema
        return cls(obj, opt, train, precision, ema, after_backward)

    def lr_at(self, step: int, progress: float) -> float:
        """The learning rate of ``step`` with ``progress`` of the budget used: warmup, then cosine."""
        return self.base_lr * lr_factor(step, self.warmup, progress, self.min_lr_ratio)

    def __call__(self, step: int, lr: float, next_batch: Callable[[], Any] | None = None) -> StepResult:
        """Step ``step`` (0-based) at learning rate ``lr`` on batches from ``next_batch`` (default: the
        objective's own)."""
        obj, model, opt = self.obj, self.model, self.opt
        next_batch = next_batch or obj.next_batch
        accum = self.accum
        set_lr(opt, lr)
        opt.zero_grad(set_to_none=True)
        outs: list[StepOut] = []
        loss_ok = True
        for micro in range(accum):  # gradient accumulation: ``accum`` batches, one optimizer step
            out = obj.compute(next_batch(), step, self.precision)
            (loss_bad,) = distributed.agree(not bool(torch.isfinite(out.loss.detach()).all()))
            if loss_bad:
                loss_ok = False
                break
            sync = micro == accum - 1 or not hasattr(obj.net, "no_sync")
            with contextlib.nullcontext() if sync else obj.net.no_sync():
                (out.loss / accum if accum > 1 else out.loss).backward()
            outs.append(out)
        grad_norm = math.nan
        if loss_ok:
            if self.after_backward is not None:
                self.after_backward(step, model)
            grad_norm = distributed.as_number(torch.nn.utils.clip_grad_norm_(model.parameters(), self.grad_clip))
            (grad_bad,) = distributed.agree(not math.isfinite(grad_norm))
            if grad_bad:
                grad_norm = math.nan
        if not (loss_ok and math.isfinite(grad_norm)):
            opt.zero_grad(set_to_none=True)
            return StepResult(False, outs, math.nan, lr, "loss" if not loss_ok else "gradient norm")
        opt.step()
        if self.ema is not None:
            self.ema.decay = min(self.ema_decay, (1 + step) / (10 + step))
            self.ema.update(model)
        return StepResult(True, outs, grad_norm, lr)

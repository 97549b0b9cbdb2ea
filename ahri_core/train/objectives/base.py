"""The interface between the training loop and a training stage: :class:`Objective` (a stage's model, data,
loss and validation) and :class:`StepOut` (what one forward of the objective gives the loop)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import distributed
from ..common import EMA
from ..compiling import compile_regions


@dataclass
class StepOut:
    """One step of an objective: the loss to differentiate, floats to log, frames it covered."""

    loss: torch.Tensor
    logs: dict[str, float]
    frames: int
    stats: dict[str, float] = field(default_factory=dict)  # numbers for benchmarks and tests; never logged


class Objective:
    """A training stage, as the loop sees it. Subclasses set the attributes and implement the methods."""

    stage: str = ""  # run.json "stage"
    kind: str = ""  # the weights files' ahri_kind
    task: str = "train"  # progress task name
    best_metric: str = ""  # a key of validate()'s result; "" = no best checkpoint
    best_mode: str = "max"  # "max" or "min"
    model: nn.Module
    device: torch.device
    ema: EMA | None = None  # set by the loop
    net: nn.Module | None = None  # what training forwards go through (DDP wrapper); set by the loop
    dist: distributed.Dist = distributed.Dist()  # this process's place among the ranks; set by the loop
    fsdp: bool = False  # parameters sharded across ranks (FSDP2); set by the loop

    @property
    def train_net(self) -> nn.Module:
        return self.net if self.net is not None else self.model

    def set_compiled(self, on: bool) -> None:
        """Training forwards through ``torch.compile`` (True) or eager again (False): each transformer block of the
        model compiled in place (``compiling.compile_regions``); the modules, weights and optimizer stay the same
        (``--compile``, ``train/compiling.py``)."""
        compile_regions(self.model, on)

    def compile_key(self) -> str:
        """What a cached compile measurement is valid for, besides the machine (``train/compiling.py``)."""
        return self.shape_key()

    # ---- model files
    def model_config(self) -> dict[str, Any]:
        raise NotImplementedError

    def weights_extra(self) -> dict[str, Any]:
        return {}

    # ---- data
    def steps_per_epoch(self) -> int:
        raise NotImplementedError

    def epochs_done(self) -> float:
        raise NotImplementedError

    def next_batch(self) -> Any:
        raise NotImplementedError

    # ---- the step
    def compute(self, batch: Any, step: int, precision: str) -> StepOut:
        raise NotImplementedError

    def timing_step(self, precision: str) -> None:
        """Forward + backward of one representative batch (for the precision choice); changes no state
        the run keeps (the loop restores the RNGs and drops the gradients)."""
        raise NotImplementedError

    def shape_key(self) -> str:
        return ""

    # ---- validation and display
    def validate(self, step: int, precision: str) -> dict[str, float]:
        return {}

    def val_line(self, val: dict[str, Any]) -> str:
        return ""

    def preview(self, step: int, precision: str) -> dict[str, np.ndarray] | None:
        """Pictures of the model at a validation, name -> (H, W, 3) uint8 (TensorBoard shows them), made with
        the weights validation used; None: none. Raises :class:`~..preview.PreviewUnavailable` when this run
        cannot make them."""
        return None

    reduce: dict[str, str] = {}  # how log keys combine over an interval (default: mean)

    def interval(self, frames: int, seconds: float) -> dict[str, Any]:
        """Extra fields of a train record (e.g. throughput in the stage's own unit)."""
        return {}

    def display(self, rec: dict[str, Any]) -> dict[str, Any]:
        return {"loss": rec.get("loss")}

    # ---- resume
    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

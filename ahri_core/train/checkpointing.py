"""The training loop's checkpoints: writing them, resuming from them, and the best checkpoint.

A run's directory holds ``model.safetensors`` (weights), ``ema.safetensors`` (EMA weights, when EMA is on),
``best.safetensors`` (the inference weights at the best validation) and ``model.state.pt`` (everything to
continue: model, optimizer, EMA, every RNG, the objective's state, the loop's counters). Each weights file's
sha256 goes into ``run.json`` as it is written and is checked on load. Checkpoints hold whole tensors (FSDP
gathers them), so one process can load or resume them, and so can another number of processes.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..checkpoint import save_state, save_weights
from ..config.settings import TrainSettings
from ..errors import CheckpointError
from ..fileio import read_jsonl, write_text_atomic
from ..progress import Progress
from ..runtime import PrecisionChoice
from . import distributed
from .common import EMA, RunDir, rng_state, set_rng_state
from .objectives.base import Objective

STATE_VERSION = 2


@dataclass
class LoopState:
    """The loop's counters that a checkpoint keeps besides the tensors."""

    step: int = 0
    elapsed: float = 0.0  # seconds trained before this process (a resumed run)
    first_val: dict[str, Any] = field(default_factory=dict)  # the validation at step 0
    best: dict[str, Any] | None = None  # {"metric", "value", "step"}
    skipped: int = 0  # steps skipped for a non-finite loss or gradient, in all


def trim_metrics(run: RunDir, step: int) -> None:
    """Drop records written after the checkpoint a resumed run continues from (step -1: all)."""
    path = run.path / "metrics.jsonl"
    if not path.exists():
        return
    keep = [r for r in read_jsonl(path) if int(r.get("step", 0)) <= step]
    write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in keep))


def load_resume_state(run: RunDir, stage: str) -> dict[str, Any]:
    """The run's training state, checked to be this loop's format and this stage's."""
    from ..checkpoint import load_state

    state = load_state(run.state)
    version = state.get("version")
    if version != STATE_VERSION:
        raise CheckpointError(
            f"training state {run.state} was written by an older ahri (format {version or 1}, this version reads "
            f"{STATE_VERSION}); it cannot be resumed: start a new run (its weights still load for tokenize, eval and rollout)"
        )
    if state.get("stage") != stage:
        raise CheckpointError(f"training state {run.state} belongs to a {state.get('stage')} run, not a {stage} run")
    return state


def _optimizer_state(model: nn.Module, opt: torch.optim.Optimizer, fsdp: bool) -> dict[str, Any]:
    """The optimizer state to save: as torch gives it, or (FSDP) whole tensors keyed by parameter name."""
    if not fsdp:
        return opt.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    full = get_optimizer_state_dict(model, opt, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return {"by_name": True, "state": full}


def _load_optimizer(model: nn.Module, opt: torch.optim.Optimizer, saved: dict[str, Any], fsdp: bool) -> None:
    if not saved.get("by_name") and not fsdp:
        opt.load_state_dict(saved)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    if not saved.get("by_name"):
        raise CheckpointError("--fsdp cannot resume a run whose checkpoint was written without --fsdp; resume it "
                              "without --fsdp (DDP or one process)")
    set_optimizer_state_dict(model, opt, saved["state"], options=StateDictOptions(full_state_dict=True))


def _load_model(model: nn.Module, state: dict[str, torch.Tensor], fsdp: bool) -> None:
    if not fsdp:
        model.load_state_dict(state, strict=True)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    set_model_state_dict(model, state, options=StateDictOptions(full_state_dict=True, strict=True))


class Checkpoints:
    """Saving and resuming one loop's run: ``obj``'s model, ``opt`` and ``ema`` in ``run``. Every rank calls
    the methods (they gather tensors, a collective under FSDP); rank 0 alone writes files."""

    def __init__(self, run: RunDir, obj: Objective, train: TrainSettings, opt: torch.optim.Optimizer,
                 ema: EMA | None, fsdp: bool, choice: PrecisionChoice) -> None:
        self.run, self.obj, self.train, self.opt, self.ema = run, obj, train, opt, ema
        self.model = obj.model
        self.fsdp, self.choice = fsdp, choice
        self.compile_choice: Callable[[], dict[str, Any]] | None = None  # the loop's --compile choice, saved too
        self.d = distributed.current()
        self.registry = run.path / "run.json"

    def resume(self, resume_state: dict[str, Any] | None, p: Progress) -> LoopState:
        """The loop's state: fresh, or loaded (with the model, optimizer, EMA, objective and RNGs) from a
        training state. Metrics written after the checkpoint are dropped."""
        run, d, ema = self.run, self.d, self.ema
        if resume_state is None:
            if d.main:
                trim_metrics(run, -1)  # a run restarted before its first checkpoint
            return LoopState()
        _load_model(self.model, resume_state["model"], self.fsdp)
        _load_optimizer(self.model, self.opt, resume_state["optimizer"], self.fsdp)
        if ema is not None:
            if not resume_state.get("ema"):
                raise CheckpointError(f"--resume: run {run.path} was trained without EMA; it cannot be switched on now")
            ema.load_state_dict(resume_state["ema"])
        self.obj.load_state_dict(resume_state["objective"])
        set_rng_state(resume_state["rng"])
        loop_state = resume_state.get("loop", {})
        st = LoopState(step=int(resume_state["step"]), elapsed=float(resume_state["elapsed"]),
                       first_val=dict(loop_state.get("first_val") or {}), best=loop_state.get("best"),
                       skipped=int(loop_state.get("skipped_steps", 0)))
        if d.main:
            trim_metrics(run, st.step)
        shown_best = run.meta().get("best")
        if shown_best and int(shown_best.get("step", 0)) > st.step:  # written after the checkpoint, then lost
            if d.main:
                run.best.unlink(missing_ok=True)
            st.best = None  # the checkpoint's best file was overwritten by the lost one; the next validation writes anew
        p.log(f"resumed {run.path.name} at step {st.step} (epoch {self.obj.epochs_done():.2f})")
        return st

    def inference_tensors(self) -> dict[str, torch.Tensor]:
        ema, model = self.ema, self.model
        return distributed.full_tensors(ema.averaged(model) if ema is not None else model.state_dict())

    def in_sync(self) -> bool | None:
        """Whether every rank holds the same parameters (DDP; FSDP shards them, so there is nothing to compare)."""
        if not self.d.enabled or self.fsdp:
            return None
        g = torch.Generator().manual_seed(1234)
        probe = sum(float((p.detach().float().cpu().flatten() * torch.rand(p.numel(), generator=g)).sum())
                    for p in self.model.parameters())
        sums = distributed.gather(probe)
        return all(x == sums[0] for x in sums)

    def save(self, st: LoopState, elapsed: float, p: Progress) -> None:
        """Write the weights (raw and EMA) and the training state at ``st.step``."""
        run, obj, ema, model, train = self.run, self.obj, self.ema, self.model, self.train
        synced = self.in_sync()
        if synced is False:
            p.log("warning: the processes' parameters differ; the checkpoint holds rank 0's")
        raw = distributed.full_tensors(model.state_dict())
        averaged = distributed.full_tensors(ema.averaged(model)) if ema is not None else None
        optimizer = _optimizer_state(model, self.opt, self.fsdp)
        ema_state = distributed.full_tensors(ema.state_dict()) if ema is not None else {}
        if not self.d.main:
            return
        step = st.step
        extra = {**obj.weights_extra(), "step": step}
        cfg = obj.model_config()
        save_weights(run.weights, raw, obj.kind, cfg, {**extra, "weights": "raw"}, registry=self.registry)
        if averaged is not None:
            save_weights(run.ema_weights, averaged, obj.kind, cfg, {**extra, "weights": "ema", "ema": train.ema},
                         registry=self.registry)
        save_state(
            run.state,
            {
                "version": STATE_VERSION,
                "stage": obj.stage,
                "step": step,
                "elapsed": elapsed,
                "config": cfg,
                "batch_size": train.batch_size,
                "model": {k: v.detach().cpu().clone() for k, v in raw.items()},
                "optimizer": optimizer,
                "ema": {k: v.detach().cpu().clone() for k, v in ema_state.items()},
                "rng": rng_state(),
                "objective": obj.state_dict(),
                "loop": {"first_val": st.first_val, "best": st.best, "precision": self.choice.to_dict(),
                         "skipped_steps": st.skipped, "processes": self.d.world,
                         **({"compile": self.compile_choice()} if self.compile_choice is not None else {})},
            },
        )
        run.update_meta(step=step, checkpoint_step=step, **({} if synced is None else {"ranks_in_sync": synced}))

    def save_best(self, st: LoopState) -> None:
        """Write ``best.safetensors`` (the inference weights) for the best validation ``st.best``."""
        tensors = self.inference_tensors()
        if self.d.main:
            save_weights(self.run.best, tensors, self.obj.kind, self.obj.model_config(),
                         {**self.obj.weights_extra(), "step": st.step, "weights": "ema" if self.ema else "raw",
                          "best": st.best}, registry=self.registry)
        self.run.update_meta(best=st.best)

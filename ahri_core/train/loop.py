"""The one training loop. Each stage (tokenizer, dynamics) is an :class:`Objective`: its model, its data,
its loss and its validation. Everything else lives here, once:

- the budget (steps, minutes or epochs, whichever ends first) and the LR schedule (warmup + cosine);
- precision (``runtime.choose_precision``: auto is measured on this machine with the stage's own step);
- AdamW, gradient clipping, EMA with a bias-corrected warm-up;
- divergence guard: the loss and the gradient norm are checked *before* the optimizer step. A non-finite
  value skips the step (counted in the metrics); ``max_bad_steps`` in a row stop the run with
  :class:`DivergedError`, ``run.json`` status ``diverged``, and the last good checkpoint untouched;
- checkpoints: ``model.safetensors`` (weights), ``ema.safetensors`` (EMA weights, when EMA is on),
  ``best.safetensors`` (the inference weights at the best validation), ``model.state.pt`` (everything to
  continue); each weights file's sha256 goes into ``run.json`` as it is written and is checked on load;
- exact resume: model, optimizer, EMA, every RNG, the objective's generators and data position all come
  back from the state file, so a run killed at any point and resumed ends bit-identical to one never
  interrupted (given a step budget);
- SIGTERM / first Ctrl-C: checkpoint and stop with status ``interrupted``;
- metrics.jsonl (train records every ``log_every`` steps, val records every ``val_every``), progress;
- several processes (torchrun): DistributedDataParallel, or FSDP2 ``fully_shard`` with ``train.fsdp``; every
  rank walks the same batch plan and keeps its share (the objective's ``dist``), the decisions that must
  match (stop, skip a bad step, precision) are agreed on, train records are averaged over ranks, and rank 0
  alone writes files and shows progress. Checkpoints hold whole tensors, so one process can load or resume
  them, and so can another number of processes.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..checkpoint import save_state, save_weights
from ..config.settings import TrainSettings
from ..errors import AhriError, CheckpointError
from ..fileio import read_jsonl, write_text_atomic
from ..progress import Progress, ensure
from ..runtime import PrecisionChoice, choose_precision, threads_in_use
from . import distributed
from .common import EMA, Budget, RunDir, StopRequest, lr_factor, make_adamw, rng_state, set_lr, set_rng_state

STATE_VERSION = 2


class DivergedError(AhriError):
    """Training produced non-finite losses or gradients too many steps in a row."""


@dataclass
class StepOut:
    """One step of an objective: the loss to differentiate, floats to log, frames it covered."""

    loss: torch.Tensor
    logs: dict[str, float]
    frames: int


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


@dataclass
class LoopResult:
    step: int
    epochs: float
    seconds: float
    status: str  # finished, interrupted
    reason: str | None
    precision: PrecisionChoice
    last: dict[str, Any] = field(default_factory=dict)  # the last train record
    val: dict[str, Any] = field(default_factory=dict)  # the last validation
    first_val: dict[str, Any] = field(default_factory=dict)  # the validation at step 0
    best: dict[str, Any] | None = None  # {"metric", "value", "step"}
    skipped_steps: int = 0


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


class _Interval:
    """Sums of one log interval. Numbers are averaged (NaN entries skipped) unless the objective's
    ``reduce`` names another rule for the key: "min", "max", "sum" or "last"; strings keep their last value."""

    def __init__(self, reduce: dict[str, str]) -> None:
        self.reduce = reduce
        self.n = 0
        self.skipped = 0
        self.frames = 0
        self.grad = 0.0
        self.values: dict[str, float] = {}
        self.counts: dict[str, int] = {}
        self.last: dict[str, Any] = {}
        self.seen: set[str] = set()

    def add(self, out: StepOut, grad_norm: float) -> None:
        self.n += 1
        self.frames += out.frames
        self.grad += grad_norm
        for k, v in out.logs.items():
            if isinstance(v, str):
                self.last[k] = v
                continue
            rule = self.reduce.get(k, "mean")
            self.seen.add(k)
            if rule == "mean" and math.isnan(v):
                continue
            if k not in self.values:
                self.values[k], self.counts[k] = float(v), 1
                continue
            cur = self.values[k]
            if rule == "last":
                self.values[k] = v
            else:
                self.values[k] = min(cur, v) if rule == "min" else max(cur, v) if rule == "max" else cur + v
            self.counts[k] += 1

    def record(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(self.last)
        out.update({k: None for k in self.seen})  # a mean over no finite value (e.g. no bootstrap item)
        for k, v in self.values.items():
            out[k] = v / self.counts[k] if self.reduce.get(k, "mean") == "mean" else v
        return out


def _wrap(model: nn.Module, device: torch.device, d: distributed.Dist, fsdp: bool) -> nn.Module:
    """The module training forwards go through: the model itself (one process, or FSDP2, which shards it in
    place: each block and then the root), or a DistributedDataParallel wrapper."""
    if not d.enabled:
        return model
    if fsdp:
        from torch.distributed.fsdp import fully_shard

        # the blocks of every ModuleList are the units (innermost first), then the root takes what is left
        units = [(name.count("."), m) for name, lst in model.named_modules() if isinstance(lst, nn.ModuleList)
                 for m in lst]
        for _, blk in sorted(units, key=lambda u: -u[0]):
            fully_shard(blk)
        fully_shard(model)
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids, find_unused_parameters=True)


def _reduce_record(rec: dict[str, Any], reduce: dict[str, str]) -> dict[str, Any]:
    """A train record with every number combined over the ranks: min/max keys by min/max, frame counts and
    rates summed, the rest averaged over the ranks where they are finite. One process: unchanged."""
    if not distributed.current().enabled:
        return rec
    import torch.distributed as tdist

    summed = ("frames_per_s", "tokens_per_s", "frames_seen")
    keys = sorted(k for k, v in rec.items() if isinstance(v, (int, float)) and not isinstance(v, bool) or v is None)
    vals = [rec[k] if rec[k] is not None and math.isfinite(float(rec[k])) else None for k in keys]
    dev = distributed.comm_device()
    t_sum = torch.tensor([[v if v is not None else 0.0, 1.0 if v is not None else 0.0] for v in vals] or [[0.0, 0.0]],
                         dtype=torch.float64, device=dev)
    big = float("inf")
    t_min = torch.tensor([v if v is not None else big for v in vals] or [0.0], dtype=torch.float64, device=dev)
    t_max = torch.tensor([v if v is not None else -big for v in vals] or [0.0], dtype=torch.float64, device=dev)
    tdist.all_reduce(t_sum)
    tdist.all_reduce(t_min, op=tdist.ReduceOp.MIN)
    tdist.all_reduce(t_max, op=tdist.ReduceOp.MAX)
    out = dict(rec)
    for j, k in enumerate(keys):
        total, count = float(t_sum[j, 0]), float(t_sum[j, 1])
        if count == 0:
            out[k] = None
            continue
        rule = reduce.get(k, "mean")
        if rule == "min":
            out[k] = float(t_min[j])
        elif rule == "max":
            out[k] = float(t_max[j])
        elif k in summed:
            out[k] = total
        elif k in ("step",) or rule in ("sum", "last") or isinstance(rec[k], int):
            out[k] = rec[k]  # the same on every rank
        else:
            out[k] = total / count
    return out


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


def run_loop(
    run: RunDir,
    obj: Objective,
    train: TrainSettings,
    *,
    resume_state: dict[str, Any] | None = None,
    progress: Progress | None = None,
    stop: StopRequest | None = None,
    cache_dir: Any = None,
    on_step: Callable[[int, dict[str, Any]], None] | None = None,
    after_backward: Callable[[int, nn.Module], None] | None = None,
) -> LoopResult:
    """Train ``obj`` in ``run`` until the budget is spent or a stop is requested. See the module docstring.

    ``on_step(step, record)`` runs after every optimizer step; ``after_backward(step, model)`` runs between
    backward and the finiteness check (tests inject bad gradients there).
    """
    d = distributed.current()
    p = ensure(progress) if d.main else ensure(None)
    model, device = obj.model, obj.device
    fsdp = bool(getattr(train, "fsdp", False)) and d.enabled
    obj.dist, obj.fsdp = d, fsdp
    # ---- precision: a resumed run keeps what it chose (unless forced now); rank 0 decides for all
    kept = (resume_state or {}).get("loop", {}).get("precision")
    choice: PrecisionChoice | None = None
    if train.precision == "auto" and kept and kept.get("device", device.type) == device.type:
        choice = PrecisionChoice(kept["precision"], kept.get("reason", ""), device=device.type, cached=True)
    elif d.main:
        def timed(precision: str) -> None:
            saved = rng_state()
            try:
                obj.timing_step(precision)
            finally:
                model.zero_grad(set_to_none=True)
                set_rng_state(saved)

        choice = choose_precision(train.precision, device, step=timed, key=f"{obj.stage}: {obj.shape_key()}",
                                  cache_dir=cache_dir)
    choice = distributed.broadcast(choice)
    assert choice is not None
    precision = choice.precision
    n = threads_in_use()
    ranks = f"; {d.world} processes ({'FSDP' if fsdp else 'DDP'})" if d.enabled else ""
    p.log(f"{choice.line()}; {n} CPU thread{'s' if n != 1 else ''}{' each' if d.enabled else ''}; device {device}{ranks}")

    obj.net = _wrap(model, device, d, fsdp)
    if getattr(train, "compile", False):
        obj.net = torch.compile(obj.net)
    opt = make_adamw(model, train.lr, train.weight_decay)
    ema = EMA(model, train.ema) if train.ema > 0 else None
    obj.ema = ema
    step, elapsed_before = 0, 0.0
    first_val: dict[str, Any] = {}
    best: dict[str, Any] | None = None
    skipped_total = 0
    if resume_state is not None:
        _load_model(model, resume_state["model"], fsdp)
        _load_optimizer(model, opt, resume_state["optimizer"], fsdp)
        if ema is not None:
            if not resume_state.get("ema"):
                raise CheckpointError(f"--resume: run {run.path} was trained without EMA; it cannot be switched on now")
            ema.load_state_dict(resume_state["ema"])
        obj.load_state_dict(resume_state["objective"])
        set_rng_state(resume_state["rng"])
        step = int(resume_state["step"])
        elapsed_before = float(resume_state["elapsed"])
        loop_state = resume_state.get("loop", {})
        first_val = dict(loop_state.get("first_val") or {})
        best = loop_state.get("best")
        skipped_total = int(loop_state.get("skipped_steps", 0))
        if d.main:
            trim_metrics(run, step)
        shown_best = run.meta().get("best")
        if shown_best and int(shown_best.get("step", 0)) > step:  # written after the checkpoint, then lost
            if d.main:
                run.best.unlink(missing_ok=True)
            best = None  # the checkpoint's best file was overwritten by the lost one; the next validation writes anew
        p.log(f"resumed {run.path.name} at step {step} (epoch {obj.epochs_done():.2f})")
    elif d.main:
        trim_metrics(run, -1)  # a run restarted before its first checkpoint
    distributed.barrier()
    accum = int(getattr(train, "grad_accum", 1) or 1)
    budget = Budget(train.max_steps, train.minutes, train.epochs, max(1, obj.steps_per_epoch() // accum),
                    elapsed_before=elapsed_before)
    if resume_state is not None and budget.done(step):
        p.log(f"the budget is already spent at step {step} ({budget.elapsed() / 60:.1f} minutes in all): nothing to "
              "train; give a larger --max-steps, --minutes or --epochs")
    run.update_meta(
        status="running", reason=None, step=step, precision=choice.to_dict(), threads=n,
        device=str(device), budget={"max_steps": train.max_steps, "minutes": train.minutes, "epochs": train.epochs},
        processes=d.world, sharding="fsdp" if fsdp else ("ddp" if d.enabled else "none"),
    )
    registry = run.path / "run.json"

    def inference_tensors() -> dict[str, torch.Tensor]:
        return distributed.full_tensors(ema.averaged(model) if ema is not None else model.state_dict())

    def in_sync() -> bool | None:
        """Whether every rank holds the same parameters (DDP; FSDP shards them, so there is nothing to compare)."""
        if not d.enabled or fsdp:
            return None
        g = torch.Generator().manual_seed(1234)
        probe = sum(float((p.detach().float().cpu().flatten() * torch.rand(p.numel(), generator=g)).sum())
                    for p in model.parameters())
        sums = distributed.gather(probe)
        return all(x == sums[0] for x in sums)

    def save_checkpoint() -> None:
        # every rank gathers (a collective under FSDP); rank 0 writes
        synced = in_sync()
        if synced is False:
            p.log("warning: the processes' parameters differ; the checkpoint holds rank 0's")
        raw = distributed.full_tensors(model.state_dict())
        averaged = distributed.full_tensors(ema.averaged(model)) if ema is not None else None
        optimizer = _optimizer_state(model, opt, fsdp)
        ema_state = distributed.full_tensors(ema.state_dict()) if ema is not None else {}
        if not d.main:
            return
        extra = {**obj.weights_extra(), "step": step}
        cfg = obj.model_config()
        save_weights(run.weights, raw, obj.kind, cfg, {**extra, "weights": "raw"}, registry=registry)
        if averaged is not None:
            save_weights(run.ema_weights, averaged, obj.kind, cfg, {**extra, "weights": "ema", "ema": train.ema},
                         registry=registry)
        save_state(
            run.state,
            {
                "version": STATE_VERSION,
                "stage": obj.stage,
                "step": step,
                "elapsed": budget.elapsed(),
                "config": cfg,
                "batch_size": train.batch_size,
                "model": {k: v.detach().cpu().clone() for k, v in raw.items()},
                "optimizer": optimizer,
                "ema": {k: v.detach().cpu().clone() for k, v in ema_state.items()},
                "rng": rng_state(),
                "objective": obj.state_dict(),
                "loop": {"first_val": first_val, "best": best, "precision": choice.to_dict(),
                         "skipped_steps": skipped_total, "processes": d.world},
            },
        )
        run.update_meta(step=step, checkpoint_step=step, **({} if synced is None else {"ranks_in_sync": synced}))

    def validate() -> dict[str, Any]:
        nonlocal best
        # every rank validates (the same windows, the same answer; FSDP needs every rank for a forward)
        if ema is not None:
            with ema.applied(model):
                v = obj.validate(step, precision)
        else:
            v = obj.validate(step, precision)
        if not v:
            return {}
        rec = {"kind": "val", "step": step, "epoch": obj.epochs_done(), "elapsed": budget.elapsed(), **v}
        run.log(rec)
        line = obj.val_line(rec)
        if line:
            p.log(line)
        m = obj.best_metric
        if step > 0 and m and v.get(m) is not None and math.isfinite(v[m]):
            better = best is None or (v[m] > best["value"] if obj.best_mode == "max" else v[m] < best["value"])
            if better:
                best = {"metric": m, "value": float(v[m]), "step": step}
                tensors = inference_tensors()
                if d.main:
                    save_weights(run.best, tensors, obj.kind, obj.model_config(),
                                 {**obj.weights_extra(), "step": step, "weights": "ema" if ema else "raw", "best": best},
                                 registry=registry)
                run.update_meta(best=best)
        return rec

    def safe_validate() -> dict[str, Any]:
        """A validation that fails (out of memory, a full disk) first saves the steps trained since the last
        checkpoint, then fails the run."""
        try:
            return validate()
        except BaseException:
            if not d.enabled:  # with several ranks a failed rank cannot rely on the others to gather
                save_checkpoint()
            raise

    own_stop = stop is None
    stop = stop or StopRequest()
    total = budget.total_steps
    p.start(obj.task, total=total)
    if step:
        p.advance(obj.task, step)
    last: dict[str, Any] = {}
    last_val: dict[str, Any] = {}
    last_val_step = -1
    acc = _Interval(obj.reduce)
    t_log = time.perf_counter()
    bad_in_a_row = 0
    status, reason = "finished", None
    stopping = False
    model.train()
    try:
        if own_stop:
            stop.__enter__()
        if step == 0:
            last_val = validate()
            first_val = last_val
            last_val_step = 0
        while True:
            done, stopping = distributed.agree(budget.done(step), stop.requested)
            if done or stopping:
                break
            lr = train.lr * lr_factor(step, train.warmup_steps, budget.progress(step), train.min_lr_ratio)
            set_lr(opt, lr)
            opt.zero_grad(set_to_none=True)
            outs: list[StepOut] = []
            loss_ok = True
            for micro in range(accum):  # gradient accumulation: ``accum`` batches, one optimizer step
                out = obj.compute(obj.next_batch(), step, precision)
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
                if after_backward is not None:
                    after_backward(step, model)
                grad_norm = distributed.as_number(torch.nn.utils.clip_grad_norm_(model.parameters(), train.grad_clip))
                (grad_bad,) = distributed.agree(not math.isfinite(grad_norm))
                if grad_bad:
                    grad_norm = math.nan
            if not (loss_ok and math.isfinite(grad_norm)):
                opt.zero_grad(set_to_none=True)
                bad_in_a_row += 1
                skipped_total += 1
                acc.skipped += 1
                what = "loss" if not loss_ok else "gradient norm"
                p.log(f"step {step + 1}: non-finite {what}; step skipped ({bad_in_a_row} in a row)")
                if bad_in_a_row >= train.max_bad_steps:
                    last_good = run.meta().get("checkpoint_step")
                    if last_good is None:
                        advice = "no checkpoint was written yet: start again with a lower --lr (or --precision fp32)"
                    else:
                        advice = (f"the last good checkpoint (step {last_good}) is kept: --resume continues from it "
                                  "(add --precision fp32 if bf16 overflowed), or start a new run with a lower --lr")
                    raise DivergedError(
                        f"training diverged: {bad_in_a_row} steps in a row had a non-finite {what} "
                        f"(at step {step + 1}); {advice}"
                    )
                continue
            bad_in_a_row = 0
            opt.step()
            if ema is not None:
                # bias-corrected warm-up: early averages do not drag the random init along
                ema.decay = min(train.ema, (1 + step) / (10 + step))
                ema.update(model)
            step += 1
            for o in outs:
                acc.add(o, grad_norm)
            if on_step is not None:
                on_step(step, {"step": step, "lr": lr, **out.logs})
            if step % train.log_every == 0 or budget.done(step):
                now = time.perf_counter()
                dt = max(now - t_log, 1e-9)
                rec = {"kind": "train", "step": step, "epoch": obj.epochs_done(), **acc.record(),
                       "lr": lr, "grad_norm": acc.grad / max(acc.n, 1), "skipped_steps": acc.skipped,
                       "batches_per_s": acc.n / dt, "frames_per_s": acc.frames / dt, "elapsed": budget.elapsed(),
                       **obj.interval(acc.frames, dt)}
                rec = _reduce_record(rec, obj.reduce)
                run.log(rec)
                last = rec
                p.advance(obj.task, 0, **obj.display(rec))
                acc, t_log = _Interval(obj.reduce), now
            p.advance(obj.task, 1)
            if step % train.val_every == 0:
                last_val = safe_validate() or last_val
                last_val_step = step
            if step % train.checkpoint_every == 0:
                save_checkpoint()
        if stopping:
            status, reason = "interrupted", stop.reason or ("signal" if stop.requested else "another process was stopped")
        elif last_val_step != step:
            last_val = safe_validate() or last_val
            last_val_step = step
        save_checkpoint()
        p.log(f"checkpoint at step {step}: {run.path}")
    except DivergedError as e:
        run.update_meta(status="diverged", reason=str(e), skipped_steps=skipped_total)
        raise
    except KeyboardInterrupt:  # a second Ctrl-C: no checkpoint, the last one stays
        run.update_meta(status="interrupted", reason="second Ctrl-C (no checkpoint at the stop)")
        raise
    except BaseException as e:
        run.update_meta(status="failed", reason=f"{type(e).__name__}: {e}")
        raise
    finally:
        if own_stop:
            stop.__exit__(None, None, None)
        p.finish(obj.task, step=step)
    result = LoopResult(
        step=step, epochs=obj.epochs_done(), seconds=budget.elapsed(), status=status, reason=reason, precision=choice,
        last=last, val=last_val, first_val=first_val, best=best, skipped_steps=skipped_total,
    )
    results = {k: v for k, v in (("last", last), ("val", last_val), ("first_val", first_val)) if v}
    run.update_meta(status=status, reason=reason, step=step, epochs=result.epochs, seconds=result.seconds,
                    skipped_steps=skipped_total, best=best, **results)
    return result

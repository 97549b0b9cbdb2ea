"""The one training loop. Each stage (tokenizer, dynamics) is an :class:`Objective`: its model, its data,
its loss and its validation (``objectives/``). Everything else is the loop's, once (one optimisation step is
:class:`~.step.TrainStep`, the checkpoint files are :mod:`.checkpointing`'s):

- the budget (steps, minutes or epochs, whichever ends first) and the LR schedule (warmup + cosine);
- precision (``runtime.choose_precision``: auto is measured on this machine with the stage's own step);
- ``torch.compile`` (:mod:`.compiling`: auto times the run's first steps eager, then compiled, and keeps
  whichever is faster where the budget repays the start-up);
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
  the same numbers and, at each validation, the objective's preview pictures as TensorBoard events
  (``train.tensorboard``, :mod:`.tensorboard`);
- several processes (torchrun): DistributedDataParallel, or FSDP2 ``fully_shard`` with ``train.fsdp``; every
  rank walks the same batch plan and keeps its share (the objective's ``dist``), the decisions that must
  match (stop, skip a bad step, precision, the best checkpoint) are agreed on, the minutes budget and the LR
  schedule follow rank 0's clock, train records are averaged over ranks, and rank 0 alone writes files and
  shows progress. Checkpoints hold whole tensors, so one process can load or resume
  them, and so can another number of processes.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..config.settings import TrainSettings
from ..errors import AhriError, ConfigError
from ..progress import Progress, ensure
from ..runtime import PrecisionChoice, choose_precision, threads_in_use
from . import distributed, tensorboard
from .checkpointing import Checkpoints, LoopState
from .common import Budget, RunDir, StopRequest, rng_state, set_rng_state
from .compiling import Compiling
from .objectives.base import Objective, StepOut
from .preview import PreviewUnavailable
from .step import StepResult, TrainStep


class DivergedError(AhriError):
    """Training produced non-finite losses or gradients too many steps in a row."""


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


def _choose_precision(obj: Objective, train: TrainSettings, resume_state: dict[str, Any] | None,
                      cache_dir: Any) -> PrecisionChoice:
    """The run's precision: a resumed run keeps what it chose (unless forced now); rank 0 decides for all."""
    d = distributed.current()
    model, device = obj.model, obj.device
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
    return choice


class _Loop:
    """One run of the loop: the set-up (precision, wrapping, optimizer, resume), the steps, validation and
    records. :func:`run_loop` is its entry point."""

    def __init__(self, run: RunDir, obj: Objective, train: TrainSettings, resume_state: dict[str, Any] | None,
                 progress: Progress | None, cache_dir: Any,
                 after_backward: Callable[[int, nn.Module], None] | None) -> None:
        self.run, self.obj, self.train = run, obj, train
        self.d = d = distributed.current()
        self.p = p = ensure(progress) if d.main else ensure(None)
        model, device = obj.model, obj.device
        self.fsdp = fsdp = bool(getattr(train, "fsdp", False)) and d.enabled
        optimizer = getattr(train, "optimizer", "adamw")
        if fsdp and optimizer != "adamw":
            raise ConfigError(f"--fsdp trains with AdamW only (optimizer {optimizer!r}); "
                              "use --optimizer adamw, or several processes without --fsdp (DDP)")
        obj.dist, obj.fsdp = d, fsdp
        self.choice = choice = _choose_precision(obj, train, resume_state, cache_dir)
        self.precision = choice.precision
        n = threads_in_use()
        ranks = f"; {d.world} processes ({'FSDP' if fsdp else 'DDP'})" if d.enabled else ""
        opt = "; optimizer Muon (blocks) + AdamW" if optimizer == "muon" else ""
        p.log(f"{choice.line()}; {n} CPU thread{'s' if n != 1 else ''}{' each' if d.enabled else ''}; device {device}"
              f"{ranks}{opt}")

        obj.net = _wrap(model, device, d, fsdp)
        self.train_step = TrainStep.build(obj, train, self.precision, after_backward)
        self.ema = self.train_step.ema
        self.ckpt = Checkpoints(run, obj, train, self.train_step.opt, self.ema, fsdp, choice)
        self.st: LoopState = self.ckpt.resume(resume_state, p)
        distributed.barrier()
        step = self.st.step
        self.budget = budget = Budget(train.max_steps, train.minutes, train.epochs,
                                      max(1, obj.steps_per_epoch() // self.train_step.accum),
                                      elapsed_before=self.st.elapsed)
        if resume_state is not None and budget.done(step):
            p.log(f"the budget is already spent at step {step} ({budget.elapsed() / 60:.1f} minutes in all): nothing to "
                  "train; give a larger --max-steps, --minutes or --epochs")
        self.compiling = Compiling(getattr(train, "compile", "off"), device,
                                   key=f"{obj.stage}: {obj.compile_key()} {self.precision}", cache_dir=cache_dir,
                                   apply=obj.set_compiled, seconds_left=self.seconds_left, processes=d.world)
        self.ckpt.compile_choice = lambda: self.compiling.choice.to_dict()
        minutes_left = None if budget.minutes is None else budget.minutes - budget.elapsed() / 60
        steps_left = None if budget.total_steps is None else budget.total_steps - step
        kept = (resume_state or {}).get("loop", {}).get("compile")
        p.log(self.compiling.start(steps_left, minutes_left, kept))
        run.update_meta(
            status="running", reason=None, step=step, precision=choice.to_dict(),
            compile=self.compiling.choice.to_dict(), threads=n,
            device=str(device), budget={"max_steps": train.max_steps, "minutes": train.minutes, "epochs": train.epochs},
            processes=d.world, sharding="fsdp" if fsdp else ("ddp" if d.enabled else "none"),
        )
        self.last: dict[str, Any] = {}
        self.last_val: dict[str, Any] = {}
        self.last_val_step = -1
        self.acc = _Interval(obj.reduce)
        self.t_log = time.perf_counter()
        self.bad_in_a_row = 0
        self.tb: tensorboard.TensorBoardLog | None = None
        if getattr(train, "tensorboard", False) and d.main:
            self.tb, note = tensorboard.open_log(run.path, step if resume_state is not None else None)
            if note:
                p.log(note)
        self.pictures = self.tb is not None  # rank 0 makes them alone: an objective's preview runs no collective

    def seconds_left(self, step_s: float) -> float:
        """The budget's seconds left at ``step_s`` seconds a step (whichever of steps and minutes ends first)."""
        b, step = self.budget, self.st.step
        cands = []
        if b.total_steps is not None:
            cands.append(max(0, b.total_steps - step) * step_s)
        if b.minutes is not None:
            cands.append(max(0.0, 60 * b.minutes - b.elapsed()))
        return min(cands) if cands else math.inf

    def validate(self) -> dict[str, Any]:
        """Validate (every rank: the same windows, the same answer; FSDP needs every rank for a forward), log
        the record and write the best checkpoint when the objective's metric improved."""
        obj, st, ema, model = self.obj, self.st, self.ema, self.obj.model
        with ema.applied(model) if ema is not None else contextlib.nullcontext():
            v = obj.validate(st.step, self.precision)
            pictures = self.preview() if v else None
        if not v:
            return {}
        rec = {"kind": "val", "step": st.step, "epoch": obj.epochs_done(), "elapsed": self.budget.elapsed(), **v}
        self.run.log(rec)
        if self.tb is not None:
            self.tb.scalars(rec)
            self.tb.images(st.step, pictures)
        line = obj.val_line(rec)
        if line:
            self.p.log(line)
        m = obj.best_metric
        best = None
        if st.step > 0 and m and v.get(m) is not None and math.isfinite(v[m]):
            old = st.best
            if old is None or (v[m] > old["value"] if obj.best_mode == "max" else v[m] < old["value"]):
                best = {"metric": m, "value": float(v[m]), "step": st.step}
        if self.d.enabled and st.step > 0:
            best = distributed.from_main(best)  # rank 0 decides, so every rank joins the same save
        if best is not None:
            st.best = best
            self.ckpt.save_best(st)
        return rec

    def preview(self) -> dict[str, Any] | None:
        """The objective's pictures of this validation, when they are logged; a run that cannot make them
        says why once and goes on without."""
        if not self.pictures:
            return None
        try:
            return self.obj.preview(self.st.step, self.precision)
        except Exception as e:  # noqa: BLE001 - a picture that fails (out of memory) must not end the run
            self.pictures = False
            why = str(e) if isinstance(e, PreviewUnavailable) else f"making it failed ({type(e).__name__}: {e})"
            self.p.log(f"no preview pictures in TensorBoard: {why}")
            return None

    def safe_validate(self) -> dict[str, Any]:
        """A validation that fails (out of memory, a full disk) first saves the steps trained since the last
        checkpoint, then fails the run."""
        try:
            return self.validate()
        except BaseException:
            if not self.d.enabled:  # with several ranks a failed rank cannot rely on the others to gather
                self.save()
            raise

    def save(self) -> None:
        self.ckpt.save(self.st, self.budget.elapsed(), self.p)

    def skipped(self, res: StepResult) -> None:
        """Count a skipped step; too many in a row stop the run with :class:`DivergedError`."""
        self.bad_in_a_row += 1
        self.st.skipped += 1
        self.acc.skipped += 1
        step, what = self.st.step, res.bad
        self.p.log(f"step {step + 1}: non-finite {what}; step skipped ({self.bad_in_a_row} in a row)")
        if self.bad_in_a_row >= self.train.max_bad_steps:
            last_good = self.run.meta().get("checkpoint_step")
            if last_good is None:
                advice = "no checkpoint was written yet: start again with a lower --lr (or --precision fp32)"
            else:
                advice = (f"the last good checkpoint (step {last_good}) is kept: --resume continues from it "
                          "(add --precision fp32 if bf16 overflowed), or start a new run with a lower --lr")
            raise DivergedError(
                f"training diverged: {self.bad_in_a_row} steps in a row had a non-finite {what} "
                f"(at step {step + 1}); {advice}"
            )

    def log_train(self, lr: float) -> None:
        """Write the train record of the interval that ends now (averaged over the ranks)."""
        obj, acc, budget = self.obj, self.acc, self.budget
        now = time.perf_counter()
        dt = max(now - self.t_log, 1e-9)
        rec = {"kind": "train", "step": self.st.step, "epoch": obj.epochs_done(), **acc.record(),
               "lr": lr, "grad_norm": acc.grad / max(acc.n, 1), "skipped_steps": acc.skipped,
               "batches_per_s": acc.n / dt, "frames_per_s": acc.frames / dt, "elapsed": budget.elapsed(),
               **obj.interval(acc.frames, dt)}
        rec = _reduce_record(rec, obj.reduce)
        self.run.log(rec)
        if self.tb is not None:
            self.tb.scalars(rec)
        self.last = rec
        self.p.advance(obj.task, 0, **obj.display(rec))
        self.acc, self.t_log = _Interval(obj.reduce), now

    def steps(self, stop: StopRequest, on_step: Callable[[int, dict[str, Any]], None] | None) -> bool:
        """Train until the budget is spent or a stop is requested; returns whether a stop ended it."""
        st, train, budget = self.st, self.train, self.budget
        lr = 0.0
        while True:
            # rank 0's clock for every rank: the stop and the LR schedule are the same everywhere
            now, (stopping,) = distributed.clock_and_flags(budget.elapsed(), stop.requested)
            if budget.done(st.step, now) or stopping:
                if self.acc.n:  # the interval a minutes budget or a stop cut short (every rank is here)
                    self.log_train(lr)
                return bool(stopping)
            lr = self.train_step.lr_at(st.step, budget.progress(st.step, now))
            t_step = time.perf_counter()
            try:
                res = self.train_step(st.step, lr)
            except Exception as e:  # noqa: BLE001 - only auto's compiled steps fall back; anything else re-raises
                if not self.compiling.may_fail:
                    raise
                self.obj.model.zero_grad(set_to_none=True)
                self.p.log(self.compiling.failed(e))
                self.run.update_meta(compile=self.compiling.choice.to_dict())
                continue
            if not res.ok:
                self.skipped(res)
                continue
            line = self.compiling.after_step(time.perf_counter() - t_step)
            if line is not None:
                self.p.log(line)
                self.run.update_meta(compile=self.compiling.choice.to_dict())
            self.bad_in_a_row = 0
            st.step += 1
            for o in res.outs:
                self.acc.add(o, res.grad_norm)
            if on_step is not None:
                on_step(st.step, {"step": st.step, "lr": lr, **res.outs[-1].logs})
            if st.step % train.log_every == 0 or budget.done(st.step, now):
                self.log_train(lr)
            self.p.advance(self.obj.task, 1)
            if st.step % train.val_every == 0:
                self.last_val = self.safe_validate() or self.last_val
                self.last_val_step = st.step
            if st.step % train.checkpoint_every == 0:
                self.save()

    def go(self, stop: StopRequest | None, on_step: Callable[[int, dict[str, Any]], None] | None) -> LoopResult:
        """The run from its first validation to its last checkpoint, with run.json's status kept up to date."""
        run, obj, st, p = self.run, self.obj, self.st, self.p
        own_stop = stop is None
        stop = stop or StopRequest()
        p.start(obj.task, total=self.budget.total_steps)
        if st.step:
            p.advance(obj.task, st.step)
        status, reason = "finished", None
        self.obj.model.train()
        try:
            if own_stop:
                stop.__enter__()
            if st.step == 0:
                self.last_val = self.validate()
                st.first_val = self.last_val
                self.last_val_step = 0
            if self.steps(stop, on_step):
                status, reason = "interrupted", stop.reason or ("signal" if stop.requested else "another process was stopped")
            elif self.last_val_step != st.step:
                self.last_val = self.safe_validate() or self.last_val
                self.last_val_step = st.step
            self.save()
            p.log(f"checkpoint at step {st.step}: {run.path}")
        except DivergedError as e:
            run.update_meta(status="diverged", reason=str(e), skipped_steps=st.skipped)
            raise
        except KeyboardInterrupt:  # a second Ctrl-C: no checkpoint, the last one stays
            run.update_meta(status="interrupted", reason="second Ctrl-C (no checkpoint at the stop)")
            raise
        except BaseException as e:
            with contextlib.suppress(OSError):  # a full disk fails this write too; the error to show is e
                run.update_meta(status="failed", reason=f"{type(e).__name__}: {e}")
            raise
        finally:
            if own_stop:
                stop.__exit__(None, None, None)
            if self.tb is not None:
                self.tb.close()
            p.finish(obj.task, step=st.step)
        result = LoopResult(
            step=st.step, epochs=obj.epochs_done(), seconds=self.budget.elapsed(), status=status, reason=reason,
            precision=self.choice, last=self.last, val=self.last_val, first_val=st.first_val, best=st.best,
            skipped_steps=st.skipped,
        )
        results = {k: v for k, v in (("last", self.last), ("val", self.last_val), ("first_val", st.first_val)) if v}
        run.update_meta(status=status, reason=reason, step=st.step, epochs=result.epochs, seconds=result.seconds,
                        skipped_steps=st.skipped, best=st.best, **results)
        return result


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
    return _Loop(run, obj, train, resume_state, progress, cache_dir, after_backward).go(stop, on_step)

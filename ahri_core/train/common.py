"""Pieces every training loop shares: LR schedule, EMA, loss normalisation,
RNG capture for exact resume, stop signals, run directories and budgets."""

from __future__ import annotations

import contextlib
import math
import random
import signal
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import runtime
from ..config.presets import DATA_PRESETS, TRAINING_PRESETS
from ..errors import ConfigError
from ..fileio import append_jsonl, write_json_atomic
from ..locking import WriterLock
from ..workspace import load_run_meta, writer_identity
from . import distributed


# ---------------------------------------------------------------------------------------------- presets
# The preset defaults (config/presets.py) apply to any field that was not set explicitly (flag, config file,
# environment or constructor argument).
def with_preset_data(data: Any, preset: str) -> Any:
    """``data`` (DataSettings) with the preset's window defaults where a field was not given."""
    rec = DATA_PRESETS.get(preset, {})
    upd = {k: v for k, v in rec.items() if k not in data.model_fields_set}
    if not upd:
        return data
    if "seq_len_long" in upd:  # a given short length above the preset's long one: the long batches match it
        upd["seq_len_long"] = max(upd["seq_len_long"], upd.get("seq_len_short", data.seq_len_short))
    return data.model_copy(update=upd)


def with_preset_defaults(train: Any, stage: str | None = None) -> Any:
    """``train`` (TrainSettings) with its stage's preset defaults where a field was not given."""
    rec = TRAINING_PRESETS.get(stage or train.stage, {}).get(train.preset, {})
    upd = {k: v for k, v in rec.items() if k not in train.model_fields_set}
    if getattr(train, "fsdp", False) and upd.get("optimizer", "adamw") != "adamw":
        upd.pop("optimizer")  # sharded parameters train with AdamW (Muon needs whole matrices)
    return train.model_copy(update=upd) if upd else train


def with_run_optimizer(train: Any, run_settings: dict[str, Any], given: bool) -> Any:
    """``train`` for resuming a run: the optimizer the run was trained with (AdamW for a run from before the choice
    existed), unless one was ``given`` now (then the settings check refuses a different one). The optimizer state
    in the run's checkpoint only fits the optimizer that wrote it."""
    if given:
        return train
    stored = (run_settings.get("train") or {}).get("optimizer", "adamw")
    return train if stored == train.optimizer else train.model_copy(update={"optimizer": stored})


def check_resume_settings(stored: dict[str, Any], now: dict[str, Any], run: Path, resumable: dict[str, set[str]]) -> None:
    """Refuse a resume whose settings differ from the run's in a field not listed in ``resumable``."""
    diffs = []
    for sec, fields in now.items():
        old = stored.get(sec, {})
        if not isinstance(fields, dict) or not isinstance(old, dict):
            continue
        for k, v in fields.items():
            if k in resumable.get(sec, set()):
                continue
            if k in old and old[k] != v:
                diffs.append(f"{sec}.{k}: run {old[k]!r} vs now {v!r}")
    if diffs:
        raise ConfigError(
            f"--resume of {run}: settings differ from the run's ({'; '.join(diffs[:3])}); "
            "resume with the run's settings (only the budget, logging, device, precision and threads may change)"
        )


# ---------------------------------------------------------------------------------------------- schedule
def lr_factor(step: int, warmup: int, progress: float, min_ratio: float = 0.1) -> float:
    """Linear warmup over ``warmup`` steps, then cosine from 1 to ``min_ratio`` as progress goes 0 -> 1.

    ``progress`` is the fraction of the budget used (steps or minutes, whichever is further along).
    """
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    p = min(max(progress, 0.0), 1.0)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * p))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for g in optimizer.param_groups:
        g["lr"] = lr


def make_adamw(model: nn.Module, lr: float, weight_decay: float, betas=(0.9, 0.95)) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (not on norms, biases or embeddings of size 1-D)."""
    decay, no_decay = [], []
    for p in model.parameters():
        if not p.requires_grad:
            continue
        (decay if p.dim() >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    # the fused kernel (one pass per tensor for the whole update) where it applies: plain CPU or CUDA tensors;
    # sharded parameters (FSDP's DTensors) keep the default implementation
    params = decay + no_decay
    fused = bool(params) and all(
        type(p) is torch.Tensor or type(p) is nn.Parameter for p in params
    ) and all(p.device.type in ("cpu", "cuda") and p.dtype in (torch.float32, torch.bfloat16) for p in params)
    return torch.optim.AdamW(groups, lr=lr, betas=betas, fused=fused or None)


class ChainedOptimizer:
    """Several optimizers over disjoint parameters, stepped as one: what the loop needs of an optimizer
    (``param_groups`` for the learning rate, ``step``, ``zero_grad``, ``state_dict`` / ``load_state_dict``)."""

    def __init__(self, *parts: torch.optim.Optimizer) -> None:
        self.parts = parts

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return [g for o in self.parts for g in o.param_groups]

    def step(self) -> None:
        for o in self.parts:
            o.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for o in self.parts:
            o.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        return {"parts": [o.state_dict() for o in self.parts]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        parts = state.get("parts") if isinstance(state, dict) else None
        if not isinstance(parts, list) or len(parts) != len(self.parts):
            raise ValueError(f"optimizer state has {len(parts) if isinstance(parts, list) else 'no'} parts, "
                             f"this optimizer {len(self.parts)}")
        for o, sd in zip(self.parts, parts, strict=True):
            o.load_state_dict(sd)


def muon_names(model: nn.Module) -> set[str]:
    """The parameters Muon updates: the attention and MLP matrices of the transformer blocks (``*.attn.*``,
    ``*.mlp.*``), not the input and output maps, embeddings, queries, modulation, norms or biases."""
    out = set()
    for name, p in model.named_parameters():
        if p.requires_grad and p.dim() == 2 and (".attn." in name or ".mlp." in name):
            out.add(name)
    return out


def orthogonalize(g: torch.Tensor, coefficients: tuple[float, float, float], steps: int, eps: float,
                  dtype: torch.dtype) -> torch.Tensor:
    """Muon's approximate orthogonalisation of a 2-D update: scale it to spectral norm at most 1 (by its Frobenius
    norm), then ``steps`` quintic Newton-Schulz iterations X <- a X + (b A + c A^2) X with A = X X^T, on the wide
    orientation (fewer rows than columns), in ``dtype``. Returned in ``dtype``. A 3-D ``g`` is a stack of updates
    of one shape, each orthogonalised on its own (batched products: one call per product for the whole stack)."""
    a, b, c = coefficients
    tall = g.size(-2) > g.size(-1)
    x = g.to(dtype)
    if tall:
        x = x.mT
    if x.dim() == 2:
        x = x / x.norm().clamp(min=eps)
        for _ in range(steps):
            gram = x @ x.T
            x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    else:
        x = x / x.norm(dim=(-2, -1), keepdim=True).clamp(min=eps)
        for _ in range(steps):
            gram = x @ x.mT
            x = torch.baddbmm(x, torch.baddbmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.mT if tall else x


def muon_dtype(device: torch.device) -> tuple[torch.dtype, str]:
    """The precision of Muon's Newton-Schulz products here, and why: bf16 on CUDA and on CPUs with native bf16
    (torch's own choice), float32 on the others. On a CPU without it (AVX2) a bf16 matrix product is emulated:
    measured 0.9 against 172 GFLOP/s for fp32 at 1024^3 with oneDNN limited to AVX2, and 25.5 against 0.9 ms for
    one 384 x 128 update, which would have made Muon's step several times the model's."""
    if device.type == "cpu":
        native, why = runtime.native_bf16()
        return (torch.bfloat16, why) if native else (torch.float32, why)
    return torch.bfloat16, f"{device.type} device"


class Muon(torch.optim.Muon):
    """torch's Muon (its parameter groups, state and options, so checkpoints load either way) with the Newton-Schulz
    products in :func:`muon_dtype`'s precision for the parameters' device instead of always bf16. The update is
    torch's: momentum buffer lerp, Nesterov look-ahead, orthogonalised update, decoupled weight decay, the learning
    rate scaled by the shape (``adjust_lr_fn``)."""

    def __init__(self, params: Any, **kwargs: Any) -> None:
        super().__init__(params, **kwargs)
        first = next(p for g in self.param_groups for p in g["params"])
        self.ns_dtype, self.ns_why = muon_dtype(first.device)

    @staticmethod
    def _lr_scale(shape: torch.Size, adjust: str | None) -> float:
        rows, cols = shape[:2]
        if adjust is None or adjust == "original":
            return math.sqrt(max(1.0, rows / cols))
        if adjust == "match_rms_adamw":
            return 0.2 * math.sqrt(max(rows, cols))
        return 1.0

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, wd, mom = float(group["lr"]), group["weight_decay"], group["momentum"]
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            for p in params:
                if "momentum_buffer" not in self.state[p]:
                    self.state[p]["momentum_buffer"] = torch.zeros_like(p.grad, memory_format=torch.preserve_format)
            grads = [p.grad for p in params]
            bufs = [self.state[p]["momentum_buffer"] for p in params]
            # not sharded (FSDP's DTensor): one call for all tensors
            plain = all(type(t) in (torch.Tensor, nn.Parameter) for t in params + grads)
            if plain:
                torch._foreach_lerp_(bufs, grads, 1 - mom)
                updates = torch._foreach_lerp(grads, bufs, mom) if group["nesterov"] else bufs
            else:
                for b, g in zip(bufs, grads):
                    b.lerp_(g, 1 - mom)
                updates = [g.lerp(b, mom) for g, b in zip(grads, bufs)] if group["nesterov"] else bufs
            by_shape: dict[tuple[int, ...], list[tuple[torch.Tensor, torch.Tensor]]] = {}
            for p, u in zip(params, updates):
                by_shape.setdefault(tuple(p.shape), []).append((p, u))
            args = group["ns_coefficients"], group["ns_steps"], group["eps"], self.ns_dtype
            for shape, items in by_shape.items():
                # matrices of one shape orthogonalised as one stack, and updated in one call: on a 2-core CPU the
                # `cpu` tokenizer's training step (20 matrices of 4 shapes) took 111 instead of 133 ms in bf16, 151
                # instead of 185 in fp32 (many small products and updates cost more in call overhead than in work)
                ps = [p for p, _ in items]
                if plain and len(items) > 1:
                    ortho = list(orthogonalize(torch.stack([u for _, u in items]), *args).unbind(0))
                else:
                    ortho = [orthogonalize(u, *args) for _, u in items]
                scale = self._lr_scale(torch.Size(shape), group["adjust_lr_fn"])
                if plain:
                    torch._foreach_mul_(ps, 1 - lr * wd)
                    torch._foreach_add_(ps, ortho, alpha=-lr * scale)
                else:
                    for p, u in zip(ps, ortho):
                        p.mul_(1 - lr * wd)
                        p.add_(u, alpha=-lr * scale)
        return loss


def make_optimizer(model: nn.Module, kind: str, lr: float, weight_decay: float):
    """``adamw`` (:func:`make_adamw`) or ``muon``: torch's Muon on :func:`muon_names` (its learning rate scaled
    to match AdamW's update size, so the same lr applies) chained with AdamW on the rest."""
    if kind == "adamw":
        return make_adamw(model, lr, weight_decay)
    if kind != "muon":
        raise ValueError(f"optimizer {kind!r}: expected adamw or muon")
    names = muon_names(model)
    if not names:
        return make_adamw(model, lr, weight_decay)
    muon_params = [p for n, p in model.named_parameters() if n in names]
    muon = Muon(muon_params, lr=lr, weight_decay=weight_decay, adjust_lr_fn="match_rms_adamw")
    rest = nn.ParameterList([p for n, p in model.named_parameters() if n not in names and p.requires_grad])
    return ChainedOptimizer(muon, make_adamw(rest, lr, weight_decay))


# ---------------------------------------------------------------------------------------------- EMA
class EMA:
    """Exponential moving average of a model's floating-point parameters and buffers."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.shadow = {k: v.detach().clone().float() for k, v in model.state_dict().items() if v.is_floating_point()}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        shadows, values = [], []
        for k, v in model.state_dict().items():
            if k in self.shadow:
                shadows.append(self.shadow[k])
                values.append(v.detach().float())
        if all(type(t) is torch.Tensor for t in shadows + values):
            torch._foreach_lerp_(shadows, values, 1 - self.decay)  # one call for all tensors
        else:  # sharded (DTensor) weights: one at a time
            for s, v in zip(shadows, values):
                s.lerp_(v, 1 - self.decay)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(self.shadow)

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Load saved averages (whole tensors; a sharded average takes its own shard of each)."""
        for k, cur in self.shadow.items():
            src = state[k]
            if hasattr(cur, "device_mesh") and not hasattr(src, "device_mesh"):  # FSDP: cur is a DTensor
                from torch.distributed.tensor import distribute_tensor

                src = distribute_tensor(src.to(cur.dtype), cur.device_mesh, cur.placements)
            cur.copy_(src)

    def averaged(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """A full state dict of ``model`` with EMA values where available."""
        out = {}
        for k, v in model.state_dict().items():
            out[k] = self.shadow[k].to(v.dtype) if k in self.shadow else v
        return out

    @contextlib.contextmanager
    def applied(self, model: nn.Module):
        """Temporarily load the EMA weights into ``model`` (for validation or as a teacher)."""
        backup = {k: v.detach().clone() for k, v in model.state_dict().items()}
        model.load_state_dict(self.averaged(model))
        try:
            yield model
        finally:
            model.load_state_dict(backup)


# ---------------------------------------------------------------------------------------------- loss norm
class RunningRMS(nn.Module):
    """Divides a loss term by a running RMS of its own value (loss normalisation).

    The statistic is updated from the detached loss, so it rescales gradients without being trained; a
    non-finite loss (a step the training loop will skip) leaves it unchanged.
    It is a module with buffers so that it is saved and restored with the training state.
    """

    def __init__(self, decay: float = 0.99, eps: float = 1e-8) -> None:
        super().__init__()
        self.decay, self.eps = decay, eps
        self.register_buffer("mean_sq", torch.zeros(()))
        self.register_buffer("count", torch.zeros((), dtype=torch.long))

    def forward(self, loss: torch.Tensor) -> torch.Tensor:
        value = loss.detach().float()
        if self.training and distributed.current().enabled:
            # every process divides by the same statistic: the one of the global batch's loss
            value = torch.tensor(distributed.mean([float(value)])[0])
        if self.training and bool(torch.isfinite(value).all()):  # a bad step must not poison the statistic
            v = value.to(self.mean_sq.device).pow(2)
            if self.count.item() == 0:
                self.mean_sq.copy_(v)
            else:
                self.mean_sq.mul_(self.decay).add_((1 - self.decay) * v)
            self.count.add_(1)
        if self.count.item() == 0:
            return loss
        return loss / (self.mean_sq.sqrt() + self.eps)


# ---------------------------------------------------------------------------------------------- RNG
def rng_state() -> dict[str, Any]:
    """Python, numpy and torch (CPU and CUDA) RNG states as tensors/ints, safe for weights_only loading."""
    py = random.getstate()
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python_version": py[0],
        "python_state": torch.tensor(py[1], dtype=torch.int64),
        "python_gauss": py[2],
        "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy_pos": int(np_state[2]),
        "numpy_has_gauss": int(np_state[3]),
        "numpy_gauss": float(np_state[4]),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate((state["python_version"], tuple(int(x) for x in state["python_state"].tolist()), state["python_gauss"]))
    np.random.set_state(
        (
            "MT19937",
            state["numpy_keys"].numpy().astype(np.uint32),
            state["numpy_pos"],
            state["numpy_has_gauss"],
            state["numpy_gauss"],
        )
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


# ---------------------------------------------------------------------------------------------- signals
class StopRequest:
    """Turns SIGTERM and the first Ctrl-C into a flag the loop checks (it then checkpoints and stops).

    A second Ctrl-C raises KeyboardInterrupt as usual. Only installs handlers in the main thread.
    """

    def __init__(self) -> None:
        self.requested = False
        self.reason = ""
        self._old: dict[int, Any] = {}

    def _handler(self, signum, frame):  # noqa: ANN001
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        self.reason = signal.Signals(signum).name

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGINT, signal.SIGTERM):
                self._old[s] = signal.signal(s, self._handler)
        return self

    def __exit__(self, *exc: Any) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)
        self._old.clear()


# ---------------------------------------------------------------------------------------------- budget
@dataclass
class Budget:
    """When to stop: whichever of max_steps, minutes and epochs comes first (at least one is required)."""

    max_steps: int | None = None
    minutes: float | None = None
    epochs: float | None = None
    steps_per_epoch: int | None = None
    start_time: float = field(default_factory=time.monotonic)
    elapsed_before: float = 0.0  # seconds spent in earlier (resumed) sessions

    def __post_init__(self) -> None:
        if self.max_steps is None and self.minutes is None and self.epochs is None:
            raise ConfigError("give a training budget: --max-steps N, --minutes M or --epochs E")

    @property
    def total_steps(self) -> int | None:
        cands = []
        if self.max_steps is not None:
            cands.append(self.max_steps)
        if self.epochs is not None and self.steps_per_epoch:
            cands.append(max(1, int(math.ceil(self.epochs * self.steps_per_epoch))))
        return min(cands) if cands else None

    def elapsed(self) -> float:
        return self.elapsed_before + time.monotonic() - self.start_time

    def progress(self, step: int, elapsed: float | None = None) -> float:
        """Fraction of the budget used (for the LR schedule); ``elapsed``: the seconds to go by (several
        processes pass rank 0's), else this process's clock."""
        fr = 0.0
        total = self.total_steps
        if total:
            fr = max(fr, step / total)
        if self.minutes:
            fr = max(fr, (self.elapsed() if elapsed is None else elapsed) / (60 * self.minutes))
        return min(fr, 1.0)

    def done(self, step: int, elapsed: float | None = None) -> bool:
        total = self.total_steps
        if total is not None and step >= total:
            return True
        seconds = self.elapsed() if elapsed is None else elapsed
        return bool(self.minutes is not None and seconds >= 60 * self.minutes)


# ---------------------------------------------------------------------------------------------- run dirs
def default_run_name(stage: str) -> str:
    """``<stage>-<date>-<time>``; under torchrun rank 0's name, so that every rank trains the same run."""
    return distributed.broadcast(f"{stage}-{datetime.now().strftime('%Y%m%d-%H%M%S')}")


class RunDir:
    """``runs/<name>/``: run.json (stage, settings), metrics.jsonl, checkpoints and artefacts."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.writer = WriterLock(self.path, "run")

    def claim(self) -> RunDir:
        """Take the run's writer lock (:mod:`ahri_core.locking`) when its folder exists: before anything of it is
        read for a resume, and again (a new run) once :meth:`create` made it. Rank 0 only. Pair with
        :meth:`release`."""
        if distributed.current().main and self.path.is_dir():
            self.writer.acquire()
        return self

    def release(self) -> None:
        self.writer.release()

    def create(self, stage: str, settings: dict[str, Any], resume: bool) -> RunDir:
        """Make the run's directory and run.json. With several processes every rank checks, rank 0 writes."""
        meta = self.path / "run.json"
        existed = meta.exists()
        distributed.barrier()  # no rank looks after rank 0 has written
        if existed and not resume:
            raise ConfigError(f"run {self.path} already exists: pass --resume to continue it or choose another --run name")
        if distributed.current().main:
            self.path.mkdir(parents=True, exist_ok=True)
            if not meta.exists():
                write_json_atomic(meta, {"stage": stage, "settings": settings, "created": datetime.now().isoformat(),
                                         "status": "running", "reason": None, "step": 0,
                                         **writer_identity()})
        distributed.barrier()
        return self

    @property
    def writes(self) -> bool:
        """Whether this process writes the run's files (rank 0 of a distributed run, or the only process)."""
        return distributed.current().main

    def update_meta(self, **fields: Any) -> None:
        if fields.get("status") == "running":  # who trains it: `ahri runs` tells a killed run from a live one
            fields = {**fields, **writer_identity()}
        if self.writes:
            write_json_atomic(self.path / "run.json", {**self.meta(), **fields})

    def log(self, record: dict[str, Any]) -> None:
        if self.writes:
            append_jsonl(self.path / "metrics.jsonl", record)

    @contextlib.contextmanager
    def failing_before_loop(self):
        """Around the work between creating a run and its training loop: a failure or Ctrl-C there must not
        leave ``status: running`` behind (the loop records its own outcome; this only fills the gap)."""
        try:
            yield
        except BaseException as e:
            if self.meta().get("status") == "running":
                with contextlib.suppress(OSError):  # a full disk fails this write too; the error to show is e
                    if isinstance(e, KeyboardInterrupt):
                        self.update_meta(status="interrupted", reason="Ctrl-C before training started")
                    else:
                        self.update_meta(status="failed", reason=f"{type(e).__name__}: {e}")
            raise

    @property
    def weights(self) -> Path:
        return self.path / "model.safetensors"

    @property
    def ema_weights(self) -> Path:
        return self.path / "ema.safetensors"

    @property
    def best(self) -> Path:
        return self.path / "best.safetensors"

    @property
    def state(self) -> Path:
        return self.path / "model.state.pt"

    def meta(self) -> dict[str, Any]:
        return load_run_meta(self.path)  # a damaged run.json is refused naming it, never overwritten

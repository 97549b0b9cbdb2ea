"""Training the dynamics model: diffusion forcing (+ shortcut forcing) on windows of latents.

``train_dynamics(latents, run_dir, train=..., data=..., diffusion=...)`` is the library entry point that
``ahri train`` and ``ahri demo`` call; ``models.dynamics.load_dynamics_run(run_or_path)`` rebuilds a trained
model for eval and rollout. The objective lives in :mod:`ahri_core.diffusion`, the windows and the batch sampler in
:mod:`ahri_core.data.windows`, the model in :mod:`ahri_core.models.dynamics`.

Run directory (``runs/<name>/``):
- ``run.json``: stage, resolved settings, the latent set (path, tokenizer id), model config, status;
- ``metrics.jsonl``: one record per log interval (``"kind": "train"``) and per validation (``"val"``);
- ``model.safetensors``: weights (EMA weights when EMA is on) with the model config and the resolved
  settings in the metadata; ``model.state.pt``: raw weights, optimizer, EMA, loss normaliser, RNG
  states and the data position, from which ``resume`` continues bit for bit (fixed seed, same device).
"""

from __future__ import annotations

import copy
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..data.windows import LatentSet, LatentVideo, load_latent_set, make_loader, validation_windows
from ..diffusion import add_noise, forcing_loss, sample_noise_levels
from ..errors import CheckpointError, ConfigError, DataError
from ..fileio import read_jsonl, write_text_atomic
from ..models.dynamics import KIND, DynamicsConfig, DynamicsModel, dynamics_config
from ..progress import Progress, ensure
from ..settings import DataSettings, DiffusionSettings, TrainSettings
from ..checkpoint import config_mismatch, load_state, load_weights, read_metadata, save_state, save_weights
from ..runtime import autocast, choose_precision, resolve_device
from .common import (
    EMA,
    Budget,
    RunDir,
    RunningRMS,
    StopRequest,
    lr_factor,
    make_adamw,
    rng_state,
    seed_everything,
    set_lr,
    set_rng_state,
)

STAGE = "dynamics"
VAL_TAUS = (0.1, 0.5, 0.9)  # validation: every frame noised to each of these levels
VAL_TAU_CTX = 0.1  # validation of next-frame prediction: context noised (and labelled) like the sampler does
VAL_WINDOWS = 32
# Training defaults per dynamics preset, used for TrainSettings fields not set explicitly (flag, config
# file, environment or constructor argument). cpu: tuned for the demo (2 cores, minutes).
PRESET_TRAINING: dict[str, dict[str, Any]] = {
    "tiny": {"batch_size": 8, "lr": 3e-3, "warmup_steps": 20},
    "cpu": {"batch_size": 8, "lr": 1e-3, "warmup_steps": 50, "ema": 0.99},
    "small": {"batch_size": 8, "lr": 3e-4, "warmup_steps": 1000, "ema": 0.999},
    "medium": {"batch_size": 8, "lr": 2e-4, "warmup_steps": 2000, "ema": 0.999},
}
# Settings that may differ when a run is resumed (they do not change what is computed).
RESUMABLE = {
    "train": {"max_steps", "minutes", "epochs", "device", "resume", "log_every", "val_every", "checkpoint_every", "run"},
    "data": {"num_workers"},
    "diffusion": set(),
}


@dataclass
class TrainResult:
    """What a finished (or stopped) training run produced."""

    run_dir: Path
    weights: Path
    step: int
    epoch: float
    seconds: float
    stopped: str = ""  # "" when the budget ran out, else the signal name
    last: dict[str, Any] = field(default_factory=dict)  # the last train record
    val: dict[str, Any] = field(default_factory=dict)  # the last validation record
    first_val: dict[str, Any] = field(default_factory=dict)  # the validation at step 0 (or the first one)


# ---------------------------------------------------------------------------------------------- helpers
def with_preset_defaults(train: TrainSettings) -> TrainSettings:
    """``train`` with the dynamics preset's batch size / lr / warmup / EMA where they were not given."""
    rec = PRESET_TRAINING.get(train.preset, {})
    upd = {k: v for k, v in rec.items() if k not in train.model_fields_set}
    return train.model_copy(update=upd) if upd else train


def _trim_metrics(path: Path, step: int) -> None:
    """Drop records written after the checkpoint that a resumed run continues from."""
    if not path.exists():
        return
    keep = [r for r in read_jsonl(path) if int(r.get("step", 0)) <= step]
    write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in keep))


def _settings_dict(train: TrainSettings, data: DataSettings, diffusion: DiffusionSettings) -> dict[str, Any]:
    return {
        "train": train.model_dump(mode="json"),
        "data": data.model_dump(mode="json"),
        "diffusion": diffusion.model_dump(mode="json"),
    }


def _check_resume_settings(stored: dict[str, Any], now: dict[str, Any], run: Path) -> None:
    diffs = []
    for sec, fields in now.items():
        old = stored.get(sec, {})
        for k, v in fields.items():
            if k in RESUMABLE.get(sec, set()):
                continue
            if k in old and old[k] != v:
                diffs.append(f"{sec}.{k}: run {old[k]!r} vs now {v!r}")
    if diffs:
        raise ConfigError(
            f"--resume of {run}: settings differ from the run's ({'; '.join(diffs[:3])}); "
            "resume with the run's settings (only the budget and logging may change)"
        )


def model_config_for(
    latents: LatentSet, train: TrainSettings, data: DataSettings, diffusion: DiffusionSettings, **overrides: Any
) -> DynamicsConfig:
    """The model config a run builds: the preset, the latent shape, the actions, k_max and the longest window."""
    max_frames = max(data.seq_len_short, data.seq_len_long) if data.alternating else data.seq_len
    fields: dict[str, Any] = dict(
        k_max=diffusion.k_max,
        max_frames=max_frames,
        action_kind=latents.action_kind,
        action_count=latents.action_count,
        action_dim=latents.action_dim,
        grad_checkpointing=train.grad_checkpointing,
    )
    fields.update(overrides)
    return dynamics_config(train.preset, tokens=latents.tokens, channels=latents.channels, **fields)


def _loader_shapes(train: TrainSettings, data: DataSettings) -> tuple[tuple[int, int], tuple[int, int] | None, float]:
    if data.alternating:
        return (data.seq_len_short, data.batch_size_short), (data.seq_len_long, data.batch_size_long), data.long_ratio
    return (data.seq_len, train.batch_size), None, 0.0


def _val_length(data: DataSettings) -> int:
    return data.seq_len_short if data.alternating else data.seq_len


@torch.no_grad()
def validate(
    model: DynamicsModel,
    videos: list[LatentVideo],
    keys: list[tuple[int, int, int]],
    device: torch.device,
    precision: str = "bf16",
    shortcut: bool = False,
    batch_size: int = 8,
    seed: int = 12345,
) -> dict[str, float]:
    """Held-out losses with fixed noise (the same at every call).

    ``tau=<v>``: x-space MSE with every frame at noise level v (d = d_min);
    ``next``: next-frame MSE of a one-step prediction, context frames at tau_ctx = 0.1 and the last frame
    pure noise (d = 1 for shortcut models, d_min otherwise) -- the rollout's first frame in one step;
    ``copy_last``: MSE of repeating the last context frame (the baseline ``next`` must beat).
    """
    was_training = model.training
    model.eval()
    g = torch.Generator().manual_seed(seed)
    d_min = 1.0 / model.config.k_max
    sums: dict[str, float] = {f"tau={t:g}": 0.0 for t in VAL_TAUS}
    sums.update(next=0.0, copy_last=0.0)
    n = 0
    kind = model.config.action_kind
    for i in range(0, len(keys), batch_size):
        chunk = keys[i : i + batch_size]
        x = torch.stack([videos[v].latents[s : s + L] for v, s, L in chunk]).float()
        B, T = x.shape[:2]
        acts = None
        if kind != "none":
            rows = []
            for v, s, L in chunk:
                a = videos[v].actions
                if a is None:
                    a = torch.full((L,), -1, dtype=torch.long) if kind == "discrete" else torch.full(
                        (L, model.config.action_dim), float("nan")
                    )
                else:
                    a = a[s : s + L]
                rows.append(a)
            acts = torch.stack(rows).to(device)
        noise = torch.randn(x.shape, generator=g)
        x, noise = x.to(device), noise.to(device)
        step = torch.full((B, T), d_min, device=device)
        with autocast(device, precision):
            for t in VAL_TAUS:
                tau = torch.full((B, T), t, device=device)
                xh = model(add_noise(x, noise, tau), tau, step, actions=acts)
                sums[f"tau={t:g}"] += float((xh.float() - x).pow(2).mean()) * B
            tau = torch.full((B, T), VAL_TAU_CTX, device=device)
            tau[:, -1] = 1.0
            st = step.clone()
            st[:, -1] = 1.0 if shortcut else d_min
            xh = model(add_noise(x, noise, tau), tau, st, actions=acts)
        sums["next"] += float((xh[:, -1].float() - x[:, -1]).pow(2).mean()) * B
        sums["copy_last"] += float((x[:, -2] - x[:, -1]).pow(2).mean()) * B
        n += B
    model.train(was_training)
    out = {k: v / max(n, 1) for k, v in sums.items()}
    out["mean"] = sum(out[f"tau={t:g}"] for t in VAL_TAUS) / len(VAL_TAUS)
    return out


# ---------------------------------------------------------------------------------------------- training
def train_dynamics(
    latents: str | os.PathLike | LatentSet,
    run_dir: str | os.PathLike,
    train: TrainSettings | None = None,
    data: DataSettings | None = None,
    diffusion: DiffusionSettings | None = None,
    progress: Progress | None = None,
    on_step: Callable[[int, dict[str, Any]], None] | None = None,
    model_overrides: dict[str, Any] | None = None,
) -> TrainResult:
    """Train (or, with ``train.resume``, continue) a dynamics model on a latent set.

    ``latents``: a latent set directory or an in-memory :class:`LatentSet`. ``run_dir``: where the run
    lives (created; an existing run needs ``train.resume``). The budget is ``train.max_steps`` /
    ``train.minutes`` / ``train.epochs``, whichever ends first. ``on_step(step, record)`` is called after
    every optimizer step (record: the step's loss terms, batch shape, lr). SIGTERM and the first Ctrl-C
    checkpoint and stop. Returns a :class:`TrainResult`.
    """
    train = with_preset_defaults(train or TrainSettings())
    data = data or DataSettings()
    diffusion = diffusion or DiffusionSettings()
    prog = ensure(progress)
    lset = latents if isinstance(latents, LatentSet) else load_latent_set(latents)
    if not lset.train:
        raise DataError(f"latent set {lset.path or '<memory>'} has no training videos")
    device = resolve_device(train.device)
    train = train.model_copy(update={"precision": choose_precision(train.precision, device).precision})
    settings = _settings_dict(train, data, diffusion)
    run = RunDir(run_dir)
    resuming = train.resume and run.state.is_file()
    if resuming:
        meta = json.loads((run.path / "run.json").read_text()) if (run.path / "run.json").is_file() else {}
        _check_resume_settings(meta.get("settings", {}), settings, run.path)

    seed_everything(train.seed)
    overrides = dict(model_overrides or {})
    if resuming and "pack" not in overrides and run.weights.is_file():
        # a run keeps the packing it was made with (runs from before ``pack`` existed are unpacked)
        overrides["pack"] = int(read_metadata(run.weights)[1].get("pack", 1))
    cfg = model_config_for(lset, train, data, diffusion, **overrides)
    model = DynamicsModel(cfg).to(device)
    model.train()
    opt = make_adamw(model, train.lr, train.weight_decay)
    ema = EMA(model, train.ema) if train.ema > 0 else None
    normalizer = RunningRMS().to(device)
    gen = torch.Generator().manual_seed(train.seed + 1)  # tau, d, item flags (CPU)
    noise_gen = torch.Generator(device=device).manual_seed(train.seed + 2)  # the noise tensors
    short, long, ratio = _loader_shapes(train, data)
    loader, sampler = make_loader(
        lset.train, short, long, ratio, data.stride, train.seed, lset.action_kind, lset.action_dim, data.num_workers
    )
    steps_per_epoch = len(sampler)
    budget = Budget(train.max_steps, train.minutes, train.epochs, steps_per_epoch)
    teacher = copy.deepcopy(model) if (diffusion.ema_teacher and diffusion.shortcut) else None
    if teacher is not None and ema is None:
        raise ConfigError("diffusion.ema_teacher needs EMA weights: set --ema (train.ema > 0)")

    step, epoch, position = 0, 0, 0
    first_val: dict[str, Any] = {}
    if resuming:
        state = load_state(run.state)
        diff = config_mismatch(cfg.weights_fields(), DynamicsConfig(**state["config"]).weights_fields())
        if diff:
            raise CheckpointError(
                f"--resume of {run.path}: the checkpoint was made with another model config ({', '.join(diff[:4])})"
            )
        model.load_state_dict(state["model"], strict=True)
        opt.load_state_dict(state["optimizer"])
        normalizer.load_state_dict(state["normalizer"])
        if ema is not None:
            ema.load_state_dict(state["ema"])
        gen.set_state(state["gen"])
        noise_gen.set_state(state["noise_gen"].to(noise_gen.get_state().device))
        set_rng_state(state["rng"])
        step, epoch, position = int(state["step"]), int(state["epoch"]), int(state["position"])
        budget.elapsed_before = float(state["elapsed"])
        first_val = dict(state.get("first_val", {}))
        _trim_metrics(run.path / "metrics.jsonl", step)
        prog.log(f"resuming {run.path.name} at step {step} (epoch {epoch + 1}, batch {position})")
    else:
        run.create(STAGE, settings, resume=train.resume)
    run.update_meta(
        stage=STAGE,
        settings=settings,
        latents=lset.describe(),
        tokenizer_id=lset.tokenizer_id,
        model=cfg.model_dump(mode="json"),
        shortcut=diffusion.shortcut,
        k_max=diffusion.k_max,
        max_frames=cfg.max_frames,
        finished=False,
    )

    val_keys = validation_windows(lset.val, _val_length(data), data.stride, VAL_WINDOWS) if lset.val else []
    if not val_keys and not resuming:
        prog.log("no held-out video long enough for validation; validation is skipped")

    def run_validation() -> dict[str, Any]:
        if not val_keys:
            return {}
        if ema is not None:
            with ema.applied(model):
                v = validate(model, lset.val, val_keys, device, train.precision, diffusion.shortcut)
        else:
            v = validate(model, lset.val, val_keys, device, train.precision, diffusion.shortcut)
        rec = {"kind": "val", "step": step, "epoch": epoch + position / steps_per_epoch, **{f"val_{k}": x for k, x in v.items()}}
        run.log(rec)
        return rec

    def checkpoint(final: bool = False) -> Path:
        extra = {
            "settings": settings,
            "latents": lset.describe(),
            "tokenizer_id": lset.tokenizer_id,
            "shortcut": diffusion.shortcut,
            "k_max": diffusion.k_max,
            "max_frames": cfg.max_frames,
            "step": step,
            "weights": "ema" if ema is not None else "raw",
        }
        tensors = ema.averaged(model) if ema is not None else model
        save_weights(run.weights, tensors, kind=KIND, config=cfg.model_dump(mode="json"), extra=extra)
        save_state(
            run.state,
            {
                "config": cfg.model_dump(mode="json"),
                "model": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
                "optimizer": opt.state_dict(),
                "normalizer": normalizer.state_dict(),
                "ema": ema.state_dict() if ema is not None else {},
                "gen": gen.get_state(),
                "noise_gen": noise_gen.get_state().cpu(),
                "rng": rng_state(),
                "step": step,
                "epoch": epoch,
                "position": position,
                "elapsed": budget.elapsed(),
                "first_val": first_val,
            },
        )
        return run.weights

    total = budget.total_steps
    prog.start("train", total=total, step=step)
    if not resuming and val_keys:
        first_val = run_validation()
    last_val: dict[str, Any] = first_val
    last: dict[str, Any] = {}
    acc = _Accumulator()
    t_log = time.perf_counter()
    stopped = ""
    boot_on_at = diffusion.bootstrap_warmup
    with StopRequest() as stop:
        while not budget.done(step) and not stop.requested:
            sampler.set_position(epoch, position)
            finished_epoch = True
            for batch in loader:
                batch = batch.to(device)
                B, T = batch.size, batch.frames
                lr = train.lr * lr_factor(step, train.warmup_steps, budget.progress(step), train.min_lr_ratio)
                set_lr(opt, lr)
                levels = sample_noise_levels(
                    B,
                    T,
                    k_max=diffusion.k_max,
                    shortcut=diffusion.shortcut,
                    step_sampling=diffusion.step_sampling,
                    bootstrap_fraction=diffusion.bootstrap_fraction,
                    single_image_fraction=diffusion.single_image_fraction,
                    context_fraction=diffusion.context_fraction,
                    context_tau_max=diffusion.context_tau_max,
                    bootstrap=step >= boot_on_at,
                    generator=gen,
                ).to(device)
                noise = torch.randn(batch.latents.shape, generator=noise_gen, device=device)
                if teacher is not None and bool(levels.bootstrap.any()):
                    teacher.load_state_dict(ema.averaged(model))
                with autocast(device, train.precision):
                    parts = forcing_loss(
                        model, batch.latents, levels, noise, batch.actions, normalizer, teacher=teacher
                    )
                opt.zero_grad(set_to_none=True)
                parts.loss.backward()
                grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), train.grad_clip))
                opt.step()
                if ema is not None:
                    # bias-corrected warm-up: early averages do not drag the random init along
                    ema.decay = min(train.ema, (1 + step) / (10 + step))
                    ema.update(model)
                step += 1
                position += 1
                if not math.isfinite(parts.raw):
                    checkpoint()
                    raise DataError(f"training diverged at step {step} (loss {parts.raw}); try a lower --lr")
                acc.add(parts, batch.kind, T, B, grad_norm)
                rec_step = {"step": step, "loss": parts.raw, "flow": parts.flow, "bootstrap": parts.bootstrap,
                            "kind": batch.kind, "T": T, "B": B, "lr": lr}
                if step % train.log_every == 0 or budget.done(step):
                    now = time.perf_counter()
                    last = acc.record(step, epoch + position / steps_per_epoch, lr, now - t_log, lset.tokens)
                    last["elapsed"] = budget.elapsed()
                    run.log(last)
                    t_log = now
                    acc = _Accumulator()
                    prog.advance(
                        "train", 0, **_display(last, epoch, position, steps_per_epoch, batch.kind, T, last_val)
                    )
                prog.advance("train", 1)
                if val_keys and (step % train.val_every == 0 or budget.done(step)):
                    last_val = run_validation()
                    if not first_val:
                        first_val = last_val
                    prog.log(_val_line(last_val))
                if step % train.checkpoint_every == 0:
                    checkpoint()
                if on_step is not None:
                    on_step(step, rec_step)
                if budget.done(step) or stop.requested:
                    finished_epoch = position >= steps_per_epoch
                    break
            if finished_epoch:
                epoch += 1
                position = 0
        stopped = stop.reason if stop.requested else ""
    weights = checkpoint(final=True)
    run.update_meta(
        finished=not stopped,
        stopped=stopped or None,
        step=step,
        epoch=epoch + position / steps_per_epoch,
        seconds=budget.elapsed(),
        last=last,
        val=last_val,
        first_val=first_val,
    )
    prog.finish("train")
    if stopped:
        prog.log(f"stopped by {stopped} at step {step}; checkpoint written, continue with --resume")
    return TrainResult(
        run_dir=run.path,
        weights=weights,
        step=step,
        epoch=epoch + position / steps_per_epoch,
        seconds=budget.elapsed(),
        stopped=stopped,
        last=last,
        val=last_val,
        first_val=first_val,
    )


class _Accumulator:
    """Sums of one log interval."""

    def __init__(self) -> None:
        self.n = 0
        self.loss = 0.0
        self.flow: list[float] = []
        self.boot: list[float] = []
        self.tau_min = math.inf
        self.tau_max = -math.inf
        self.frames = 0
        self.short = self.long = 0
        self.grad = 0.0
        self.kind = "S"
        self.T = 0
        self.B = 0

    def add(self, p: Any, kind: str, T: int, B: int, grad_norm: float) -> None:
        self.n += 1
        self.loss += p.raw
        if not math.isnan(p.flow):
            self.flow.append(p.flow)
        if not math.isnan(p.bootstrap):
            self.boot.append(p.bootstrap)
        self.tau_min, self.tau_max = min(self.tau_min, p.tau_min), max(self.tau_max, p.tau_max)
        self.frames += B * T
        self.short += kind == "S"
        self.long += kind == "L"
        self.grad += grad_norm
        self.kind, self.T, self.B = kind, T, B

    def record(self, step: int, epoch: float, lr: float, seconds: float, tokens: int) -> dict[str, Any]:
        n = max(self.n, 1)
        secs = max(seconds, 1e-9)
        return {
            "kind": "train",
            "step": step,
            "epoch": epoch,
            "batch": self.kind,
            "T": self.T,
            "B": self.B,
            "loss": self.loss / n,
            "flow_loss": sum(self.flow) / len(self.flow) if self.flow else None,
            "bootstrap_loss": sum(self.boot) / len(self.boot) if self.boot else None,
            "tau_min": self.tau_min,
            "tau_max": self.tau_max,
            "short_batches": self.short,
            "long_batches": self.long,
            "grad_norm": self.grad / n,
            "lr": lr,
            "batches_per_s": self.n / secs,
            "frames_per_s": self.frames / secs,
            "tokens_per_s": self.frames * tokens / secs,
        }


def _display(rec: dict[str, Any], epoch: int, position: int, per_epoch: int, kind: str, T: int, val: dict) -> dict:
    """The fields the progress bar shows: the seed's log line, plus bootstrap and validation."""
    out = {
        "epoch": f"{epoch + 1} [{position}/{per_epoch}]",
        "batch": f"{kind} T={T}",
        "loss": rec["loss"],
        "tau": f"[{rec['tau_min']:.2f}-{rec['tau_max']:.2f}]",
        "batch/s": round(rec["batches_per_s"], 2),
    }
    if rec.get("bootstrap_loss") is not None:
        out["boot"] = rec["bootstrap_loss"]
    if val.get("val_next") is not None:
        out["val_next"] = val["val_next"]
    return out


def _val_line(v: dict[str, Any]) -> str:
    taus = " ".join(f"tau{t:g}={v[f'val_tau={t:g}']:.4f}" for t in VAL_TAUS)
    return (
        f"val @ step {v['step']}: {taus}  next={v['val_next']:.4f} (copy-last {v['val_copy_last']:.4f})"
    )


def run_metrics(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of ``runs/<name>/metrics.jsonl``."""
    return read_jsonl(Path(run_dir) / "metrics.jsonl")

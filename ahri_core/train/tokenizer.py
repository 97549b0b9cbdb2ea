"""Tokenizer training: ``ahri train --stage tokenizer`` calls :func:`train_tokenizer`.

One step: a batch of random frames from the training videos (uint8 cache, see ``data/frames.py``),
MAE-masked reconstruction, MSE divided by its running RMS (plus an optional perceptual term, also
normalised), AdamW with warmup + cosine, gradient clipping, optional EMA, bf16 autocast on CPU/CUDA.

Run directory (``runs/<name>/``): ``run.json``, ``metrics.jsonl`` (train records every ``log_every`` steps,
validation records every ``val_every``), ``model.safetensors`` (weights + the full model config),
``ema.safetensors`` (when EMA is on; preferred by ``ahri tokenize``), ``model.state.pt`` (everything needed
to continue: model, optimizer, step, RNG states, sampler position, loss statistics, EMA) and
``reconstructions.png`` (held-out originals over their reconstructions).

Exact resume: the state file is the single source of truth for continuing, and every random draw comes
from state that it saves (the mask generator, the sampler's (epoch, position), the global RNGs), so a run
killed at any point and resumed with ``--resume`` ends with the same weights as one never interrupted
(given a step budget; a minutes budget depends on wall time by nature).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from pydantic import Field

from ..data.frames import FrameSampler, FrameSet, load_frame_data, steps_per_epoch, to_tensor, to_uint8
from ..errors import CheckpointError, ConfigError
from ..fileio import atomic_path, read_jsonl, write_text_atomic
from ..models.tokenizer import KIND, Tokenizer, TokenizerConfig, load_tokenizer, tokenizer_config, weights_for_inference
from ..progress import Progress, ensure
from ..settings import Section, TrainSettings
from ..checkpoint import load_state, read_metadata, save_state, save_weights
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

STATE_VERSION = 1


class TokenizerSettings(Section):
    """Tokenizer-stage settings (``[tokenizer]`` in a config file, ``AHRI_TOKENIZER_*``).

    Model overrides (None = the preset's value) apply only to a new run; a resumed run rebuilds its
    model from the checkpoint.
    """

    section: ClassVar[str] = "tokenizer"
    size: int | None = Field(None, ge=8, le=1024, description="frame size (square), overrides the preset")
    fps: float | None = Field(None, gt=0, le=240, description="frame rate videos are resampled to")
    patch_size: int | None = Field(None, ge=1, le=64)
    tokens: int | None = Field(None, ge=1, le=4096, description="latent tokens per frame")
    channels: int | None = Field(None, ge=1, le=1024, description="bottleneck width per token")
    mask_max: float | None = Field(None, ge=0, lt=1, description="MAE drop rate drawn from U(0, mask_max)")
    val_fraction: float = Field(0.1, ge=0, lt=1, description="fraction of videos held out for validation")
    val_frames: int = Field(256, ge=1, description="held-out frames scored at each validation")
    perceptual_weight: float = Field(0.0, ge=0, description="weight of the perceptual term (needs perceptual_model)")
    perceptual_model: Path | None = Field(
        None, description="local torch.export file (.pt2) f(recon, target) -> per-item distance; nothing is downloaded"
    )

    def overrides(self) -> dict[str, Any]:
        return {
            "image_size": self.size,
            "fps": self.fps,
            "patch_size": self.patch_size,
            "tokens": self.tokens,
            "channels": self.channels,
            "mask_max": self.mask_max,
        }


# Training defaults per preset, used for any TrainSettings field that was not set explicitly
# (flag, config file or environment). Tuned for 2 CPU cores (cpu) and single GPUs (the others).
PRESET_TRAINING: dict[str, dict[str, Any]] = {
    "tiny": {"batch_size": 16, "lr": 3e-3, "warmup_steps": 10},
    "cpu": {"batch_size": 16, "lr": 4e-3, "warmup_steps": 50},
    "small": {"batch_size": 64, "lr": 1e-3, "warmup_steps": 500},
    "medium": {"batch_size": 64, "lr": 6e-4, "warmup_steps": 1000},
    "large": {"batch_size": 64, "lr": 4e-4, "warmup_steps": 2000},
}


def with_preset_defaults(train: TrainSettings) -> TrainSettings:
    """``train`` with the tokenizer preset's batch size / lr / warmup where they were not given."""
    rec = PRESET_TRAINING.get(train.preset, {})
    upd = {k: v for k, v in rec.items() if k not in train.model_fields_set}
    return train.model_copy(update=upd) if upd else train


# ---------------------------------------------------------------------------------------------- metrics
def psnr(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-frame PSNR in dB of frames in [0, 1] (..., 3, H, W); x is clamped to [0, 1] first."""
    mse = (x.float().clamp(0, 1) - y.float()).pow(2).flatten(-3).mean(-1)
    return -10 * torch.log10(mse.clamp_min(1e-10))


class PerceptualLoss:
    """Hook for a perceptual term: a local ``torch.export`` program f(recon, target) -> (B,) distances.

    Nothing is downloaded: point ``[tokenizer] perceptual_model`` at a file exported beforehand (for example
    a small feature network saved with ``torch.export.save``), or pass any callable to ``train_tokenizer``.
    """

    def __init__(self, path: Path, device: torch.device) -> None:
        if not Path(path).is_file():
            raise ConfigError(f"tokenizer.perceptual_model {path} does not exist (nothing is downloaded)")
        try:
            self.net = torch.export.load(str(path)).module().to(device)
        except Exception as e:  # noqa: BLE001 - any load failure is a bad file
            raise ConfigError(f"tokenizer.perceptual_model {path} is not a torch.export program ({e})") from None
        for p in self.net.parameters():
            p.requires_grad_(False)

    def __call__(self, recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.net(recon, target).float().mean()


# ---------------------------------------------------------------------------------------------- images
def save_comparison(path: Path, originals: torch.Tensor, recons: torch.Tensor, scale: int = 2) -> None:
    """A PNG with originals (top row) over reconstructions (bottom row)."""
    from PIL import Image

    top = np.concatenate(list(to_uint8(originals)), axis=1)
    bottom = np.concatenate(list(to_uint8(recons)), axis=1)
    img = Image.fromarray(np.concatenate([top, bottom], axis=0))
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")


@torch.no_grad()
def evaluate(
    model: Tokenizer,
    frames: FrameSet,
    indices: np.ndarray,
    device: torch.device,
    precision: str = "bf16",
    batch_size: int = 64,
) -> dict[str, float]:
    """Mean per-frame PSNR and MSE of reconstructions at mask 0 (eval mode) on the given frames."""
    was = model.training
    model.eval()
    ps, ms = [], []
    try:
        for s in range(0, len(indices), batch_size):
            x = to_tensor(frames.get(indices[s : s + batch_size]), device)
            with autocast(device, precision):
                r = model.decode(model.encode(x))
            r = r.float().clamp(0, 1)
            ps.append(psnr(r, x).cpu())
            ms.append((r - x).pow(2).flatten(1).mean(1).cpu())
    finally:
        model.train(was)
    p, m = torch.cat(ps), torch.cat(ms)
    return {"psnr": float(p.mean()), "mse": float(m.mean()), "frames": int(len(p))}


# ---------------------------------------------------------------------------------------------- training
def _trim_metrics(path: Path, step: int) -> None:
    """Drop records past ``step`` (written after the checkpoint a resumed run continues from)."""
    if not path.exists():
        return
    keep = [r for r in read_jsonl(path) if int(r.get("step", 0)) <= step]
    write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in keep))


def train_tokenizer(
    run_dir: str | os.PathLike,
    videos: Sequence[Any],
    train: TrainSettings,
    tok: TokenizerSettings | None = None,
    progress: Progress | None = None,
    *,
    cache_dir: str | os.PathLike | None = None,
    stop: StopRequest | None = None,
    on_step: Callable[[int], None] | None = None,
    perceptual: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> dict[str, Any]:
    """Train (or with ``train.resume`` continue) a tokenizer; returns a summary dict.

    run_dir: ``runs/<name>``. videos: ``VideoRecord``s from ``sources.store.list_videos`` or paths.
    train: the loop settings (preset = a tokenizer preset: tiny, cpu, small, medium, large; a budget:
    max_steps / minutes / epochs). tok: model overrides and validation settings. cache_dir: where
    decoded frames are cached (default: ``<run_dir>/../../cache``, the workspace cache).
    ``stop`` (default: a fresh :class:`StopRequest`) turns SIGTERM / Ctrl-C into a checkpoint and a clean
    return. ``on_step(step)`` is called after every optimizer step (tests use it to interrupt).
    ``perceptual(recon, target) -> scalar``: an optional perceptual distance, weighted by
    ``tok.perceptual_weight`` (default: loaded from ``tok.perceptual_model`` when the weight is > 0).

    Summary keys: run_dir, weights, step, epochs, seconds, stopped (reason or None), train_frames,
    val_frames, val_videos, val_heldout, val_psnr, val_mse, first_val_psnr, compression, params, config.
    """
    tok = tok or TokenizerSettings()
    p = ensure(progress)
    train = with_preset_defaults(train)
    run = RunDir(run_dir)
    resuming = bool(train.resume and run.state.is_file())
    device = resolve_device(train.device)
    train = train.model_copy(update={"precision": choose_precision(train.precision, device).precision})

    # ---- model config: from the checkpoint when resuming, else preset + overrides
    state: dict[str, Any] | None = None
    if resuming:
        _, cfg_dict, _ = read_metadata(run.weights)
        cfg = TokenizerConfig.from_dict(cfg_dict)
        state = load_state(run.state)
        if state.get("version") != STATE_VERSION or "model" not in state:
            raise CheckpointError(f"training state {run.state} is not a tokenizer state (version {state.get('version')})")
        given = {k: v for k, v in tok.overrides().items() if v is not None}
        differs = {k: v for k, v in given.items() if cfg.to_dict().get(k) != v}
        if differs:
            raise ConfigError(
                f"--resume: run {run.path} was trained with {', '.join(f'{k}={cfg.to_dict()[k]}' for k in differs)}; "
                "model settings cannot change on resume"
            )
        saved_batch = int(state["batch_size"])
        if saved_batch != train.batch_size:
            if "batch_size" in train.model_fields_set:
                raise ConfigError(f"--resume: run {run.path} was trained with batch size {saved_batch}, not {train.batch_size}")
            train = train.model_copy(update={"batch_size": saved_batch})
    else:
        cfg = tokenizer_config(train.preset, **tok.overrides())
    settings_record = {"train": train.model_dump(mode="json"), "tokenizer": tok.model_dump(mode="json"), "model": cfg.to_dict()}
    run.create(KIND, settings_record, resume=bool(train.resume))

    # ---- data
    cache = Path(cache_dir) if cache_dir is not None else run.path.parent.parent / "cache"
    data = load_frame_data(videos, cfg.fps, cfg.image_size, cache, tok.val_fraction, p)
    if not data.val_is_heldout:
        p.log("only one usable video: validation uses its frames (not held out); add videos for an honest score")
    val_idx = data.val.evenly_spaced(tok.val_frames)
    preview_idx = data.val.evenly_spaced(8)

    # ---- model, optimiser, statistics
    seed_everything(train.seed)
    model = Tokenizer(cfg).to(device)
    opt = make_adamw(model, train.lr, train.weight_decay)
    rms = {"mse": RunningRMS().to(device)}
    if tok.perceptual_weight > 0:
        if perceptual is None:
            if tok.perceptual_model is None:
                raise ConfigError("tokenizer.perceptual_weight > 0 needs tokenizer.perceptual_model (a local torch.export file)")
            perceptual = PerceptualLoss(tok.perceptual_model, device)
        rms["perceptual"] = RunningRMS().to(device)
    else:
        perceptual = None
    ema = EMA(model, train.ema) if train.ema > 0 else None
    sampler = FrameSampler(len(data.train), train.batch_size, seed=train.seed)
    mask_gen = torch.Generator().manual_seed(train.seed + 1)
    step, frames_seen, elapsed_before, first_val = 0, 0, 0.0, None
    if state is not None:
        model.load_state_dict(state["model"], strict=True)
        opt.load_state_dict(state["optimizer"])
        for k, m in rms.items():
            if k in state["rms"]:
                m.load_state_dict(state["rms"][k])
        if ema is not None:
            if state.get("ema") is None:
                raise CheckpointError(f"--resume: run {run.path} was trained without EMA; it cannot be switched on now")
            ema.load_state_dict(state["ema"])
        sampler.load_state_dict(state["sampler"])
        mask_gen.set_state(state["mask_generator"])
        set_rng_state(state["rng"])
        step, frames_seen = int(state["step"]), int(state["frames_seen"])
        elapsed_before = float(state["elapsed"])
        first_val = state.get("first_val_psnr")
        _trim_metrics(run.path / "metrics.jsonl", step)
        p.log(f"resumed {run.path.name} at step {step}")
    else:
        _trim_metrics(run.path / "metrics.jsonl", -1)  # a run restarted before its first checkpoint
    budget = Budget(
        max_steps=train.max_steps,
        minutes=train.minutes,
        epochs=train.epochs,
        steps_per_epoch=steps_per_epoch(len(data.train), train.batch_size),
        elapsed_before=elapsed_before,
    )
    p.log(model.summary())
    p.log(
        f"data: {len(data.train)} training frames from {len(data.train.ids)} videos, "
        f"{len(val_idx)} validation frames from {len(data.val.ids)} held-out videos"
        + (f", {len(data.failed)} video(s) skipped" if data.failed else "")
    )

    extra_meta = {
        "val_videos": data.val.ids if data.val_is_heldout else [],
        "train_videos": data.train.ids,
        "val_fraction": tok.val_fraction,
        "preset": cfg.preset,
    }
    last_val: dict[str, float] = {}
    last_val_step = -1

    def validate() -> dict[str, float]:
        nonlocal last_val, first_val, last_val_step
        ctx = ema.applied(model) if ema is not None else _null()
        with ctx:
            res = evaluate(model, data.val, val_idx, device, train.precision)
            if len(preview_idx):
                x = to_tensor(data.val.get(preview_idx), device)
                was = model.training
                model.eval()
                with torch.no_grad(), autocast(device, train.precision):
                    r = model.decode(model.encode(x)).float()
                model.train(was)
                save_comparison(run.path / "reconstructions.png", x, r)
        last_val, last_val_step = res, step
        if first_val is None:
            first_val = res["psnr"]
        run.log({"step": step, "kind": "val", "val_psnr": res["psnr"], "val_mse": res["mse"], "heldout": data.val_is_heldout,
                 "elapsed": budget.elapsed()})
        return res

    def checkpoint() -> None:
        extra = {**extra_meta, "step": step, "val_psnr": last_val.get("psnr")}
        save_weights(run.weights, model, KIND, cfg.to_dict(), extra)
        if ema is not None:
            save_weights(run.path / "ema.safetensors", ema.averaged(model), KIND, cfg.to_dict(), {**extra, "ema": train.ema})
        save_state(
            run.state,
            {
                "version": STATE_VERSION,
                "step": step,
                "frames_seen": frames_seen,
                "elapsed": budget.elapsed(),
                "batch_size": train.batch_size,
                "model": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
                "optimizer": opt.state_dict(),
                "rms": {k: m.state_dict() for k, m in rms.items()},
                "ema": ema.state_dict() if ema is not None else None,
                "sampler": sampler.state_dict(),
                "mask_generator": mask_gen.get_state(),
                "rng": rng_state(),
                "first_val_psnr": first_val,
            },
        )

    # ---- loop
    own_stop = stop is None
    stop = stop or StopRequest()
    total = budget.total_steps
    model.train()
    t_log, n_log, loss_acc, psnr_acc = time.perf_counter(), 0, 0.0, 0.0
    stopped: str | None = None
    shown = step
    p.start("train tokenizer", total=total)
    if total:
        p.advance("train tokenizer", step)
    try:
        if own_stop:
            stop.__enter__()
        if step == 0:
            validate()
        while not budget.done(step):
            if stop.requested:
                stopped = stop.reason or "signal"
                break
            set_lr(opt, train.lr * lr_factor(step, train.warmup_steps, budget.progress(step), train.min_lr_ratio))
            x = to_tensor(data.train.get(sampler.next()), device)
            with autocast(device, train.precision):
                recon, _ = model(x, generator=mask_gen)
            recon = recon.float()
            mse = torch.nn.functional.mse_loss(recon, x)
            loss = rms["mse"](mse)
            if perceptual is not None:
                loss = loss + tok.perceptual_weight * rms["perceptual"](perceptual(recon, x))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), train.grad_clip)
            if not torch.isfinite(grad_norm):
                raise ConfigError(f"tokenizer training diverged at step {step} (gradient norm {float(grad_norm)}); lower --lr")
            opt.step()
            if ema is not None:
                ema.update(model)
            step += 1
            frames_seen += x.shape[0]
            n_log += x.shape[0]
            loss_acc += float(mse.detach())
            psnr_acc += float(psnr(recon.detach(), x).mean())
            if on_step is not None:
                on_step(step)
            if step % train.log_every == 0 or budget.done(step):
                dt = max(time.perf_counter() - t_log, 1e-9)
                k = max(1, n_log // x.shape[0])
                rec = {
                    "step": step,
                    "kind": "train",
                    "loss": loss_acc / k,
                    "psnr": psnr_acc / k,
                    "lr": opt.param_groups[0]["lr"],
                    "grad_norm": float(grad_norm),
                    "frames_per_s": n_log / dt,
                    "epoch": sampler.epochs_done,
                    "elapsed": budget.elapsed(),
                }
                run.log(rec)
                p.advance(
                    "train tokenizer", step - shown, loss=rec["loss"], psnr=rec["psnr"],
                    fps=rec["frames_per_s"], val_psnr=last_val.get("psnr", float("nan")),
                )
                shown = step
                t_log, n_log, loss_acc, psnr_acc = time.perf_counter(), 0, 0.0, 0.0
            if step % train.val_every == 0:
                validate()
            if step % train.checkpoint_every == 0:
                checkpoint()
        if stopped is None and stop.requested:
            stopped = stop.reason or "signal"
        if last_val_step != step:
            validate()
        checkpoint()
        p.log(f"checkpoint at step {step}: {run.weights}")
    finally:
        if own_stop:
            stop.__exit__(None, None, None)
        p.finish("train tokenizer", step=step, val_psnr=last_val.get("psnr", float("nan")))
    if stopped is None:
        run.update_meta(finished=True, step=step, val_psnr=last_val.get("psnr"))
    else:
        run.update_meta(step=step, val_psnr=last_val.get("psnr"), stopped=stopped)
    return {
        "run_dir": str(run.path),
        "weights": str(weights_for_inference(run.path)),
        "step": step,
        "epochs": sampler.epochs_done,
        "seconds": budget.elapsed(),
        "stopped": stopped,
        "train_frames": len(data.train),
        "train_videos": len(data.train.ids),
        "val_frames": len(val_idx),
        "val_videos": len(data.val.ids) if data.val_is_heldout else 0,
        "val_heldout": data.val_is_heldout,
        "val_psnr": last_val.get("psnr"),
        "val_mse": last_val.get("mse"),
        "first_val_psnr": first_val,
        "compression": cfg.compression,
        "params": model.num_params(),
        "config": cfg.to_dict(),
        "skipped_videos": dict(data.failed),
        "frames_per_s": frames_seen / max(budget.elapsed(), 1e-9),
    }


class _null:
    def __enter__(self):
        return None

    def __exit__(self, *a):
        return False


def summary_lines(summary: dict[str, Any]) -> list[str]:
    """Human-readable lines of a :func:`train_tokenizer` summary (for the CLI)."""
    vp = summary.get("val_psnr")
    fv = summary.get("first_val_psnr")
    held = "held-out" if summary.get("val_heldout") else "training (no held-out video)"
    return [
        f"steps {summary['step']}  epochs {summary['epochs']:.2f}  minutes {summary['seconds'] / 60:.1f}",
        f"validation PSNR ({held}, mask 0): "
        + (f"{fv:.2f} -> " if fv is not None and not math.isnan(fv) else "")
        + (f"{vp:.2f} dB" if vp is not None else "n/a"),
        f"compression {summary['compression']:.1f}x, {summary['params'] / 1e6:.2f}M params",
        f"weights {summary['weights']}",
    ]

"""Tokenizer training: ``ahri train --stage tokenizer`` calls :func:`train_tokenizer`.

The stage is a :class:`~.objectives.tokenizer.TokenizerObjective` run by the one training loop (``train/loop.py``: budget, precision,
EMA, divergence guard, checkpoints, exact resume). One step: a batch of random frames from the training
videos (uint8 cache, see ``data/frame_cache.py``), MAE-masked reconstruction, MSE divided by its running RMS
(plus an optional perceptual term, also normalised). Validation: PSNR/MSE of held-out frames at mask 0,
and ``reconstructions.png`` (held-out originals over their reconstructions); the best checkpoint is the
highest validation PSNR.

Exact resume: every random draw comes from state the checkpoint saves (the mask generator, the frame
sampler's (epoch, position), the global RNGs), so a run killed at any point and resumed with ``--resume``
ends with the same weights as one never interrupted (given a step budget).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from ..checkpoint import read_metadata
from ..config.settings import TokenizerSettings, TrainSettings
from ..data.frame_cache import as_shape
from ..data.frames import load_frame_data
from ..data.split import SplitRule
from ..data.videos import as_video_refs, common_aspect
from ..errors import ConfigError
from ..models.tokenizer import (
    TokenizerConfig,
    preset_shape,
    tokenizer_config,
    weights_for_inference,
)
from ..progress import Progress, ensure
from ..runtime import resolve_device
from ..video.rates import slow_videos_line
from . import distributed
from .checkpointing import load_resume_state
from .common import (
    RunDir,
    StopRequest,
    check_resume_settings,
    seed_everything,
    with_preset_defaults,
    with_run_optimizer,
)
from .loop import run_loop
from .objectives.tokenizer import TokenizerObjective


# ---------------------------------------------------------------------------------------------- metrics
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


# ---------------------------------------------------------------------------------------------- training
def train_tokenizer(
    run_dir: str | os.PathLike,
    videos: Sequence[Any],
    train: TrainSettings,
    tok: TokenizerSettings | None = None,
    progress: Progress | None = None,
    *,
    cache_dir: str | os.PathLike | None = None,
    stop: StopRequest | None = None,
    on_step: Callable[[int, dict[str, Any]], None] | None = None,
    after_backward: Callable[[int, torch.nn.Module], None] | None = None,
    perceptual: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> dict[str, Any]:
    """Train (or with ``train.resume`` continue) a tokenizer; returns a summary dict.

    run_dir: ``runs/<name>``. videos: ``VideoRecord``s from ``sources.store.list_videos`` or paths.
    train: the loop settings (preset = a tokenizer preset: tiny, cpu, small, medium, large; a budget:
    max_steps / minutes / epochs). tok: model overrides and validation settings. cache_dir: where
    decoded frames are cached, and the precision choice (default: ``<run_dir>/../../cache``, the
    workspace cache). ``stop`` (default: a fresh :class:`StopRequest`) turns SIGTERM / Ctrl-C into a
    checkpoint and a clean return. ``on_step(step, record)`` runs after every optimizer step.
    ``perceptual(recon, target) -> scalar``: an optional perceptual distance, weighted by
    ``tok.perceptual_weight`` (default: loaded from ``tok.perceptual_model`` when the weight is > 0).

    Summary keys: run_dir, weights, step, epochs, seconds, status, stopped (reason or None), train_frames,
    val_frames, val_videos, val_heldout, val_psnr, val_mse, first_val_psnr, best, compression, params,
    config, precision.
    """
    tok = tok or TokenizerSettings()
    distributed.setup(train.device)  # joins the process group when launched by torchrun; else nothing
    p = ensure(progress)
    optimizer_given = "optimizer" in train.model_fields_set
    train = with_preset_defaults(train, "tokenizer")
    run = RunDir(run_dir).claim()
    try:
        resuming = bool(train.resume and run.state.is_file())
        device = resolve_device(train.device)

        # ---- model config: from the checkpoint when resuming, else preset + overrides
        state: dict[str, Any] | None = None
        if resuming:
            _, cfg_dict, _ = read_metadata(run.weights)
            cfg = TokenizerConfig.from_dict(cfg_dict)
            state = load_resume_state(run, "tokenizer")
            stored = run.meta().get("settings", {})
            train = with_run_optimizer(train, stored, optimizer_given)
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
            cfg = new_config(train.preset, tok, videos, p)
        rule = tok.split_rule()
        rule.assign([r.id for r in as_video_refs(videos)])  # an unknown id or no training video: refused before the run exists
        if resuming:
            _, _, extra = read_metadata(run.weights)
            f = extra.get("val_fraction")
            before = extra.get("split") or SplitRule.by_hash(0.1 if f is None else float(f)).record()
            if before != rule.record():
                raise ConfigError(
                    f"--resume: run {run.path} was split by {json.dumps(before)}, not {json.dumps(rule.record())}; "
                    "the held-out videos cannot change on resume"
                )
        settings_record = {"train": train.model_dump(mode="json"), "tokenizer": tok.model_dump(mode="json"),
                           "model": cfg.to_dict(), "split": rule.record()}
        if tok.perceptual_weight > 0 and perceptual is None and tok.perceptual_model is None:
            raise ConfigError("tokenizer.perceptual_weight > 0 needs tokenizer.perceptual_model (a local torch.export file)")
        if resuming:
            old_tok = stored.get("tokenizer")
            if isinstance(old_tok, dict) and isinstance(old_tok.get("size"), int):  # a square run: one number then
                stored = {**stored, "tokenizer": {**old_tok, "size": f"{old_tok['size']}x{old_tok['size']}"}}
            check_resume_settings(stored, {k: settings_record[k] for k in ("train", "tokenizer")}, run.path, RESUMABLE)
            run.update_meta(settings=settings_record)
        run.create("tokenizer", settings_record, resume=bool(train.resume))
        run.claim()  # a new run: its folder exists now
        with run.failing_before_loop():
            return _train(run, videos, train, tok, cfg, rule, state, p, device, cache_dir, stop, on_step, after_backward,
                          perceptual)
    finally:
        run.release()  # the writer lock: another process may write the run from now on


def new_config(preset: str, tok: TokenizerSettings, videos: Sequence[Any], progress: Progress | None = None) -> TokenizerConfig:
    """The model of a new run: the preset with ``tok``'s overrides, at ``tok.size`` or else at the preset's
    pixel budget shaped to the aspect most of the videos share (``videos.common_aspect``)."""
    over = tok.overrides()
    if over["height"] is None:
        aspect, note = common_aspect(as_video_refs(videos))
        if aspect is not None:
            over["height"], over["width"] = preset_shape(preset, aspect)
            if note:
                ensure(progress).log(note)
    return tokenizer_config(preset, **over)


# Settings that may differ when a run is resumed (see train/dynamics.py's RESUMABLE).
RESUMABLE = {
    "train": {"max_steps", "minutes", "epochs", "device", "resume", "log_every", "val_every", "checkpoint_every", "run",
              "threads", "precision", "max_bad_steps", "fsdp", "compile", "tensorboard"},
    "tokenizer": {"val_frames"},
}


def _train(run, videos, train, tok, cfg, rule, state, p, device, cache_dir, stop, on_step, after_backward,
           perceptual) -> dict[str, Any]:

    # ---- data
    cache = Path(cache_dir) if cache_dir is not None else run.path.parent.parent / "cache"
    with distributed.main_first():  # rank 0 decodes and caches the frames; the other ranks then read the cache
        data = load_frame_data(videos, cfg.fps, as_shape(cfg), cache, tok.val_fraction, p, split=rule,
                               max_frames=tok.max_frames_per_video)
    slow = {i: r for i, r in data.rates.items() if r < cfg.fps}
    if slow:
        p.log(slow_videos_line(slow, cfg.fps))
    if not data.val_is_heldout:
        p.log("only one usable video: validation uses its frames (not held out); add videos for an honest score")

    if tok.perceptual_weight > 0:
        if perceptual is None:
            if tok.perceptual_model is None:
                raise ConfigError("tokenizer.perceptual_weight > 0 needs tokenizer.perceptual_model (a local torch.export file)")
            perceptual = PerceptualLoss(tok.perceptual_model, device)
    else:
        perceptual = None
    seed_everything(train.seed)
    obj = TokenizerObjective(cfg, data, train, tok, run, device, perceptual)
    p.log(obj.model.summary())
    p.log(
        f"data: {len(data.train)} training frames from {len(data.train.ids)} videos, "
        f"{len(obj.val_idx)} validation frames from {len(data.val.ids)} held-out videos"
        + (f", {len(data.failed)} video(s) skipped" if data.failed else "")
    )
    res = run_loop(run, obj, train, resume_state=state, progress=p, stop=stop, cache_dir=cache, on_step=on_step,
                   after_backward=after_backward)
    val = res.val or {}
    return {
        "run_dir": str(run.path),
        "weights": str(weights_for_inference(run.path)),
        "step": res.step,
        "epochs": res.epochs,
        "seconds": res.seconds,
        "status": res.status,
        "stopped": res.reason if res.status == "interrupted" else None,
        "train_frames": len(data.train),
        "train_videos": len(data.train.ids),
        "val_frames": len(obj.val_idx),
        "val_videos": len(data.val.ids) if data.val_is_heldout else 0,
        "val_heldout": data.val_is_heldout,
        "val_psnr": val.get("val_psnr"),
        "val_mse": val.get("val_mse"),
        "first_val_psnr": (res.first_val or {}).get("val_psnr"),
        "best": res.best,
        "compression": cfg.compression,
        "params": obj.model.num_params(),
        "config": cfg.to_dict(),
        "skipped_videos": dict(data.failed),
        "frames_per_s": obj.frames_seen / max(res.seconds, 1e-9),
        "precision": res.precision.to_dict(),
    }


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

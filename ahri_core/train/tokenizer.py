"""Tokenizer training: ``ahri train --stage tokenizer`` calls :func:`train_tokenizer`.

The stage is a :class:`TokenizerObjective` run by the one training loop (``train/loop.py``: budget, precision,
EMA, divergence guard, checkpoints, exact resume). One step: a batch of random frames from the training
videos (uint8 cache, see ``data/frames.py``), MAE-masked reconstruction, MSE divided by its running RMS
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
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from pydantic import Field, field_validator

from ..checkpoint import read_metadata
from ..config.settings import Section, TrainSettings
from ..data.frames import (
    FrameSampler,
    FrameSet,
    SplitRule,
    as_shape,
    as_video_refs,
    common_aspect,
    load_frame_data,
    steps_per_epoch,
    to_tensor,
    to_uint8,
)
from ..errors import ConfigError
from ..eval.metrics import psnr_per_image as psnr  # per-frame dB, prediction clipped to [0, 1]
from ..fileio import atomic_path
from ..models.tokenizer import (
    KIND,
    Tokenizer,
    TokenizerConfig,
    parse_size,
    preset_shape,
    tokenizer_config,
    weights_for_inference,
)
from ..progress import Progress, ensure
from ..runtime import autocast, resolve_device
from . import distributed
from .checkpointing import load_resume_state
from .common import (
    RunDir,
    RunningRMS,
    StopRequest,
    check_resume_settings,
    seed_everything,
    with_preset_defaults,
)
from .loop import run_loop
from .objectives.base import Objective, StepOut


class TokenizerSettings(Section):
    """Tokenizer-stage settings (``[tokenizer]`` in a config file, ``AHRI_TOKENIZER_*``).

    Model overrides (None = the preset's value) apply only to a new run; a resumed run rebuilds its
    model from the checkpoint.
    """

    section: ClassVar[str] = "tokenizer"
    size: str | None = Field(
        None, description='frame size "HxW" in pixels (e.g. 48x80) or one number for a square; default: the '
        "preset's pixel budget shaped to the videos' aspect"
    )
    fit: Literal["pad", "crop", "squash"] = Field(
        "pad", description="how frames of another aspect are made HxW: pad (whole frame kept), crop or squash"
    )
    fps: float | None = Field(
        None, gt=0, le=240, description="highest frame rate videos are read at (a slower video keeps its own)"
    )
    patch_size: int | None = Field(None, ge=1, le=64)
    tokens: int | None = Field(None, ge=1, le=4096, description="latent tokens per frame")
    channels: int | None = Field(None, ge=1, le=1024, description="bottleneck width per token")
    mask_max: float | None = Field(None, ge=0, lt=1, description="MAE drop rate drawn from U(0, mask_max)")
    val_fraction: float = Field(0.1, ge=0, lt=1, description="fraction of videos held out for validation")
    val_videos: list[str] | None = Field(
        None, description="ids of the videos held out (instead of the hash split with val_fraction)"
    )
    split_file: Path | None = Field(
        None, description='file naming the held-out videos: JSON {"val": [...], "train": [...]} or lines "val ID ..."'
    )
    val_frames: int = Field(256, ge=1, description="held-out frames scored at each validation")
    max_frames_per_video: int = Field(
        20_000, ge=1, description="frames cached per video; a longer video keeps every k-th frame, spread over all of it"
    )
    perceptual_weight: float = Field(0.0, ge=0, description="weight of the perceptual term (needs perceptual_model)")
    perceptual_model: Path | None = Field(
        None, description="local torch.export file (.pt2) f(recon, target) -> per-item distance; nothing is downloaded"
    )

    @field_validator("size", mode="before")
    @classmethod
    def _size(cls, v: Any) -> str | None:
        hw = parse_size(v)
        return None if hw is None else f"{hw[0]}x{hw[1]}"

    def split_rule(self) -> SplitRule:
        """The train/validation split: chosen videos (``split_file`` or ``val_videos``) or the hash rule."""
        if self.split_file is not None and self.val_videos:
            raise ConfigError("--split and --val-videos both choose the held-out videos; give one of them")
        if self.split_file is not None:
            return SplitRule.from_file(self.split_file)
        if self.val_videos:
            return SplitRule.chosen(self.val_videos)
        return SplitRule.by_hash(self.val_fraction)

    def overrides(self) -> dict[str, Any]:
        """Model settings given (None: the preset's); ``height``/``width`` from ``size``."""
        hw = parse_size(self.size)
        return {
            "height": hw[0] if hw else None,
            "width": hw[1] if hw else None,
            "fit": self.fit if "fit" in self.model_fields_set else None,
            "fps": self.fps,
            "patch_size": self.patch_size,
            "tokens": self.tokens,
            "channels": self.channels,
            "mask_max": self.mask_max,
        }


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
    precision: str = "fp32",
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


# ---------------------------------------------------------------------------------------------- the objective
class TokenizerObjective(Objective):
    stage = "tokenizer"
    kind = KIND
    task = "train tokenizer"
    best_metric = "val_psnr"
    best_mode = "max"

    def __init__(self, cfg: TokenizerConfig, data: Any, train: TrainSettings, tok: TokenizerSettings, run: RunDir,
                 device: torch.device, perceptual: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None) -> None:
        self.cfg, self.data, self.train, self.tok, self.run, self.device = cfg, data, train, tok, run, device
        self.model = Tokenizer(cfg).to(device)
        self.rms = {"mse": RunningRMS().to(device)}
        self.perceptual = perceptual
        if perceptual is not None:
            self.rms["perceptual"] = RunningRMS().to(device)
        self.sampler = FrameSampler(len(data.train), train.batch_size, seed=train.seed)
        self.dist = distributed.current()
        if train.batch_size < self.dist.world:
            raise ConfigError(f"--batch-size {train.batch_size} is smaller than the {self.dist.world} processes "
                              "that share each batch")
        self.mask_gen = torch.Generator().manual_seed(train.seed + 1)
        self.val_idx = data.val.evenly_spaced(tok.val_frames)
        self.preview_idx = data.val.evenly_spaced(8)
        self.frames_seen = 0

    def model_config(self) -> dict[str, Any]:
        return self.cfg.to_dict()

    def weights_extra(self) -> dict[str, Any]:
        d = self.data
        return {"val_videos": d.val.ids if d.val_is_heldout else [], "train_videos": d.train.ids,
                **{k: v for k, v in d.rule.record().items() if k not in ("val_videos", "train_videos")},
                "split": d.rule.record(), "video_fps": d.rates, "preset": self.cfg.preset}

    def steps_per_epoch(self) -> int:
        return steps_per_epoch(len(self.data.train), self.train.batch_size)

    def epochs_done(self) -> float:
        return self.sampler.epochs_done

    def next_batch(self) -> torch.Tensor:
        idx = self.sampler.next()  # the global batch; with several ranks each keeps every world-th frame
        return to_tensor(self.data.train.get(idx[self.dist.rank :: self.dist.world]), self.device)

    def compute(self, x: torch.Tensor, step: int, precision: str) -> StepOut:
        mask = None
        if self.cfg.mask_max > 0:  # drawn for the global batch, as one process would, then this rank's rows
            mask = self.model.sample_mask(self.train.batch_size if self.dist.enabled else x.shape[0], self.mask_gen)
            mask = mask[self.dist.rank :: self.dist.world].to(x.device)
        with autocast(self.device, precision):
            recon, _ = self.train_net(x, mask=mask)
        recon = recon.float()
        mse = torch.nn.functional.mse_loss(recon, x)
        loss = self.rms["mse"](mse)
        if self.perceptual is not None:
            loss = loss + self.tok.perceptual_weight * self.rms["perceptual"](self.perceptual(recon, x))
        self.frames_seen += x.shape[0]
        return StepOut(loss, {"loss": float(mse.detach()), "psnr": float(psnr(recon.detach(), x).mean())}, x.shape[0])

    def timing_step(self, precision: str) -> None:
        x = torch.rand(self.train.batch_size, 3, *self.cfg.size, device=self.device)
        with autocast(self.device, precision):
            recon, _ = self.model(x, generator=torch.Generator().manual_seed(0))
        torch.nn.functional.mse_loss(recon.float(), x).backward()

    def shape_key(self) -> str:
        return f"{json.dumps(self.cfg.to_dict(), sort_keys=True)} batch {self.train.batch_size}"

    def validate(self, step: int, precision: str) -> dict[str, float]:
        res = evaluate(self.model, self.data.val, self.val_idx, self.device, precision)
        if len(self.preview_idx):
            x = to_tensor(self.data.val.get(self.preview_idx), self.device)
            was = self.model.training
            self.model.eval()
            with torch.no_grad(), autocast(self.device, precision):
                r = self.model.decode(self.model.encode(x)).float()
            self.model.train(was)
            if self.dist.main:
                save_comparison(self.run.path / "reconstructions.png", x, r)
        return {"val_psnr": res["psnr"], "val_mse": res["mse"], "heldout": self.data.val_is_heldout}

    def val_line(self, v: dict[str, Any]) -> str:
        return f"val @ step {v['step']}: PSNR {v['val_psnr']:.2f} dB (held-out frames, mask 0)"

    def interval(self, frames: int, seconds: float) -> dict[str, Any]:
        return {"frames_seen": self.frames_seen}

    def display(self, rec: dict[str, Any]) -> dict[str, Any]:
        return {"loss": rec.get("loss"), "psnr": rec.get("psnr")}

    def state_dict(self) -> dict[str, Any]:
        return {"rms": {k: m.state_dict() for k, m in self.rms.items()}, "sampler": self.sampler.state_dict(),
                "mask_generator": self.mask_gen.get_state(), "frames_seen": self.frames_seen}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for k, m in self.rms.items():
            if k in state["rms"]:
                m.load_state_dict(state["rms"][k])
        self.sampler.load_state_dict(state["sampler"])
        self.mask_gen.set_state(state["mask_generator"])
        self.frames_seen = int(state.get("frames_seen", 0))


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
    train = with_preset_defaults(train, "tokenizer")
    run = RunDir(run_dir)
    resuming = bool(train.resume and run.state.is_file())
    device = resolve_device(train.device)

    # ---- model config: from the checkpoint when resuming, else preset + overrides
    state: dict[str, Any] | None = None
    if resuming:
        _, cfg_dict, _ = read_metadata(run.weights)
        cfg = TokenizerConfig.from_dict(cfg_dict)
        state = load_resume_state(run, "tokenizer")
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
        stored = run.meta().get("settings", {})
        old_tok = stored.get("tokenizer")
        if isinstance(old_tok, dict) and isinstance(old_tok.get("size"), int):  # a square run: one number then
            stored = {**stored, "tokenizer": {**old_tok, "size": f"{old_tok['size']}x{old_tok['size']}"}}
        check_resume_settings(stored, {k: settings_record[k] for k in ("train", "tokenizer")}, run.path, RESUMABLE)
        run.update_meta(settings=settings_record)
    run.create("tokenizer", settings_record, resume=bool(train.resume))
    with run.failing_before_loop():
        return _train(run, videos, train, tok, cfg, rule, state, p, device, cache_dir, stop, on_step, after_backward,
                      perceptual)


def new_config(preset: str, tok: TokenizerSettings, videos: Sequence[Any], progress: Progress | None = None) -> TokenizerConfig:
    """The model of a new run: the preset with ``tok``'s overrides, at ``tok.size`` or else at the preset's
    pixel budget shaped to the aspect most of the videos share (``frames.common_aspect``)."""
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
              "threads", "precision", "max_bad_steps", "fsdp", "compile"},
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
        shown = ", ".join(f"{i} ({r:g} fps)" for i, r in list(slow.items())[:5]) + (", ..." if len(slow) > 5 else "")
        p.log(f"{len(slow)} video(s) slower than {cfg.fps:g} fps are read at their own rate: {shown}")
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

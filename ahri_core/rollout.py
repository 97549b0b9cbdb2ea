"""``ahri rollout``: dream the continuation of any video clip, and the pieces eval shares with it.

- :class:`WorldModel` bundles what sampling from a trained run needs: the dynamics model and its
  :class:`~ahri_core.sampler.ModelTraits`, the tokenizer that made its latents, the frame rate and size.
  :func:`load_world_model` builds it from a run directory (or the latest finished dynamics run).
- :func:`rollout_clip` reads a video at the model's fps and size, encodes the first ``context`` frames,
  predicts ``horizon`` frames with the sampler, decodes them and writes an mp4 in which predicted frames
  carry a red border and a label; where the clip has real frames for the predicted span, the truth is shown
  beside the prediction.
- :func:`grid_video` lays out labelled columns of frames (eval's truth | prediction | error videos use it).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import CheckpointError, ConfigError, DataError
from .progress import Progress, ensure
from .sampler import ModelTraits, Sampler, traits_of
from .workspace import Workspace

PRED_COLOR = (235, 45, 45)  # border of predicted frames
CTX_COLOR = (60, 190, 90)  # border of real (context) frames
HEADER = 14  # pixels of the label band above each column


# ---------------------------------------------------------------------------------------------- model


@dataclass
class WorldModel:
    """A trained dynamics run with its tokenizer, ready to sample."""

    dynamics: torch.nn.Module
    traits: ModelTraits
    tokenizer: torch.nn.Module
    fps: float
    size: int
    run_dir: Path
    info: dict[str, Any] = field(default_factory=dict)
    tokenizer_path: Path | None = None
    fit: str = "crop"

    @property
    def name(self) -> str:
        return self.run_dir.name

    @property
    def device(self) -> torch.device:
        return next(self.dynamics.parameters()).device

    def encode(self, frames: torch.Tensor | np.ndarray, batch: int = 64) -> torch.Tensor:
        """Frames (T, 3, H, W) float in [0, 1] or (T, H, W, 3) uint8 -> latents (T, N, C) float32.

        The same encoder path (and bf16 autocast) as ``ahri tokenize``, so rollout context latents match
        the latents the dynamics model was trained on.
        """
        from .models.tokenizer import encode_frames

        out = [encode_frames(self.tokenizer, frames[i : i + batch], self.device) for i in range(0, len(frames), batch)]
        return torch.cat(out) if out else torch.zeros(0)

    def decode(self, latents: torch.Tensor, batch: int = 64) -> torch.Tensor:
        """Latents (..., N, C) -> frames (..., 3, H, W) in [0, 1], decoded in float32 for the metrics."""
        from .models.tokenizer import decode_latents

        lead = latents.shape[:-2]
        flat = latents.reshape(-1, *latents.shape[-2:]).float()
        x = decode_latents(self.tokenizer, flat, batch_size=batch, device=self.device, precision="fp32")
        return x.reshape(*lead, *x.shape[1:])

    def sampler(self, steps: int, tau_ctx: float, cache: bool = True, precision: str = "bf16") -> Sampler:
        return Sampler(self.dynamics, self.traits, steps=steps, tau_ctx=tau_ctx, cache=cache, precision=precision)

    def actions_usable(self) -> bool:
        return getattr(self.dynamics.config, "action_kind", "none") != "none"


def _run_meta(run_dir: Path) -> dict[str, Any]:
    p = run_dir / "run.json"
    if not p.is_file():
        return {}
    try:
        return json.loads(p.read_text())
    except (json.JSONDecodeError, OSError):
        return {}


def latest_dynamics_run(workspace: Workspace) -> Path:
    """The most recently finished dynamics run in the workspace (by its weights' modification time)."""
    best: tuple[float, Path] | None = None
    if workspace.runs.is_dir():
        for d in workspace.runs.iterdir():
            meta = _run_meta(d)
            w = d / "model.safetensors"
            if meta.get("stage") == "dynamics" and meta.get("finished") and w.is_file():
                t = w.stat().st_mtime
                if best is None or t > best[0]:
                    best = (t, d)
    if best is None:
        raise ConfigError(
            f"no finished dynamics run in {workspace.runs}; train one (ahri train) or pass --model RUN"
        )
    return best[1]


def resolve_run(run: str | os.PathLike | None, workspace: Workspace) -> Path:
    """A run given as a path or a name in the workspace; None = the latest finished dynamics run."""
    if run is None:
        return latest_dynamics_run(workspace)
    p = Path(run)
    if p.exists():
        return p
    q = workspace.run_dir(str(run))
    if q.exists():
        return q
    raise ConfigError(f"run {run!r} not found (neither a path nor a run in {workspace.runs})")


def _tokenizer_candidates(info: dict[str, Any], workspace: Workspace) -> list[Path]:
    """Where the tokenizer of a dynamics run may be: named by the latent set's index, or runs/<tokenizer-id>."""
    cands: list[Path] = []
    lat = info.get("latents") or {}
    tid = info.get("tokenizer_id") or lat.get("tokenizer_id") or ""
    lpath = lat.get("path")
    if lpath:
        idx = Path(lpath) / "index.json"
        if idx.is_file():
            try:
                index = json.loads(idx.read_text())
            except (json.JSONDecodeError, OSError):
                index = {}
            for key in ("tokenizer_path", "tokenizer_weights", "tokenizer_run", "tokenizer"):
                v = index.get(key)
                if isinstance(v, str) and v:
                    cands.append(Path(v))
    if tid:
        cands.append(workspace.run_dir(tid))
    return cands


def _load_tokenizer_file(path: Path, device: torch.device) -> torch.nn.Module:
    """A tokenizer from a run directory (its inference weights: EMA when present) or a weights file."""
    from .models.tokenizer import load_tokenizer, weights_for_inference

    w = weights_for_inference(path) if path.is_dir() else path
    tok, _ = load_tokenizer(w, device=device)
    return tok.eval()


def load_world_model(
    run: str | os.PathLike | None,
    workspace: Workspace | None = None,
    tokenizer: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
) -> WorldModel:
    """Load a dynamics run (path or name; None = the latest finished one) and the tokenizer it was trained on."""
    from .models.dynamics import load_dynamics_run

    ws = workspace or Workspace.resolve()
    run_dir = resolve_run(run, ws)
    model, info = load_dynamics_run(run_dir, device=device)
    traits = traits_of(model, info)
    cands = [Path(tokenizer)] if tokenizer is not None else _tokenizer_candidates(info, ws)
    tok_path = next((c for c in cands if c.exists()), None)
    if tok_path is None:
        tried = ", ".join(str(c) for c in cands) or "nothing recorded in the run"
        raise CheckpointError(
            f"cannot find the tokenizer of run {run_dir.name} (tried {tried}); pass it with --tokenizer RUN"
        )
    tok = _load_tokenizer_file(tok_path, torch.device(device))
    cfg = getattr(tok, "cfg", None) or getattr(tok, "config", None)
    size = int(getattr(cfg, "image_size", 64))
    fps = float(getattr(cfg, "fps", 0) or (info.get("latents") or {}).get("fps") or 20.0)
    tok_tokens, tok_channels = int(getattr(cfg, "tokens", 0)), int(getattr(cfg, "channels", 0))
    dcfg = model.config
    if (tok_tokens, tok_channels) != (dcfg.tokens, dcfg.channels):
        raise CheckpointError(
            f"tokenizer {tok_path} makes latents {tok_tokens}x{tok_channels} but run {run_dir.name} was trained on "
            f"{dcfg.tokens}x{dcfg.channels}"
        )
    return WorldModel(
        dynamics=model, traits=traits, tokenizer=tok, fps=fps, size=size, run_dir=Path(run_dir), info=info,
        tokenizer_path=tok_path,
    )


# ---------------------------------------------------------------------------------------------- pictures


def to_uint8(frames: torch.Tensor | np.ndarray) -> np.ndarray:
    """float (..., 3, H, W) in [0, 1] -> uint8 (..., H, W, 3)."""
    x = frames.detach().cpu().float().numpy() if isinstance(frames, torch.Tensor) else np.asarray(frames, np.float32)
    x = np.moveaxis(x, -3, -1)
    return np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)


def to_float(frames: np.ndarray) -> torch.Tensor:
    """uint8 (..., H, W, 3) -> float (..., 3, H, W) in [0, 1]."""
    return torch.from_numpy(np.moveaxis(np.asarray(frames, np.float32) / 255.0, -1, -3).copy())


def error_frames(pred: torch.Tensor, truth: torch.Tensor, gain: float = 4.0) -> torch.Tensor:
    """|pred - truth| per pixel, amplified by ``gain`` and shown grey-scale (brighter = worse)."""
    e = (pred.float() - truth.float()).abs().mean(dim=-3, keepdim=True) * gain
    return e.clamp(0, 1).expand_as(pred).contiguous()


@dataclass
class Column:
    """One column of a :func:`grid_video`: a title, uint8 frames (T, H, W, 3), and which frames are predicted."""

    title: str
    frames: np.ndarray
    predicted: np.ndarray | None = None  # (T,) bool; None = none
    marked: bool = True  # draw borders (green real, red predicted)


def _font():
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=10)
    except TypeError:  # older Pillow
        return ImageFont.load_default()


def grid_video(columns: list[Column], scale: int = 4, border: int = 2, status: list[str] | None = None) -> np.ndarray:
    """Side-by-side columns, each upscaled ``scale`` times (nearest), predicted frames framed in red.

    Returns uint8 (T, HEADER + h*scale, sum(w*scale), 3) with even height and width (mp4 needs it).
    ``status``: an optional line per frame written in the header after the titles.
    """
    from PIL import Image, ImageDraw

    if not columns:
        raise ValueError("grid_video needs at least one column")
    T = len(columns[0].frames)
    h, w = columns[0].frames.shape[1:3]
    for c in columns:
        if c.frames.shape != (T, h, w, 3):
            raise ValueError(f"column {c.title!r}: frames {c.frames.shape} differ from {(T, h, w, 3)}")
    hh, ww = h * scale, w * scale
    b = max(1, border * scale // 2)
    H = HEADER + hh
    W = ww * len(columns)
    H += H % 2
    W += W % 2
    font = _font()
    # The header text is the same for every frame except the status: draw the titles once.
    base = Image.new("RGB", (W, H), (24, 24, 24))
    d = ImageDraw.Draw(base)
    for i, c in enumerate(columns):
        d.text((i * ww + 3, 2), c.title, fill=(235, 235, 235), font=font)
    base_arr = np.asarray(base).copy()
    out = np.empty((T, H, W, 3), np.uint8)
    for t in range(T):
        frame = base_arr.copy()
        for i, c in enumerate(columns):
            tile = np.repeat(np.repeat(c.frames[t], scale, axis=0), scale, axis=1)
            if c.marked:
                pred = bool(c.predicted[t]) if c.predicted is not None else False
                color = np.array(PRED_COLOR if pred else CTX_COLOR, np.uint8)
                thick = b if pred else max(1, b // 2)
                tile = tile.copy()
                tile[:thick], tile[-thick:], tile[:, :thick], tile[:, -thick:] = color, color, color, color
            frame[HEADER : HEADER + hh, i * ww : (i + 1) * ww] = tile
        out[t] = frame
        if status is not None and status[t]:
            img = Image.fromarray(out[t])
            ImageDraw.Draw(img).text((W - 3, 2), status[t], fill=(255, 210, 80), font=font, anchor="ra")
            out[t] = np.asarray(img)
    return out


# ---------------------------------------------------------------------------------------------- rollout


@dataclass
class RolloutReport:
    out: Path
    frames_written: int
    fps: float
    size: tuple[int, int]  # (height, width) of the written video
    context: int
    horizon: int
    steps: int
    tau_ctx: float
    frames_per_s: float  # predicted frames per second of sampling (latents only)
    end_to_end_frames_per_s: float  # including encode and decode
    compared: int  # predicted frames that had a real frame beside them
    psnr: list[float] = field(default_factory=list)  # per predicted frame with truth
    copy_last_psnr: list[float] = field(default_factory=list)
    run: str = ""

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["out"] = str(self.out)
        return d


def load_clip_actions(video: Path, fps: float) -> np.ndarray | None:
    """Actions from the clip's sidecar (``<clip>.json``) when it has some at the model's frame rate."""
    side = video.with_suffix(".json")
    if not side.is_file():
        return None
    try:
        from .sources.store import load_record

        rec = load_record(side)
    except Exception:  # noqa: BLE001 - a foreign or damaged sidecar simply means "no actions"
        return None
    if rec.actions is None or abs(rec.fps - fps) > 1e-3:
        return None
    return np.asarray(rec.actions)


def rollout_clip(
    clip: str | os.PathLike,
    world: WorldModel,
    steps: int = 4,
    context: int = 16,
    horizon: int = 32,
    tau_ctx: float = 0.1,
    out: str | os.PathLike | None = None,
    seed: int = 0,
    actions: np.ndarray | None = None,
    scale: int = 4,
    precision: str = "bf16",
    progress: Progress | None = None,
) -> RolloutReport:
    """Predict ``horizon`` frames after the first ``context`` frames of ``clip`` and write them as an mp4.

    ``actions``: per frame of the clip (the project convention, ``actions[t]`` produced frame t; may extend
    beyond the clip to steer the dreamed future); by default the clip's sidecar actions when present, else
    "no action" everywhere.
    """
    from .evaluation import psnr_per_image
    from .video import read_frames, write_video

    prog = ensure(progress)
    clip = Path(clip)
    if context < 1 or horizon < 1:
        raise ConfigError(f"--context ({context}) and --horizon ({horizon}) must be at least 1")
    if not clip.is_file():
        raise DataError(f"clip {clip} does not exist")
    sampler = world.sampler(steps, tau_ctx, precision=precision)  # checks steps before any decoding
    t_all = time.perf_counter()
    frames = read_frames(clip, fps=world.fps, size=world.size, fit=world.fit, max_frames=context + horizon)
    if len(frames) < context:
        raise DataError(
            f"{clip} has {len(frames)} frames at {world.fps:g} fps, fewer than --context {context}; "
            f"use a longer clip or a smaller --context"
        )
    real = to_float(frames)  # (T, 3, H, W)
    prog.log(f"encoding {context} context frames of {clip.name}")
    ctx_lat = world.encode(frames[:context])  # (C, N, Ch), the tokenize path
    if actions is None:
        actions = load_clip_actions(clip, world.fps)
    act = None
    if actions is not None and world.actions_usable():
        a = torch.as_tensor(np.asarray(actions))
        if a.dtype.is_floating_point == (world.dynamics.config.action_kind == "discrete"):
            raise DataError(f"actions for {clip} are of the wrong kind for this model ({world.dynamics.config.action_kind})")
        act = a[None].long() if not a.dtype.is_floating_point else a[None].float()
    res = sampler.rollout(ctx_lat[None], horizon, actions=act, generator=seed, progress=prog)
    pred = world.decode(res.latents[0])  # (H, 3, h, w)
    n_truth = max(0, len(frames) - context)
    psnr, copy_last = [], []
    if n_truth:
        truth = real[context : context + n_truth]
        psnr = [float(x) for x in psnr_per_image(pred[:n_truth], truth)]
        copy_last = [float(x) for x in psnr_per_image(real[context - 1].expand_as(truth), truth)]
    # Compose: [truth |] model, context frames then predictions.
    model_col = np.concatenate([frames[:context], to_uint8(pred)])
    predicted = np.array([False] * context + [True] * horizon)
    cols = []
    if n_truth:
        blank = np.full((horizon - n_truth, *frames.shape[1:]), 40, np.uint8)
        cols.append(Column("truth", np.concatenate([frames[: context + n_truth], blank]), None, marked=False))
    cols.append(Column(f"ahri {steps} steps", model_col, predicted))
    status = [f"context {t + 1}/{context}" if t < context else f"predicted +{t - context + 1}" for t in range(context + horizon)]
    video = grid_video(cols, scale=scale, status=status)
    if out is None:
        out = world.run_dir / "rollouts" / f"{clip.stem}-steps{steps}.mp4"
    out = Path(out)
    n = write_video(out, video, world.fps)
    total = time.perf_counter() - t_all
    return RolloutReport(
        out=out,
        frames_written=n,
        fps=world.fps,
        size=(int(video.shape[1]), int(video.shape[2])),
        context=context,
        horizon=horizon,
        steps=steps,
        tau_ctx=tau_ctx,
        frames_per_s=res.frames_per_s,
        end_to_end_frames_per_s=horizon / total if total > 0 else float("inf"),
        compared=n_truth,
        psnr=psnr,
        copy_last_psnr=copy_last,
        run=world.name,
    )

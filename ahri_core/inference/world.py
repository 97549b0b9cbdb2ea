"""``ahri rollout``: dream the continuation of any video clip, and the pieces eval shares with it.

- :class:`WorldModel` bundles what sampling from a trained run needs: the dynamics model and its
  :class:`~ahri_core.inference.sampler.ModelTraits`, the tokenizer that made its latents, the frame rate and size.
  :func:`load_world_model` builds it from a run directory (or the latest finished dynamics run).
- :func:`rollout_clip` reads a video at the model's fps and size, encodes the first ``context`` frames,
  predicts ``horizon`` frames with the sampler, decodes them and writes an mp4 in which predicted frames
  carry a red border and a label; where the clip has real frames for the predicted span, the truth is shown
  beside the prediction.
- the dynamics model samples in the precision ``auto`` resolves to for this machine, model and batch
  shape (:meth:`WorldModel.choose_precision`, measured once and cached in the workspace); the report says
  which and why. The tokenizer encodes and decodes in fp32.

Frame pictures (grids, error frames, conversions) live in :mod:`ahri_core.visual`, the metrics in
:mod:`ahri_core.eval.metrics`; this module and :mod:`ahri_core.eval.evaluate` both use them and never each other.
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

from ..errors import CheckpointError, ConfigError, DataError
from ..eval.metrics import psnr_per_image
from ..progress import Progress, ensure
from ..runtime import PrecisionChoice
from ..visual import (
    CTX_COLOR,
    HEADER,
    PRED_COLOR,
    Column,
    crop_box,
    error_frames,
    grid_video,
    to_float,
    to_uint8,
)
from ..workspace import Workspace, read_run_meta, run_status
from .sampler import ModelTraits, Sampler, traits_of

__all__ = [
    "RolloutReport",
    "WorldModel",
    "latest_dynamics_run",
    "load_clip_actions",
    "load_world_model",
    "resolve_run",
    "rollout_clip",
    # frame pictures live in ahri_core.visual; the names stay importable here
    "CTX_COLOR",
    "HEADER",
    "PRED_COLOR",
    "Column",
    "error_frames",
    "grid_video",
    "to_float",
    "to_uint8",
]


# ---------------------------------------------------------------------------------------------- model


@dataclass
class WorldModel:
    """A trained dynamics run with its tokenizer, ready to sample."""

    dynamics: torch.nn.Module
    traits: ModelTraits
    tokenizer: torch.nn.Module
    fps: float
    size: tuple[int, int]  # (height, width) of the tokenizer's frames
    run_dir: Path
    info: dict[str, Any] = field(default_factory=dict)
    tokenizer_path: Path | None = None
    fit: str = "pad"  # how the tokenizer brings a frame of another aspect to its size
    workspace: Workspace | None = None  # where the run was found (its cache holds precision measurements)

    @property
    def name(self) -> str:
        return self.run_dir.name

    @property
    def device(self) -> torch.device:
        return next(self.dynamics.parameters()).device

    def check_finite(self, latents: torch.Tensor) -> torch.Tensor:
        """Predicted latents, or an error naming the weights file when they hold NaN or inf (damaged or
        diverged weights that still load) -- before anything is decoded or written."""
        if not bool(torch.isfinite(latents).all()):
            path = self.info.get("path") or self.run_dir
            raise CheckpointError(
                f"dynamics model {path} produced non-finite latents; the weights are damaged or the training "
                "diverged: retrain, or evaluate another checkpoint (best.safetensors)"
            )
        return latents

    def encode(self, frames: torch.Tensor | np.ndarray, batch: int = 64) -> torch.Tensor:
        """Frames (T, 3, H, W) float in [0, 1] or (T, H, W, 3) uint8 -> latents (T, N, C) float32.

        The same encoder path as ``ahri tokenize`` (:func:`~ahri_core.models.tokenizer.encode_frames`), so
        rollout context latents match the latents the dynamics model was trained on; here in fp32 (tokenize
        may have run in bf16, which changes the latents by bf16 rounding only).
        """
        from ..models.tokenizer import encode_frames

        out = [encode_frames(self.tokenizer, frames[i : i + batch], self.device) for i in range(0, len(frames), batch)]
        return torch.cat(out) if out else torch.zeros(0)

    def decode(self, latents: torch.Tensor, batch: int = 64) -> torch.Tensor:
        """Latents (..., N, C) -> frames (..., 3, H, W) in [0, 1], decoded in float32 for the metrics."""
        from ..models.tokenizer import decode_latents

        lead = latents.shape[:-2]
        flat = latents.reshape(-1, *latents.shape[-2:]).float()
        x = decode_latents(self.tokenizer, flat, batch_size=batch, device=self.device, precision="fp32")
        return x.reshape(*lead, *x.shape[1:])

    def sampler(self, steps: int, tau_ctx: float, cache: bool = True, precision: str = "fp32") -> Sampler:
        """A :class:`~ahri_core.inference.sampler.Sampler` of this model in a resolved precision ("bf16" or "fp32")."""
        if precision == "auto":
            raise ConfigError("precision 'auto' must be resolved first (WorldModel.choose_precision)")
        return Sampler(self.dynamics, self.traits, steps=steps, tau_ctx=tau_ctx, cache=cache, precision=precision)

    def precision_key(self, batch: int, frames: int) -> str:
        """The model and the batch shape in a few words: what a cached precision measurement is valid for."""
        import hashlib

        cfg = self.dynamics.config
        fields = cfg.weights_fields() if hasattr(cfg, "weights_fields") else dict(getattr(cfg, "__dict__", {}))
        digest = hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()[:10]
        shape = f"{getattr(cfg, 'tokens', '?')}x{getattr(cfg, 'channels', '?')}"
        return f"dynamics {type(self.dynamics).__name__} {digest} latents {shape} batch {batch}x{frames}"

    def choose_precision(
        self, requested: str, batch: int, frames: int, cache_dir: str | os.PathLike | None = None
    ) -> PrecisionChoice:
        """Resolve ``requested`` ("auto", "bf16", "fp32") for sampling this model on its device.

        ``auto`` goes through :func:`ahri_core.runtime.choose_precision`; where it must measure (a CPU with
        native bf16), the step it times is one forward call of the dynamics model on ``batch`` clips of
        ``frames`` frames (the sampler's shape: the context window plus the new frame) under
        ``runtime.autocast``, inside ``torch.inference_mode()``. The result is cached in
        ``<cache_dir>/precision.json`` per machine and per :meth:`precision_key`.
        """
        from .. import runtime

        dev = self.device
        cfg = self.dynamics.config
        if self.traits.max_frames is not None:
            frames = min(frames, self.traits.max_frames)
        batch, frames = max(1, int(batch)), max(1, int(frames))

        def step(p: str) -> None:
            g = torch.Generator().manual_seed(0)
            z = torch.randn((batch, frames, cfg.tokens, cfg.channels), generator=g).to(dev)
            tau = torch.full((batch, frames), 0.5, device=dev)
            d = torch.full((batch, frames), self.traits.d_min, device=dev)
            with torch.inference_mode(), runtime.autocast(dev, p):
                self.dynamics(z, tau, d)

        return runtime.choose_precision(
            requested, dev, step=step, key=self.precision_key(batch, frames), cache_dir=cache_dir
        )

    def actions_usable(self) -> bool:
        """Whether the model takes the real actions of a clip (a latent-action model takes its own codes)."""
        return self.latent_actions is None and getattr(self.dynamics.config, "action_kind", "none") != "none"

    @property
    def latent_actions(self) -> torch.nn.Module | None:
        """The run's latent action encoder (:class:`~ahri_core.models.latent_actions.LatentActionModel`), if any."""
        return getattr(self.dynamics, "action_model", None)

    @property
    def code_count(self) -> int | None:
        """Latent codes (quantised latent-action runs) or real discrete actions the model takes; else None."""
        lam = self.latent_actions
        if lam is not None:
            return int(lam.config.codes) if lam.config.quantize else None
        cfg = self.dynamics.config
        return int(cfg.action_count) if getattr(cfg, "action_kind", "none") == "discrete" else None

    @torch.no_grad()
    def infer_codes(self, latents: torch.Tensor) -> torch.Tensor:
        """Latent codes of a clip's latents (T, N, C) -> (T,) int64, frame 0 = -1 (latent-action runs)."""
        from ..models.latent_actions import video_codes

        if self.latent_actions is None:
            raise ConfigError(f"run {self.name} has no latent actions (train with ahri train --latent-actions)")
        return video_codes(self.dynamics, latents)

    def action_names(self) -> dict[str, int]:
        """Names usable in ``--actions``: the few-label map of a latent-action run (name -> code), or the
        real action names of a discrete-action run (name -> id)."""
        if self.latent_actions is not None:
            amap = self.info.get("action_map") or {}
            return {str(k): int(v) for k, v in (amap.get("names") or {}).items()}
        meanings = (self.info.get("latents") or {}).get("action_meanings") or []
        return {str(m): i for i, m in enumerate(meanings)}


def latest_dynamics_run(workspace: Workspace) -> Path:
    """The most recently finished dynamics run in the workspace (by its weights' modification time)."""
    best: tuple[float, Path] | None = None
    if workspace.runs.is_dir():
        for d in workspace.runs.iterdir():
            meta = read_run_meta(d)
            w = d / "model.safetensors"
            if meta.get("stage") == "dynamics" and run_status(meta)[0] == "finished" and w.is_file():
                t = w.stat().st_mtime
                if best is None or t > best[0]:
                    best = (t, d)
    if best is None:
        raise ConfigError(
            f"no finished dynamics run in {workspace.runs}; train one (ahri train) or name a run (ahri eval RUN, ahri rollout CLIP --model RUN)"
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
    from ..models.tokenizer import load_tokenizer, weights_for_inference

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
    from ..models.latent_actions import load_world_dynamics

    ws = workspace or Workspace.resolve()
    run_dir = resolve_run(run, ws)
    model, info = load_world_dynamics(run_dir, device=device)  # plain and latent-action runs
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
    size = (int(cfg.height), int(cfg.width))
    # the rate the dynamics model was trained at: its latent set's (videos slower than the tokenizer's rate
    # keep their own), else the tokenizer's
    fps = float((info.get("latents") or {}).get("fps") or getattr(cfg, "fps", 0) or 20.0)
    tok_tokens, tok_channels = int(getattr(cfg, "tokens", 0)), int(getattr(cfg, "channels", 0))
    dcfg = model.config
    if (tok_tokens, tok_channels) != (dcfg.tokens, dcfg.channels):
        raise CheckpointError(
            f"tokenizer {tok_path} makes latents {tok_tokens}x{tok_channels} but run {run_dir.name} was trained on "
            f"{dcfg.tokens}x{dcfg.channels}"
        )
    return WorldModel(
        dynamics=model, traits=traits, tokenizer=tok, fps=fps, size=size, run_dir=Path(run_dir), info=info,
        tokenizer_path=tok_path, workspace=ws, fit=str(cfg.fit),
    )


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
    future_actions: list[int] = field(default_factory=list)  # codes / action ids of the predicted frames (-1 none)
    actions_source: str = ""  # where they came from: given, another clip, the clip itself, none
    precision: str = ""  # of the dynamics model while sampling: "bf16" or "fp32"
    precision_reason: str = ""  # why (forced, the device, or a measurement on this machine)

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["out"] = str(self.out)
        return d


def load_clip_actions(video: Path, fps: float, count: int | None = None) -> np.ndarray | None:
    """Actions from the clip's sidecar (``<clip>.json``), carried over to frames read at ``fps``
    (``data.videos.resample_actions``: discrete, the action in force; continuous, the mean since the
    previous kept frame). ``count``: frames read (default: as many as the actions cover)."""
    side = video.with_suffix(".json")
    if not side.is_file():
        return None
    try:
        from ..sources.store import load_record

        rec = load_record(side)
    except Exception:  # noqa: BLE001 - a foreign or damaged sidecar simply means "no actions"
        return None
    if rec.actions is None:
        return None
    acts = np.asarray(rec.actions)
    if not rec.fps or abs(rec.fps - fps) <= 1e-3 * fps:
        return acts
    from ..data.videos import resample_actions
    from ..video import resampled_count

    n = count if count is not None else resampled_count(len(acts), rec.fps, fps)
    return resample_actions(acts, rec.fps, fps, n)


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
    precision: str = "auto",
    progress: Progress | None = None,
    workspace: Workspace | None = None,
    future: list[int] | None = None,
    codes_from: str | os.PathLike | None = None,
) -> RolloutReport:
    """Predict ``horizon`` frames after the first ``context`` frames of ``clip`` and write them as an mp4.

    ``future``: the actions of the predicted frames, in order (latent codes for a latent-action run, action
    ids for a discrete-action run; -1 = no action; a shorter list leaves the rest "no action").
    ``codes_from``: another clip whose inferred latent codes for the same frame indices steer the rollout
    (latent-action runs). A latent-action run always conditions the context frames on the codes inferred
    from them, and, with neither option, the predicted frames on the codes of the clip's own later frames
    where it has them.

    ``actions``: per frame of the clip (the project convention, ``actions[t]`` produced frame t; may extend
    beyond the clip to steer the dreamed future); by default the clip's sidecar actions when present, else
    "no action" everywhere. ``precision``: of the dynamics model, "auto" (default; see
    :meth:`WorldModel.choose_precision`, cached in the cache of ``workspace`` or of the world's workspace),
    "bf16" or "fp32"; the report records the precision used and why.
    """
    from ..video import read_frames, write_video

    prog = ensure(progress)
    clip = Path(clip)
    if context < 1 or horizon < 1:
        raise ConfigError(f"--context ({context}) and --horizon ({horizon}) must be at least 1")
    if not clip.is_file():
        raise DataError(f"clip {clip} does not exist")
    world.sampler(steps, tau_ctx)  # refuses impossible steps or tau_ctx before any timing or decoding
    t_all = time.perf_counter()
    from ..video import capped_fps, content_box, probe

    try:
        info = probe(clip, count=False)
        clip_fps, source = float(info.fps or 0) or None, (int(info.width), int(info.height))
    except Exception:  # noqa: BLE001 - read_frames below names a bad file clearly
        clip_fps, source = None, None
    rate = capped_fps(world.fps, clip_fps)  # never above the clip's own rate (no repeated frames)
    if rate < world.fps - 1e-6:
        prog.log(f"{clip.name} runs at {rate:g} fps, below the model's {world.fps:g} fps: read at its own rate")
    frames = read_frames(clip, fps=rate, size=world.size, fit=world.fit, max_frames=context + horizon)
    if len(frames) < context:
        raise DataError(
            f"{clip} has {len(frames)} frames at {rate:g} fps, fewer than --context {context}; "
            f"use a longer clip or a smaller --context"
        )
    ws = workspace if workspace is not None else world.workspace
    t_choice = time.perf_counter()
    choice = world.choose_precision(precision, batch=1, frames=context + 1, cache_dir=ws.cache if ws is not None else None)
    t_choice = time.perf_counter() - t_choice  # a first measurement is not part of the rollout's speed
    prog.log(f"rollout: dynamics model in {choice.line()}")
    sampler = world.sampler(steps, tau_ctx, precision=choice.precision)
    real = to_float(frames)  # (T, 3, H, W)
    prog.log(f"encoding {context} context frames of {clip.name}")
    ctx_lat = world.encode(frames[:context])  # (C, N, Ch), the tokenize path
    act, future_used, act_source = _rollout_actions(world, clip, frames, ctx_lat, context, horizon, rate, actions,
                                                    future, codes_from, prog)
    res = sampler.rollout(ctx_lat[None], horizon, actions=act, generator=seed, progress=prog)
    pred = world.decode(world.check_finite(res.latents)[0])  # (H, 3, h, w)
    # Scores and the written video cover the picture only: the bars that ``pad`` added are cut off, so the
    # video has the clip's own aspect.
    box = content_box(source, world.size, world.fit) if source is not None else (0, 0, *world.size)
    frames, real, pred = crop_box(frames, box), crop_box(real, box), crop_box(pred, box)
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
    n = write_video(out, video, rate)
    total = time.perf_counter() - t_all - t_choice
    return RolloutReport(
        out=out,
        frames_written=n,
        fps=rate,
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
        future_actions=future_used,
        actions_source=act_source,
        precision=choice.precision,
        precision_reason=choice.reason,
    )


def _rollout_actions(world, clip, frames, ctx_lat, context, horizon, rate, actions, future, codes_from, prog):
    """The (1, context + horizon, ...) actions of a rollout, the future ones as a list, and their source."""
    from ..video import read_frames

    total = context + horizon
    if future is not None and codes_from is not None:
        raise ConfigError("give --actions or --actions-from, not both")
    count = world.code_count
    if future is not None:
        future = [int(v) for v in future][:horizon]
        if count is None:
            raise ConfigError(f"run {world.name} takes no discrete actions or latent codes; --actions does not apply")
        bad = [v for v in future if v < -1 or v >= count]
        if bad:
            raise ConfigError(f"--actions: {bad[0]} is out of range; accepted -1 (no action) to {count - 1}")
    lam = world.latent_actions
    if lam is None:
        if codes_from is not None:
            raise ConfigError(f"run {world.name} has no latent actions; --actions-from needs a run trained with --latent-actions")
        if actions is None:
            actions = load_clip_actions(clip, rate, count=len(frames))
        if not world.actions_usable():
            return None, [], "none"
        if future is not None:
            past = torch.full((context,), -1, dtype=torch.long)
            if actions is not None and not np.asarray(actions).dtype.kind == "f":
                known = torch.as_tensor(np.asarray(actions))[:context].long()
                past[: len(known)] = known
            fut = torch.full((horizon,), -1, dtype=torch.long)
            fut[: len(future)] = torch.tensor(future, dtype=torch.long)
            return torch.cat([past, fut])[None], future, "given"
        if actions is None:
            return None, [], "none"
        a = torch.as_tensor(np.asarray(actions))
        if a.dtype.is_floating_point == (world.dynamics.config.action_kind == "discrete"):
            raise DataError(f"actions for {clip} are of the wrong kind for this model ({world.dynamics.config.action_kind})")
        act = a[None].long() if not a.dtype.is_floating_point else a[None].float()
        fut_ids = act[0, context:total].tolist() if not a.dtype.is_floating_point else []
        return act, [int(v) for v in fut_ids], "clip"
    # latent actions: context frames keep the actions inferred from them
    dev = world.device
    with torch.no_grad():
        vec = torch.full((total, lam.config.dims), float("nan"), device=dev)
        vec[:context] = lam(ctx_lat[None].to(dev))[0]
        if future is not None:
            vec[context : context + len(future)] = lam.vectors(torch.tensor(future, dtype=torch.long)).to(dev)
            source = "given"
        else:
            src_frames, source = frames, "clip"
            if codes_from is not None:
                other = Path(codes_from)
                if not other.is_file():
                    raise DataError(f"--actions-from: {other} does not exist")
                src_frames = read_frames(other, fps=rate, size=world.size, fit=world.fit, max_frames=total)
                source = f"codes of {other.name}"
                if len(src_frames) < context + 1:
                    raise DataError(f"--actions-from: {other} has {len(src_frames)} frames, fewer than --context + 1")
            if len(src_frames) > context:
                prog.log(f"inferring latent actions from {len(src_frames)} frames ({source})")
                inferred = lam(world.encode(src_frames)[None].to(dev))[0]
                n = min(total, len(inferred))
                vec[context:n] = inferred[context:n]
            else:
                source = "none"
    used = lam.fsq.to_index(vec[context:]).tolist() if lam.config.quantize else []
    return vec[None], [int(v) for v in used], source

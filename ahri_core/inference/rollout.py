"""``ahri rollout``: dream the continuation of any video clip with a :class:`~ahri_core.inference.world.WorldModel`.

- :func:`rollout_clip` reads a video at the model's fps and size, encodes the first ``context`` frames,
  predicts ``horizon`` frames with the sampler, decodes them and writes an mp4 in which predicted frames
  carry a red border and a label; where the clip has real frames for the predicted span, the truth is shown
  beside the prediction. :class:`RolloutReport` says what was written, how fast and how close to the truth.
- the actions that steer the predicted frames come from the caller, from the clip's sidecar
  (:func:`load_clip_actions`), or, for a latent-action run, from the codes inferred from a clip.
- the dynamics model samples in the precision ``auto`` resolves to for this machine, model and batch
  shape (:meth:`~ahri_core.inference.world.WorldModel.choose_precision`, measured once and cached in the
  workspace); the report says which and why. The tokenizer encodes and decodes in fp32.

Frame pictures (grids, error frames, conversions) live in :mod:`ahri_core.visual`, the metrics in
:mod:`ahri_core.eval.metrics`; this module and :mod:`ahri_core.eval.evaluate` both use them and never each other.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError, DataError
from ..eval.metrics import psnr_per_image
from ..progress import Progress, ensure
from ..visual import Column, crop_box, grid_video, to_float, to_uint8
from ..workspace import Workspace
from .world import WorldModel

__all__ = [
    "RolloutReport",
    "load_clip_actions",
    "rollout_clip",
]



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
    (``data.frames.resample_actions``: discrete, the action in force; continuous, the mean since the
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


def _rollout_actions(
    world: WorldModel,
    clip: Path,
    frames: np.ndarray,
    ctx_lat: torch.Tensor,
    context: int,
    horizon: int,
    rate: float,
    actions: np.ndarray | None,
    future: list[int] | None,
    codes_from: str | os.PathLike | None,
    prog: Progress,
) -> tuple[torch.Tensor | None, list[int], str]:
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

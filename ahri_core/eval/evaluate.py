"""``ahri eval``: rollouts on held-out videos measured in pixel space next to two baselines.

For every evaluation clip (a window of ``context + horizon`` frames from a *validation* video of the latent
store: a model scored on the videos it trained on looks better than it is) and every horizon step h = 1..H:

* prediction: the sampler (:mod:`ahri_core.inference.sampler`) rolls the dynamics model out from the true context
  latents; the predicted latents are decoded by the run's tokenizer and compared with the real frame;
* copy-last-frame baseline: the last real context frame compared with the real frame h steps later
  ("nothing moves": in a slow game this already scores high, so a model must beat it to show it predicts);
* tokenizer ceiling: decode of the true latents of that frame compared with the real frame (the best any
  dynamics model could score through this tokenizer).

All three are measured on the very same real frames ([0, 1] RGB, in pixel space: latent errors do not compare
across tokenizers nor with the baselines): SSIM and MSE as means over
clips with a 95% interval (Student t), PSNR as the PSNR of the mean MSE over clips (an unchanged frame, which
copy-last predicts exactly, would otherwise enter a mean of per-clip PSNRs at the 100 dB cap; that mean is
kept as ``psnr_clip_mean``). Latent MSE (prediction vs true latents) is reported too.
"Real frames" are the video decoded at the tokenizer's fps and size, the frames that were tokenized; if the
video file is gone the decoded true latents stand in and the report says so. Only the clips' frames are
decoded and kept (:func:`~ahri_core.eval.clips.read_clip_frames`), so memory does not grow with the length of
the videos.

The clips come from :mod:`ahri_core.eval.clips`, the probes from :mod:`ahri_core.eval.probes`, the layout of
``metrics.json`` from :mod:`ahri_core.eval.report`, the metrics from :mod:`ahri_core.eval.metrics`, the plot
and the sample videos from :mod:`ahri_core.visual` (shared with :mod:`ahri_core.inference.rollout`; this module
does not import that one). The dynamics model samples in the precision ``auto`` resolves to (the world model's
``choose_precision``), recorded in ``metrics.json``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..errors import DataError
from ..inference.sampler import check_steps
from ..inference.world import WorldModel
from ..progress import Progress
from ..visual import Column, crop_box, error_frames, grid_video, plot_curves, to_uint8
from ..workspace import Workspace
from .clips import ClipRef, clip_content_box, clip_latents, read_clip_frames, select_clips
from .metrics import (
    high_frequency_energy,
    image_metrics,
    masked_squared_error,
    psnr_over_clips,
    static_mask,
)
from .probes import action_rollout_probe, latent_action_conditions, rollout_batches, run_probes
from .report import EvalMetrics, EvalReport, ScoredSettings, detail_blocks, metric_block, summarize_curves

if TYPE_CHECKING:
    from ..config.settings import SamplingSettings
    from ..data.windows import LatentSet, LatentVideo
    from ..runtime import PrecisionChoice

__all__ = ["evaluate"]


def evaluate(
    world: WorldModel,
    latents: str | os.PathLike | None = None,
    settings: SamplingSettings | None = None,
    out_dir: str | os.PathLike | None = None,
    workspace: Workspace | None = None,
    samples: int = 2,
    precision: str = "auto",
    progress: Progress | None = None,
    split: str = "val",
    probes: bool = True,
) -> EvalReport:
    """Evaluate a :class:`~ahri_core.inference.world.WorldModel` on held-out videos; see the module docstring.

    ``latents``: the latent set (default: the one the run was trained on); only its validation split is
    used. ``settings``: :class:`~ahri_core.config.settings.SamplingSettings` (steps, context, horizon, tau_ctx,
    clips, seed, batch_size). ``precision``: of the dynamics model while sampling, "auto" (default: resolved
    by :func:`ahri_core.runtime.choose_precision` for this model and batch shape, measured once per machine
    and cached in the workspace's cache), "bf16" or "fp32"; the tokenizer decodes in fp32 for the metrics.
    Writes ``metrics.json`` (with the precision used and why), ``psnr.png`` and ``sample-<i>.mp4`` into
    ``out_dir`` (default ``<run>/eval/<id>``).
    ``split``: "val" (default, held-out videos) or "train" (the training videos, to measure the gap between
    the two; never a substitute for held-out numbers). ``probes``: also run the context probes
    (:func:`~ahri_core.eval.probes.context_probe` with the first step count,
    :func:`~ahri_core.eval.probes.teacher_forced_next`), stored under ``probes``.
    """
    from ..config.settings import SamplingSettings
    from ..progress import ensure

    s = settings or SamplingSettings()
    prog = ensure(progress)
    lat_path, lset, pool = _check_and_load(world, latents, s, split)
    C, H = s.context, s.horizon
    refs = _pick_clips(pool, s, split)
    n = len(refs)
    ws = workspace if workspace is not None else getattr(world, "workspace", None)
    choice = world.choose_precision(
        precision, batch=min(s.batch_size, n), frames=C + 1, cache_dir=ws.cache if ws is not None else None
    )
    prog.log(f"eval: dynamics model in {choice.line()}")
    truth = _load_truth(world, pool, refs, C + H, lat_path, ws, prog)

    def decode(z: torch.Tensor) -> torch.Tensor:
        return crop_box(world.decode(z), truth.box)

    target = truth.frames[:, C:]  # (clips, H, 3, h, w): the real frames every curve is compared with
    curves = _baseline_curves(truth, target, C)
    per_steps, preds = _rollouts(world, s, truth, target, decode, choice.precision, curves, prog)
    static, sharp = detail_blocks(_detail(truth, target, C, preds))
    probe_block = None
    if probes:
        probe_block = run_probes(world, s, z_true=truth.latents, actions=truth.actions, target=target,
                                 precision=choice.precision, lset=lset, prog=prog, decode=decode, split=split)
        if "actions" in probe_block:  # clips with actions, two or more
            k = s.steps[0]
            probe_block["actions"]["rollout"] = action_rollout_probe(
                world.sampler(k, s.tau_ctx, precision=choice.precision), truth.latents, truth.actions, C, H,
                s.seed, s.batch_size, decode, target, preds[k])
    latent_block = None
    if getattr(world, "latent_actions", None) is not None:
        latent_block = latent_action_conditions(
            world, s, z_true=truth.latents, inferred=truth.actions, context=C, horizon=H,
            precision=choice.precision, decode=decode, target=target, scores_inferred=curves[f"steps_{s.steps[0]}"],
            prog=prog,
        )
        latent_block.pop("curves")
    summary = summarize_curves(curves, s.steps, H)

    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    out = Path(out_dir) if out_dir is not None else world.run_dir / "eval" / f"{stamp}-steps{'-'.join(map(str, s.steps))}"
    out.mkdir(parents=True, exist_ok=True)
    plot = _plot(out, world, s, per_steps, curves, n, split)
    vids = _sample_videos(out, world, truth.frames, preds, target, s, samples)
    return _metrics(world, s, lat_path, split, refs, truth, choice, curves, per_steps, summary, probe_block,
                    latent_block, plot, vids, static, sharp).write(out)


def _check_and_load(
    world: WorldModel, latents: str | os.PathLike | None, s: SamplingSettings, split: str
) -> tuple[Path, LatentSet, list[LatentVideo]]:
    """The latent set and the videos of ``split`` to evaluate on; refuses impossible step counts, a missing
    latent set, latents of another shape and an unknown split before any work."""
    from ..data.windows import load_latent_set

    for k in s.steps:  # refuse impossible step counts before any work
        check_steps(k, world.traits)
    lat_path = Path(latents) if latents is not None else Path((world.info.get("latents") or {}).get("path") or "")
    if not str(lat_path) or not (lat_path / "index.json").is_file():
        raise DataError(
            f"latent set {lat_path or '(none recorded in the run)'} not found: pass --latents DIR (a folder with index.json)"
        )
    lset = load_latent_set(lat_path)
    dcfg = world.dynamics.config
    if (lset.tokens, lset.channels) != (dcfg.tokens, dcfg.channels):
        raise DataError(
            f"latent set {lat_path} holds {lset.tokens}x{lset.channels} latents, the model takes {dcfg.tokens}x{dcfg.channels}"
        )
    if split not in ("val", "train"):
        raise DataError(f"split {split!r}: allowed val, train")
    pool = lset.val if split == "val" else lset.train
    if not pool:
        raise DataError(f"latent set {lat_path} has no {'held-out (val)' if split == 'val' else 'training'} videos to evaluate on")
    return lat_path, lset, pool


def _pick_clips(pool: list[LatentVideo], s: SamplingSettings, split: str) -> list[ClipRef]:
    """The evaluation clips of the videos in ``pool``; an error when no video is long enough."""
    C, H = s.context, s.horizon
    refs = select_clips({v.id: v.frames for v in pool}, C, H, s.clips, s.seed)
    if not refs:
        longest = max(v.frames for v in pool)
        what = "held-out" if split == "val" else "training"
        raise DataError(
            f"no {what} video has context + horizon = {C + H} frames (longest: {longest}); lower --context/--horizon"
        )
    return refs


@dataclass
class _Truth:
    """What the predictions of the clips are compared with."""

    latents: torch.Tensor  # (clips, C + H, N, Ch) true latents
    actions: torch.Tensor | None  # what the model is conditioned on (:func:`~ahri_core.eval.clips.clip_latents`)
    frames: torch.Tensor  # (clips, C + H, 3, h, w) real frames, cut to ``box``
    decoded: torch.Tensor  # (clips, C + H, 3, h, w) decoded true latents, cut to ``box``
    kind: str  # "video frames", or the decoded true latents standing in for missing videos
    decode_seconds: float  # to decode the true latents
    box: tuple[int, int, int, int]  # (top, left, height, width) of the scored part of the frames


def _load_truth(
    world: WorldModel,
    pool: list[LatentVideo],
    refs: list[ClipRef],
    span: int,
    lat_path: Path,
    ws: Workspace | None,
    prog: Progress,
) -> _Truth:
    """True latents of every clip, and the real frames (the video at the tokenizer's fps and size) of the
    clips only: each video is streamed once and only the clips' frames are kept.

    A latent-action run is steered by the codes its encoder infers from the clip itself (the real future
    included): Genie's "inferred" condition; random and no-action conditions follow in
    :func:`~ahri_core.eval.probes.latent_action_conditions`.
    """
    z_true, actions = clip_latents(world, pool, refs, span)  # (clips, C + H, N, Ch)
    real = read_clip_frames(refs, span, lat_path, ws, world.fps, world.size, world.fit, prog)
    truth_kind = "video frames"
    t0 = time.perf_counter()
    decoded_true = world.decode(z_true)  # (clips, C + H, 3, h, w)
    decode_s = time.perf_counter() - t0
    if any(r is None for r in real):
        truth_kind = "decoded true latents (some videos not found)" if any(r is not None for r in real) else "decoded true latents"
    frames_true = torch.stack([r if r is not None else d for r, d in zip(real, decoded_true, strict=True)])
    del real
    # Scores and videos cover the picture only, without the bars that the tokenizer's ``pad`` fit added.
    box = clip_content_box(refs, lat_path, world)
    return _Truth(z_true, actions, crop_box(frames_true, box), crop_box(decoded_true, box), truth_kind, decode_s, box)


def _baseline_curves(truth: _Truth, target: torch.Tensor, C: int) -> dict[str, dict[str, np.ndarray]]:
    """Per-image metrics of the two baselines: copy the last context frame, and decode the true latents."""
    curves: dict[str, dict[str, np.ndarray]] = {}
    last = truth.frames[:, C - 1 : C].expand_as(target)
    curves["copy_last"] = {k: v.numpy() for k, v in image_metrics(last, target).items()}
    curves["tokenizer_ceiling"] = {k: v.numpy() for k, v in image_metrics(truth.decoded[:, C:], target).items()}
    return curves


def _detail(
    truth: _Truth, target: torch.Tensor, C: int, preds: dict[int, torch.Tensor]
) -> tuple[torch.Tensor, dict[str, tuple[np.ndarray, np.ndarray]], dict[str, np.ndarray]]:
    """Per image, for copy-last, the ceiling and every step count: the squared error summed over the pixels
    that did not change since the last context frame (and how many values that is), and the high-frequency
    energy (of the real frames too). Returns the static mask's share of each frame as well."""
    last = truth.frames[:, C - 1 : C].expand_as(target)
    mask = static_mask(last, target)  # (clips, H, h, w)
    shown = {"copy_last": last, "tokenizer_ceiling": truth.decoded[:, C:], **{f"steps_{k}": p for k, p in preds.items()}}
    static = {name: tuple(t.numpy() for t in masked_squared_error(x, target, mask)) for name, x in shown.items()}
    energy = {name: high_frequency_energy(x).numpy() for name, x in shown.items()}
    energy["truth"] = high_frequency_energy(target).numpy()
    return mask.float().mean(dim=(-2, -1)), static, energy


def _rollouts(
    world: WorldModel,
    s: SamplingSettings,
    truth: _Truth,
    target: torch.Tensor,
    decode: Callable[[torch.Tensor], torch.Tensor],
    precision: str,
    curves: dict[str, dict[str, np.ndarray]],
    prog: Progress,
) -> tuple[dict[str, Any], dict[int, torch.Tensor]]:
    """Roll every clip out with each step count; adds each one's per-image metrics to ``curves`` as
    ``steps_<k>`` and returns the ``steps`` block of ``metrics.json`` and the decoded predictions."""
    C, H = s.context, s.horizon
    z_true, actions = truth.latents, truth.actions
    n = len(z_true)
    per_steps: dict[str, Any] = {}
    preds: dict[int, torch.Tensor] = {}
    for k in s.steps:
        sampler = world.sampler(k, s.tau_ctx, precision=precision)
        prog.start(f"eval: {k} steps", total=n)
        out, secs = [], 0.0
        for res in rollout_batches(sampler, z_true[:, :C], H, actions, s.seed, s.batch_size):
            out.append(world.check_finite(res.latents))
            secs += res.seconds
            prog.advance(f"eval: {k} steps", len(res.latents), frames_per_s=res.frames_per_s)
        z_pred = torch.cat(out)
        t1 = time.perf_counter()
        frames_pred = decode(z_pred)
        dec = time.perf_counter() - t1
        preds[k] = frames_pred
        m = {key: v.numpy() for key, v in image_metrics(frames_pred, target).items()}
        m["latent_mse"] = (z_pred - z_true[:, C:]).pow(2).mean(dim=(-2, -1)).numpy()
        curves[f"steps_{k}"] = m
        per_steps[str(k)] = {
            **metric_block(m),
            "rollout_seconds": secs,
            "decode_seconds": dec,
            "frames_per_s": n * H / secs if secs > 0 else None,
            "end_to_end_frames_per_s": n * H / (secs + dec) if secs + dec > 0 else None,
        }
        prog.finish(f"eval: {k} steps", frames_per_s=n * H / secs if secs > 0 else 0.0)
    return per_steps, preds


def _plot(
    out: Path,
    world: WorldModel,
    s: SamplingSettings,
    per_steps: dict[str, Any],
    curves: dict[str, dict[str, np.ndarray]],
    n: int,
    split: str,
) -> Path | str:
    """``psnr.png``: PSNR against horizon for every step count with its 95% band, the baselines dashed."""
    return plot_curves(
        out / "psnr.png",
        {
            **{f"{k} steps": (per_steps[str(k)]["psnr"]["mean"], per_steps[str(k)]["psnr"]["ci95"]) for k in s.steps},
            "copy last frame": (psnr_over_clips(curves["copy_last"]["mse"])["mean"], None),
            "tokenizer ceiling": (psnr_over_clips(curves["tokenizer_ceiling"]["mse"])["mean"], None),
        },
        title=f"{world.name}: PSNR vs horizon on {n} {'held-out' if split == 'val' else 'training'} clips (context {s.context}, tau_ctx {s.tau_ctx:g})",
        styles={"copy last frame": "dash", "tokenizer ceiling": "dash"},
    )


def _sample_videos(
    out: Path,
    world: WorldModel,
    frames_true: torch.Tensor,
    preds: dict[int, torch.Tensor],
    target: torch.Tensor,
    s: SamplingSettings,
    samples: int,
) -> list[str]:
    """``sample-<i>.mp4`` for the first ``samples`` clips: truth | prediction | error for every step count."""
    from ..video import write_video

    C, H = s.context, s.horizon
    vids = []
    for j in range(min(samples, len(frames_true))):
        truth_u8 = to_uint8(frames_true[j])
        cols = [Column("truth", truth_u8, None, marked=False)]
        mask = np.array([False] * C + [True] * H)
        for k in s.steps:
            p = torch.cat([frames_true[j, :C], preds[k][j]])
            e = torch.cat([torch.zeros_like(frames_true[j, :C]), error_frames(preds[k][j], target[j])])
            cols.append(Column(f"{k} steps", to_uint8(p), mask))
            cols.append(Column(f"error {k}", to_uint8(e), mask, marked=False))
        status = [f"ctx {t + 1}/{C}" if t < C else f"+{t - C + 1}" for t in range(C + H)]
        path = out / f"sample-{j}.mp4"
        write_video(path, grid_video(cols, scale=3, status=status), world.fps)
        vids.append(str(path))
    return vids


def _metrics(
    world: WorldModel,
    s: SamplingSettings,
    lat_path: Path,
    split: str,
    refs: list[ClipRef],
    truth: _Truth,
    choice: PrecisionChoice,
    curves: dict[str, dict[str, np.ndarray]],
    per_steps: dict[str, Any],
    summary: dict[str, Any],
    probe_block: dict[str, Any] | None,
    latent_block: dict[str, Any] | None,
    plot: Path | str,
    vids: list[str],
    static_region: dict[str, Any],
    sharpness: dict[str, Any],
) -> EvalMetrics:
    """Every part of ``metrics.json``, gathered."""
    return EvalMetrics(
        run=world.name,
        run_dir=world.run_dir,
        latents=lat_path,
        tokenizer=world.tokenizer_path,
        split=split,
        truth=truth.kind,
        settings=ScoredSettings(
            steps=list(s.steps), context=s.context, horizon=s.horizon, tau_ctx=s.tau_ctx, clips_requested=s.clips,
            seed=s.seed, batch_size=s.batch_size, precision=choice.precision, k_max=world.traits.k_max,
            shortcut=world.traits.shortcut, max_frames=world.traits.max_frames, fps=world.fps, size=world.size,
            scored_box=truth.box,
        ),
        clips=refs,
        baselines={
            "copy_last": metric_block(curves["copy_last"]),
            "tokenizer_ceiling": metric_block(curves["tokenizer_ceiling"]),
        },
        steps=per_steps,
        summary=summary,
        probes=probe_block,
        latent_actions=latent_block,
        precision=choice.to_dict(),
        decode_true_seconds=truth.decode_seconds,
        plot=plot,
        videos=vids,
        static_region=static_region,
        sharpness=sharpness,
    )

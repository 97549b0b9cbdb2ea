"""``ahri eval``: rollouts on held-out videos measured in pixel space next to two baselines.

For every evaluation clip (a window of ``context + horizon`` frames from a *validation* video of the latent
store, PITFALLS 14) and every horizon step h = 1..H:

* prediction: the sampler (:mod:`ahri_core.inference.sampler`) rolls the dynamics model out from the true context
  latents; the predicted latents are decoded by the run's tokenizer and compared with the real frame;
* copy-last-frame baseline: the last real context frame compared with the real frame h steps later
  ("nothing moves", PITFALLS 13);
* tokenizer ceiling: decode of the true latents of that frame compared with the real frame (the best any
  dynamics model could score through this tokenizer).

All three are measured on the very same real frames ([0, 1] RGB, PITFALLS 15): SSIM and MSE as means over
clips with a 95% interval (Student t), PSNR as the PSNR of the mean MSE over clips (an unchanged frame, which
copy-last predicts exactly, would otherwise enter a mean of per-clip PSNRs at the 100 dB cap; that mean is
kept as ``psnr_clip_mean``). Latent MSE (prediction vs true latents) is reported too.
"Real frames" are the video decoded at the tokenizer's fps and size, the frames that were tokenized; if the
video file is gone the decoded true latents stand in and the report says so. Only the clips' frames are
decoded and kept (:func:`read_clip_frames`), so memory does not grow with the length of the videos.

The metrics come from :mod:`ahri_core.eval.metrics`, the plot and the sample videos from :mod:`ahri_core.visual`
(shared with :mod:`ahri_core.inference.world`; this module does not import that one). The dynamics model samples in
the precision ``auto`` resolves to (the world model's ``choose_precision``), recorded in ``metrics.json``.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..progress import Progress
from ..visual import Column, crop_box, error_frames, grid_video, plot_curves, to_float, to_uint8
from .metrics import (
    average_over,
    image_metrics,
    memorising_gap,
    mse_per_image,
    psnr_average_over,
    psnr_over_clips,
    psnr_per_image,
    ssim_per_image,
    summarize,
    t95,
)

__all__ = [
    "ClipRef",
    "EvalReport",
    "context_probe",
    "mean_latent",
    "other_clip",
    "sensitivity",
    "teacher_forced_next",
    "evaluate",
    "select_clips",
    "read_clip_frames",
    # metrics live in ahri_core.eval.metrics and the plot in ahri_core.visual; the names stay importable here
    "average_over",
    "image_metrics",
    "mse_per_image",
    "plot_curves",
    "psnr_average_over",
    "psnr_over_clips",
    "psnr_per_image",
    "ssim_per_image",
    "summarize",
    "t95",
]


# ---------------------------------------------------------------------------------------------- clips


@dataclass
class ClipRef:
    """One evaluation clip: frames start .. start + context + horizon - 1 of a held-out video."""

    video_id: str
    start: int


def select_clips(lengths: dict[str, int], context: int, horizon: int, clips: int, seed: int = 0) -> list[ClipRef]:
    """Up to ``clips`` non-overlapping windows of ``context + horizon`` frames, spread over the videos.

    Videos take turns (round robin, in an order fixed by ``seed``) so that a few long videos do not crowd
    out the others; inside a video, windows are non-overlapping and start at random offsets fixed by ``seed``.
    """
    span = context + horizon
    rng = np.random.default_rng(seed)
    per_video: dict[str, list[int]] = {}
    for vid in sorted(lengths):
        n = lengths[vid]
        if n < span:
            continue
        count = n // span
        slack = n - count * span
        offset = int(rng.integers(0, slack + 1))
        starts = [offset + i * span for i in range(count)]
        rng.shuffle(starts)
        per_video[vid] = starts
    order = list(per_video)
    rng.shuffle(order)
    out: list[ClipRef] = []
    while len(out) < clips and any(per_video[v] for v in order):
        for v in order:
            if per_video[v] and len(out) < clips:
                out.append(ClipRef(v, int(per_video[v].pop(0))))
    return out


def _video_file(latent_dir: Path, video_id: str, workspace) -> Path | None:
    """The source video of a latent file: named in the index or the file's metadata, or found in the workspace."""
    import json

    cands: list[Path] = []
    idx = latent_dir / "index.json"
    entry: dict = {}
    if idx.is_file():
        try:
            for rec in json.loads(idx.read_text()).get("videos", []):
                if str(rec.get("id")) == video_id:
                    entry = rec
                    break
        except (OSError, ValueError):
            entry = {}
    for key in ("video", "video_path", "source_path", "path"):
        v = entry.get(key)
        if isinstance(v, str) and v:
            cands.append(Path(v))
    meta: dict = {}
    f = latent_dir / str(entry.get("file", f"{video_id}.safetensors"))
    if f.is_file():
        try:
            from safetensors import safe_open

            with safe_open(str(f), framework="pt") as fh:
                meta = fh.metadata() or {}
        except Exception:  # noqa: BLE001 - metadata is only a hint here
            meta = {}
    for key in ("source_path", "video_path", "path"):
        if meta.get(key):
            cands.append(Path(meta[key]))
    vid = meta.get("video_id") or video_id
    if workspace is not None:
        if meta.get("source"):
            cands.append(workspace.videos / meta["source"] / f"{vid}.mp4")
        if workspace.videos.is_dir():
            cands += sorted(workspace.videos.rglob(f"{vid}.mp4"))
    return next((c for c in cands if c.is_file()), None)


# ---------------------------------------------------------------------------------------------- context probes
#
# Two measurements that say whether a model predicts from its context or only paints a typical frame.
# Both work on latents and take any model in the dynamics interface (the tests use stand-ins).


def other_clip(n: int) -> list[int]:
    """The clip whose context replaces clip i's in the context-sensitivity probe: i + 1 (mod n), never i itself."""
    if n < 2:
        raise ValueError("the context-sensitivity probe needs at least two clips")
    return [(i + 1) % n for i in range(n)]


def _swap_context(context: torch.Tensor, donor: list[int], keep_last: bool) -> torch.Tensor:
    """Each clip's context replaced by the donor clip's; ``keep_last`` keeps the clip's own last frame."""
    out = context[donor].clone()
    if keep_last:
        out[:, -1] = context[:, -1]
    return out


def _swap_actions(actions: torch.Tensor | None, donor: list[int], context: int, keep_last: bool) -> torch.Tensor | None:
    """Actions that go with :func:`_swap_context`: the donor's for the replaced frames, the clip's own after."""
    if actions is None:
        return None
    out = actions.clone()
    upto = context - 1 if keep_last else context
    out[:, :upto] = actions[donor, :upto]
    return out


@torch.no_grad()
def context_probe(
    sampler,
    context: torch.Tensor,
    actions: torch.Tensor | None = None,
    seed: int = 0,
    batch_size: int = 8,
) -> dict[str, Any]:
    """The h = 1 prediction of every clip with its true context and with two corrupted ones, same noise.

    ``context`` (n, C, N, Ch): the clips' clean context latents, n >= 2. ``actions``: (n, >= C + 1) or None.
    Variants (donor = :func:`other_clip`, the next clip):

    * ``true``: the clip's own context;
    * ``swap``: the donor's whole context (its C frames, and its actions for them);
    * ``history``: the donor's frames except the last one, which stays the clip's own.

    Every variant of a batch is sampled from the same generator seed, so the noise (context corruption and
    the new frame's initial noise) is identical and only the context differs. Returns the three predictions
    (n, N, Ch) and per-clip latent MSEs (numpy (n,)): ``pred_change_swap`` = mse(true, swap),
    ``pred_change_history`` = mse(true, history), ``context_change`` = mse of the two contexts' last frames.
    """
    n, c = context.shape[:2]
    donor = other_clip(n)
    variants = {
        "true": (context, actions),
        "swap": (_swap_context(context, donor, False), _swap_actions(actions, donor, c, False)),
        "history": (_swap_context(context, donor, True), _swap_actions(actions, donor, c, True)),
    }
    preds: dict[str, torch.Tensor] = {}
    for name, (ctx, act) in variants.items():
        out = []
        for i in range(0, n, batch_size):
            g = torch.Generator().manual_seed(seed * 1_000_003 + i)
            a = None if act is None else act[i : i + batch_size, : c + 1]
            out.append(sampler.rollout(ctx[i : i + batch_size], 1, actions=a, generator=g).latents[:, 0].cpu())
        preds[name] = torch.cat(out)

    def mse(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
        return (a.float() - b.float()).pow(2).mean(dim=(-2, -1)).numpy()

    return {
        "donor": donor,
        "pred": preds["true"],
        "pred_swap": preds["swap"],
        "pred_history": preds["history"],
        "pred_change_swap": mse(preds["true"], preds["swap"]),
        "pred_change_history": mse(preds["true"], preds["history"]),
        "context_change": mse(context[:, -1], context[donor, -1]),
    }


def sensitivity(probe: dict[str, Any]) -> dict[str, float]:
    """Context sensitivity from :func:`context_probe`: ratios of means over clips.

    ``sensitivity`` = mean mse(pred_true, pred_swap) / mean mse(last_true, last_donor): 0 when the prediction
    ignores the context, 1 when it moves exactly as much as the last context frame does (copy-last scores 1).
    ``history_share`` = mean mse(pred_true, pred_history) / mean mse(pred_true, pred_swap): the part of that
    change caused by the frames before the last one (0: only the last frame matters).
    """
    swap = float(np.mean(probe["pred_change_swap"]))
    hist = float(np.mean(probe["pred_change_history"]))
    ctx = float(np.mean(probe["context_change"]))
    return {
        "sensitivity": swap / ctx if ctx > 0 else float("nan"),
        "history_share": hist / swap if swap > 0 else float("nan"),
        "pred_change_mse": swap,
        "pred_change_history_mse": hist,
        "context_change_mse": ctx,
    }


def mean_latent(videos: list, max_frames: int = 20_000) -> torch.Tensor:
    """The mean latent (N, Ch) over the frames of ``videos`` (LatentVideo), from at most ``max_frames`` of them,
    taken evenly from every video."""
    total = sum(v.frames for v in videos)
    if total == 0:
        raise ValueError("no frames to average")
    every = max(1, -(-total // max_frames))
    acc, count = None, 0
    for v in videos:
        x = v.latents[::every].double()
        acc = x.sum(0) if acc is None else acc + x.sum(0)
        count += len(x)
    return (acc / count).float()


@torch.no_grad()
def teacher_forced_next(
    model,
    traits,
    latents: torch.Tensor,
    context: int,
    tau_ctx: float,
    actions: torch.Tensor | None = None,
    mean: torch.Tensor | None = None,
    seed: int = 0,
    batch_size: int = 8,
    precision: str = "fp32",
) -> dict[str, np.ndarray]:
    """One-step next-frame prediction from true frames, for every frame after the context (no compounding).

    ``latents`` (n, C + H, N, Ch) clean. Frame t (t = C .. C + H - 1) is predicted from the true frames before
    it (the last ``max_frames - 1`` of them), noised to ``tau_ctx`` and labelled so with step d_min, as the
    sampler does; frame t itself is pure noise (tau = 1) with step 1 for a shortcut model (d_min otherwise):
    the prediction a 1-step sampler makes, and the training validation's ``val_next``. Returns per-clip,
    per-horizon latent MSEs (numpy (n, H)): ``model``, ``copy_last`` (frame t - 1 as the guess) and, with
    ``mean`` (N, Ch), ``mean_latent`` (that one latent as the guess for every frame).
    """
    from ..diffusion import add_noise
    from ..runtime import autocast

    x_all = latents.float()
    n, total = x_all.shape[:2]
    window = traits.max_frames - 1 if traits.max_frames else total
    dev = next(model.parameters()).device
    d_min = 1.0 / traits.k_max
    g = torch.Generator().manual_seed(seed)
    errs, copy = [], []
    for t in range(context, total):
        lo = max(0, t - window)
        x = x_all[:, lo : t + 1]
        noise = torch.randn(x.shape, generator=g)
        T = x.shape[1]
        tau = torch.full((n, T), float(tau_ctx))
        tau[:, -1] = 1.0
        step = torch.full((n, T), d_min)
        step[:, -1] = 1.0 if traits.shortcut else d_min
        z = add_noise(x, noise, tau) if tau_ctx > 0 else torch.cat([x[:, :-1], noise[:, -1:]], 1)
        out = []
        for i in range(0, n, batch_size):
            a = None if actions is None else actions[i : i + batch_size, lo : t + 1].to(dev)
            with autocast(dev, precision):
                xh = model(z[i : i + batch_size].to(dev), tau[i : i + batch_size].to(dev),
                           step[i : i + batch_size].to(dev), actions=a)
            out.append(xh[:, -1].float().cpu())
        pred = torch.cat(out)
        errs.append((pred - x_all[:, t]).pow(2).mean(dim=(-2, -1)))
        copy.append((x_all[:, t - 1] - x_all[:, t]).pow(2).mean(dim=(-2, -1)))
    res = {"model": torch.stack(errs, 1).numpy(), "copy_last": torch.stack(copy, 1).numpy()}
    if mean is not None:
        res["mean_latent"] = (x_all[:, context:] - mean.float()).pow(2).mean(dim=(-2, -1)).numpy()
    return res


# ---------------------------------------------------------------------------------------------- evaluate


@dataclass
class EvalReport:
    out_dir: Path
    metrics: dict[str, Any]

    @property
    def metrics_path(self) -> Path:
        return self.out_dir / "metrics.json"


def _metric_block(values: dict[str, np.ndarray]) -> dict[str, Any]:
    """Per horizon step over clips: "psnr" is the PSNR of the mean MSE (:func:`psnr_over_clips`), "psnr_clip_mean"
    the mean of per-clip PSNRs (capped at 100 dB for exact frames; kept to compare with older reports)."""
    block = {k: summarize(v) for k, v in values.items() if k != "psnr"}
    if "psnr" in values:
        block["psnr"] = psnr_over_clips(values["mse"]) if "mse" in values else summarize(values["psnr"])
        block["psnr_clip_mean"] = summarize(values["psnr"])
    return block


def clip_latents(world, videos: list, refs: list[ClipRef], span: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The true latents (clips, span, N, Ch) of ``refs`` and the actions the model is conditioned on: the real
    actions when the run uses them, the codes its encoder infers for a latent-action run, else None."""
    by_id = {v.id: v for v in videos}
    lat, acts = [], []
    for r in refs:
        v = by_id[r.video_id]
        lat.append(v.latents[r.start : r.start + span].float())
        acts.append(None if v.actions is None else v.actions[r.start : r.start + span])
    z = torch.stack(lat)
    actions = _stack_actions(acts, span) if world.actions_usable() else None
    lam = getattr(world, "latent_actions", None)
    if lam is not None:
        with torch.no_grad():
            actions = lam(z.to(world.device)).cpu()  # (clips, span, dims), frame 0 NaN
    return z, actions


def _not_the_training_split(world, lset) -> str | None:
    """Why the set's training split may not be the videos the run trained on (None when it is): another latent
    set, or a split with other video counts (e.g. a run trained with its own ``val_fraction``)."""
    rec = (getattr(world, "info", None) or {}).get("latents") or {}
    path = rec.get("path")
    if path and lset.path and Path(path).resolve() != Path(lset.path).resolve():
        return f"the run trained on {path}, not on {lset.path}"
    counts = (rec.get("train_videos"), rec.get("val_videos"))
    if None not in counts and counts != (len(lset.train), len(lset.val)):
        return (f"the run trained on {counts[0]} videos and held out {counts[1]}; this split has {len(lset.train)} "
                f"and {len(lset.val)}")
    return None


def memorisation_probe(world, s, train_videos: list, held_out: dict[str, np.ndarray], precision: str) -> dict[str, Any]:
    """Teacher-forced next-frame error on windows of the *training* videos against the held-out one.

    Each split's error is divided by copy-last's on the same windows (so a split with more motion does not
    look worse); ``gap`` is the held-out ratio over the training ratio: about 1 when the model predicts new
    video as well as the video it trained on, well above 1 when it has memorised its training clips.
    ``held_out``: :func:`teacher_forced_next`'s result on the evaluation's clips.
    """
    C, H = s.context, s.horizon
    refs = select_clips({v.id: v.frames for v in train_videos}, C, H, s.clips, s.seed)
    if not refs:
        return {"skipped": f"no training video has context + horizon = {C + H} frames"}
    z, actions = clip_latents(world, train_videos, refs, C + H)
    tf = teacher_forced_next(world.dynamics, world.traits, z, C, s.tau_ctx, actions, seed=s.seed,
                             batch_size=s.batch_size, precision=precision)

    def ratio(res: dict[str, np.ndarray]) -> dict[str, float]:
        m, c = float(res["model"].mean()), float(res["copy_last"].mean())
        return {"model": m, "copy_last": c, "relative": m / c if c > 0 else float("nan")}

    train, val = ratio(tf), ratio(held_out)
    gap = memorising_gap(val["model"], val["copy_last"], train["model"], train["copy_last"])
    return {"train_clips": len(refs), "train": train, "held_out": val, "gap": float("nan") if gap is None else gap}


def _stack_actions(acts: list[torch.Tensor | None], span: int) -> torch.Tensor | None:
    if all(a is None for a in acts):
        return None
    like = next(a for a in acts if a is not None)
    out = []
    for a in acts:
        if a is None:
            shape = (span, *like.shape[1:])
            a = torch.full(shape, float("nan")) if like.is_floating_point() else torch.full(shape, -1, dtype=like.dtype)
        out.append(a)
    return torch.stack(out)


def clip_content_box(refs: list[ClipRef], latent_dir: Path, world) -> tuple[int, int, int, int]:
    """(top, left, height, width) of the tokenizer's frames that shows the picture of the clips' videos (the
    ``content_box`` their latent set records), for scoring and videos; the whole frame when it is not
    recorded or when the clips' videos differ."""
    from ..data.latents import LatentStore

    whole = (0, 0, *world.size)
    store = LatentStore(latent_dir)
    boxes = {tuple(store.entry(r.video_id).get("content_box") or whole) for r in refs}
    if len(boxes) != 1:
        return whole
    box = boxes.pop()
    t, left, h, w = box
    H, W = world.size
    return box if t >= 0 and left >= 0 and t + h <= H and left + w <= W else whole


def read_clip_frames(
    refs: list[ClipRef],
    span: int,
    latent_dir: Path,
    workspace,
    fps: float,
    size,
    fit: str = "pad",
    progress: Progress | None = None,
) -> list[torch.Tensor | None]:
    """The real frames (float (span, 3, H, W) in [0, 1]) of every clip, or None where they cannot be had.

    Each video is decoded once, streaming, at the tokenizer's fps and size (the frames that were tokenized),
    and only the frames of its clips are kept (:func:`ahri_core.video.read_ranges`): memory holds the
    scored frames, never a whole video, and decoding stops after the last clip of the video. None: the
    video file is not found, or it has fewer frames than the clip needs.
    """
    from ..progress import ensure
    from ..video import read_ranges

    prog = ensure(progress)
    by_video: dict[str, list[int]] = {}
    for i, r in enumerate(refs):
        by_video.setdefault(r.video_id, []).append(i)
    out: list[torch.Tensor | None] = [None] * len(refs)
    prog.start("eval: frames", total=len(refs))
    for vid, idx in by_video.items():
        path = _video_file(latent_dir, vid, workspace)
        if path is None:
            prog.log(f"video of {vid} not found: its decoded true latents stand in for the real frames")
        else:
            parts = read_ranges(path, [(refs[i].start, refs[i].start + span) for i in idx], fps=fps, size=size, fit=fit)
            for i, fr in zip(idx, parts, strict=True):
                out[i] = to_float(fr) if len(fr) == span else None
        prog.advance("eval: frames", len(idx))
    prog.finish("eval: frames")
    return out


def evaluate(
    world,
    latents: str | os.PathLike | None = None,
    settings=None,
    out_dir: str | os.PathLike | None = None,
    workspace=None,
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
    (:func:`context_probe` with the first step count, :func:`teacher_forced_next`), stored under ``probes``.
    """
    from ..config.settings import SamplingSettings
    from ..data.windows import load_latent_set
    from ..errors import DataError
    from ..fileio import write_json_atomic
    from ..inference.sampler import check_steps
    from ..progress import ensure
    from ..video import write_video

    s = settings or SamplingSettings()
    prog = ensure(progress)
    for k in s.steps:  # refuse impossible step counts before any work
        check_steps(k, world.traits)
    lat_path = Path(latents) if latents is not None else Path((world.info.get("latents") or {}).get("path") or "")
    if not str(lat_path) or not (lat_path / "index.json").is_file():
        raise DataError(
            f"latent set {lat_path or '(none recorded in the run)'} not found: pass --data DIR (a folder with index.json)"
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
    C, H = s.context, s.horizon
    refs = select_clips({v.id: v.frames for v in pool}, C, H, s.clips, s.seed)
    if not refs:
        longest = max(v.frames for v in pool)
        what = "held-out" if split == "val" else "training"
        raise DataError(
            f"no {what} video has context + horizon = {C + H} frames (longest: {longest}); lower --context/--horizon"
        )
    n = len(refs)
    span = C + H
    ws = workspace if workspace is not None else getattr(world, "workspace", None)
    choice = world.choose_precision(
        precision, batch=min(s.batch_size, n), frames=C + 1, cache_dir=ws.cache if ws is not None else None
    )
    prog.log(f"eval: dynamics model in {choice.line()}")

    # True latents of every clip, and the real frames (the video at the tokenizer's fps and size) of the
    # clips only: each video is streamed once and only the clips' frames are kept.
    # A latent-action run is steered by the codes its encoder infers from the clip itself (the real future
    # included): Genie's "inferred" condition; random and no-action conditions follow below.
    z_true, actions = clip_latents(world, pool, refs, span)  # (clips, C + H, N, Ch)
    lam = getattr(world, "latent_actions", None)
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

    def decode(z: torch.Tensor) -> torch.Tensor:
        return crop_box(world.decode(z), box)

    frames_true, decoded_true = crop_box(frames_true, box), crop_box(decoded_true, box)
    target = frames_true[:, C:]  # (clips, H, 3, h, w): the real frames every curve is compared with

    curves: dict[str, dict[str, np.ndarray]] = {}
    last = frames_true[:, C - 1 : C].expand_as(target)
    curves["copy_last"] = {k: v.numpy() for k, v in image_metrics(last, target).items()}
    curves["tokenizer_ceiling"] = {k: v.numpy() for k, v in image_metrics(decoded_true[:, C:], target).items()}

    per_steps: dict[str, Any] = {}
    preds: dict[int, torch.Tensor] = {}
    for k in s.steps:
        sampler = world.sampler(k, s.tau_ctx, precision=choice.precision)
        prog.start(f"eval: {k} steps", total=n)
        out, secs = [], 0.0
        for i in range(0, n, s.batch_size):
            g = torch.Generator().manual_seed(s.seed * 1_000_003 + i)
            a = None if actions is None else actions[i : i + s.batch_size]
            res = sampler.rollout(z_true[i : i + s.batch_size, :C], H, actions=a, generator=g)
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
            **_metric_block(m),
            "rollout_seconds": secs,
            "decode_seconds": dec,
            "frames_per_s": n * H / secs if secs > 0 else None,
            "end_to_end_frames_per_s": n * H / (secs + dec) if secs + dec > 0 else None,
        }
        prog.finish(f"eval: {k} steps", frames_per_s=n * H / secs if secs > 0 else 0.0)

    probe_block = (_run_probes(world, s, z_true, actions, target, choice.precision, lset, prog, decode, split)
                   if probes else None)
    latent_block = None
    if lam is not None:
        k0 = s.steps[0]
        latent_block = _latent_action_conditions(world, s, z_true, actions, C, H, choice.precision, decode, target,
                                                 curves[f"steps_{k0}"], prog)
        latent_block.pop("curves")

    near = min(8, H)
    summary = {
        f"psnr_h1_{near}": {name: psnr_average_over(c["mse"], 1, near) for name, c in curves.items()},
        f"ssim_h1_{near}": {name: average_over(c["ssim"], 1, near) for name, c in curves.items()},
        f"psnr_h1_{H}": {name: psnr_average_over(c["mse"], 1, H) for name, c in curves.items()},
    }
    summary[f"gain_over_copy_last_db_h1_{near}"] = {
        str(k): summary[f"psnr_h1_{near}"][f"steps_{k}"] - summary[f"psnr_h1_{near}"]["copy_last"] for k in s.steps
    }
    if len(s.steps) > 1:
        lo, hi = min(s.steps), max(s.steps)
        summary[f"psnr_gap_{lo}_vs_{hi}_db_h1_{near}"] = (
            summary[f"psnr_h1_{near}"][f"steps_{lo}"] - summary[f"psnr_h1_{near}"][f"steps_{hi}"]
        )

    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    out = Path(out_dir) if out_dir is not None else world.run_dir / "eval" / f"{stamp}-steps{'-'.join(map(str, s.steps))}"
    out.mkdir(parents=True, exist_ok=True)
    plot = plot_curves(
        out / "psnr.png",
        {
            **{f"{k} steps": (per_steps[str(k)]["psnr"]["mean"], per_steps[str(k)]["psnr"]["ci95"]) for k in s.steps},
            "copy last frame": (psnr_over_clips(curves["copy_last"]["mse"])["mean"], None),
            "tokenizer ceiling": (psnr_over_clips(curves["tokenizer_ceiling"]["mse"])["mean"], None),
        },
        title=f"{world.name}: PSNR vs horizon on {n} {'held-out' if split == 'val' else 'training'} clips (context {C}, tau_ctx {s.tau_ctx:g})",
        styles={"copy last frame": "dash", "tokenizer ceiling": "dash"},
    )
    vids = []
    for j in range(min(samples, n)):
        truth_u8 = to_uint8(frames_true[j])
        cols = [Column("truth", truth_u8, None, marked=False)]
        mask = np.array([False] * C + [True] * H)
        for k in s.steps:
            p = torch.cat([frames_true[j, :C], preds[k][j]])
            e = torch.cat([torch.zeros_like(frames_true[j, :C]), error_frames(preds[k][j], target[j])])
            cols.append(Column(f"{k} steps", to_uint8(p), mask))
            cols.append(Column(f"error {k}", to_uint8(e), mask, marked=False))
        status = [f"ctx {t + 1}/{C}" if t < C else f"+{t - C + 1}" for t in range(span)]
        path = out / f"sample-{j}.mp4"
        write_video(path, grid_video(cols, scale=3, status=status), world.fps)
        vids.append(str(path))

    metrics = {
        "run": world.name,
        "run_dir": str(world.run_dir),
        "created": datetime.now().isoformat(timespec="seconds"),
        "latents": str(lat_path),
        "tokenizer": str(world.tokenizer_path) if world.tokenizer_path else None,
        "split": split,
        "truth": truth_kind,
        "settings": {
            "steps": list(s.steps),
            "context": C,
            "horizon": H,
            "tau_ctx": s.tau_ctx,
            "clips_requested": s.clips,
            "seed": s.seed,
            "batch_size": s.batch_size,
            "precision": choice.precision,
            "k_max": world.traits.k_max,
            "shortcut": world.traits.shortcut,
            "max_frames": world.traits.max_frames,
            "fps": world.fps,
            "size": list(world.size),
            "scored_box": list(box),
        },
        "clips": [{"video": r.video_id, "start": r.start} for r in refs],
        "clip_count": n,
        "baselines": {
            "copy_last": _metric_block(curves["copy_last"]),
            "tokenizer_ceiling": _metric_block(curves["tokenizer_ceiling"]),
        },
        "steps": per_steps,
        "summary": summary,
        "probes": probe_block,
        "latent_actions": latent_block,
        "precision": choice.to_dict(),
        "decode_true_seconds": decode_s,
        "files": {"plot": str(plot), "videos": vids},
    }
    write_json_atomic(out / "metrics.json", metrics)
    return EvalReport(out_dir=out, metrics=metrics)


def random_actions(lam, shape: tuple[int, int], generator: torch.Generator) -> torch.Tensor:
    """Random latent actions (clips, frames, dims): uniform codes of a quantised encoder, uniform vectors in
    [-1, 1] of a continuous one."""
    if lam.config.quantize:
        return lam.vectors(torch.randint(0, lam.config.codes, shape, generator=generator))
    return torch.rand((*shape, lam.config.dims), generator=generator) * 2 - 1


def _latent_action_conditions(world, s, z_true, inferred, C, H, precision, decode, target, scores_inferred, prog):
    """Rollouts of a latent-action run from the same windows under two more conditions for the predicted
    frames: random latent actions (Genie's controllability: delta PSNR = inferred - random) and "no action".
    The context frames keep their inferred actions in every condition. PSNRs are those of the mean error over
    clips, like the other curves; a gain is the difference of two such PSNRs, its 95% interval that of the
    per-clip (paired) PSNR differences. ``scores_inferred``: the inferred condition's per-image "psnr" and
    "mse" (clips, H)."""
    lam = world.latent_actions
    k = s.steps[0]
    sampler = world.sampler(k, s.tau_ctx, precision=precision)
    g_codes = torch.Generator().manual_seed(s.seed + 7)
    conds = {"random": inferred.clone(), "no_action": inferred.clone()}
    conds["random"][:, C:] = random_actions(lam, (len(z_true), H), g_codes)
    conds["no_action"][:, C:] = float("nan")
    out_curves: dict[str, np.ndarray] = {}
    block: dict[str, Any] = {"steps": k, "codes": int(lam.config.codes) if lam.config.quantize else None,
                             "bits_per_frame": float(np.log2(lam.config.codes)) if lam.config.quantize else None}
    for name, acts in conds.items():
        prog.start(f"eval: {name} actions", total=len(z_true))
        out = []
        for i in range(0, len(z_true), s.batch_size):
            g = torch.Generator().manual_seed(s.seed * 1_000_003 + i)  # the same noise as the inferred condition
            res = sampler.rollout(z_true[i : i + s.batch_size, :C], H, actions=acts[i : i + s.batch_size], generator=g)
            out.append(world.check_finite(res.latents))
            prog.advance(f"eval: {name} actions", len(res.latents))
        prog.finish(f"eval: {name} actions")
        frames = decode(torch.cat(out))
        psnr, mse = psnr_per_image(frames, target).numpy(), mse_per_image(frames, target).numpy()
        out_curves[f"steps_{k}_{name}_actions"] = psnr
        block[f"psnr_{name}"] = psnr_over_clips(mse)
        gain = np.asarray(psnr_over_clips(scores_inferred["mse"])["mean"]) - np.asarray(block[f"psnr_{name}"]["mean"])
        paired = summarize(np.asarray(scores_inferred["psnr"]) - psnr)  # per horizon step, over clips
        block[f"gain_over_{name}_db"] = {"mean": [float(x) for x in gain], "ci95": paired["ci95"]}
        near = min(8, H)
        block[f"gain_over_{name}_db_h1_{near}"] = (psnr_average_over(scores_inferred["mse"], 1, near)
                                                  - psnr_average_over(mse, 1, near))
    block["psnr_inferred"] = psnr_over_clips(scores_inferred["mse"])
    block["curves"] = out_curves
    return block


def _run_probes(world, s, z_true, actions, target, precision, lset, prog, decode=None, split="val") -> dict[str, Any]:
    """The context probes of :func:`evaluate` on its clips: context sensitivity and teacher-forced next-frame MSE."""
    C = s.context
    n = len(z_true)
    k = s.steps[0]
    out: dict[str, Any] = {}
    prog.start("eval: context probes", total=2)
    if n >= 2:
        pr = context_probe(world.sampler(k, s.tau_ctx, precision=precision), z_true[:, :C], actions, s.seed,
                           s.batch_size)
        sens = sensitivity(pr)
        first = target[:, 0]
        decode = decode or world.decode
        def psnr_h1(pred: torch.Tensor) -> float:  # the PSNR of the mean error over clips, as the curves
            return psnr_average_over(mse_per_image(decode(pred), first).numpy()[:, None], 1, 1)

        p_true, p_swap, p_hist = psnr_h1(pr["pred"]), psnr_h1(pr["pred_swap"]), psnr_h1(pr["pred_history"])
        out["context"] = {
            "steps": k,
            "donor": "the next clip in the list (i + 1 mod n)",
            **sens,
            "psnr_h1": p_true,
            "psnr_h1_swapped": p_swap,
            "psnr_h1_history_swapped": p_hist,
            "psnr_drop_db": p_true - p_swap,
            "psnr_drop_history_db": p_true - p_hist,
            "per_clip": {
                "pred_change_mse": pr["pred_change_swap"].tolist(),
                "pred_change_history_mse": pr["pred_change_history"].tolist(),
                "context_change_mse": pr["context_change"].tolist(),
            },
        }
    else:
        out["context"] = {"skipped": "the context-sensitivity probe needs at least two clips"}
    prog.advance("eval: context probes", 1)
    src = lset.train if lset.train else lset.val
    mean = mean_latent(src)
    tf = teacher_forced_next(world.dynamics, world.traits, z_true, C, s.tau_ctx, actions, mean=mean, seed=s.seed,
                             batch_size=s.batch_size, precision=precision)
    avg = {name: float(v.mean()) for name, v in tf.items()}
    out["teacher_forced"] = {
        "tau_ctx": s.tau_ctx,
        "mean_latent_from": f"{'train' if lset.train else 'val'} split ({sum(v.frames for v in src)} frames, "
        f"{len(src)} videos)",
        "h1": {name: float(v[:, 0].mean()) for name, v in tf.items()},
        "all_h": avg,
        "skill_vs_copy_last": 1.0 - avg["model"] / avg["copy_last"] if avg["copy_last"] > 0 else float("nan"),
        "skill_vs_mean_latent": 1.0 - avg["model"] / avg["mean_latent"] if avg["mean_latent"] > 0 else float("nan"),
        "per_h": {name: summarize(v) for name, v in tf.items()},
    }
    if split == "val" and lset.train:
        why = _not_the_training_split(world, lset)
        out["memorisation"] = {"skipped": why} if why else memorisation_probe(world, s, lset.train, tf, precision)
    if actions is not None and n >= 2:
        # The same prediction with the actions of another clip (the next in the list), same frames, same noise:
        # how much the model's next frame depends on the actions it is given.
        other = teacher_forced_next(world.dynamics, world.traits, z_true, C, s.tau_ctx, torch.roll(actions, 1, 0),
                                    seed=s.seed, batch_size=s.batch_size, precision=precision)
        own, swapped = avg["model"], float(other["model"].mean())
        out["actions"] = {
            "mse_own_actions": own,
            "mse_other_clip_actions": swapped,
            "use": 1.0 - own / swapped if swapped > 0 else float("nan"),
        }
    prog.advance("eval: context probes", 1)
    prog.finish("eval: context probes")
    return out

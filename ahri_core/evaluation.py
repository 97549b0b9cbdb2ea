"""``ahri eval``: rollouts on held-out videos measured in pixel space next to two baselines.

For every evaluation clip (a window of ``context + horizon`` frames from a *validation* video of the latent
store, PITFALLS 14) and every horizon step h = 1..H:

* prediction: the sampler (:mod:`ahri_core.sampler`) rolls the dynamics model out from the true context
  latents; the predicted latents are decoded by the run's tokenizer and compared with the real frame;
* copy-last-frame baseline: the last real context frame compared with the real frame h steps later
  ("nothing moves", PITFALLS 13);
* tokenizer ceiling: decode of the true latents of that frame compared with the real frame (the best any
  dynamics model could score through this tokenizer).

All three are measured on the very same real frames ([0, 1] RGB, PITFALLS 15): PSNR, SSIM and MSE, each as a
mean over clips with a 95% interval (Student t). Latent MSE (prediction vs true latents) is reported too.
"Real frames" are the video decoded at the tokenizer's fps and size, the frames that were tokenized; if the
video file is gone the decoded true latents stand in and the report says so.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .progress import Progress

# ---------------------------------------------------------------------------------------------- metrics


def mse_per_image(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(..., 3, H, W) in [0, 1] -> (...,). The prediction is clipped to [0, 1] first."""
    return (pred.float().clamp(0, 1) - target.float()).pow(2).mean(dim=(-3, -2, -1))


def psnr_per_image(pred: torch.Tensor, target: torch.Tensor, max_db: float = 100.0) -> torch.Tensor:
    """PSNR in dB of [0, 1] images (peak 1), (..., 3, H, W) -> (...,); identical images give ``max_db``."""
    m = mse_per_image(pred, target)
    return torch.where(m > 0, -10.0 * torch.log10(m.clamp_min(1e-30)), torch.full_like(m, max_db)).clamp(max=max_db)


def _gauss_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    return g[:, None] * g[None, :]


def ssim_per_image(pred: torch.Tensor, target: torch.Tensor, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Structural similarity (Wang et al. 2004: Gaussian window 11, sigma 1.5, K1 0.01, K2 0.03, peak 1),
    averaged over the valid window positions and the three channels. (..., 3, H, W) -> (...,)."""
    lead = pred.shape[:-3]
    c, h, w = pred.shape[-3:]
    x = pred.float().clamp(0, 1).reshape(-1, c, h, w)
    y = target.float().reshape(-1, c, h, w)
    k = min(window, h, w)
    win = _gauss_window(k, sigma).to(x.device).expand(c, 1, k, k)

    def filt(t):
        return F.conv2d(t, win, groups=c)

    mu_x, mu_y = filt(x), filt(y)
    sxx = filt(x * x) - mu_x**2
    syy = filt(y * y) - mu_y**2
    sxy = filt(x * y) - mu_x * mu_y
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((mu_x**2 + mu_y**2 + c1) * (sxx + syy + c2))
    return s.mean(dim=(-3, -2, -1)).reshape(lead)


def image_metrics(pred: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
    """psnr, ssim, mse per image: (..., 3, H, W) -> dict of (...,)."""
    return {"psnr": psnr_per_image(pred, target), "ssim": ssim_per_image(pred, target), "mse": mse_per_image(pred, target)}


# Two-sided 95% Student-t quantiles for 1..30 degrees of freedom; 1.96 beyond.
_T95 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
        2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042]


def t95(n: int) -> float:
    """The factor for a 95% interval of a mean of n values (n - 1 degrees of freedom)."""
    df = n - 1
    if df < 1:
        return float("nan")
    return _T95[df - 1] if df <= len(_T95) else 1.96


def summarize(values: np.ndarray) -> dict[str, list[float]]:
    """(clips, horizon) -> per horizon step: mean and the half-width of its 95% interval over clips."""
    v = np.asarray(values, dtype=np.float64)
    n = v.shape[0]
    mean = v.mean(axis=0)
    if n > 1:
        half = t95(n) * v.std(axis=0, ddof=1) / math.sqrt(n)
    else:
        half = np.full_like(mean, float("nan"))
    return {"mean": [float(x) for x in mean], "ci95": [float(x) for x in half]}


def average_over(values: np.ndarray, first: int, last: int) -> float:
    """Mean over clips and over horizon steps first..last (1-based, inclusive, clipped to the horizon)."""
    v = np.asarray(values, dtype=np.float64)
    last = min(last, v.shape[1])
    return float(v[:, first - 1 : last].mean())


# ---------------------------------------------------------------------------------------------- plot


def _nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if hi <= lo:
        hi = lo + 1
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = min((m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw), default=raw)
    start = math.ceil(lo / step) * step
    ticks, t = [], start
    while t <= hi + 1e-9:
        ticks.append(round(t, 6))
        t += step
    return ticks


PALETTE = [(220, 50, 47), (38, 139, 210), (133, 153, 0), (211, 54, 130), (42, 161, 152), (181, 137, 0)]


def plot_curves(
    path: str | Path,
    curves: dict[str, tuple[list[float], list[float] | None]],
    title: str,
    ylabel: str = "PSNR (dB)",
    styles: dict[str, str] | None = None,
) -> Path:
    """A small line plot drawn with Pillow: x = horizon step 1..H; one line (and 95% band) per curve.

    ``curves``: label -> (mean per step, ci95 half-width per step or None). ``styles``: label -> "dash" for
    baselines. Written atomically as PNG.
    """
    from PIL import Image, ImageDraw, ImageFont

    from .fileio import atomic_path

    W, H = 760, 460
    left, right, top, bottom = 70, 200, 40, 50
    img = Image.new("RGB", (W, H), "white")
    d = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    ys = []
    for mean, ci in curves.values():
        for i, m in enumerate(mean):
            if math.isfinite(m):
                c = ci[i] if ci is not None and i < len(ci) and math.isfinite(ci[i]) else 0.0
                ys += [m - c, m + c]
    if not ys:
        ys = [0.0, 1.0]
    y_lo, y_hi = min(ys), max(ys)
    pad = max(0.5, 0.05 * (y_hi - y_lo))
    y_lo, y_hi = y_lo - pad, y_hi + pad
    n = max(len(m) for m, _ in curves.values())
    x_lo, x_hi = 1, max(n, 2)

    def px(x: float, y: float) -> tuple[float, float]:
        fx = (x - x_lo) / (x_hi - x_lo)
        fy = (y - y_lo) / (y_hi - y_lo)
        return left + fx * (W - left - right), H - bottom - fy * (H - top - bottom)

    for t in _nice_ticks(y_lo, y_hi):
        _, yy = px(x_lo, t)
        d.line([(left, yy), (W - right, yy)], fill=(230, 230, 230))
        d.text((left - 8, yy), f"{t:g}", fill="black", font=font, anchor="rm")
    for t in _nice_ticks(x_lo, x_hi, n=min(8, x_hi - x_lo)):
        if float(t).is_integer():
            xx, _ = px(t, y_lo)
            d.line([(xx, H - bottom), (xx, H - bottom + 4)], fill="black")
            d.text((xx, H - bottom + 8), f"{int(t)}", fill="black", font=font, anchor="mt")
    d.rectangle([left, top, W - right, H - bottom], outline="black")
    d.text(((left + W - right) / 2, H - 18), "horizon (frames ahead)", fill="black", font=font, anchor="mm")
    d.text((10, top - 20), ylabel, fill="black", font=font)
    d.text(((left + W - right) / 2, 14), title, fill="black", font=font, anchor="mm")

    styles = styles or {}
    for i, (label, (mean, ci)) in enumerate(curves.items()):
        color = PALETTE[i % len(PALETTE)]
        pts = [px(j + 1, m) for j, m in enumerate(mean) if math.isfinite(m)]
        if ci is not None and len(pts) > 1:
            band = [px(j + 1, m + c) for j, (m, c) in enumerate(zip(mean, ci, strict=False)) if math.isfinite(c)]
            band += [px(j + 1, m - c) for j, (m, c) in reversed(list(enumerate(zip(mean, ci, strict=False)))) if math.isfinite(c)]
            if len(band) > 2:
                overlay = Image.new("RGBA", img.size, (0, 0, 0, 0))
                ImageDraw.Draw(overlay).polygon(band, fill=(*color, 40))
                img.paste(Image.alpha_composite(img.convert("RGBA"), overlay).convert("RGB"))
                d = ImageDraw.Draw(img)
        if styles.get(label) == "dash":
            for a, b in zip(pts, pts[1:], strict=False):
                for s in range(0, 10, 2):
                    f0, f1 = s / 10, (s + 1) / 10
                    d.line([(a[0] + (b[0] - a[0]) * f0, a[1] + (b[1] - a[1]) * f0),
                            (a[0] + (b[0] - a[0]) * f1, a[1] + (b[1] - a[1]) * f1)], fill=color, width=2)
        else:
            if len(pts) > 1:
                d.line(pts, fill=color, width=2)
            for p in pts:
                d.ellipse([p[0] - 2.5, p[1] - 2.5, p[0] + 2.5, p[1] + 2.5], fill=color)
        ly = top + 10 + 18 * i
        d.line([(W - right + 12, ly), (W - right + 36, ly)], fill=color, width=3)
        d.text((W - right + 42, ly), label, fill="black", font=font, anchor="lm")
    path = Path(path)
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")
    return path


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


# ---------------------------------------------------------------------------------------------- evaluate


@dataclass
class EvalReport:
    out_dir: Path
    metrics: dict[str, Any]

    @property
    def metrics_path(self) -> Path:
        return self.out_dir / "metrics.json"


def _metric_block(values: dict[str, np.ndarray]) -> dict[str, Any]:
    return {k: summarize(v) for k, v in values.items()}


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


def evaluate(
    world,
    latents: str | os.PathLike | None = None,
    settings=None,
    out_dir: str | os.PathLike | None = None,
    workspace=None,
    samples: int = 2,
    precision: str = "bf16",
    progress: Progress | None = None,
) -> EvalReport:
    """Evaluate a :class:`~ahri_core.rollout.WorldModel` on held-out videos; see the module docstring.

    ``latents``: the latent set (default: the one the run was trained on); only its validation split is
    used. ``settings``: :class:`~ahri_core.settings.SamplingSettings` (steps, context, horizon, tau_ctx,
    clips, seed, batch_size). Writes ``metrics.json``, ``psnr.png`` and ``sample-<i>.mp4`` into ``out_dir``
    (default ``<run>/eval/<id>``).
    """
    from .data.windows import load_latent_set
    from .errors import DataError
    from .fileio import write_json_atomic
    from .progress import ensure
    from .rollout import Column, error_frames, grid_video, to_float, to_uint8
    from .sampler import check_steps
    from .settings import SamplingSettings
    from .video import read_frames, write_video

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
    if not lset.val:
        raise DataError(f"latent set {lat_path} has no held-out (val) videos to evaluate on")
    C, H = s.context, s.horizon
    videos = {v.id: v for v in lset.val}
    refs = select_clips({v.id: v.frames for v in lset.val}, C, H, s.clips, s.seed)
    if not refs:
        longest = max(v.frames for v in lset.val)
        raise DataError(
            f"no held-out video has context + horizon = {C + H} frames (longest: {longest}); lower --context/--horizon"
        )
    n = len(refs)
    span = C + H

    # Real frames (the video at the tokenizer's fps and size) and true latents of every clip.
    prog.start("eval: frames", total=n)
    true_lat, acts, real, truth_kind = [], [], [], "video frames"
    cache: dict[str, np.ndarray | None] = {}
    for r in refs:
        v = videos[r.video_id]
        true_lat.append(v.latents[r.start : r.start + span].float())
        acts.append(None if v.actions is None else v.actions[r.start : r.start + span])
        if r.video_id not in cache:
            path = _video_file(lat_path, r.video_id, workspace)
            cache[r.video_id] = None if path is None else read_frames(path, fps=world.fps, size=world.size, fit=world.fit)
            if path is None:
                prog.log(f"video of {r.video_id} not found: its decoded true latents stand in for the real frames")
        fr = cache[r.video_id]
        if fr is not None and len(fr) >= r.start + span:
            real.append(to_float(fr[r.start : r.start + span]))
        else:
            real.append(None)
        prog.advance("eval: frames")
    prog.finish("eval: frames")
    z_true = torch.stack(true_lat)  # (clips, C + H, N, Ch)
    actions = _stack_actions(acts, span) if world.actions_usable() else None
    t0 = time.perf_counter()
    decoded_true = world.decode(z_true)  # (clips, C + H, 3, h, w)
    decode_s = time.perf_counter() - t0
    if any(r is None for r in real):
        truth_kind = "decoded true latents (some videos not found)" if any(r is not None for r in real) else "decoded true latents"
    frames_true = torch.stack([r if r is not None else d for r, d in zip(real, decoded_true, strict=True)])
    target = frames_true[:, C:]  # (clips, H, 3, h, w): the real frames every curve is compared with

    curves: dict[str, dict[str, np.ndarray]] = {}
    last = frames_true[:, C - 1 : C].expand_as(target)
    curves["copy_last"] = {k: v.numpy() for k, v in image_metrics(last, target).items()}
    curves["tokenizer_ceiling"] = {k: v.numpy() for k, v in image_metrics(decoded_true[:, C:], target).items()}

    per_steps: dict[str, Any] = {}
    preds: dict[int, torch.Tensor] = {}
    for k in s.steps:
        sampler = world.sampler(k, s.tau_ctx, precision=precision)
        prog.start(f"eval: {k} steps", total=n)
        out, secs = [], 0.0
        for i in range(0, n, s.batch_size):
            g = torch.Generator().manual_seed(s.seed * 1_000_003 + i)
            a = None if actions is None else actions[i : i + s.batch_size]
            res = sampler.rollout(z_true[i : i + s.batch_size, :C], H, actions=a, generator=g)
            out.append(res.latents)
            secs += res.seconds
            prog.advance(f"eval: {k} steps", len(res.latents), frames_per_s=res.frames_per_s)
        z_pred = torch.cat(out)
        t1 = time.perf_counter()
        frames_pred = world.decode(z_pred)
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

    near = min(8, H)
    summary = {
        f"psnr_h1_{near}": {name: average_over(c["psnr"], 1, near) for name, c in curves.items()},
        f"ssim_h1_{near}": {name: average_over(c["ssim"], 1, near) for name, c in curves.items()},
        f"psnr_h1_{H}": {name: average_over(c["psnr"], 1, H) for name, c in curves.items()},
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
            "copy last frame": (summarize(curves["copy_last"]["psnr"])["mean"], None),
            "tokenizer ceiling": (summarize(curves["tokenizer_ceiling"]["psnr"])["mean"], None),
        },
        title=f"{world.name}: PSNR vs horizon on {n} held-out clips (context {C}, tau_ctx {s.tau_ctx:g})",
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
        "split": "val",
        "truth": truth_kind,
        "settings": {
            "steps": list(s.steps),
            "context": C,
            "horizon": H,
            "tau_ctx": s.tau_ctx,
            "clips_requested": s.clips,
            "seed": s.seed,
            "batch_size": s.batch_size,
            "precision": precision,
            "k_max": world.traits.k_max,
            "shortcut": world.traits.shortcut,
            "max_frames": world.traits.max_frames,
            "fps": world.fps,
            "size": world.size,
        },
        "clips": [{"video": r.video_id, "start": r.start} for r in refs],
        "clip_count": n,
        "baselines": {
            "copy_last": _metric_block(curves["copy_last"]),
            "tokenizer_ceiling": _metric_block(curves["tokenizer_ceiling"]),
        },
        "steps": per_steps,
        "summary": summary,
        "decode_true_seconds": decode_s,
        "files": {"plot": str(plot), "videos": vids},
    }
    write_json_atomic(out / "metrics.json", metrics)
    return EvalReport(out_dir=out, metrics=metrics)

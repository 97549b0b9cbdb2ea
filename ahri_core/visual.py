"""Pictures of rollouts: frame conversions, error frames, labelled frame grids for videos, and line plots.

- :func:`to_uint8` / :func:`to_float`: the library's float (..., 3, H, W) frames <-> uint8 (..., H, W, 3);
- :func:`crop_box`: the part of frames that shows the picture (without the bars of ``pad``);
- :func:`error_frames`: |prediction - truth| as grey-scale frames;
- :func:`grid_video`: labelled columns of frames side by side (truth | prediction | error), predicted frames
  framed in red, real ones in green; eval's sample videos and ``ahri rollout`` use it;
- :func:`plot_curves`: a PNG line plot (metric per horizon step with 95% bands), drawn with Pillow.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

PRED_COLOR = (235, 45, 45)  # border of predicted frames
CTX_COLOR = (60, 190, 90)  # border of real (context) frames
HEADER = 14  # pixels of the label band above each column


# ---------------------------------------------------------------------------------------------- frames


def to_uint8(frames: torch.Tensor | np.ndarray) -> np.ndarray:
    """float (..., 3, H, W) in [0, 1] -> uint8 (..., H, W, 3)."""
    x = frames.detach().cpu().float().numpy() if isinstance(frames, torch.Tensor) else np.asarray(frames, np.float32)
    x = np.moveaxis(x, -3, -1)
    return np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)


def to_float(frames: np.ndarray) -> torch.Tensor:
    """uint8 (..., H, W, 3) -> float (..., 3, H, W) in [0, 1]."""
    return torch.from_numpy(np.moveaxis(np.asarray(frames, np.float32) / 255.0, -1, -3).copy())


def crop_box(frames: Any, box: Sequence[int]) -> Any:
    """The ``box`` = (top, left, height, width) of every frame: uint8 (..., H, W, 3) arrays or float
    (..., 3, H, W) tensors. A box covering the whole frame returns ``frames`` itself."""
    t, left, h, w = (int(x) for x in box)
    if isinstance(frames, np.ndarray):
        if (t, left, h, w) == (0, 0, *frames.shape[-3:-1]):
            return frames
        return np.ascontiguousarray(frames[..., t : t + h, left : left + w, :])
    if (t, left, h, w) == (0, 0, *frames.shape[-2:]):
        return frames
    return frames[..., t : t + h, left : left + w].contiguous()


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

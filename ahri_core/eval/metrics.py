"""Image metrics of [0, 1] RGB frames in pixel space (where models with different tokenizers and the baselines
compare, which latent errors do not), and their summaries over clips.

- per image: :func:`mse_per_image`, :func:`psnr_per_image` (peak 1), :func:`ssim_per_image` (Wang et al.
  2004), all three at once with :func:`image_metrics`; shapes (..., 3, H, W) -> (...,);
- over clips: :func:`summarize` (mean and the half-width of a 95% Student-t interval per horizon step,
  :func:`t95`) and :func:`average_over` (one number for a range of horizon steps);
- PSNR over clips: :func:`psnr_over_clips` and :func:`psnr_average_over`, the PSNR of the mean squared error
  over the clips. Not the mean of per-clip PSNRs: a frame that equals its target has infinite PSNR (capped
  at 100 dB), so a few unchanged frames would decide that mean, in favour of copying the last frame.

Eval and rollout both score with these functions, so their numbers are comparable.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F


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


def _psnr_of(mse: np.ndarray, max_db: float = 100.0) -> np.ndarray:
    m = np.asarray(mse, dtype=np.float64)
    with np.errstate(divide="ignore"):
        return np.minimum(np.where(m > 0, -10.0 * np.log10(np.maximum(m, 1e-30)), max_db), max_db)


def psnr_over_clips(mse: np.ndarray) -> dict[str, list[float]]:
    """(clips, horizon) per-image MSE -> per horizon step: the PSNR of the mean MSE over the clips, and the
    half-width of its 95% interval (delta method: 10 / ln 10 times the relative half-width of the mean MSE)."""
    v = np.asarray(mse, dtype=np.float64)
    n = v.shape[0]
    mean = v.mean(axis=0)
    psnr = _psnr_of(mean)
    if n > 1:
        rel = t95(n) * v.std(axis=0, ddof=1) / math.sqrt(n) / np.maximum(mean, 1e-30)
        half = np.where(mean > 0, 10.0 / math.log(10.0) * rel, 0.0)
    else:
        half = np.full_like(mean, float("nan"))
    return {"mean": [float(x) for x in psnr], "ci95": [float(x) for x in half]}


def psnr_average_over(mse: np.ndarray, first: int, last: int) -> float:
    """The PSNR of the mean MSE over clips at each horizon step first..last (1-based, inclusive, clipped to the
    horizon), averaged over those steps."""
    v = np.asarray(mse, dtype=np.float64)
    last = min(last, v.shape[1])
    return float(_psnr_of(v[:, first - 1 : last].mean(axis=0)).mean())


def memorising_gap(val_next: float, val_copy: float, train_next: float, train_copy: float) -> float | None:
    """(held-out next-frame error / its copy-last) over (the same on training windows): about 1 when new video
    is predicted as well as seen video, well above 1 when the model memorises its training clips. None when a
    ratio is undefined (copy-last exact, or a perfect fit on the training windows)."""
    if val_copy <= 0 or train_copy <= 0 or train_next <= 0:
        return None
    return (val_next / val_copy) / (train_next / train_copy)


# ---------------------------------------------------------------------------------------------- what did not move
STATIC_TOLERANCE = 3 / 255  # a pixel within this of the last context frame in every channel counts as unchanged:
# stored video is lossy, so an overlay that never moves still differs by a level or two between frames


def static_mask(last: torch.Tensor, target: torch.Tensor, tol: float = STATIC_TOLERANCE) -> torch.Tensor:
    """Pixels unchanged between the last context frame and the true frame: (..., 3, H, W) -> (..., H, W) bool.

    These are what copying the last frame gets right by construction (overlays, a HUD, a held weapon, a still
    background); a model that keeps what does not move scores there as well as the tokenizer allows."""
    return (last.float() - target.float()).abs().amax(dim=-3) <= tol


def masked_squared_error(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of squared errors over the pixels of ``mask`` (all three channels) and the number of values summed:
    (..., 3, H, W) and (..., H, W) -> two (...,) tensors. The prediction is clipped to [0, 1] first."""
    err = (pred.float().clamp(0, 1) - target.float()).pow(2).sum(dim=-3)
    m = mask.to(err.dtype)
    return (err * m).sum(dim=(-2, -1)), 3 * m.sum(dim=(-2, -1))


def pooled_psnr(se: np.ndarray, count: np.ndarray) -> list[float | None]:
    """(clips, horizon) sums of squared errors and counts -> per horizon step the PSNR of the pooled mean
    (every scored value weighs the same, whichever clip it is in); None where nothing was scored."""
    s = np.asarray(se, dtype=np.float64).sum(axis=0)
    n = np.asarray(count, dtype=np.float64).sum(axis=0)
    out: list[float | None] = []
    for a, b in zip(s, n, strict=True):
        out.append(None if b <= 0 else float(_psnr_of(np.array(a / b))))
    return out


def high_frequency_energy(x: torch.Tensor) -> torch.Tensor:
    """Sharpness of [0, 1] images: the mean squared response of the 3x3 Laplacian over the image and its three
    channels, (..., 3, H, W) -> (...,). Blur removes it; a mean of several possible futures has less of it
    than any one of them."""
    lead = x.shape[:-3]
    c, h, w = x.shape[-3:]
    y = x.float().clamp(0, 1).reshape(-1, c, h, w)
    k = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]], device=y.device).expand(c, 1, 3, 3)
    lap = F.conv2d(y, k, groups=c)
    return lap.pow(2).mean(dim=(-3, -2, -1)).reshape(lead)


def sharpness_ratio(energy: np.ndarray, reference: np.ndarray) -> list[float | None]:
    """(clips, horizon) high-frequency energies -> per horizon step the ratio of their means over clips (1: as
    sharp as the reference; below 1: blurred); None where the reference has none."""
    a = np.asarray(energy, dtype=np.float64).mean(axis=0)
    b = np.asarray(reference, dtype=np.float64).mean(axis=0)
    return [None if y <= 0 else float(x / y) for x, y in zip(a, b, strict=True)]

"""What ``ahri eval`` writes: the layout of ``metrics.json`` as typed objects, and the report that points at it.

- :class:`EvalMetrics` holds every part of ``metrics.json`` (the run, the settings scored with
  (:class:`ScoredSettings`), the clips, the baselines, the curves per step count, the summary, the probes);
  :meth:`EvalMetrics.write` writes it and returns the :class:`EvalReport`;
- :func:`metric_block` is the per-horizon layout of one curve (means over clips with 95% intervals),
  :func:`summarize_curves` the few numbers of the ``summary`` block.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..fileio import write_json_atomic
from .clips import ClipRef
from .metrics import (
    STATIC_TOLERANCE,
    average_over,
    pooled_psnr,
    psnr_average_over,
    psnr_over_clips,
    sharpness_ratio,
    summarize,
)

__all__ = [
    "EvalMetrics",
    "EvalReport",
    "ScoredSettings",
    "detail_blocks",
    "metric_block",
    "summarize_curves",
]


@dataclass
class EvalReport:
    out_dir: Path
    metrics: dict[str, Any]

    @property
    def metrics_path(self) -> Path:
        return self.out_dir / "metrics.json"


def metric_block(values: dict[str, np.ndarray]) -> dict[str, Any]:
    """Per horizon step over clips: "psnr" is the PSNR of the mean MSE (:func:`psnr_over_clips`), "psnr_clip_mean"
    the mean of per-clip PSNRs (capped at 100 dB for exact frames; kept to compare with older reports)."""
    block = {k: summarize(v) for k, v in values.items() if k != "psnr"}
    if "psnr" in values:
        block["psnr"] = psnr_over_clips(values["mse"]) if "mse" in values else summarize(values["psnr"])
        block["psnr_clip_mean"] = summarize(values["psnr"])
    return block


def summarize_curves(curves: dict[str, dict[str, np.ndarray]], steps: list[int], horizon: int) -> dict[str, Any]:
    """The ``summary`` block: PSNR and SSIM of every curve over the first steps (up to 8) and over the whole
    horizon, the gain of every step count over copy-last, and the gap between the fewest and the most steps."""
    near = min(8, horizon)
    summary = {
        f"psnr_h1_{near}": {name: psnr_average_over(c["mse"], 1, near) for name, c in curves.items()},
        f"ssim_h1_{near}": {name: average_over(c["ssim"], 1, near) for name, c in curves.items()},
        f"psnr_h1_{horizon}": {name: psnr_average_over(c["mse"], 1, horizon) for name, c in curves.items()},
    }
    summary[f"gain_over_copy_last_db_h1_{near}"] = {
        str(k): summary[f"psnr_h1_{near}"][f"steps_{k}"] - summary[f"psnr_h1_{near}"]["copy_last"] for k in steps
    }
    if len(steps) > 1:
        lo, hi = min(steps), max(steps)
        summary[f"psnr_gap_{lo}_vs_{hi}_db_h1_{near}"] = (
            summary[f"psnr_h1_{near}"][f"steps_{lo}"] - summary[f"psnr_h1_{near}"][f"steps_{hi}"]
        )
    return summary


def detail_blocks(
    detail: tuple[torch.Tensor, dict[str, tuple[np.ndarray, np.ndarray]], dict[str, np.ndarray]],
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The ``static_region`` and ``sharpness`` blocks of ``metrics.json`` from the evaluation's per-image details.

    ``static_region``: PSNR per horizon step on the pixels that did not change since the last context frame
    (pooled over clips), for copy-last (right there up to compression), the tokenizer ceiling and every step
    count; ``gap_to_ceiling_db_h1`` is how far each step count falls below the ceiling there one frame ahead.
    ``sharpness``: high-frequency energy per horizon step relative to the tokenizer ceiling's (1 = as sharp as
    the ceiling, below 1 = blurred), so that a blurred mean cannot pass as quality on PSNR alone."""
    fraction, static, energy = detail
    psnr = {name: pooled_psnr(se, n) for name, (se, n) in static.items()}
    first = {name: v[0] for name, v in psnr.items()}
    ceiling = first["tokenizer_ceiling"]
    gap = {
        name: (None if ceiling is None or v is None else ceiling - v)
        for name, v in first.items() if name.startswith("steps_")
    }
    static_block = {
        "tolerance": STATIC_TOLERANCE,
        "fraction": [float(x) for x in fraction.mean(dim=0)],
        "psnr": psnr,
        "psnr_h1": first,
        "gap_to_ceiling_db_h1": gap,
    }
    ratio = {name: sharpness_ratio(e, energy["tokenizer_ceiling"]) for name, e in energy.items()}
    sharp_block = {
        "reference": "tokenizer_ceiling",
        "ratio": ratio,
        "ratio_h1": {name: v[0] for name, v in ratio.items()},
    }
    return static_block, sharp_block


@dataclass
class ScoredSettings:
    """The ``settings`` block: how the clips were chosen and sampled, and the model's traits."""

    steps: list[int]
    context: int
    horizon: int
    tau_ctx: float
    clips_requested: int
    seed: int
    batch_size: int
    precision: str  # of the dynamics model while sampling: "bf16" or "fp32"
    k_max: int
    shortcut: bool
    max_frames: int | None
    fps: float
    size: tuple[int, int]  # (height, width) of the tokenizer's frames
    scored_box: tuple[int, int, int, int]  # (top, left, height, width) of the scored part of the frames

    def to_dict(self) -> dict[str, Any]:
        return {
            "steps": list(self.steps),
            "context": self.context,
            "horizon": self.horizon,
            "tau_ctx": self.tau_ctx,
            "clips_requested": self.clips_requested,
            "seed": self.seed,
            "batch_size": self.batch_size,
            "precision": self.precision,
            "k_max": self.k_max,
            "shortcut": self.shortcut,
            "max_frames": self.max_frames,
            "fps": self.fps,
            "size": list(self.size),
            "scored_box": list(self.scored_box),
        }


@dataclass
class EvalMetrics:
    """Everything ``metrics.json`` holds; :meth:`to_dict` is its JSON layout."""

    run: str
    run_dir: Path
    latents: Path  # the latent set the clips came from
    tokenizer: Path | None
    split: str  # "val" (held-out videos) or "train"
    truth: str  # what the predictions were compared with: video frames or decoded true latents
    settings: ScoredSettings
    clips: list[ClipRef]
    baselines: dict[str, dict[str, Any]]  # copy_last and tokenizer_ceiling, each a :func:`metric_block`
    steps: dict[str, dict[str, Any]]  # per step count: its metric block and its timings
    summary: dict[str, Any]  # :func:`summarize_curves`
    probes: dict[str, Any] | None
    latent_actions: dict[str, Any] | None
    precision: dict[str, Any]  # the precision choice and its reason
    decode_true_seconds: float
    plot: Path | str
    videos: list[str]
    static_region: dict[str, Any] | None = None  # :func:`detail_blocks`
    sharpness: dict[str, Any] | None = None
    created: str = field(default_factory=lambda: datetime.now().isoformat(timespec="seconds"))

    def to_dict(self) -> dict[str, Any]:
        return {
            "run": self.run,
            "run_dir": str(self.run_dir),
            "created": self.created,
            "latents": str(self.latents),
            "tokenizer": str(self.tokenizer) if self.tokenizer else None,
            "split": self.split,
            "truth": self.truth,
            "settings": self.settings.to_dict(),
            "clips": [{"video": r.video_id, "start": r.start} for r in self.clips],
            "clip_count": len(self.clips),
            "baselines": self.baselines,
            "steps": self.steps,
            "summary": self.summary,
            "static_region": self.static_region,
            "sharpness": self.sharpness,
            "probes": self.probes,
            "latent_actions": self.latent_actions,
            "precision": self.precision,
            "decode_true_seconds": self.decode_true_seconds,
            "files": {"plot": str(self.plot), "videos": self.videos},
        }

    def write(self, out_dir: Path) -> EvalReport:
        """Write ``<out_dir>/metrics.json`` and return the report that holds the same dictionary."""
        metrics = self.to_dict()
        write_json_atomic(out_dir / "metrics.json", metrics)
        return EvalReport(out_dir=out_dir, metrics=metrics)

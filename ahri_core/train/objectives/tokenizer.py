"""The tokenizer stage's objective, as the training loop sees it (:class:`TokenizerObjective`): a batch of random
frames from the training videos, MAE-masked reconstruction, MSE divided by its running RMS (plus an optional
perceptual term, also normalised); validation is PSNR/MSE of held-out frames at mask 0 (:func:`evaluate`) and
``reconstructions.png`` (:func:`save_comparison`). The stage's entry point is
:func:`ahri_core.train.tokenizer.train_tokenizer`."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ...config.settings import TrainSettings
from ...data.frames import FrameSampler, FrameSet, steps_per_epoch, to_tensor, to_uint8
from ...errors import ConfigError
from ...eval.metrics import psnr_per_image as psnr  # per-frame dB, prediction clipped to [0, 1]
from ...fileio import atomic_path
from ...models.tokenizer import KIND, Tokenizer, TokenizerConfig
from ...runtime import autocast
from .. import distributed
from ..common import RunDir, RunningRMS
from .base import Objective, StepOut

if TYPE_CHECKING:
    from ..tokenizer import TokenizerSettings


# ---------------------------------------------------------------------------------------------- images
def comparison(originals: torch.Tensor, recons: torch.Tensor, scale: int = 2) -> np.ndarray:
    """Originals (top row) over reconstructions (bottom row), (H, W, 3) uint8, scaled up ``scale`` times."""
    top = np.concatenate(list(to_uint8(originals)), axis=1)
    bottom = np.concatenate(list(to_uint8(recons)), axis=1)
    img = np.concatenate([top, bottom], axis=0)
    return img.repeat(scale, axis=0).repeat(scale, axis=1) if scale > 1 else img


def save_comparison(path: Path, originals: torch.Tensor, recons: torch.Tensor, scale: int = 2) -> None:
    """A PNG with originals (top row) over reconstructions (bottom row)."""
    from PIL import Image

    img = Image.fromarray(comparison(originals, recons, scale))
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
        self.last_preview: tuple[int, np.ndarray] | None = None  # (step, picture) of the last validation

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
            self.last_preview = (step, comparison(x, r))
            if self.dist.main:
                save_comparison(self.run.path / "reconstructions.png", x, r)
        return {"val_psnr": res["psnr"], "val_mse": res["mse"], "heldout": self.data.val_is_heldout}

    def preview(self, step: int, precision: str) -> dict[str, np.ndarray] | None:
        """The picture of ``reconstructions.png`` (held-out frames over their reconstructions) of this step."""
        if self.last_preview is None or self.last_preview[0] != step:
            return None
        return {"reconstructions": self.last_preview[1]}

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

"""Latent clips and tiny settings for the dynamics-training tests: smooth periodic latents with actions."""

from __future__ import annotations

import torch

from ahri_core.config.settings import DataSettings, DiffusionSettings, TrainSettings
from ahri_core.data.windows import LatentVideo, make_latent_set


def clip(
    seed: int, frames: int = 40, tokens: int = 4, channels: int = 4, actions: bool = True, speed: float = 0.25
) -> LatentVideo:
    """Latents of a smooth periodic 'video' in (-1, 1), with actions."""
    g = torch.Generator().manual_seed(seed)
    phase = torch.rand(tokens, channels, generator=g) * 6.28
    t = torch.arange(frames, dtype=torch.float32)[:, None, None]
    lat = 0.8 * torch.sin(speed * t + phase)
    act = torch.randint(0, 3, (frames,), generator=g) if actions else None
    return LatentVideo(f"c{seed}", lat.half(), act)


def tiny_settings(**train_kw):
    kw = dict(preset="tiny", batch_size=4, lr=3e-3, warmup_steps=5, log_every=5, val_every=1000,
              checkpoint_every=1000, seed=0, device="cpu", precision="fp32")
    kw.update(train_kw)
    return TrainSettings(**kw), DataSettings(seq_len=8, stride=4), DiffusionSettings()


def lset(n_train: int = 2, frames: int = 40):
    return make_latent_set([clip(i, frames) for i in range(n_train)], [clip(100, frames)], action_count=3)

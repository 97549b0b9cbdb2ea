"""Stand-in dynamics models that follow the interface of TEAM.md, for the sampler tests.

- :class:`OracleModel` returns the true clean latent of the frame whatever it is given. The frame's index travels
  in the discrete action (``actions[:, t] = t``), so the oracle works the same in the full forward and in
  ``step`` with a cache. It records every call (a spy).
- :class:`TinyCausal` is a small trainable block-causal network with a real KV cache (temporal attention across
  frames per token, no positional encoding), used to check the cached path against the uncached one.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn


@dataclass
class FakeConfig:
    k_max: int = 64
    shortcut: bool = True
    max_frames: int | None = None


@dataclass
class Call:
    z: torch.Tensor
    tau: torch.Tensor
    step: torch.Tensor
    actions: torch.Tensor | None
    commit: bool | None  # None: full forward


class OracleModel(nn.Module):
    def __init__(self, truth: torch.Tensor, **cfg) -> None:
        """truth: (B, T_total, N, C) clean latents of every frame."""
        super().__init__()
        self.truth = truth.float()
        self.config = FakeConfig(**cfg)
        self.calls: list[Call] = []
        self._p = nn.Parameter(torch.zeros(()))  # gives the model a device

    def _lookup(self, actions: torch.Tensor) -> torch.Tensor:
        idx = actions.long().clamp(min=0)  # (B, T)
        b = torch.arange(self.truth.shape[0])[:, None].expand_as(idx)
        return self.truth[b, idx]

    def forward(self, z, tau, step, actions=None, isolated=None):
        self.calls.append(Call(z.clone(), tau.clone(), step.clone(), None if actions is None else actions.clone(), None))
        return self._lookup(actions).to(z.dtype)

    def new_cache(self, batch: int, max_frames: int) -> dict:
        return {"frames": 0, "max_frames": max_frames}

    def step(self, z, tau, step, actions, cache, commit):
        self.calls.append(Call(z.clone(), tau.clone(), step.clone(), None if actions is None else actions.clone(), commit))
        if commit:
            cache["frames"] += 1
        return self._lookup(actions).to(z.dtype)


@dataclass
class _Cache:
    max_frames: int
    k: list = field(default_factory=list)
    v: list = field(default_factory=list)


class TinyCausal(nn.Module):
    """Per token: embed (z, tau, d, action); causal attention over frames; mix tokens in a frame; read out."""

    def __init__(self, channels: int = 4, tokens: int = 3, width: int = 32, actions: int = 5, **cfg) -> None:
        super().__init__()
        self.config = FakeConfig(**cfg)
        self.inp = nn.Linear(channels, width)
        self.cond = nn.Sequential(nn.Linear(2, width), nn.SiLU(), nn.Linear(width, width))
        self.act = nn.Embedding(actions + 1, width)  # row 0 = "no action"
        self.qkv = nn.Linear(width, 3 * width)
        self.mix = nn.Linear(tokens * width, tokens * width)
        self.out = nn.Sequential(nn.SiLU(), nn.Linear(width, channels))
        self.width, self.tokens = width, tokens

    def _embed(self, z, tau, step, actions):
        b, t = z.shape[:2]
        h = self.inp(z) + self.cond(torch.stack([tau, step], -1))[:, :, None]
        a = torch.zeros(b, t, dtype=torch.long, device=z.device) if actions is None else actions.long() + 1
        return h + self.act(a)[:, :, None]  # (B, T, N, D)

    def _finish(self, h, attn):
        h = h + attn
        b, t, n, d = h.shape
        h = h + self.mix(h.reshape(b, t, n * d)).reshape(b, t, n, d)
        return self.out(h)

    def forward(self, z, tau, step, actions=None, isolated=None):
        h = self._embed(z, tau, step, actions)
        q, k, v = self.qkv(h).chunk(3, -1)  # (B, T, N, D)
        q, k, v = (x.permute(0, 2, 1, 3) for x in (q, k, v))  # (B, N, T, D)
        attn = nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True).permute(0, 2, 1, 3)
        return self._finish(h, attn)

    def new_cache(self, batch: int, max_frames: int) -> _Cache:
        return _Cache(max_frames=max_frames)

    def step(self, z, tau, step, actions, cache: _Cache, commit: bool):
        h = self._embed(z, tau, step, actions)
        q, k, v = self.qkv(h).chunk(3, -1)  # (B, 1, N, D)
        q, k, v = (x.permute(0, 2, 1, 3) for x in (q, k, v))
        ks = torch.cat([*cache.k, k], 2)
        vs = torch.cat([*cache.v, v], 2)
        attn = nn.functional.scaled_dot_product_attention(q, ks, vs).permute(0, 2, 1, 3)
        if commit:
            cache.k.append(k)
            cache.v.append(v)
            if len(cache.k) > cache.max_frames - 1:  # a new frame sees at most max_frames frames, itself included
                cache.k.pop(0)
                cache.v.pop(0)
        return self._finish(h, attn)


class GaussianDenoiser(nn.Module):
    """The exact denoiser of x ~ N(mu, sigma^2) (every element independent): x_hat = E[x | z_tau].

    With z = (1 - tau) x + tau eps, E[x | z] = mu + (1 - tau) sigma^2 / ((1 - tau)^2 sigma^2 + tau^2) (z - (1 - tau) mu).
    A correct sampler turns noise into samples of N(mu, sigma^2) as K grows; one step returns mu.
    """

    def __init__(self, mu: float = 0.5, sigma: float = 0.3, **cfg) -> None:
        super().__init__()
        self.mu, self.sigma = mu, sigma
        self.config = FakeConfig(**cfg)
        self._p = nn.Parameter(torch.zeros(()))

    def forward(self, z, tau, step, actions=None, isolated=None):
        a = (1 - tau)[..., None, None]
        t = tau[..., None, None]
        gain = a * self.sigma**2 / (a * a * self.sigma**2 + t * t)
        return self.mu + gain * (z - a * self.mu)

    def new_cache(self, batch: int, max_frames: int) -> dict:
        return {}

    def step(self, z, tau, step, actions, cache, commit):
        return self.forward(z, tau, step)


# ---------------------------------------------------------------------------------------------- a tiny world
def make_world(root, videos: int = 4, frames: int = 40, size: int = 32, train_steps: int = 4, seed: int = 0):
    """A workspace made by the real stages, small: built-in game clips (``record_game``), an untrained tiny
    tokenizer saved as a run, the clips tokenized (``tokenize_videos``, a quarter held out) and a tiny shortcut
    dynamics run (k_max 8, windows of 8) trained for a few steps. Returns (workspace, latent_dir, run_dir)."""
    from pathlib import Path

    from ahri_core.checkpoint import save_weights
    from ahri_core.config.settings import DataSettings, DiffusionSettings, TrainSettings
    from ahri_core.data.tokenize import tokenize_videos
    from ahri_core.fileio import write_json_atomic
    from ahri_core.models.tokenizer import build_tokenizer
    from ahri_core.sources import record_game
    from ahri_core.sources.store import list_videos
    from ahri_core.train.dynamics import train_dynamics
    from ahri_core.workspace import Workspace

    ws = Workspace(Path(root))
    torch.manual_seed(seed)
    tok = build_tokenizer("tiny", image_size=size, fps=20.0).eval()
    tok_dir = ws.run_dir("tok-test")
    save_weights(tok_dir / "model.safetensors", tok, kind="tokenizer", config=tok.cfg.to_dict(),
                 extra={"val_fraction": 0.25})
    write_json_atomic(tok_dir / "run.json", {"stage": "tokenizer", "finished": True})
    record_game(ws.source_dir("game"), count=videos, frames=frames, size=size, seed=seed)
    res = tokenize_videos(tok_dir, list_videos(ws.source_dir("game")), ws.latents, val_fraction=0.25, device="cpu")
    assert res.ok, res.failed
    run = ws.run_dir("dyn-test")
    train_dynamics(
        res.out_dir, run,
        train=TrainSettings(preset="tiny", max_steps=train_steps, batch_size=2, warmup_steps=1, seed=seed,
                            val_every=1000, checkpoint_every=1000, log_every=1000, device="cpu",
                            precision="fp32"),
        data=DataSettings(seq_len=8, stride=4),
        diffusion=DiffusionSettings(shortcut=True, k_max=8),
    )
    return ws, res.out_dir, run


def held_out(lat_dir) -> list[str]:
    """Ids of the validation videos of a latent set."""
    import json
    from pathlib import Path

    index = json.loads((Path(lat_dir) / "index.json").read_text())
    return [v["id"] for v in index["videos"] if v["split"] == "val"]


class CopyLastModel(nn.Module):
    """Predicts the last frame of its context, whatever the noise level of the new frame.

    ``step`` returns the latest committed frame (the new frame itself when nothing is committed yet); the full
    forward returns, for every frame, the frame before it. With ``tau_ctx = 0`` a rollout repeats the last
    context frame exactly: the copy-last-frame baseline as a model.
    """

    def __init__(self, **cfg) -> None:
        super().__init__()
        self.config = FakeConfig(**cfg)
        self._p = nn.Parameter(torch.zeros(()))

    def forward(self, z, tau, step, actions=None, isolated=None):
        return torch.cat([z[:, :1], z[:, :-1]], 1)

    def new_cache(self, batch: int, max_frames: int) -> dict:
        return {"last": None}

    def step(self, z, tau, step, actions, cache, commit):
        out = z if cache["last"] is None else cache["last"]
        if commit:
            cache["last"] = z.clone()
        return out


class ContextMeanModel(CopyLastModel):
    """Predicts the mean of every committed context frame: it uses the whole history, not only the last frame."""

    def forward(self, z, tau, step, actions=None, isolated=None):
        csum = z.cumsum(1)
        count = torch.arange(1, z.shape[1] + 1, dtype=z.dtype, device=z.device).view(1, -1, 1, 1)
        prev = csum / count
        return torch.cat([z[:, :1], prev[:, :-1]], 1)

    def new_cache(self, batch: int, max_frames: int) -> dict:
        return {"sum": None, "count": 0}

    def step(self, z, tau, step, actions, cache, commit):
        out = z if cache["sum"] is None else cache["sum"] / cache["count"]
        if commit:
            cache["sum"] = z.clone() if cache["sum"] is None else cache["sum"] + z
            cache["count"] += 1
        return out

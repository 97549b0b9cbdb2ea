"""Latent actions: what a player did, inferred from video alone (after Genie and LAPO), in latent space.

An inverse-dynamics encoder reads the latents of frames t - 1 and t and emits a latent action for frame t
through a tight bottleneck: finite scalar quantisation (FSQ), a few dimensions with a few levels each
(16 codes = 2 dimensions x 4 levels: at most log2(16) = 4 bits per frame, against the thousands of bits of
a latent frame). The quantised vector enters the dynamics model through its ordinary continuous action
input, so the whole thing trains end to end from the diffusion loss (straight-through rounding); frame 0 of
a window, which has no frame t - 1, gets "no action". Convention as everywhere: ``actions[t]`` produced
frame t.

FSQ (Mentzer et al., 2023) has no code book to collapse: every code is a point of a fixed grid, so there is
nothing to re-seed or commit to; what can still happen is that the encoder uses few of the grid's points,
which the training logs as the codes' perplexity.

Files: a latent-action run stores the dynamics model and the encoder in ONE weights file of kind
``latent_action_dynamics`` whose config is ``{"dynamics": DynamicsConfig, "latent_actions":
LatentActionConfig}``; :func:`load_world_dynamics` rebuilds it (and plain dynamics runs as before).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from torch import nn

from ..checkpoint import load_weights, read_metadata
from ..errors import CheckpointError, ConfigError, DataError
from .dynamics import KIND as DYNAMICS_KIND
from .dynamics import DynamicsModel
from .dynamics_config import DynamicsConfig
from .dynamics_io import load_dynamics_run, run_info, weights_path
from .layers import RMSNorm

KIND = "latent_action_dynamics"
RANGE = 2.5  # the encoder's values are kept within +-RANGE before the bound (LatentActionModel.range_loss)
ACTION_MAP_FILE = "action_map.json"

# Code-book sizes and their FSQ grids (levels per dimension): few dimensions, few levels.
LEVELS: dict[int, tuple[int, ...]] = {
    2: (2,), 3: (3,), 4: (2, 2), 6: (3, 2), 8: (2, 2, 2), 9: (3, 3), 12: (4, 3), 16: (4, 4), 25: (5, 5),
    27: (3, 3, 3), 32: (4, 4, 2), 64: (4, 4, 4),
}


def levels_for(codes: int) -> tuple[int, ...]:
    """The FSQ grid of a code-book size (``--latent-action-codes``)."""
    if codes not in LEVELS:
        raise ConfigError(f"latent_actions.codes={codes} is not supported; accepted: {', '.join(map(str, LEVELS))}")
    return LEVELS[codes]


# ---------------------------------------------------------------------------------------------- FSQ
class FSQ(nn.Module):
    """Finite scalar quantisation: each of ``len(levels)`` dimensions is bounded (tanh) and rounded to one
    of ``levels[i]`` evenly spaced values in [-1, 1]; rounding passes gradients straight through.

    Code index = sum_i digit_i * prod(levels[:i]) with digit_i in 0 .. levels[i] - 1 (dimension 0 is the
    least significant); :meth:`to_index` and :meth:`to_vector` are exact inverses on the grid.
    """

    def __init__(self, levels: tuple[int, ...] | list[int]) -> None:
        super().__init__()
        if not levels or any(int(v) < 2 for v in levels):
            raise ConfigError(f"FSQ levels must be >= 2 per dimension, got {list(levels)}")
        self.levels = tuple(int(v) for v in levels)
        self.register_buffer("_levels", torch.tensor(self.levels, dtype=torch.float32), persistent=False)
        basis = [math.prod(self.levels[:i]) for i in range(len(self.levels))]
        self.register_buffer("_basis", torch.tensor(basis, dtype=torch.long), persistent=False)

    @property
    def dims(self) -> int:
        return len(self.levels)

    @property
    def codes(self) -> int:
        return math.prod(self.levels)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """(..., dims) unbounded -> (..., dims) on the grid in [-1, 1] (straight-through gradient)."""
        top = self._levels.to(h.device) - 1
        y = (torch.tanh(h.float()) + 1) / 2 * top  # in [0, L - 1]
        q = y + (torch.round(y) - y).detach()
        return q * 2 / top - 1

    def to_index(self, v: torch.Tensor) -> torch.Tensor:
        """Grid vectors (..., dims) -> code indices (...,) int64; rows with NaN (no action) -> -1."""
        missing = torch.isnan(v).any(-1)
        top = self._levels.to(v.device) - 1
        digits = torch.round((torch.nan_to_num(v.float(), nan=0.0) + 1) / 2 * top).long()
        digits = torch.minimum(digits.clamp_min(0), top.long())
        idx = (digits * self._basis.to(v.device)).sum(-1)
        return torch.where(missing, torch.full_like(idx, -1), idx)

    def to_vector(self, idx: torch.Tensor) -> torch.Tensor:
        """Code indices (...,) -> grid vectors (..., dims) float32; -1 (no action) -> a NaN row."""
        idx = torch.as_tensor(idx, dtype=torch.long)
        if idx.numel() and (int(idx.max()) >= self.codes or int(idx.min()) < -1):
            raise DataError(f"latent action codes must be in [-1, {self.codes - 1}], got [{int(idx.min())}, {int(idx.max())}]")
        lv = self._levels.to(idx.device).long()
        digits = (idx.clamp_min(0)[..., None] // self._basis.to(idx.device)) % lv
        v = digits.float() * 2 / (lv.float() - 1) - 1
        return torch.where((idx < 0)[..., None], torch.full_like(v, float("nan")), v)


# ---------------------------------------------------------------------------------------------- config
class LatentActionConfig(BaseModel):
    """The inverse-dynamics encoder; stored with the dynamics config in every latent-action checkpoint."""

    model_config = ConfigDict(extra="forbid")

    tokens: int = Field(..., ge=1, description="latent tokens per frame")
    channels: int = Field(..., ge=1, description="channels per latent token")
    levels: list[int] = Field(default_factory=lambda: [4, 4], description="FSQ levels per code dimension")
    quantize: bool = Field(True, description="False: a continuous code of len(levels) dims (tanh), no rounding")
    hidden: int = Field(128, ge=8, description="width of the per-token and per-frame MLPs")
    token_width: int = Field(8, ge=1, description="each token is projected to this width before the frame MLP")
    forward_head: bool = Field(
        True, description="a small forward model (previous frame + action -> frame) that trains the encoder directly"
    )
    head_mixing: int = Field(
        0, ge=0, description="token-mixing groups in the forward head (0: each token predicted from itself alone)"
    )
    history: int = Field(
        0, ge=0, le=4, description="frames before t - 1 whose changes the encoder also reads (0: frames t - 1 and t only)"
    )

    @model_validator(mode="after")
    def _ok(self) -> LatentActionConfig:
        if not self.levels or any(v < 2 for v in self.levels):
            raise ValueError(f"levels must be a non-empty list of values >= 2, got {self.levels}")
        if self.head_mixing and (not self.forward_head or self.hidden % self.head_mixing):
            raise ValueError(f"head_mixing={self.head_mixing} needs the forward head and must divide hidden={self.hidden}")
        return self

    @property
    def dims(self) -> int:
        return len(self.levels)

    @property
    def codes(self) -> int:
        return math.prod(self.levels)

    def bits(self) -> float:
        """Most information one latent action can carry, in bits (the bottleneck)."""
        return math.log2(self.codes) if self.quantize else float("inf")


class LatentActionModel(nn.Module):
    """Inverse dynamics: latents of frames t - 1 and t -> one latent action for frame t.

    Each token reads (z[t-1], z[t], z[t] - z[t-1]) plus its position, through an MLP, down to
    ``token_width`` channels (per token: one Linear shared by all tokens keeps the weights independent of the
    token count and each token's place); the frame's tokens are then joined and an MLP maps
    them to ``dims`` numbers, which FSQ bounds and rounds. With ``history`` h > 0 each token also reads the
    h changes before that, z[t-1] - z[t-2], ..., z[t-h] - z[t-h-1], so the encoder can tell a change the
    player caused from one that merely continues (momentum). A frame before the first of the latents given
    (a video's, or in training a window's) counts as that first frame: no change.
    """

    def __init__(self, cfg: LatentActionConfig) -> None:
        super().__init__()
        self.config = cfg
        H, C, N = cfg.hidden, cfg.channels, cfg.tokens
        self.token_in = nn.Linear((3 + cfg.history) * C, H)
        self.token_pos = nn.Parameter(torch.randn(N, H) * 0.02)
        self.token_out = nn.Linear(H, cfg.token_width)
        self.norm = RMSNorm(N * cfg.token_width)
        self.frame_mlp = nn.Sequential(nn.Linear(N * cfg.token_width, H), nn.SiLU(), nn.Linear(H, cfg.dims))
        self.fsq = FSQ(cfg.levels)
        if cfg.forward_head:
            # previous frame (each token, its position, and a summary of the frame) + action -> change per token
            self.head_in = nn.Linear(2 * C, H)
            self.head_pos = nn.Parameter(torch.randn(N, H) * 0.02)
            self.head_action = nn.Linear(cfg.dims, H)
            self.head_mlp = nn.Sequential(nn.SiLU(), nn.Linear(H, H), nn.SiLU(), nn.Linear(H, C))
            if cfg.head_mixing:
                # each group of channels gets its own N x N token mix: the action can switch groups on and off,
                # so "moved right" can read the neighbour on one side and "moved left" the other (a scroll moves
                # content between tokens). Zero at the start: the head begins as the per-token one.
                self.head_mix = nn.Parameter(torch.zeros(cfg.head_mixing, N, N))

    def predict_change(self, prev: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """The forward head: (..., N, C) previous latents and (..., dims) actions -> (..., N, C) predicted
        z[t] - z[t-1]. Only ``action`` tells it what happened, so the encoder must put the change there."""
        prev = prev.float()
        summary = prev.mean(dim=-2, keepdim=True).expand_as(prev)
        h = self.head_in(torch.cat([prev, summary], dim=-1)) + self.head_pos + self.head_action(action)[..., None, :]
        if self.config.head_mixing:
            g = rearrange(F.silu(h), "... n (g c) -> ... g n c", g=self.config.head_mixing)
            h = h + rearrange(self.head_mix @ g, "... g n c -> ... n (g c)")
        return self.head_mlp(h)

    def forward_loss(self, latents: torch.Tensor, pairs: torch.Tensor | None = None,
                     pre: torch.Tensor | None = None) -> torch.Tensor:
        """Relative MSE of the forward head's next-frame change over a window (B, T, N, C), T >= 2: 1 means
        no better than predicting "no change"; the encoder gets its gradient through the action. ``pairs``
        (and ``pre``, their values before the bound): the window's actions for frames 1 .. T - 1 when already
        computed. Plus :meth:`range_loss` of the encoder's values."""
        x = latents.float()
        prev, cur = x[:, :-1], x[:, 1:]
        change = cur - prev
        if pairs is None:
            a, pre = self.forward_pre(x)
            pairs = a[:, 1:]
        pred = self.predict_change(prev, pairs)
        loss = (pred - change).pow(2).mean() / change.pow(2).mean().detach().clamp_min(1e-8)
        return loss if pre is None else loss + self.range_loss(pre)

    @staticmethod
    def range_loss(pre: torch.Tensor) -> torch.Tensor:
        """Keeps the encoder's values where tanh still has a slope (|h| <= RANGE; the grid's last level starts
        at |h| ~ 0.8 for 4 levels). Without it an encoder can saturate: every frame gets the same code and no
        gradient comes back through the bound."""
        return F.relu(pre.float().abs() - RANGE).pow(2).mean()

    def encode_pre(self, prev: torch.Tensor, cur: torch.Tensor, older: torch.Tensor | None = None) -> torch.Tensor:
        """(..., N, C) latents of frames t - 1 and t -> (..., dims) the encoder's values before the bound.
        ``older``: (..., history, N, C) latents of frames t - 2, t - 3, ... (None: as if the video began at
        t - 1)."""
        feats = [prev, cur, cur - prev]
        back = self.config.history
        if back:
            if older is None:
                older = prev.unsqueeze(-3).expand(*prev.shape[:-2], back, *prev.shape[-2:])
            if older.shape[-3] != back:
                raise DataError(f"this latent action model reads {back} older frames, got {older.shape[-3]}")
            chain = torch.cat([prev.unsqueeze(-3), older], dim=-3)  # t-1, t-2, ..., t-1-h
            feats.append(rearrange(chain[..., :-1, :, :] - chain[..., 1:, :, :], "... h n c -> ... n (h c)"))
        x = torch.cat(feats, dim=-1).float()
        h = self.token_out(F.silu(self.token_in(x) + self.token_pos))
        return self.frame_mlp(self.norm(rearrange(h, "... n w -> ... (n w)")))

    def bound(self, pre: torch.Tensor) -> torch.Tensor:
        """The encoder's values -> latent actions: FSQ (quantised) or tanh (continuous)."""
        return self.fsq(pre) if self.config.quantize else torch.tanh(pre)

    def encode_pairs(self, prev: torch.Tensor, cur: torch.Tensor) -> torch.Tensor:
        """(..., N, C) latents of frames t - 1 and t -> (..., dims) latent action (quantised unless disabled)."""
        return self.bound(self.encode_pre(prev, cur))

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, T, N, C) clean latents -> (B, T, dims) latent actions; frame 0 (no frame before it) is NaN."""
        return self.forward_pre(latents)[0]

    def forward_pre(self, latents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Like :meth:`forward`, also returning the encoder's values before the bound for frames 1 .. T - 1
        (None when T < 2)."""
        if latents.dim() != 4 or tuple(latents.shape[2:]) != (self.config.tokens, self.config.channels):
            raise DataError(
                f"latents must be (B, T, {self.config.tokens}, {self.config.channels}) for this latent action "
                f"model, got {tuple(latents.shape)}"
            )
        B, T = latents.shape[:2]
        first = torch.full((B, 1, self.config.dims), float("nan"), device=latents.device)
        if T < 2:
            return first, None
        older = None
        if self.config.history:
            # frames t - 2 .. t - 1 - history for t = 1 .. T - 1; before the window's first frame: the first frame
            t = torch.arange(1, T, device=latents.device)
            idx = (t[:, None] - 2 - torch.arange(self.config.history, device=latents.device)).clamp_min(0)
            older = latents[:, idx]  # (B, T - 1, history, N, C)
        pre = self.encode_pre(latents[:, :-1], latents[:, 1:], older)
        return torch.cat([first, self.bound(pre)], dim=1), pre

    @torch.no_grad()
    def codes(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, T, N, C) -> (B, T) code indices, -1 for frame 0 (quantised models only)."""
        if not self.config.quantize:
            raise ConfigError("a continuous latent action model (latent_actions.quantize=False) has no code indices")
        return self.fsq.to_index(self(latents))

    def vectors(self, codes: torch.Tensor) -> torch.Tensor:
        """(...,) code indices (-1 = no action) -> (..., dims) action vectors (NaN rows = no action)."""
        return self.fsq.to_vector(codes)


# ---------------------------------------------------------------------------------------------- joint model
class LatentActionDynamics(DynamicsModel):
    """A dynamics model with continuous actions of ``dims`` numbers plus the encoder that makes them.

    As a :class:`DynamicsModel` (``forward(z, tau, step, actions)``, ``step``, the sampler) it behaves exactly
    like one conditioned on given action vectors. In training, ``forward(..., clean=x, keep=k)`` infers the
    actions from the clean latents ``x`` with gradients into the encoder; items where ``keep`` is False, and
    isolated items (single images), get "no action" so the model also learns to continue a clip unsteered.
    """

    def __init__(self, cfg: DynamicsConfig, lam: LatentActionConfig) -> None:
        if cfg.action_kind != "continuous" or cfg.action_dim != lam.dims:
            raise ConfigError(
                f"a latent-action dynamics model needs action_kind 'continuous' with action_dim {lam.dims}, "
                f"got {cfg.action_kind!r} with {cfg.action_dim}"
            )
        if (cfg.tokens, cfg.channels) != (lam.tokens, lam.channels):
            raise ConfigError(f"latent action model takes {lam.tokens}x{lam.channels} latents, dynamics {cfg.tokens}x{cfg.channels}")
        super().__init__(cfg)
        self.lam_config = lam
        self.action_model = LatentActionModel(lam)

    def config_dict(self) -> dict[str, Any]:
        return {"dynamics": self.config.model_dump(mode="json"), "latent_actions": self.lam_config.model_dump(mode="json")}

    def latent_actions(
        self, clean: torch.Tensor, keep: torch.Tensor | None = None, isolated: torch.Tensor | None = None,
        inferred: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(B, T, dims) actions inferred from clean latents; NaN (no action) for frame 0 and dropped items."""
        a = self.action_model(clean) if inferred is None else inferred
        drop = torch.zeros(a.shape[0], dtype=torch.bool, device=a.device)
        if keep is not None:
            drop = drop | ~keep.to(device=a.device, dtype=torch.bool)
        if isolated is not None:
            drop = drop | isolated.to(device=a.device, dtype=torch.bool)
        return torch.where(drop[:, None, None], torch.full_like(a, float("nan")), a)

    def forward(
        self,
        z: torch.Tensor,
        tau: torch.Tensor,
        step: torch.Tensor,
        actions: torch.Tensor | None = None,
        isolated: torch.Tensor | None = None,
        clean: torch.Tensor | None = None,
        keep: torch.Tensor | None = None,
        with_forward_loss: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor | None]:
        """As :meth:`DynamicsModel.forward`; with ``clean`` the actions are inferred from it (see the class).
        ``with_forward_loss``: returns ``(x_hat, loss)``, the loss of the encoder's forward head on ``clean``
        (None without ``clean`` or without a forward head)."""
        fwd = None
        if clean is not None:
            # inside the forward, so that under DDP every gradient of the encoder and its head is one graph's
            a, pre = self.action_model.forward_pre(clean)
            actions = self.latent_actions(clean, keep, isolated, inferred=a)
            if self.lam_config.forward_head and pre is not None:
                fwd = self.action_model.forward_loss(clean, a[:, 1:], pre)
        out = super().forward(z, tau, step, actions=actions, isolated=isolated)
        return (out, fwd) if with_forward_loss else out


def latent_action_config(
    codes: int, tokens: int, channels: int, quantize: bool = True, forward_head: bool = True, head_mixing: int = 0,
    history: int = 0,
) -> LatentActionConfig:
    return LatentActionConfig(tokens=tokens, channels=channels, levels=list(levels_for(codes)), quantize=quantize,
                              forward_head=forward_head, head_mixing=head_mixing if forward_head else 0, history=history)


# ---------------------------------------------------------------------------------------------- files
def split_config(stored: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """(dynamics config, latent action config or None) of a stored config of either kind of run."""
    if "dynamics" in stored and "latent_actions" in stored:
        return dict(stored["dynamics"]), dict(stored["latent_actions"])
    return dict(stored), None


def load_latent_action_dynamics(path: str | os.PathLike) -> LatentActionDynamics:
    """Rebuild a latent-action dynamics model from its weights file alone, strictly."""
    kind, stored, _ = read_metadata(path)
    if kind != KIND:
        raise CheckpointError(f"checkpoint {path} holds a {kind} model, not a {KIND} model")
    dyn, lam = split_config(stored)
    if lam is None:
        raise CheckpointError(f"checkpoint {path} has no latent_actions config")
    try:
        model = LatentActionDynamics(DynamicsConfig(**dyn), LatentActionConfig(**lam))
    except ValidationError as e:
        raise CheckpointError(f"checkpoint {path} has an invalid config ({e.errors()[0]['msg']})") from None
    load_weights(path, model, kind=KIND, config=stored)
    return model


def load_world_dynamics(run_or_path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[DynamicsModel, dict[str, Any]]:
    """Like :func:`~ahri_core.models.dynamics_io.load_dynamics_run`, for plain and latent-action runs alike.

    For a latent-action run the model is a :class:`LatentActionDynamics` and ``info`` also holds
    ``latent_actions`` (its config) and ``action_map`` (the run's few-label map, when fitted)."""
    path = weights_path(run_or_path)
    kind, stored, extra = read_metadata(path)
    if kind == DYNAMICS_KIND:
        return load_dynamics_run(path, device=device)
    if kind != KIND:
        raise CheckpointError(f"checkpoint {path} holds a {kind} model, not a dynamics model")
    model = load_latent_action_dynamics(path).to(device).eval()
    info = {
        **run_info(path, model.config, stored, extra),
        "latent_actions": model.lam_config.model_dump(mode="json"),
        "action_map": read_action_map(path.parent),
    }
    return model, info


def read_action_map(run_dir: str | os.PathLike) -> dict[str, Any] | None:
    import json

    p = Path(run_dir) / ACTION_MAP_FILE
    if not p.is_file():
        return None
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{p} cannot be read ({e}); fit it again with ahri train --stage action-map") from None


# ---------------------------------------------------------------------------------------------- analysis
@torch.no_grad()
def video_codes(model: LatentActionDynamics, latents: torch.Tensor, batch: int = 512) -> torch.Tensor:
    """Code of every frame of one video's latents (T, N, C) -> (T,) int64, -1 for frame 0."""
    enc = model.action_model
    dev = next(model.parameters()).device
    h = enc.config.history
    out = [torch.full((1,), -1, dtype=torch.long)]
    for i in range(0, int(latents.shape[0]) - 1, batch):
        lo = max(0, i - h)  # the older frames the encoder reads come along (their codes are dropped)
        a = latents[lo : i + batch + 1].to(dev).float()
        out.append(enc.fsq.to_index(enc(a[None])[0, 1 + i - lo :]).cpu())
    return torch.cat(out)[: int(latents.shape[0])]

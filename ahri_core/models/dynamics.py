"""The dynamics model: a block-causal transformer over frames of latent tokens (after DreamerV4).

Each frame is ``tokens`` latent tokens (projected to the model width) plus ``registers`` learned tokens.
Layers alternate spatial attention (all tokens of one frame attend to each other) with causal temporal
attention (each token position attends to the same position in itself and earlier frames) every
``temporal_every`` layers: S, S, S, T for the default 4. The frame's noise level tau and step size d
(and its action) form one conditioning vector per frame that is added to every token of the frame and
modulates every block (AdaLN: shift, scale and gate from the vector), so the signal reaches every token
(PITFALLS 9), never as a lone extra token.

Convention (``ahri_core.diffusion``): tau = 0 clean, tau = 1 pure noise, the model predicts the clean
latents (x-prediction). Step sizes d are powers of two times d_min = 1 / k_max; the step embedding is a
learned table with one row per d, indexed by log2(d * k_max).

Actions: ``actions[t]`` is the action that produced frame t. Discrete actions are int64 with -1 = "no
action"; continuous actions are float rows with NaN = "no action"; ``actions=None`` is "no action"
everywhere. Both map to a learned "no action" embedding, so video without actions trains it.

Rollout reuses the temporal keys/values of earlier frames (``new_cache`` / ``step``); a cache holds at
most ``max_frames - 1`` context frames, so a new frame attends to at most ``max_frames`` frames
(itself included), the span it was trained on. Keys are stored after RoPE at absolute frame indices;
RoPE scores depend only on index differences, so sliding the window needs no re-rotation.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from einops import rearrange
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..checkpoint import config_mismatch, load_weights, read_metadata
from ..config.presets import DYNAMICS_MAX_TOKENS, DYNAMICS_PRESETS
from ..errors import CheckpointError, ConfigError, DataError
from .layers import Attention, RMSNorm, Rotary, SwiGLU

KIND = "dynamics"
TAU_FREQS = 256  # sinusoidal features of tau before the conditioning MLP


# ---------------------------------------------------------------------------------------------- config
class DynamicsConfig(BaseModel):
    """Everything needed to rebuild the model; stored as JSON in every checkpoint."""

    model_config = ConfigDict(extra="forbid")

    tokens: int = Field(..., ge=1, description="latent tokens per frame (N)")
    channels: int = Field(..., ge=1, description="channels per latent token (C)")
    pack: int = Field(1, ge=1, description="latent tokens joined into one model token (N / pack tokens of pack * C)")
    pack_rows: int = Field(
        1, ge=1, description="rows of the token grid one model token spans: > 1 packs pack_rows x (pack / pack_rows) "
        "blocks of token_grid (1: pack consecutive tokens)"
    )
    token_grid: tuple[int, int] | None = Field(
        None, description="(rows, columns) of the latent tokens, row-major; needed when pack_rows > 1"
    )
    dim: int = Field(128, ge=8, description="model width")
    depth: int = Field(8, ge=1, description="number of blocks (spatial + temporal)")
    heads: int = Field(4, ge=1)
    kv_heads: int | None = Field(None, ge=1, description="grouped-query attention: key/value heads (None = heads)")
    registers: int = Field(4, ge=0, description="learned register tokens per frame")
    temporal_every: int = Field(4, ge=1, description="every k-th block is temporal (4: S,S,S,T)")
    mlp_ratio: float = Field(4.0, gt=0)
    qk_norm: bool = True
    softcap: float | None = Field(None, gt=0, description="tanh soft-cap of attention logits (None = off)")
    rope_base: float = Field(10000.0, gt=1)
    action_kind: Literal["none", "discrete", "continuous"] = "none"
    action_count: int = Field(0, ge=0, description="number of discrete actions")
    action_dim: int = Field(0, ge=0, description="width of a continuous action vector")
    k_max: int = Field(64, ge=1, le=4096, description="finest step count; d_min = 1/k_max")
    max_frames: int = Field(64, ge=1, description="trained sequence length: default KV-cache window")
    prev_frame: bool = Field(
        False, description="each token also reads the same token of the previous frame (and its tau) at the input"
    )
    prev_skip: bool = Field(
        False,
        description="the output adds the previous frame's latents times a gate read from each token's final state "
        "(and the previous frame's tau): a still region can be copied exactly",
    )
    grad_checkpointing: bool = Field(False, description="recompute each block in backward (runtime only)")

    # Fields that do not change the weights: ignored when a checkpoint's config is compared.
    RUNTIME_FIELDS: ClassVar[frozenset[str]] = frozenset({"grad_checkpointing"})

    @model_validator(mode="after")
    def _consistent(self) -> DynamicsConfig:
        if self.tokens % self.pack:
            raise ValueError(f"pack {self.pack} must divide the {self.tokens} latent tokens per frame")
        if self.pack_rows > 1:
            if self.token_grid is None or self.token_grid[0] * self.token_grid[1] != self.tokens:
                raise ValueError(f"pack_rows {self.pack_rows} needs token_grid (rows, columns) of the {self.tokens} tokens")
            rows, cols = self.token_grid
            if self.pack % self.pack_rows or rows % self.pack_rows or cols % (self.pack // self.pack_rows):
                raise ValueError(
                    f"pack {self.pack} as blocks of {self.pack_rows} rows does not tile the {rows}x{cols} token grid"
                )
        if self.dim % self.heads:
            raise ValueError(f"dim {self.dim} must be divisible by heads {self.heads}")
        if (self.dim // self.heads) % 2:
            raise ValueError(f"head width dim/heads = {self.dim // self.heads} must be even (RoPE)")
        kv = self.kv_heads or self.heads
        if self.heads % kv:
            raise ValueError(f"heads {self.heads} must be divisible by kv_heads {kv}")
        if self.k_max & (self.k_max - 1):
            raise ValueError(f"k_max {self.k_max} must be a power of two (1, 2, 4, ..., 4096)")
        if self.depth < self.temporal_every:
            raise ValueError(
                f"depth {self.depth} < temporal_every {self.temporal_every}: the model would have no temporal layer"
            )
        if self.action_kind == "discrete" and self.action_count < 1:
            raise ValueError("action_kind 'discrete' needs action_count >= 1")
        if self.action_kind == "continuous" and self.action_dim < 1:
            raise ValueError("action_kind 'continuous' needs action_dim >= 1")
        return self

    def weights_fields(self) -> dict[str, Any]:
        """The config as JSON-able dict without runtime-only fields (for checkpoint comparisons)."""
        return {k: v for k, v in self.model_dump(mode="json").items() if k not in self.RUNTIME_FIELDS}

    @property
    def model_tokens(self) -> int:
        """Tokens per frame inside the model (latent tokens after packing)."""
        return self.tokens // self.pack

    def layer_kinds(self) -> list[str]:
        """'S' or 'T' per block; block i is temporal when (i + 1) % temporal_every == 0."""
        return ["T" if (i + 1) % self.temporal_every == 0 else "S" for i in range(self.depth)]


def auto_pack(tokens: int, max_tokens: int | None, grid: tuple[int, int] | None = None) -> tuple[int, int]:
    """(pack, pack_rows): the fewest latent tokens per model token with tokens / pack <= ``max_tokens``
    ((1, 1) when there is no limit).

    Without ``grid`` the model token is ``pack`` consecutive latent tokens, the smallest divisor that fits.
    ``grid``: (rows, columns) of the latent tokens on the picture (row-major). Then each model token is a
    block of whole grid cells, a rows x b columns with a dividing the rows and b the columns, never the end of
    one row joined to the start of the next. The smallest block wins, and among equal ones the flattest (a
    piece of one row, or whole rows: consecutive tokens, pack_rows 1). A 16:9 frame of 6 x 10 tokens packs
    into 2 x 2 blocks (15 model tokens; the plain rule's runs of 4 straddled rows), 4:3's 7 x 9 into columns
    of 7, a square 8 x 8 into runs of 4 and Atari's 9 x 7 into rows, as before.
    """
    if not max_tokens or tokens <= max_tokens:
        return 1, 1
    if grid is not None and grid[0] * grid[1] == tokens:
        rows, cols = grid
        blocks = [(a * b, a, b) for a in range(1, rows + 1) if rows % a == 0 for b in range(1, cols + 1)
                  if cols % b == 0 and (rows // a) * (cols // b) <= max_tokens]
        size, a, b = min(blocks)
        return size, (a if 1 < a and b < cols else 1)
    return next(p for p in range(1, tokens + 1) if tokens % p == 0 and tokens // p <= max_tokens), 1


def describe(cfg: DynamicsConfig, params: int | None = None) -> str:
    """One line for a run's log: width, blocks, parameters and how the latent tokens become model tokens."""
    p = f", {params / 1e6:.2f}M params" if params is not None else ""
    size = f"{cfg.pack_rows} x {cfg.pack // cfg.pack_rows}" if cfg.pack_rows > 1 else f"{cfg.pack}"
    tokens = f"{cfg.tokens} latent tokens x {cfg.channels} channels"
    if cfg.pack > 1:
        tokens += f", packed as {cfg.model_tokens} model tokens of {size}"
    acts = {"discrete": f", {cfg.action_count} discrete actions", "continuous": f", action vectors of {cfg.action_dim}"}
    return (f"dynamics model: width {cfg.dim}, {cfg.depth} blocks ({cfg.layer_kinds().count('T')} temporal){p}; "
            f"{tokens}, + {cfg.registers} registers per frame{acts.get(cfg.action_kind, '')}")


def _one_line(err: ValidationError) -> str:
    parts = []
    for e in err.errors():
        loc = ".".join(str(x) for x in e["loc"]) or "config"
        parts.append(f"{loc}: {e['msg']}")
    return "; ".join(parts)


def dynamics_config(
    preset_or_config: str | DynamicsConfig | dict[str, Any],
    tokens: int | None = None,
    channels: int | None = None,
    *,
    latent_grid: tuple[int, int] | None = None,
    **overrides: Any,
) -> DynamicsConfig:
    """Resolve a preset name, a dict or a config plus overrides into a validated ``DynamicsConfig``.

    ``latent_grid``: (rows, columns) of the latent tokens on the picture; a preset then packs blocks of the
    grid (:func:`auto_pack`), and a config with ``pack_rows`` > 1 gets it as its ``token_grid``."""
    if isinstance(preset_or_config, DynamicsConfig):
        fields = preset_or_config.model_dump()
    elif isinstance(preset_or_config, dict):
        fields = dict(preset_or_config)
    elif isinstance(preset_or_config, str):
        if preset_or_config not in DYNAMICS_PRESETS:
            raise ConfigError(
                f"unknown dynamics preset {preset_or_config!r}; accepted: {', '.join(DYNAMICS_PRESETS)}"
            )
        fields = dict(DYNAMICS_PRESETS[preset_or_config])
    else:
        raise ConfigError(f"dynamics model: expected a preset name or a config, got {type(preset_or_config).__name__}")
    if tokens is not None:
        fields["tokens"] = tokens
    if channels is not None:
        fields["channels"] = channels
    fields.update(overrides)
    grid = tuple(latent_grid) if latent_grid else None
    if isinstance(preset_or_config, str) and "pack" not in overrides and isinstance(fields.get("tokens"), int):
        fields["pack"], rows = auto_pack(fields["tokens"], DYNAMICS_MAX_TOKENS.get(preset_or_config), grid)
        if rows > 1:  # blocks of several rows: the model must know the grid (else consecutive tokens)
            fields["pack_rows"] = rows
    if int(fields.get("pack_rows") or 1) > 1 and fields.get("token_grid") is None and grid is not None:
        fields["token_grid"] = grid
    try:
        return DynamicsConfig(**fields)
    except ValidationError as e:
        raise ConfigError(f"dynamics model config: {_one_line(e)}") from None


def build_dynamics(
    preset_or_config: str | DynamicsConfig | dict[str, Any],
    tokens: int | None = None,
    channels: int | None = None,
    **overrides: Any,
) -> DynamicsModel:
    """Build a model from a preset name (tiny, cpu, small, medium) or a config, plus overrides."""
    return DynamicsModel(dynamics_config(preset_or_config, tokens, channels, **overrides))


def param_count(model_or_config: nn.Module | DynamicsConfig | str, tokens: int = 32, channels: int = 16) -> int:
    """Parameters of a model, a config or a preset (configs are built on the meta device: no memory)."""
    if isinstance(model_or_config, nn.Module):
        return sum(p.numel() for p in model_or_config.parameters())
    cfg = dynamics_config(model_or_config, tokens=tokens, channels=channels) if isinstance(
        model_or_config, str
    ) else model_or_config
    with torch.device("meta"):
        model = DynamicsModel(cfg)
    return sum(p.numel() for p in model.parameters())


# ---------------------------------------------------------------------------------------------- pieces
def tau_features(tau: torch.Tensor, dim: int = TAU_FREQS) -> torch.Tensor:
    """Sinusoidal features of tau in [0, 1] (scaled by 1000 as for diffusion timesteps). (...,) -> (..., dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=tau.device, dtype=torch.float32) / half)
    ang = tau.float()[..., None] * 1000.0 * freqs
    return torch.cat([ang.cos(), ang.sin()], dim=-1)


class DynamicsBlock(nn.Module):
    """Pre-norm block with AdaLN modulation; attention is spatial (within a frame) or temporal (causal).

    x (B, T, L, D); cond (B, T, D) per frame. The modulation (shift, scale, gate for attention and MLP)
    is zero-initialised, so every block starts as the identity (DiT's adaLN-zero).
    """

    def __init__(self, cfg: DynamicsConfig, temporal: bool) -> None:
        super().__init__()
        self.temporal = temporal
        self.norm1 = RMSNorm(cfg.dim)
        self.attn = Attention(cfg.dim, cfg.heads, cfg.kv_heads, qk_norm=cfg.qk_norm, softcap=cfg.softcap)
        self.norm2 = RMSNorm(cfg.dim)
        self.mlp = SwiGLU(cfg.dim, cfg.mlp_ratio)
        self.mod = nn.Linear(cfg.dim, 6 * cfg.dim)
        nn.init.zeros_(self.mod.weight)
        nn.init.zeros_(self.mod.bias)

    def forward(
        self,
        x: torch.Tensor,
        cond: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
        isolated: torch.Tensor | None = None,
        past: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        B, T, L, _ = x.shape
        shift1, scale1, gate1, shift2, scale2, gate2 = self.mod(F.silu(cond)).unsqueeze(2).chunk(6, dim=-1)
        h = self.norm1(x) * (1 + scale1) + shift1
        if self.temporal:
            h = rearrange(h, "b t l d -> (b l) t d")
            # causal over frames; with a past (rollout) the one new frame sees all cached frames and itself
            a, kv = self.attn(h, rope_q=rope, is_causal=past is None, past=past)
            if isolated is not None:
                # a frame that may attend only to itself gets softmax weight exactly 1 on its own value
                v = kv[1]
                if self.attn.kv_heads != self.attn.heads:
                    v = v.repeat_interleave(self.attn.heads // self.attn.kv_heads, dim=1)
                own = self.attn.out(rearrange(v, "n h t e -> n t (h e)"))
                iso = isolated.repeat_interleave(L)[:, None, None]  # (B*L, 1, 1), (b l) order
                a = torch.where(iso, own, a)
            a = rearrange(a, "(b l) t d -> b t l d", b=B)
        else:
            a, kv = self.attn(rearrange(h, "b t l d -> (b t) l d"), rope_q=rope)
            a = rearrange(a, "(b t) l d -> b t l d", b=B)
        x = x + gate1 * a
        x = x + gate2 * self.mlp(self.norm2(x) * (1 + scale2) + shift2)
        return x, kv


class DynamicsCache:
    """Temporal keys/values of committed frames, per temporal block; a ring of ``max_frames - 1`` slots.

    Attention does not care about the order of its keys (RoPE was applied at each frame's absolute
    index before storing), so the oldest slot is simply overwritten: constant memory and per-frame cost.
    """

    def __init__(self, batch: int, max_frames: int, layers: int) -> None:
        if max_frames < 1:
            raise ConfigError(f"KV cache max_frames must be >= 1, got {max_frames}")
        self.batch = batch
        self.max_frames = max_frames
        self.slots = max_frames - 1
        self.frames = 0  # absolute index of the next frame = frames committed so far
        self.k: list[torch.Tensor | None] = [None] * layers
        self.v: list[torch.Tensor | None] = [None] * layers
        self.prev: tuple[torch.Tensor, torch.Tensor] | None = None  # the last committed frame (z, tau)

    def __len__(self) -> int:
        """Context frames held (at most max_frames - 1)."""
        return min(self.frames, self.slots)

    def reset(self) -> None:
        self.frames = 0
        self.k = [None] * len(self.k)
        self.v = [None] * len(self.v)
        self.prev = None

    def past(self, layer: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        n = len(self)
        if n == 0 or self.k[layer] is None:
            return None
        return self.k[layer][:, :, :n], self.v[layer][:, :, :n]

    def write(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """Store one frame's keys/values (BL, Hkv, 1, hd) at the slot of frame ``self.frames``."""
        if self.slots == 0:
            return
        if self.k[layer] is None:
            shape = (k.shape[0], k.shape[1], self.slots, k.shape[3])
            self.k[layer] = k.new_zeros(shape)
            self.v[layer] = v.new_zeros(shape)
        slot = self.frames % self.slots
        self.k[layer][:, :, slot : slot + 1] = k
        self.v[layer][:, :, slot : slot + 1] = v


# ---------------------------------------------------------------------------------------------- model
class DynamicsModel(nn.Module):
    """``model(z, tau, step, actions=None, isolated=None) -> x_hat``; see the module docstring."""

    def __init__(self, cfg: DynamicsConfig) -> None:
        super().__init__()
        self.config = cfg
        D = cfg.dim
        self.grad_checkpointing = cfg.grad_checkpointing
        self.latent_in = nn.Linear(cfg.pack * cfg.channels, D)
        if cfg.prev_frame:
            # the previous frame's token (and its tau) at the input; zero at first, so the model starts as without
            self.prev_in = nn.Linear(cfg.pack * cfg.channels + 1, D)
            nn.init.zeros_(self.prev_in.weight)
            nn.init.zeros_(self.prev_in.bias)
        self.token_pos = nn.Parameter(torch.randn(cfg.model_tokens, D) * 0.02)
        self.register_tokens = nn.Parameter(torch.randn(cfg.registers, D) * 0.02)
        # tau: sinusoidal features -> MLP. d: a learned row per power of two (PITFALLS 8).
        self.tau_mlp = nn.Sequential(nn.Linear(TAU_FREQS, D), nn.SiLU(), nn.Linear(D, D))
        self.step_levels = int(round(math.log2(cfg.k_max))) + 1
        self.step_embed = nn.Embedding(self.step_levels, D)
        nn.init.normal_(self.step_embed.weight, std=0.02)
        if cfg.action_kind == "discrete":
            # row action_count is the learned "no action" (index -1)
            self.action_embed = nn.Embedding(cfg.action_count + 1, D)
            nn.init.normal_(self.action_embed.weight, std=0.02)
        elif cfg.action_kind == "continuous":
            self.action_proj = nn.Linear(cfg.action_dim, D)
            self.no_action = nn.Parameter(torch.randn(D) * 0.02)
        self.blocks = nn.ModuleList(DynamicsBlock(cfg, kind == "T") for kind in cfg.layer_kinds())
        self.temporal_index = [i for i, kind in enumerate(cfg.layer_kinds()) if kind == "T"]
        self.rotary = Rotary(D // cfg.heads, base=cfg.rope_base)
        self.norm_out = RMSNorm(D)
        self.mod_out = nn.Linear(D, 2 * D)
        nn.init.zeros_(self.mod_out.weight)
        nn.init.zeros_(self.mod_out.bias)
        self.head = nn.Linear(D, cfg.pack * cfg.channels)
        if cfg.prev_skip:
            # per token and channel, how much of the previous frame's latent to add to the output; zero at first
            self.skip_gate = nn.Linear(D + 1, cfg.pack * cfg.channels)
            nn.init.zeros_(self.skip_gate.weight)
            nn.init.zeros_(self.skip_gate.bias)
        nn.init.normal_(self.head.weight, std=0.02 / math.sqrt(D / 128))
        nn.init.zeros_(self.head.bias)

    # ------------------------------------------------------------------ conditioning
    def step_index(self, step: torch.Tensor) -> torch.Tensor:
        """Row of the step table for step size d: log2(d * k_max), rounded and clamped to the grid."""
        idx = torch.log2(step.float().clamp_min(1e-12) * self.config.k_max).round()
        return idx.clamp(0, self.step_levels - 1).long()

    def action_embedding(self, actions: torch.Tensor | None, B: int, T: int, device) -> torch.Tensor | None:
        cfg = self.config
        if cfg.action_kind == "none":
            if actions is not None:
                raise DataError("this dynamics model was built without actions (action_kind 'none') but got actions")
            return None
        if cfg.action_kind == "discrete":
            if actions is None:
                idx = torch.full((B, T), cfg.action_count, dtype=torch.long, device=device)
            else:
                if actions.shape != (B, T) or actions.dtype.is_floating_point:
                    raise DataError(
                        f"discrete actions must be integer (B, T) = ({B}, {T}), got {actions.dtype} {tuple(actions.shape)}"
                    )
                if not torch.compiler.is_compiling() and actions.numel():
                    lo, hi = int(actions.min()), int(actions.max())
                    if lo < -1 or hi >= cfg.action_count:
                        raise DataError(
                            f"discrete action ids must be in [-1, {cfg.action_count - 1}], got [{lo}, {hi}]"
                        )
                idx = torch.where(actions < 0, torch.full_like(actions, cfg.action_count), actions).long()
            return self.action_embed(idx)
        # continuous
        if actions is None:
            return self.no_action.expand(B, T, -1)
        if actions.shape != (B, T, cfg.action_dim):
            raise DataError(
                f"continuous actions must be (B, T, A) = ({B}, {T}, {cfg.action_dim}), got {tuple(actions.shape)}"
            )
        missing = torch.isnan(actions).any(-1, keepdim=True)
        emb = self.action_proj(torch.nan_to_num(actions.float(), nan=0.0))
        return torch.where(missing, self.no_action.to(emb.dtype), emb)

    def conditioning(
        self, tau: torch.Tensor, step: torch.Tensor, actions: torch.Tensor | None, B: int, T: int
    ) -> torch.Tensor:
        """One vector per frame (B, T, D): tau + step size d + action embeddings."""
        if tau.shape != (B, T) or step.shape != (B, T):
            raise DataError(
                f"tau and step must be (B, T) = ({B}, {T}), got {tuple(tau.shape)} and {tuple(step.shape)}"
            )
        c = self.tau_mlp(tau_features(tau)) + self.step_embed(self.step_index(step))
        a = self.action_embedding(actions, B, T, tau.device)
        if a is not None:
            c = c + a
        return c

    # ------------------------------------------------------------------ packing
    def _packing(self) -> tuple[str, str, dict[str, int]] | None:
        """(latent layout, model-token layout, sizes) for einops, or None when nothing is packed."""
        cfg = self.config
        if cfg.pack == 1:
            return None
        if cfg.pack_rows > 1:
            assert cfg.token_grid is not None  # the config's validator ensures it
            w = cfg.pack // cfg.pack_rows
            return "b t (gr a gc w) c", "b t (gr gc) (a w c)", dict(a=cfg.pack_rows, w=w, gc=cfg.token_grid[1] // w)
        return "b t (n p) c", "b t n (p c)", dict(p=cfg.pack)

    def pack(self, z: torch.Tensor) -> torch.Tensor:
        """Latents (B, T, N, C) -> model tokens (B, T, N / pack, pack * C) (see ``pack``, ``pack_rows``)."""
        p = self._packing()
        return z if p is None else rearrange(z, f"{p[0]} -> {p[1]}", **p[2])

    def unpack(self, x: torch.Tensor) -> torch.Tensor:
        """The inverse of :meth:`pack`: (B, T, N / pack, pack * C) -> (B, T, N, C)."""
        p = self._packing()
        return x if p is None else rearrange(x, f"{p[1]} -> {p[0]}", c=self.config.channels, **p[2])

    # ------------------------------------------------------------------ trunk
    def _check_latents(self, z: torch.Tensor) -> None:
        cfg = self.config
        if z.dim() != 4 or z.shape[2] != cfg.tokens or z.shape[3] != cfg.channels:
            raise DataError(
                f"latents must be (B, T, {cfg.tokens}, {cfg.channels}) for this dynamics model, got {tuple(z.shape)}"
            )

    def embed(
        self, z: torch.Tensor, cond: torch.Tensor, prev: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> torch.Tensor:
        """Latent tokens + registers, conditioning added to every token: (B, T, N + R, D).

        ``prev`` (``prev_frame`` models): the (z, tau) of each frame's previous frame, (B, T, N, C) and (B, T);
        zeros where there is none (the first frame, single images)."""
        B, T = z.shape[:2]
        z = self.pack(z)
        x = self.latent_in(z) + self.token_pos
        if self.config.prev_frame:
            pz, pt = prev if prev is not None else (torch.zeros(B, T, self.config.tokens, self.config.channels,
                                                                 device=z.device), torch.zeros(B, T, device=z.device))
            pz = self.pack(pz)
            pt = pt.to(pz.dtype)[:, :, None, None].expand(-1, -1, pz.shape[2], 1)
            x = x + self.prev_in(torch.cat([pz.to(x.dtype), pt.to(x.dtype)], dim=-1))
        if self.config.registers:
            reg = self.register_tokens.to(x.dtype).expand(B, T, -1, -1)
            x = torch.cat([x, reg], dim=2)
        return x + cond.unsqueeze(2)

    def readout(
        self, x: torch.Tensor, cond: torch.Tensor, prev: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> torch.Tensor:
        """The final norm and head; ``prev_skip`` models add the gated previous frame (``prev`` as in
        :meth:`embed`; none: no previous frame)."""
        shift, scale = self.mod_out(F.silu(cond)).unsqueeze(2).chunk(2, dim=-1)
        x = x[:, :, : self.config.model_tokens]
        h = self.norm_out(x) * (1 + scale) + shift
        out = self.head(h).float()
        if self.config.prev_skip and prev is not None:
            pz, pt = prev
            pz = self.pack(pz)
            pt = pt.to(h.dtype)[:, :, None, None].expand(-1, -1, h.shape[2], 1)
            gate = self.skip_gate(torch.cat([h, pt], dim=-1)).float()
            out = out + gate * pz.float()
        out = self.unpack(out)
        return out

    def previous(
        self, z: torch.Tensor, tau: torch.Tensor, isolated: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Each frame's previous frame (z, tau) within the sequence: zeros for frame 0 and for isolated items."""
        pz = torch.cat([torch.zeros_like(z[:, :1]), z[:, :-1]], dim=1)
        pt = torch.cat([torch.zeros_like(tau[:, :1]), tau[:, :-1]], dim=1).to(z.dtype)
        if isolated is not None:
            keep = (~isolated.to(torch.bool)).to(z.dtype)
            pz, pt = pz * keep[:, None, None, None], pt * keep[:, None]
        return pz, pt

    def trunk(
        self, z: torch.Tensor, cond: torch.Tensor, isolated: torch.Tensor | None = None, tau: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Everything after the conditioning vector: (B, T, N, C) latents + (B, T, D) cond -> x_hat.
        ``tau`` (B, T) is needed by ``prev_frame`` models."""
        B, T = z.shape[:2]
        prev = None
        if self.config.prev_frame or self.config.prev_skip:
            if tau is None:
                raise DataError("a prev_frame or prev_skip dynamics model needs each frame's tau in trunk()")
            prev = self.previous(z, tau, isolated)
        x = self.embed(z, cond, prev if self.config.prev_frame else None)
        L = x.shape[2]
        dev = x.device
        rope_s = self.rotary(torch.arange(L, device=dev))
        rope_t = self.rotary(torch.arange(T, device=dev))
        use_ckpt = self.grad_checkpointing and self.training and torch.is_grad_enabled()
        for blk in self.blocks:
            rope = rope_t if blk.temporal else rope_s
            iso = isolated if blk.temporal else None
            if use_ckpt:
                x, _ = checkpoint(blk, x, cond, rope, iso, use_reentrant=False)
            else:
                x, _ = blk(x, cond, rope, iso)
        return self.readout(x, cond, prev)

    def forward(
        self,
        z: torch.Tensor,
        tau: torch.Tensor,
        step: torch.Tensor,
        actions: torch.Tensor | None = None,
        isolated: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """z (B, T, N, C) noisy latents; tau, step (B, T); actions (B, T) int / (B, T, A) float / None;
        isolated (B,) bool: those items' frames see no other frame. Returns x_hat (B, T, N, C) float32."""
        self._check_latents(z)
        B, T = z.shape[:2]
        cond = self.conditioning(tau, step, actions, B, T)
        if isolated is not None:
            if isolated.shape != (B,):
                raise DataError(f"isolated must be a (B,) = ({B},) bool tensor, got {tuple(isolated.shape)}")
            isolated = isolated.to(device=z.device, dtype=torch.bool)
        return self.trunk(z, cond, isolated, tau)

    # ------------------------------------------------------------------ rollout
    def new_cache(self, batch: int, max_frames: int | None = None) -> DynamicsCache:
        """An empty KV cache; a new frame attends to at most ``max_frames`` frames (itself included)."""
        return DynamicsCache(batch, max_frames or self.config.max_frames, len(self.temporal_index))

    @torch.no_grad()
    def step(
        self,
        z: torch.Tensor,
        tau: torch.Tensor,
        step: torch.Tensor,
        actions: torch.Tensor | None,
        cache: DynamicsCache,
        commit: bool,
    ) -> torch.Tensor:
        """x_hat (B, 1, N, C) for ONE new frame after the cached context frames.

        commit=True stores this frame's temporal keys/values (call it once per frame, with the
        version of the frame later frames should see, e.g. context-noised); commit=False leaves the
        cache as it was (the denoising steps of the frame being generated).
        """
        self._check_latents(z)
        B, T = z.shape[:2]
        if T != 1:
            raise DataError(f"step takes one frame (B, 1, N, C), got {T} frames; use forward for a sequence")
        if B != cache.batch:
            raise DataError(f"the KV cache was made for batch {cache.batch}, got batch {B}")
        cond = self.conditioning(tau, step, actions, B, 1)
        prev = None
        if (self.config.prev_frame or self.config.prev_skip) and cache.prev is not None:
            prev = (cache.prev[0], cache.prev[1])
        x = self.embed(z, cond, prev if self.config.prev_frame else None)
        dev = x.device
        rope_s = self.rotary(torch.arange(x.shape[2], device=dev))
        rope_t = self.rotary(torch.tensor([cache.frames], device=dev))
        t_layer = 0
        for blk in self.blocks:
            if blk.temporal:
                x, (k, v) = blk(x, cond, rope_t, past=cache.past(t_layer))
                if commit:
                    cache.write(t_layer, k, v)
                t_layer += 1
            else:
                x, _ = blk(x, cond, rope_s)
        if commit:
            cache.frames += 1
            cache.prev = (z.detach(), tau.detach().to(z.dtype))
        return self.readout(x, cond, prev)

    def set_grad_checkpointing(self, on: bool = True) -> None:
        """Recompute each block's activations in backward (saves memory, costs about one extra forward)."""
        self.grad_checkpointing = on


# ---------------------------------------------------------------------------------------------- files
def save_dynamics(path: str | os.PathLike, model: DynamicsModel, extra: dict[str, Any] | None = None) -> Path:
    """Atomic safetensors with the model config inside (``ahri_core.checkpoint``)."""
    from ..checkpoint import save_weights

    return save_weights(path, model, kind=KIND, config=model.config.model_dump(mode="json"), extra=extra)


def load_dynamics(
    path: str | os.PathLike,
    expect: DynamicsConfig | None = None,
    grad_checkpointing: bool | None = None,
) -> DynamicsModel:
    """Rebuild a model from its checkpoint alone, strictly. ``expect`` (optional) must match the stored
    config in every field that shapes the weights; a mismatch is refused naming the fields."""
    kind, stored, _ = read_metadata(path)
    if kind != KIND:
        raise CheckpointError(f"checkpoint {path} holds a {kind} model, not a {KIND} model")
    try:
        cfg = DynamicsConfig(**stored)
    except ValidationError as e:
        raise CheckpointError(f"checkpoint {path} has an invalid dynamics config ({_one_line(e)})") from None
    if expect is not None:
        diff = config_mismatch(expect.weights_fields(), cfg.weights_fields())
        if diff:
            d = ", ".join(f"{k}: checkpoint {getattr(cfg, k)!r} vs expected {getattr(expect, k)!r}" for k in diff[:4])
            raise CheckpointError(f"checkpoint {path} was made with another dynamics config ({d})")
    if grad_checkpointing is not None:
        cfg = cfg.model_copy(update={"grad_checkpointing": grad_checkpointing})
    model = DynamicsModel(cfg)
    load_weights(path, model, kind=KIND, config=stored)
    return model


# ---------------------------------------------------------------------------------------------- loading
def _weights_path(run_or_path: str | os.PathLike) -> Path:
    """A run directory's inference weights (``ema.safetensors`` when the run keeps an EMA, else
    ``model.safetensors``), or the weights file itself."""
    p = Path(run_or_path)
    if p.is_dir():
        for name in ("ema.safetensors", "model.safetensors"):
            if (p / name).is_file():
                return p / name
        raise CheckpointError(f"run {p} has no model.safetensors (has it trained a step yet?)")
    if p.is_file():
        return p
    raise CheckpointError(f"{p} is neither a run directory nor a checkpoint file")


def load_dynamics_run(
    run_or_path: str | os.PathLike, device: str | torch.device = "cpu"
) -> tuple[DynamicsModel, dict[str, Any]]:
    """Rebuild a trained dynamics model from a run directory or its ``model.safetensors``, strictly.

    Returns ``(model, info)``, the model in eval mode on ``device``; ``info`` holds what samplers and
    evaluators need: ``k_max``, ``shortcut``, ``max_frames``, ``tokenizer_id``, ``latents`` (the set's
    path and shape), ``settings``, ``step``, ``weights`` ("ema" or "raw"), ``config``, ``run_dir``, ``path``.
    """
    path = _weights_path(run_or_path)
    model = load_dynamics(path).to(device).eval()  # strict: kind, config, tensors, sha256
    _, stored, extra = read_metadata(path)
    return model, run_info(path, model.config, stored, extra)


def run_info(path: Path, cfg: DynamicsConfig, stored: Any, extra: dict[str, Any]) -> dict[str, Any]:
    """The ``info`` of a loaded dynamics checkpoint (see :func:`load_dynamics_run`) from its metadata."""
    return {
        "k_max": int(extra.get("k_max", cfg.k_max)),
        "shortcut": bool(extra.get("shortcut", False)),
        "max_frames": int(extra.get("max_frames", cfg.max_frames)),
        "tokenizer_id": extra.get("tokenizer_id", ""),
        "latents": extra.get("latents", {}),
        "settings": extra.get("settings", {}),
        "step": extra.get("step"),
        "weights": extra.get("weights", "raw"),
        "config": stored,
        "path": str(path),
        "run_dir": str(path.parent),
    }

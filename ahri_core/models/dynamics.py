"""The dynamics model: a block-causal transformer over frames of latent tokens (after DreamerV4).

Each frame is ``tokens`` latent tokens (projected to the model width) plus ``registers`` learned tokens.
Layers alternate spatial attention (all tokens of one frame attend to each other) with causal temporal
attention (each token position attends to the same position in itself and earlier frames) every
``temporal_every`` layers: S, S, S, T for the default 4. The frame's noise level tau and step size d
(and its action) form one conditioning vector per frame that is added to every token of the frame and
modulates every block (AdaLN: shift, scale and gate from the vector), so the signal reaches every token
directly, never as a lone extra token (which attention could ignore, leaving the model deaf to tau and d).

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
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from pydantic import ValidationError
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..config.presets import DYNAMICS_MAX_TOKENS, DYNAMICS_PRESETS
from ..errors import ConfigError, DataError
from .dynamics_config import DynamicsConfig, auto_pack, needs_grid, one_line, padded_grid
from .layers import Attention, RMSNorm, Rotary, SwiGLU

KIND = "dynamics"
TAU_FREQS = 256  # sinusoidal features of tau before the conditioning MLP


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
    pack, pack_rows = int(fields.get("pack") or 1), int(fields.get("pack_rows") or 1)
    if fields.get("token_grid") is None and needs_grid(grid, pack, pack_rows):
        fields["token_grid"] = grid
    try:
        return DynamicsConfig(**fields)
    except ValidationError as e:
        raise ConfigError(f"dynamics model config: {one_line(e)}") from None


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

    compile_region = True  # ``--compile`` compiles each block (train/compiling.py, compile_regions)

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
        mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """``mask`` (temporal blocks with a ``past``): which of the past and new frames each new frame sees."""
        B, T, L, _ = x.shape
        shift1, scale1, gate1, shift2, scale2, gate2 = self.mod(F.silu(cond)).unsqueeze(2).chunk(6, dim=-1)
        # fused multiply-adds: one pass over the activations each (the modulation and the gated residuals)
        h = torch.addcmul(shift1, self.norm1(x), 1 + scale1)
        if self.temporal:
            h = rearrange(h, "b t l d -> (b l) t d")
            # causal over frames; with a past (rollout) the one new frame sees all cached frames and itself
            a, kv = self.attn(h, rope_q=rope, is_causal=past is None, past=past, mask=mask)
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
        x = torch.addcmul(x, gate1, a)
        x = torch.addcmul(x, gate2, self.mlp(torch.addcmul(shift2, self.norm2(x), 1 + scale2)))
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

    def __len__(self) -> int:
        """Context frames held (at most max_frames - 1)."""
        return min(self.frames, self.slots)

    def reset(self) -> None:
        self.frames = 0
        self.k = [None] * len(self.k)
        self.v = [None] * len(self.v)

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

    def write_first(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """Store the keys/values (BL, Hkv, T, hd) of the first T frames of an empty cache (T <= slots)."""
        t = k.shape[2]
        if self.frames != 0 or t > self.slots:
            raise DataError(f"a cache prefill takes at most {self.slots} frames into an empty cache")
        if self.k[layer] is None:
            shape = (k.shape[0], k.shape[1], self.slots, k.shape[3])
            self.k[layer] = k.new_zeros(shape)
            self.v[layer] = v.new_zeros(shape)
        self.k[layer][:, :, :t] = k
        self.v[layer][:, :, :t] = v


# ---------------------------------------------------------------------------------------------- model
class DynamicsModel(nn.Module):
    """``model(z, tau, step, actions=None, isolated=None) -> x_hat``; see the module docstring."""

    def __init__(self, cfg: DynamicsConfig) -> None:
        super().__init__()
        self.config = cfg
        D = cfg.dim
        self.grad_checkpointing = cfg.grad_checkpointing
        self.latent_in = nn.Linear(cfg.pack * cfg.channels, D)
        self.token_pos = nn.Parameter(torch.randn(cfg.model_tokens, D) * 0.02)
        self.register_tokens = nn.Parameter(torch.randn(cfg.registers, D) * 0.02)
        # tau: sinusoidal features -> MLP. d: a learned row per power of two (d takes only those few values, so a
        # table gives each its own embedding instead of a smooth function that blurs neighbouring step sizes).
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
        """(latent layout, model-token layout, sizes) for einops, or None when nothing is packed. With a token
        grid the latent layout is the (padded) grid, (B, T, rows, columns, C)."""
        cfg = self.config
        if cfg.pack == 1:
            return None
        if cfg.token_grid is not None:
            w = cfg.pack // cfg.pack_rows
            return "b t (gr a) (gc w) c", "b t (gr gc) (a w c)", dict(a=cfg.pack_rows, w=w)
        return "b t (n p) c", "b t n (p c)", dict(p=cfg.pack)

    def pack(self, z: torch.Tensor) -> torch.Tensor:
        """Latents (B, T, N, C) -> model tokens (B, T, model_tokens, pack * C) (see ``pack``, ``pack_rows``).

        A token grid that the blocks do not tile is padded with zero cells at its bottom and right edges."""
        p = self._packing()
        if p is None:
            return z
        grid = self.config.token_grid
        if grid is not None:
            rows, cols = grid
            R, C = padded_grid(grid, self.config.pack, self.config.pack_rows)
            z = z.reshape(*z.shape[:2], rows, cols, z.shape[-1])
            if (R, C) != (rows, cols):
                z = F.pad(z, (0, 0, 0, C - cols, 0, R - rows))
        return rearrange(z, f"{p[0]} -> {p[1]}", **p[2])

    def unpack(self, x: torch.Tensor) -> torch.Tensor:
        """The inverse of :meth:`pack`: (B, T, model_tokens, pack * C) -> (B, T, N, C), padding dropped."""
        p = self._packing()
        if p is None:
            return x
        cfg = self.config
        if cfg.token_grid is None:
            return rearrange(x, f"{p[1]} -> {p[0]}", c=cfg.channels, **p[2])
        rows, cols = cfg.token_grid
        _, C = padded_grid(cfg.token_grid, cfg.pack, cfg.pack_rows)
        g = rearrange(x, f"{p[1]} -> {p[0]}", c=cfg.channels, gc=C // p[2]["w"], **p[2])
        return g[:, :, :rows, :cols].reshape(*x.shape[:2], rows * cols, cfg.channels)

    # ------------------------------------------------------------------ trunk
    def _check_latents(self, z: torch.Tensor) -> None:
        cfg = self.config
        if z.dim() != 4 or z.shape[2] != cfg.tokens or z.shape[3] != cfg.channels:
            raise DataError(
                f"latents must be (B, T, {cfg.tokens}, {cfg.channels}) for this dynamics model, got {tuple(z.shape)}"
            )

    def embed(self, z: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """Latent tokens + registers, conditioning added to every token: (B, T, N + R, D)."""
        B, T = z.shape[:2]
        z = self.pack(z)
        x = self.latent_in(z) + self.token_pos
        if self.config.registers:
            reg = self.register_tokens.to(x.dtype).expand(B, T, -1, -1)
            x = torch.cat([x, reg], dim=2)
        return x + cond.unsqueeze(2)

    def readout(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """The final norm and head."""
        shift, scale = self.mod_out(F.silu(cond)).unsqueeze(2).chunk(2, dim=-1)
        x = x[:, :, : self.config.model_tokens]
        h = torch.addcmul(shift, self.norm_out(x), 1 + scale)
        out = self.head(h).float()
        out = self.unpack(out)
        return out

    def trunk(self, z: torch.Tensor, cond: torch.Tensor, isolated: torch.Tensor | None = None) -> torch.Tensor:
        """Everything after the conditioning vector: (B, T, N, C) latents + (B, T, D) cond -> x_hat."""
        B, T = z.shape[:2]
        x = self.embed(z, cond)
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
        return self.readout(x, cond)

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
        return self.trunk(z, cond, isolated)

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
        x = self.embed(z, cond)
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
        return self.readout(x, cond)

    @torch.no_grad()
    def commit_and_step(
        self,
        done: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None],
        z: torch.Tensor,
        tau: torch.Tensor,
        step: torch.Tensor,
        actions: torch.Tensor | None,
        cache: DynamicsCache,
    ) -> torch.Tensor:
        """``step(*done, cache, commit=True)`` then ``step(z, tau, step, actions, cache, commit=False)`` in one
        call of two frames: ``done`` = (z, tau, step, actions) of the finished frame to commit, (B, 1, ...)
        each. The same computation (the new frame sees the committed one, and, once the cache is full, no
        longer the oldest frame that the commit pushes out), at the cost of one call. Returns the new frame's
        x_hat (B, 1, N, C)."""
        zc, tc, sc, ac = done
        for t in (zc, z):
            self._check_latents(t)
            if t.shape[:2] != (cache.batch, 1):
                raise DataError(f"commit_and_step takes one frame each for batch {cache.batch}, got {tuple(t.shape)}")
        B = cache.batch
        acts = None
        if actions is not None or ac is not None:
            ref = actions if actions is not None else ac
            none = torch.full_like(ref, -1) if not ref.is_floating_point() else torch.full_like(ref, float("nan"))
            acts = torch.cat([ac if ac is not None else none, actions if actions is not None else none], 1)
        cond = self.conditioning(torch.cat([tc, tau], 1), torch.cat([sc, step], 1), acts, B, 2)
        x = self.embed(torch.cat([zc, z], 1), cond)
        dev = x.device
        n = len(cache)
        mask = torch.ones(2, n + 2, dtype=torch.bool, device=dev)
        mask[0, n + 1] = False  # the committed frame does not see the new one
        if n == cache.slots:  # the commit takes the oldest frame's slot: the new frame no longer sees it
            mask[1, cache.frames % cache.slots] = False
        rope_s = self.rotary(torch.arange(x.shape[2], device=dev))
        rope_t = self.rotary(torch.arange(cache.frames, cache.frames + 2, device=dev))
        t_layer = 0
        for blk in self.blocks:
            if blk.temporal:
                past = cache.past(t_layer)
                x, (k, v) = blk(x, cond, rope_t, past=past, mask=mask if past is not None else None)
                cache.write(t_layer, k[:, :, :1], v[:, :, :1])
                t_layer += 1
            else:
                x, _ = blk(x, cond, rope_s)
        cache.frames += 1
        return self.readout(x[:, 1:], cond[:, 1:])

    @torch.no_grad()
    def prefill(
        self,
        z: torch.Tensor,
        tau: torch.Tensor,
        step: torch.Tensor,
        actions: torch.Tensor | None,
        cache: DynamicsCache,
    ) -> None:
        """Commit T frames (B, T, N, C) to an empty cache in one call: what T calls of :meth:`step` with
        commit=True do one frame at a time (causal attention over the T frames is the same computation), at the
        cost of one call. T must fit the cache (at most ``cache.slots``)."""
        self._check_latents(z)
        B, T = z.shape[:2]
        if B != cache.batch:
            raise DataError(f"the KV cache was made for batch {cache.batch}, got batch {B}")
        if cache.frames != 0 or T > cache.slots:
            raise DataError(f"prefill takes at most {cache.slots} frames into an empty cache, got {T} frames "
                            f"after {cache.frames}")
        cond = self.conditioning(tau, step, actions, B, T)
        x = self.embed(z, cond)
        dev = x.device
        rope_s = self.rotary(torch.arange(x.shape[2], device=dev))
        rope_t = self.rotary(torch.arange(T, device=dev))
        last = self.temporal_index[-1] if self.temporal_index else -1
        t_layer = 0
        for blk in self.blocks[: last + 1]:  # the blocks after the last temporal one store nothing
            if blk.temporal:
                x, (k, v) = blk(x, cond, rope_t)
                cache.write_first(t_layer, k, v)
                t_layer += 1
            else:
                x, _ = blk(x, cond, rope_s)
        cache.frames = T

    def set_grad_checkpointing(self, on: bool = True) -> None:
        """Recompute each block's activations in backward (saves memory, costs about one extra forward)."""
        self.grad_checkpointing = on

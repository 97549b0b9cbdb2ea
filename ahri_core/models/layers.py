"""Transformer building blocks shared by the tokenizer and the dynamics model.

RMSNorm, SwiGLU, rotary position embeddings (RoPE), and attention with QK-norm, grouped-query
attention (GQA) and an optional logit soft-cap, on top of ``scaled_dot_product_attention``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn


class RMSNorm(nn.Module):
    """Root-mean-square norm with a learned gain; computed in float32 for bf16 stability (``F.rms_norm``; a no-op
    cast for float32 inputs)."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x.float(), self.weight.shape, self.weight.float(), self.eps).to(x.dtype)


class SwiGLU(nn.Module):
    """Gated MLP: W2 (silu(W1 x) * W3 x). Hidden width is rounded to a multiple of 8."""

    def __init__(self, dim: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        hidden = int(dim * mlp_ratio * 2 / 3)
        hidden = max(8, (hidden + 7) // 8 * 8)
        self.w13 = nn.Linear(dim, 2 * hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.w13(x).chunk(2, dim=-1)
        return self.w2(F.silu(a) * b)


class Rotary(nn.Module):
    """Rotary embeddings for integer (or fractional) positions; ``head_dim`` must be even.

    Pairs are (first half, second half) of the head: channel i turns with channel i + head_dim / 2."""

    def __init__(self, head_dim: int, base: float = 10000.0) -> None:
        super().__init__()
        if head_dim % 2:
            raise ValueError(f"rotary head_dim must be even, got {head_dim}")
        inv = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        self.register_buffer("inv_freq", inv, persistent=False)

    def forward(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """positions (L,) -> (cos, signed sin), each (L, head_dim), float32: ``cos`` is cos(angle) on both halves,
        the sine is -sin(angle) on the first half and +sin(angle) on the second (what :func:`apply_rotary` takes)."""
        ang = positions.to(torch.float32)[:, None] * self.inv_freq[None, :]
        cos, sin = ang.cos(), ang.sin()
        return torch.cat([cos, cos], dim=-1), torch.cat([-sin, sin], dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (first half, second half) of the last dim: (x1, x2) -> (x1 cos - x2 sin, x1 sin + x2 cos).
    x (..., L, D); ``cos``, ``sin`` (L, D) from :class:`Rotary`. Two passes (a product and a fused multiply-add)
    instead of four products, two sums and a concatenation; float32 inside."""
    dtype = x.dtype
    xf = x.float()
    x1, x2 = xf.chunk(2, dim=-1)
    y = torch.addcmul(xf * cos, torch.cat([x2, x1], dim=-1), sin)
    return y.to(dtype)


def float32_attention(q: torch.Tensor) -> bool:
    """Whether :func:`sdpa` computes in float32 for these queries although the model runs in bfloat16 (the CPU)."""
    return q.device.type == "cpu" and (q.dtype == torch.bfloat16 or torch.is_autocast_enabled("cpu"))


def sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, is_causal: bool) -> torch.Tensor:
    """``scaled_dot_product_attention``, in float32 on the CPU for bfloat16 inputs and under autocast (which would
    otherwise cast fp32 inputs down to bfloat16 for it). PyTorch's CPU flash kernel
    is 3-4x slower in bfloat16 than in float32 at these shapes (backward included; 20.4 against 5.7 ms for 128
    frames of 20 tokens, 4 heads of 32, on a 2-core AMD EPYC with AVX-512 and native bf16), which cost a bf16 training step more than its
    faster matrix products saved; the upcast costs less than that difference. The output has the inputs' dtype."""
    if float32_attention(q):
        with torch.autocast("cpu", enabled=False):  # autocast would cast the inputs back to bfloat16
            o = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask, is_causal=is_causal)
        return o.to(q.dtype)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal)


class Attention(nn.Module):
    """Multi-head attention with optional GQA, QK-norm, RoPE and tanh logit soft-cap.

    ``forward`` takes x (B, L, D) and optionally ``past`` keys/values (B, Hkv, S, hd) that the
    new queries also attend to (KV cache); it returns the output and this call's (k, v) after RoPE.
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        kv_heads: int | None = None,
        qk_norm: bool = True,
        softcap: float | None = None,
    ) -> None:
        super().__init__()
        kv_heads = kv_heads or heads
        if dim % heads:
            raise ValueError(f"model width {dim} is not divisible by heads {heads}")
        if heads % kv_heads:
            raise ValueError(f"heads {heads} is not divisible by kv_heads {kv_heads}")
        self.heads, self.kv_heads = heads, kv_heads
        self.head_dim = dim // heads
        self.softcap = softcap
        self.q = nn.Linear(dim, dim, bias=False)
        self.kv = nn.Linear(dim, 2 * kv_heads * self.head_dim, bias=False)
        self.out = nn.Linear(dim, dim, bias=False)
        self.q_norm = RMSNorm(self.head_dim) if qk_norm else nn.Identity()
        self.k_norm = RMSNorm(self.head_dim) if qk_norm else nn.Identity()

    def forward(
        self,
        x: torch.Tensor,
        rope_q: tuple[torch.Tensor, torch.Tensor] | None = None,
        rope_k: tuple[torch.Tensor, torch.Tensor] | None = None,
        mask: torch.Tensor | None = None,
        is_causal: bool = False,
        past: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """mask: bool, True = may attend, broadcastable to (B, H, L, S_total)."""
        q = rearrange(self.q(x), "b l (h d) -> b h l d", h=self.heads)
        k, v = rearrange(self.kv(x), "b l (two h d) -> two b h l d", two=2, h=self.kv_heads)
        out_dtype = q.dtype
        if float32_attention(q):
            # sdpa computes in float32 here anyway: cast q, k, v up once, before the norms and RoPE (which compute
            # in float32 too), instead of down and up again between each (12 casts a layer forward, 4 now)
            q, k, v = q.float(), k.float(), v.float()
        q, k = self.q_norm(q), self.k_norm(k)
        if rope_q is not None:
            q = apply_rotary(q, *rope_q)
        rope_k = rope_k if rope_k is not None else rope_q
        if rope_k is not None:
            k = apply_rotary(k, *rope_k)
        new_kv = (k, v)
        if past is not None:
            k = torch.cat([past[0].to(k.dtype), k], dim=2)
            v = torch.cat([past[1].to(v.dtype), v], dim=2)
        if self.kv_heads != self.heads:
            rep = self.heads // self.kv_heads
            k = k.repeat_interleave(rep, dim=1)
            v = v.repeat_interleave(rep, dim=1)
        if self.softcap is None:
            o = sdpa(q, k, v, mask, is_causal and mask is None)
        else:
            o = self._softcapped(q, k, v, mask, is_causal)
        return self.out(rearrange(o.to(out_dtype), "b h l d -> b l (h d)")), new_kv

    def _softcapped(self, q, k, v, mask, is_causal):
        # tanh soft-cap bounds the logits to (-cap, cap); SDPA has no hook for it, so compute explicitly.
        logits = (q.float() @ k.float().transpose(-1, -2)) / math.sqrt(q.shape[-1])
        logits = self.softcap * torch.tanh(logits / self.softcap)
        L, S = q.shape[-2], k.shape[-2]
        if is_causal and mask is None:
            mask = torch.ones(L, S, dtype=torch.bool, device=q.device).tril(S - L)
        if mask is not None:
            logits = logits.masked_fill(~mask, float("-inf"))
        return (logits.softmax(-1) @ v.float()).to(q.dtype)


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)); x + mlp(norm(x))."""

    compile_region = True  # ``--compile`` compiles each block (train/compiling.py, compile_regions)

    def __init__(
        self,
        dim: int,
        heads: int,
        kv_heads: int | None = None,
        mlp_ratio: float = 4.0,
        qk_norm: bool = True,
        softcap: float | None = None,
    ) -> None:
        super().__init__()
        self.norm1 = RMSNorm(dim)
        self.attn = Attention(dim, heads, kv_heads, qk_norm=qk_norm, softcap=softcap)
        self.norm2 = RMSNorm(dim)
        self.mlp = SwiGLU(dim, mlp_ratio)

    def forward(self, x: torch.Tensor, **attn_kwargs) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        a, kv = self.attn(self.norm1(x), **attn_kwargs)
        x = x + a
        x = x + self.mlp(self.norm2(x))
        return x, kv

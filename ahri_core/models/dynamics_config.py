"""The dynamics model's config: :class:`DynamicsConfig` (everything needed to rebuild the model, stored in
every checkpoint), :func:`auto_pack` (how many latent tokens one model token joins) and :func:`describe` (a run's log line)."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

# Upper bounds of the config's sizes: far above any model this project trains, low enough that a damaged or
# foreign checkpoint cannot ask for a model larger than any machine (a file's tensors are also compared with
# the shapes its config implies before the model is built: ``checkpoint.check_shapes``).
MAX_TOKENS = 65536


class DynamicsConfig(BaseModel):
    """Everything needed to rebuild the model; stored as JSON in every checkpoint. Sizes are bounded (width
    16384, 512 blocks, 256 heads, 65536 latent tokens of 4096 channels, 100000 frames)."""

    model_config = ConfigDict(extra="forbid")

    tokens: int = Field(..., ge=1, le=MAX_TOKENS, description="latent tokens per frame (N)")
    channels: int = Field(..., ge=1, le=4096, description="channels per latent token (C)")
    pack: int = Field(1, ge=1, le=MAX_TOKENS, description="latent tokens joined into one model token (N / pack tokens of pack * C)")
    pack_rows: int = Field(
        1, ge=1, le=MAX_TOKENS, description="rows of the token grid one model token spans: > 1 packs pack_rows x (pack / pack_rows) "
        "blocks of token_grid (1: pack consecutive tokens)"
    )
    token_grid: tuple[int, int] | None = Field(
        None, description="(rows, columns) of the latent tokens, row-major; needed when pack_rows > 1"
    )
    dim: int = Field(128, ge=8, le=16384, description="model width")
    depth: int = Field(8, ge=1, le=512, description="number of blocks (spatial + temporal)")
    heads: int = Field(4, ge=1, le=256)
    kv_heads: int | None = Field(None, ge=1, le=256, description="grouped-query attention: key/value heads (None = heads)")
    registers: int = Field(4, ge=0, le=1024, description="learned register tokens per frame")
    temporal_every: int = Field(4, ge=1, le=512, description="every k-th block is temporal (4: S,S,S,T)")
    mlp_ratio: float = Field(4.0, gt=0, le=64)
    qk_norm: bool = True
    softcap: float | None = Field(None, gt=0, description="tanh soft-cap of attention logits (None = off)")
    rope_base: float = Field(10000.0, gt=1)
    action_kind: Literal["none", "discrete", "continuous"] = "none"
    action_count: int = Field(0, ge=0, le=100_000, description="number of discrete actions")
    action_dim: int = Field(0, ge=0, le=4096, description="width of a continuous action vector")
    k_max: int = Field(64, ge=1, le=4096, description="finest step count; d_min = 1/k_max")
    max_frames: int = Field(64, ge=1, le=100_000, description="trained sequence length: default KV-cache window")
    grad_checkpointing: bool = Field(False, description="recompute each block in backward (runtime only)")

    # Fields that do not change the weights: ignored when a checkpoint's config is compared.
    RUNTIME_FIELDS: ClassVar[frozenset[str]] = frozenset({"grad_checkpointing"})

    # Options that were tried and removed (prev_frame, prev_skip: measured on Boxing and MsPacman; keep_gate, a gated
    # copy of the previous frame: on Super Mario Bros and Doom; no gain; docs/dynamics.md). A stored config that has
    # them off still loads; one that has them on was made for another model.
    REMOVED_FIELDS: ClassVar[tuple[str, ...]] = ("prev_frame", "prev_skip", "keep_gate")

    @model_validator(mode="before")
    @classmethod
    def _removed_options(cls, data: Any) -> Any:
        if not isinstance(data, dict) or not any(k in data for k in cls.REMOVED_FIELDS):
            return data
        on = [k for k in cls.REMOVED_FIELDS if data.get(k)]
        if on:
            raise ValueError(f"{' and '.join(on)} {'was' if len(on) == 1 else 'were'} removed from ahri (no gain "
                             "measured); a model made with it cannot be loaded by this version")
        return {k: v for k, v in data.items() if k not in cls.REMOVED_FIELDS}

    @model_validator(mode="after")
    def _consistent(self) -> DynamicsConfig:
        if self.token_grid is not None and self.token_grid[0] * self.token_grid[1] != self.tokens:
            raise ValueError(f"token_grid {self.token_grid} does not hold the {self.tokens} latent tokens per frame")
        if self.token_grid is None and self.tokens % self.pack:
            raise ValueError(f"pack {self.pack} must divide the {self.tokens} latent tokens per frame (or give token_grid)")
        if self.pack_rows > 1:
            if self.token_grid is None:
                raise ValueError(f"pack_rows {self.pack_rows} needs token_grid (rows, columns) of the {self.tokens} tokens")
            rows, cols = self.token_grid
            if self.pack % self.pack_rows or self.pack_rows > rows or self.pack // self.pack_rows > cols:
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
        """Tokens per frame inside the model (latent tokens after packing; a padded grid counts its padding)."""
        if self.token_grid is not None and self.pack > 1:
            rows, cols = padded_grid(self.token_grid, self.pack, self.pack_rows)
            return rows * cols // self.pack
        return self.tokens // self.pack

    def layer_kinds(self) -> list[str]:
        """'S' or 'T' per block; block i is temporal when (i + 1) % temporal_every == 0."""
        return ["T" if (i + 1) % self.temporal_every == 0 else "S" for i in range(self.depth)]


def padded_grid(grid: tuple[int, int], pack: int, pack_rows: int) -> tuple[int, int]:
    """(rows, columns) of the token grid padded up to whole blocks of ``pack_rows`` x ``pack / pack_rows``."""
    rows, cols = grid
    a, b = pack_rows, pack // pack_rows
    return -(-rows // a) * a, -(-cols // b) * b


def auto_pack(tokens: int, max_tokens: int | None, grid: tuple[int, int] | None = None) -> tuple[int, int]:
    """(pack, pack_rows): the fewest latent tokens per model token with at most ``max_tokens`` model tokens
    ((1, 1) when there is no limit).

    Without ``grid`` the model token is ``pack`` consecutive latent tokens, the smallest divisor that fits.
    ``grid``: (rows, columns) of the latent tokens on the picture (row-major). Then each model token is a block
    of a rows x b columns of the grid, never a whole row or a whole column (spatial attention over whole rows or
    columns sees the picture as strips, and the predictions show bands), the grid padded with empty cells up to
    whole blocks where a and b do not divide it (the padding is dropped again before any loss or output). The
    smallest block wins, then the least padding, then the flattest. A 16:9 frame of 6 x 10 tokens packs into
    2 x 2 blocks (15 model tokens), 4:3's 7 x 9 into pieces of 1 x 5 (14), Atari's 9 x 7 into 5 x 1 (14), a
    square 8 x 8 into runs of 4 (16). Only a grid that nothing else fits (one row, say) packs whole rows.
    """
    if not max_tokens or tokens <= max_tokens:
        return 1, 1
    if grid is not None and grid[0] * grid[1] == tokens:
        rows, cols = grid

        def fits(a: int, b: int) -> bool:
            r, c = padded_grid(grid, a * b, a)
            return (r // a) * (c // b) <= max_tokens

        def whole(a: int, b: int) -> bool:
            return (a == rows and rows > 1) or (b == cols and cols > 1)

        shapes = [(a, b) for a in range(1, rows + 1) for b in range(1, cols + 1) if fits(a, b)]
        parts = [s for s in shapes if not whole(*s)] or shapes
        a, b = min(parts, key=lambda s: (s[0] * s[1], _padding(grid, *s), s[0]))
        return a * b, (a if 1 < a and (b < cols or rows % a) else 1)  # whole rows that tile: consecutive tokens
    return next(p for p in range(1, tokens + 1) if tokens % p == 0 and tokens // p <= max_tokens), 1


def _padding(grid: tuple[int, int], a: int, b: int) -> int:
    r, c = padded_grid(grid, a * b, a)
    return r * c - grid[0] * grid[1]


def needs_grid(grid: tuple[int, int] | None, pack: int, pack_rows: int) -> bool:
    """Whether packing needs the token grid: blocks of several rows, or a grid padded up to whole blocks."""
    if grid is None or pack == 1:
        return False
    return pack_rows > 1 or padded_grid(grid, pack, pack_rows) != tuple(grid)


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


def one_line(err: ValidationError) -> str:
    parts = []
    for e in err.errors():
        loc = ".".join(str(x) for x in e["loc"]) or "config"
        parts.append(f"{loc}: {e['msg']}")
    return "; ".join(parts)

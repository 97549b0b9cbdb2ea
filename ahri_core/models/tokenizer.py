"""The video tokenizer: a per-frame masked autoencoder with a small tanh bottleneck (after DreamerV4).

Encoder: the frame is cut into ``patch_size`` patches, each embedded to ``dim`` with a learned position;
``tokens`` learned latent queries are appended and a transformer lets them read the patches. Each latent
token is then projected on its own (one Linear shared by all tokens, never a Linear over the flattened
tokens, whose weights would grow with the token count and mix tokens into one another) down to ``channels`` values and squashed by tanh, so latents lie in (-1, 1).

Decoder: each latent token is projected back up to ``dim``; learned patch queries are appended and a
transformer lets them read the latents; each query predicts its patch's pixels.

Training (MAE): per image a drop probability p ~ U(0, mask_max) is drawn and that fraction of patch
embeddings is replaced by a learned mask embedding; the loss covers every patch. ``eval()`` never masks.

Frames are float in [0, 1], shape (B, 3, H, W) with H x W the config's ``height`` x ``width`` (any aspect;
see ``TokenizerConfig.fit`` for how a source frame is brought to it). Latents are (B, tokens, channels).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from einops import rearrange
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from torch import nn

from ..config.presets import TOKENIZER_PRESETS
from ..errors import CheckpointError, ConfigError
from ..runtime import autocast
from .layers import Block, RMSNorm

KIND = "tokenizer"  # the ``ahri_kind`` of tokenizer checkpoints


FIT_CHOICES = ("pad", "crop", "squash")  # how a source frame of another aspect is brought to the model's H x W


def region_side(height: int, width: int, patch_size: int, tokens: int) -> int:
    """The side k (in patches) of the squares that ``tokens`` latent tokens tile on the patch grid, or 0.

    ``regions=True`` gives each latent token one k x k square of patches; the token grid is then
    (H / p / k) x (W / p / k), so k must divide both sides of the patch grid.
    """
    if height % patch_size or width % patch_size or tokens < 1:
        return 0
    gh, gw = height // patch_size, width // patch_size
    for k in range(1, math.gcd(gh, gw) + 1):
        if gh % k == 0 and gw % k == 0 and (gh // k) * (gw // k) == tokens:
            return k
    return 0


def parse_size(text: str | int | tuple[int, int] | None) -> tuple[int, int] | None:
    """``--size``: "HxW" (e.g. "48x80"), one number for a square, or a (height, width) pair."""
    if text is None:
        return None
    if isinstance(text, (tuple, list)):
        h, w = (int(x) for x in text)
    elif isinstance(text, int):
        h = w = text
    else:
        parts = str(text).lower().replace("×", "x").split("x")
        try:
            nums = [int(x) for x in parts]
        except ValueError:
            nums = []
        if len(nums) not in (1, 2):
            raise ConfigError(f"--size {text!r}: expected HEIGHTxWIDTH in pixels, e.g. 48x80, or one number for a square")
        h, w = nums[0], nums[-1]
    if h < 8 or w < 8 or h > 2048 or w > 2048:
        raise ConfigError(f"--size {h}x{w}: height and width must be between 8 and 2048 pixels")
    return h, w


def grid_for_aspect(aspect: float, budget: int, unit: int) -> tuple[int, int]:
    """(height, width) in pixels, multiples of ``unit``, at most ``budget`` pixels, that keep most of a
    picture of ``aspect`` = width / height when it is scaled to fit inside (the rest is padded).

    Among all such grids the one showing the largest area of the picture wins; a tie goes to the
    smaller grid (less padding). A square picture gets the square grid of the budget.
    """
    if not aspect > 0:
        raise ConfigError(f"frame aspect {aspect!r} must be a positive width / height ratio")
    cells = max(1, budget // (unit * unit))
    best: tuple[float, int, int, int] | None = None
    for gh in range(1, cells + 1):
        for gw in range(1, cells // gh + 1):
            h, w = gh * unit, gw * unit
            shown = min(w, h * aspect) * min(h, w / aspect)  # area of the picture scaled to fit inside
            key = (round(shown, 6), -(gh * gw), h, w)
            if best is None or key[:2] > best[:2]:
                best = key
    assert best is not None
    return best[2], best[3]


def _from_square(d: dict[str, Any]) -> dict[str, Any]:
    """A config dict of the square era (one ``image_size``, frames centre-cropped) in today's terms."""
    if "image_size" not in d:
        return d
    d = dict(d)
    s = d.pop("image_size")
    d.setdefault("height", s)
    d.setdefault("width", s)
    d.setdefault("fit", "crop")
    return d


class TokenizerConfig(BaseModel):
    """Everything needed to rebuild a tokenizer; stored as JSON in every checkpoint.

    Frames are ``height`` x ``width`` (multiples of ``patch_size``); ``fit`` says how a source frame of
    another aspect was brought to that shape, so every later reader (tokenize, eval, rollout) reads frames
    the way the tokenizer was trained. Configs written before frames could be non-square (one
    ``image_size``, centre-cropped) load as ``height = width = image_size`` with ``fit = crop``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    preset: str = "custom"
    height: int = Field(64, ge=8, le=2048, description="frame height in pixels (a multiple of patch_size)")
    width: int = Field(64, ge=8, le=2048, description="frame width in pixels (a multiple of patch_size)")
    fit: Literal["pad", "crop", "squash"] = Field(
        "pad", description="how frames of another aspect are made H x W: pad (keep the whole frame), crop or squash"
    )
    patch_size: int = Field(8, ge=1, le=64)
    fps: float = Field(20.0, gt=0, le=240, description="highest frame rate videos are read at")
    dim: int = Field(192, ge=8, le=16384)
    depth: int = Field(3, ge=1, le=512, description="encoder blocks")
    decoder_depth: int = Field(3, ge=1, le=512, description="decoder blocks")
    heads: int = Field(4, ge=1, le=256)
    mlp_ratio: float = Field(4.0, gt=0, le=64)
    tokens: int = Field(16, ge=1, le=65536, description="latent tokens per frame")
    channels: int = Field(32, ge=1, le=4096, description="bottleneck width of each latent token")
    mask_max: float = Field(0.9, ge=0, lt=1, description="MAE drop probability is drawn from U(0, mask_max)")
    qk_norm: bool = True
    regions: bool = Field(True, description="latent token i also gets a linear read of its own square of patches")

    @model_validator(mode="before")
    @classmethod
    def _square_configs(cls, data: Any) -> Any:
        return _from_square(data) if isinstance(data, dict) else data

    @model_validator(mode="after")
    def _shapes(self) -> TokenizerConfig:
        for name in ("height", "width"):
            if getattr(self, name) % self.patch_size:
                raise ValueError(f"{name} {getattr(self, name)} is not a multiple of patch_size {self.patch_size}")
        if self.regions and not region_side(self.height, self.width, self.patch_size, self.tokens):
            gh, gw = self.grid
            raise ValueError(
                f"regions=True needs tokens that tile the {gh}x{gw} patch grid with squares "
                f"(got tokens={self.tokens}); use e.g. tokens={gh * gw} or regions=false"
            )
        if self.dim % self.heads:
            raise ValueError(f"dim {self.dim} is not divisible by heads {self.heads}")
        if (self.dim // self.heads) % 2:
            raise ValueError(f"head width dim/heads = {self.dim // self.heads} must be even")
        return self

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) of the frames, in pixels."""
        return self.height, self.width

    @property
    def grid(self) -> tuple[int, int]:
        """(rows, columns) of the patch grid."""
        return self.height // self.patch_size, self.width // self.patch_size

    @property
    def token_grid(self) -> tuple[int, int] | None:
        """(rows, columns) of the latent tokens on the picture, in the tokens' row-major order, when each
        token covers one square of patches (``regions=True``); None when the tokens are not tied to places."""
        k = self.region if self.regions else 0
        if not k:
            return None
        gh, gw = self.grid
        return gh // k, gw // k

    @property
    def patches(self) -> int:
        gh, gw = self.grid
        return gh * gw

    @property
    def region(self) -> int:
        """Patches per side of the square each latent token covers (regions=True)."""
        return region_side(self.height, self.width, self.patch_size, self.tokens)

    @property
    def patch_values(self) -> int:
        return 3 * self.patch_size**2

    @property
    def compression(self) -> float:
        """Pixel values per latent value."""
        return 3 * self.height * self.width / (self.tokens * self.channels)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TokenizerConfig:
        try:
            return cls(**d)
        except ValidationError as e:
            err = e.errors()[0]
            loc = ".".join(str(x) for x in err.get("loc", ()))
            msg = str(err.get("msg")).removeprefix("Value error, ")
            raise ConfigError(f"invalid tokenizer config{' ' + loc if loc else ''}: {msg}") from None


def preset_shape(preset: str | TokenizerConfig | dict, aspect: float) -> tuple[int, int]:
    """The (height, width) a preset gives a source of ``aspect`` = width / height: the grid of the preset's
    pixel budget that keeps most of the picture (see :func:`grid_for_aspect`), in units of one token's
    square of patches."""
    base = _base(preset)
    size = base.get("image_size")
    h, w = (int(size), int(size)) if size is not None else (int(base.get("height", 64)), int(base.get("width", 64)))
    p = int(base.get("patch_size", 8))
    tokens = int(base.get("tokens", 16))
    k = region_side(h, w, p, tokens) or 1
    return grid_for_aspect(aspect, h * w, p * k)


def _base(preset: str | TokenizerConfig | dict) -> dict[str, Any]:
    if isinstance(preset, TokenizerConfig):
        return preset.to_dict()
    if isinstance(preset, dict):
        return dict(preset)
    if preset not in TOKENIZER_PRESETS:
        raise ConfigError(f"unknown tokenizer preset {preset!r} (allowed: {', '.join(TOKENIZER_PRESETS)})")
    return {"preset": preset, **TOKENIZER_PRESETS[preset]}


def tokenizer_config(
    preset: str | TokenizerConfig | dict = "cpu",
    size: tuple[int, int] | int | str | None = None,
    **overrides: Any,
) -> TokenizerConfig:
    """A preset's config at frame ``size`` (height, width; default the preset's) with ``overrides``
    (None values ignored; ``image_size`` is one number for a square).

    At another size the preset keeps its tokens per patch: each latent token covers the same square of
    patches as in the preset (unless ``tokens`` is given); when that square does not tile the new grid
    (or the given tokens do not), the plain model (``regions=False``) is used rather than failing.
    """
    base = _base(preset)
    if "image_size" in base:
        if not isinstance(preset, str):  # a config dict of the square era: it centre-cropped
            base = _from_square(base)
        else:
            s = base.pop("image_size")
            base["height"] = base["width"] = s
    given = {k: v for k, v in overrides.items() if v is not None}
    if "image_size" in given:
        s = given.pop("image_size")
        size = s if size is None else size
    if size is None and ("height" in given or "width" in given):
        size = (given.pop("height", base.get("height")), given.pop("width", base.get("width")))
    default = TokenizerConfig.model_fields
    try:
        patch0, tokens0 = int(base.get("patch_size", default["patch_size"].default)), int(base.get("tokens", default["tokens"].default))
        k = region_side(int(base.get("height", 64)), int(base.get("width", 64)), patch0, tokens0)
    except (TypeError, ValueError):
        k = 0
    hw = parse_size(size)
    if hw is not None:
        base["height"], base["width"] = hw
    base.update(given)
    try:
        h, w = int(base.get("height", 64)), int(base.get("width", 64))
        patch = int(base.get("patch_size", default["patch_size"].default))
        tokens = int(base.get("tokens", default["tokens"].default))
    except (TypeError, ValueError):
        return TokenizerConfig.from_dict(base)  # let validation report it
    if "tokens" not in given and hw is not None and k and h % patch == 0 and w % patch == 0 \
            and (h // patch) % k == 0 and (w // patch) % k == 0:
        tokens = base["tokens"] = (h // patch // k) * (w // patch // k)  # the preset's tokens per patch
    if base.get("regions", True) and "regions" not in given and not region_side(h, w, patch, tokens):
        base["regions"] = False  # e.g. a preset at a frame size its token squares do not tile
    return TokenizerConfig.from_dict(base)


def describe(cfg: TokenizerConfig, params: int | None = None) -> str:
    """One line for the model summary, including the compression ratio."""
    p = f", {params / 1e6:.2f}M params" if params is not None else ""
    return (
        f"tokenizer {cfg.preset}: {cfg.height}x{cfg.width} frames ({cfg.fit}) @ {cfg.fps:g} fps, "
        f"{cfg.patches} patches of {cfg.patch_size}x{cfg.patch_size} -> {cfg.tokens} tokens x {cfg.channels} channels "
        f"({cfg.compression:.1f}x compression), width {cfg.dim}, depth {cfg.depth}+{cfg.decoder_depth}{p}"
    )


def sincos_2d(grid: int | tuple[int, int], dim: int) -> torch.Tensor:
    """(rows*cols, dim) 2-D sine-cosine position table (row-major) of a ``grid`` (rows, cols), unit RMS."""
    rows, cols = (grid, grid) if isinstance(grid, int) else grid
    q = dim // 4
    freqs = 1.0 / (100.0 ** (torch.arange(q, dtype=torch.float32) / max(q, 1)))
    ys, xs = torch.meshgrid(torch.arange(rows, dtype=torch.float32), torch.arange(cols, dtype=torch.float32), indexing="ij")
    ay, ax = ys.reshape(-1, 1) * freqs, xs.reshape(-1, 1) * freqs
    table = torch.cat([ay.sin(), ay.cos(), ax.sin(), ax.cos()], dim=1)
    if table.shape[1] < dim:
        table = torch.cat([table, torch.zeros(table.shape[0], dim - table.shape[1])], dim=1)
    return table * (2.0**0.5)


class Tokenizer(nn.Module):
    def __init__(self, cfg: TokenizerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d, N = cfg.dim, cfg.tokens
        grid = cfg.grid
        # Position embeddings and queries start at unit scale (2-D sin-cos for patches): at the usual 0.02
        # they are drowned by the content, every latent token reads the same average of the patches and
        # training sits for thousands of steps at the mean image.
        # encoder
        self.patch_in = nn.Linear(cfg.patch_values, d)
        self.patch_pos = nn.Parameter(sincos_2d(grid, d))
        self.mask_embed = nn.Parameter(torch.randn(d))
        self.latent_queries = nn.Parameter(torch.randn(N, d))
        self.encoder = nn.ModuleList(Block(d, cfg.heads, mlp_ratio=cfg.mlp_ratio, qk_norm=cfg.qk_norm) for _ in range(cfg.depth))
        # Region shortcut (cfg.regions): latent token i starts from a linear read of its own k x k square of
        # patch embeddings (after masking), and each patch query from a linear map of its square's latent.
        # The attention still lets every token read every patch; the shortcut gives a working linear
        # autoencoder from the first step, which the transformer then refines (fast convergence on CPU).
        k2 = cfg.region**2 if cfg.regions else 0
        self.region_in = nn.Linear(k2 * d, d) if cfg.regions else None
        self.region_out = nn.Linear(d, k2 * d) if cfg.regions else None
        self.enc_norm = RMSNorm(d)
        # Per-token bottleneck: one (dim -> channels) map applied to every latent token separately.
        self.to_latent = nn.Linear(d, cfg.channels)
        # decoder
        self.from_latent = nn.Linear(cfg.channels, d)
        self.latent_pos = nn.Parameter(torch.randn(N, d))
        self.patch_queries = nn.Parameter(sincos_2d(grid, d))
        self.decoder = nn.ModuleList(
            Block(d, cfg.heads, mlp_ratio=cfg.mlp_ratio, qk_norm=cfg.qk_norm) for _ in range(cfg.decoder_depth)
        )
        self.dec_norm = RMSNorm(d)
        self.to_pixels = nn.Linear(d, cfg.patch_values)
        nn.init.zeros_(self.to_pixels.weight)
        nn.init.constant_(self.to_pixels.bias, 0.5)  # start at mid-grey rather than black

    # ------------------------------------------------------------------ helpers
    def patchify(self, frames: torch.Tensor) -> torch.Tensor:
        p = self.cfg.patch_size
        return rearrange(frames, "b c (h p1) (w p2) -> b (h w) (p1 p2 c)", p1=p, p2=p)

    def unpatchify(self, patches: torch.Tensor) -> torch.Tensor:
        p, (gh, gw) = self.cfg.patch_size, self.cfg.grid
        return rearrange(patches, "b (h w) (p1 p2 c) -> b c (h p1) (w p2)", h=gh, w=gw, p1=p, p2=p, c=3)

    def _check_frames(self, frames: torch.Tensor) -> None:
        h, w = self.cfg.size
        if frames.dim() != 4 or tuple(frames.shape[1:]) != (3, h, w):
            raise ValueError(f"tokenizer expects frames (B, 3, {h}, {w}), got {tuple(frames.shape)}")

    def sample_mask(self, batch: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """(B, P) bool, True = patch dropped; each image's drop rate p ~ U(0, mask_max)."""
        P = self.cfg.patches
        rate = torch.rand(batch, 1, generator=generator) * self.cfg.mask_max
        return torch.rand(batch, P, generator=generator) < rate

    # ------------------------------------------------------------------ API
    def encode(self, frames: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """frames (B, 3, H, W) in [0, 1] -> latents (B, tokens, channels) in (-1, 1).

        ``mask`` (B, patches) bool drops those patches (training); None keeps every patch.
        """
        self._check_frames(frames)
        B = frames.shape[0]
        x = self.patch_in(self.patchify(frames).to(self.patch_in.weight.dtype))  # (B, P, D)
        if mask is not None:
            x = torch.where(mask.to(x.device)[..., None], self.mask_embed.to(x.dtype), x)
        q = self.latent_queries.expand(B, -1, -1).to(x.dtype)
        if self.region_in is not None:
            k, (gh, gw) = self.cfg.region, self.cfg.grid
            q = q + self.region_in(
                rearrange(x, "b (rh kh rw kw) d -> b (rh rw) (kh kw d)", rh=gh // k, kh=k, rw=gw // k, kw=k)
            )
        x = x + self.patch_pos
        h = torch.cat([x, q], dim=1)
        for blk in self.encoder:
            h, _ = blk(h)
        lat = h[:, self.cfg.patches :]
        return torch.tanh(self.to_latent(self.enc_norm(lat)).float())

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """latents (B, tokens, channels) -> frames (B, 3, H, W), unclamped (see ``reconstruct``)."""
        N, C = self.cfg.tokens, self.cfg.channels
        if latents.dim() != 3 or tuple(latents.shape[1:]) != (N, C):
            raise ValueError(f"tokenizer expects latents (B, {N}, {C}), got {tuple(latents.shape)}")
        B = latents.shape[0]
        u = self.from_latent(latents.to(self.from_latent.weight.dtype)) + self.latent_pos
        q = self.patch_queries.expand(B, -1, -1).to(u.dtype)
        if self.region_out is not None:
            k, (gh, gw) = self.cfg.region, self.cfg.grid
            q = q + rearrange(self.region_out(u), "b (rh rw) (kh kw d) -> b (rh kh rw kw) d", rh=gh // k, rw=gw // k, kh=k, kw=k)
        h = torch.cat([u, q], dim=1)
        for blk in self.decoder:
            h, _ = blk(h)
        out = self.to_pixels(self.dec_norm(h[:, N:])).float()
        return self.unpatchify(out)

    def forward(self, frames: torch.Tensor, generator: torch.Generator | None = None,
                mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Reconstruct ``frames``; in training mode with MAE masking (``mask``, else drawn from ``generator``).
        Returns (recon, latents)."""
        if mask is None and self.training and self.cfg.mask_max > 0:
            mask = self.sample_mask(frames.shape[0], generator)
        if not self.training:
            mask = None
        z = self.encode(frames, mask)
        return self.decode(z), z

    @torch.no_grad()
    def reconstruct(self, frames: torch.Tensor) -> torch.Tensor:
        """decode(encode(frames)) clamped to [0, 1] (no masking)."""
        return self.decode(self.encode(frames)).clamp(0, 1)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def summary(self) -> str:
        return describe(self.cfg, self.num_params())


def build_tokenizer(preset: str | TokenizerConfig | dict = "cpu", **overrides: Any) -> Tokenizer:
    return Tokenizer(tokenizer_config(preset, **overrides))


# ---------------------------------------------------------------------------------------------- loading
def load_tokenizer(path: str | os.PathLike, device: torch.device | str = "cpu") -> tuple[Tokenizer, dict[str, Any]]:
    """Rebuild a tokenizer from a weights file (strict). Returns (model in eval mode, extra metadata)."""
    from ..checkpoint import check_shapes, load_weights, read_metadata

    path = Path(path)
    kind, cfg_dict, extra = read_metadata(path)
    if kind != KIND:
        raise CheckpointError(f"checkpoint {path} holds a {kind} model, not a tokenizer")
    try:
        cfg = TokenizerConfig.from_dict(cfg_dict)
    except (ConfigError, TypeError) as e:  # the file's config, not the user's settings: a data failure
        raise CheckpointError(f"checkpoint {path} has an {e}; restore the file or retrain") from None
    check_shapes(path, lambda: Tokenizer(cfg))  # before any memory is given to the model
    model = Tokenizer(cfg)
    load_weights(path, model, kind=KIND, config=cfg_dict)  # the file's own config (square-era names included)
    return model.to(device).eval(), extra


def weights_for_inference(run_dir: str | os.PathLike) -> Path:
    """The weights file ``ahri tokenize`` uses from a run: EMA weights if present, else the model's."""
    d = Path(run_dir)
    for name in ("ema.safetensors", "model.safetensors"):
        if (d / name).is_file():
            return d / name
    raise CheckpointError(f"run {d} has no tokenizer weights (model.safetensors); train one with `ahri train --stage tokenizer`")


# ---------------------------------------------------------------------------------------------- encode / decode
@torch.no_grad()
def encode_frames(
    model: Tokenizer, frames: np.ndarray | torch.Tensor, device: torch.device | str | None = None, precision: str = "fp32"
) -> torch.Tensor:
    """uint8 (B, H, W, 3) or float (B, 3, H, W) in [0, 1] -> latents float32 (B, N, C) on CPU."""
    device = torch.device(device) if device is not None else next(model.parameters()).device
    if isinstance(frames, np.ndarray):
        from ..data.frames import to_tensor

        x = to_tensor(frames, device)
    else:
        x = frames.to(device).float()
    with autocast(device, precision):
        z = model.encode(x)
    return z.float().cpu()


@torch.no_grad()
def decode_latents(
    model: Tokenizer,
    latents: torch.Tensor | np.ndarray,
    batch_size: int = 64,
    device: torch.device | str | None = None,
    precision: str = "fp32",
) -> torch.Tensor:
    """Latents (T, N, C) or (B, T, N, C) -> frames float32 (T, 3, H, W) / (B, T, 3, H, W) in [0, 1], on CPU.

    Used by eval and rollout to look at (predicted) latents in pixel space.
    """
    was = model.training
    model.eval()
    device = torch.device(device) if device is not None else next(model.parameters()).device
    z = torch.as_tensor(latents)
    lead = z.shape[:-2]
    flat = z.reshape(-1, *z.shape[-2:])
    outs = []
    try:
        for s in range(0, flat.shape[0], batch_size):
            with autocast(device, precision):
                r = model.decode(flat[s : s + batch_size].to(device).float())
            outs.append(r.float().clamp(0, 1).cpu())
    finally:
        model.train(was)
    h, w = model.cfg.size
    out = torch.cat(outs) if outs else torch.zeros(0, 3, h, w)
    return out.reshape(*lead, 3, h, w)

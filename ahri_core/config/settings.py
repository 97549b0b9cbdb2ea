"""Validated settings, one pydantic model per component (one table of a config file each).

How a section is read (defaults, presets, config file, environment, flags) is in ``config/base.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal, get_args

from pydantic import Field, field_validator, model_validator

from ..errors import ConfigError
from .base import Section, is_power_of_two
from .presets import DYNAMICS_PRESETS

if TYPE_CHECKING:
    from ..data.frames import SplitRule


class FetchSettings(Section):
    section: ClassVar[str] = "fetch"
    max_height: int = Field(720, ge=64, le=4320, description="highest video height to download")
    max_videos: int | None = Field(None, ge=1, description="stop after this many videos per source")
    match_title: str | None = Field(None, description="only videos whose title matches this regex")
    sleep_interval: float = Field(3.0, ge=0, description="seconds to wait before each download (min)")
    max_sleep_interval: float = Field(8.0, ge=0, description="seconds to wait before each download (max)")
    sleep_requests: float = Field(1.0, ge=0, description="seconds between metadata requests")
    retries: int = Field(3, ge=0, le=20)
    socket_timeout: float = Field(20.0, gt=0)
    connect_timeout: float = Field(5.0, gt=0, le=120, description="seconds for the reachability check")
    verify: Literal["full", "quick"] = Field("full", description="decode every frame of new videos, or keyframes")
    count: int = Field(16, ge=1, le=100_000, description="clips to record (game, gym)")
    frames: int = Field(200, ge=2, le=1_000_000, description="frames per clip (game, gym)")
    size: int | None = Field(None, ge=16, le=2048, description="frame size of recorded clips (game: 64)")
    seed: int = Field(0, ge=0, description="first seed of recorded clips (game, gym)")
    env: str = Field("ALE/Pong-v5", min_length=1, description="Gymnasium environment id (gym)")

    @field_validator("size")
    @classmethod
    def _even(cls, v: int | None) -> int | None:
        if v is not None and v % 2:
            raise ValueError("must be even (mp4 stores yuv420p)")
        return v

    @field_validator("match_title")
    @classmethod
    def _regex(cls, v: str | None) -> str | None:
        if v is None:
            return v
        import re

        try:
            re.compile(v)
        except re.error as e:
            raise ValueError(f"not a valid regular expression ({e})") from None
        return v

    @model_validator(mode="after")
    def _sleep_order(self) -> FetchSettings:
        if self.max_sleep_interval < self.sleep_interval:
            raise ValueError("max_sleep_interval must be >= sleep_interval")
        return self


Precision = Literal["auto", "bf16", "fp32"]  # auto: measured per machine and model (ahri_core.runtime)
CompileMode = Literal["auto", "on", "off"]  # auto: measured in the run (ahri_core.train.compiling)
COMPILE_MODES: tuple[str, ...] = get_args(CompileMode)


def compile_mode(value: Any) -> str:
    """``auto``/``on``/``off`` from a setting that may also be a bool or a yes/no word (true = on, false = off:
    the older boolean ``compile`` setting)."""
    if isinstance(value, bool):
        return "on" if value else "off"
    v = str(value).strip().lower()
    v = {"true": "on", "yes": "on", "1": "on", "false": "off", "no": "off", "0": "off"}.get(v, v)
    if v not in COMPILE_MODES:
        raise ValueError(f"{value!r} is not a compile mode: give auto, on or off")
    return v


class TrainSettings(Section):
    """The optimisation loop, shared by the tokenizer and dynamics stages."""

    section: ClassVar[str] = "train"
    stage: Literal["tokenizer", "dynamics"] = "dynamics"
    preset: str = Field("cpu", description="model preset (tiny, cpu, small, medium...)")
    run: str | None = Field(None, description="run name (default: stage + timestamp)")
    max_steps: int | None = Field(None, ge=1)
    minutes: float | None = Field(None, gt=0)
    epochs: float | None = Field(None, gt=0)
    batch_size: int = Field(16, ge=1)
    lr: float = Field(1e-3, gt=0, le=1.0)
    weight_decay: float = Field(0.01, ge=0)
    optimizer: Literal["adamw", "muon"] = Field(
        "adamw", description="adamw, or muon (Muon on the blocks' attention and MLP matrices, AdamW on the rest)")
    warmup_steps: int = Field(100, ge=0)
    min_lr_ratio: float = Field(0.1, ge=0, le=1)
    grad_clip: float = Field(1.0, gt=0)
    ema: float = Field(0.0, ge=0, lt=1, description="EMA decay of weights; 0 turns EMA off")
    seed: int = 0
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N")
    precision: Precision = Field("auto", description="auto (measured per machine and model), bf16 or fp32")
    threads: int | None = Field(None, ge=1, le=1024, description="CPU threads (default: the cores this process may use)")
    grad_checkpointing: bool = False
    checkpoint_every: int = Field(500, ge=1, description="steps between checkpoints")
    val_every: int = Field(250, ge=1, description="steps between validations")
    log_every: int = Field(10, ge=1)
    resume: bool = False
    max_bad_steps: int = Field(5, ge=1, le=1000, description="non-finite steps in a row that stop a run as diverged")
    grad_accum: int = Field(1, ge=1, le=4096, description="batches whose gradients add up to one optimizer step")
    fsdp: bool = Field(False, description="shard parameters and optimizer state across processes (FSDP2; torchrun)")
    compile: CompileMode = Field("auto", description="torch.compile the training steps: auto (measured in the run, on "
                                 "only where the budget repays the start-up), on or off")
    tensorboard: bool = Field(True, description="write TensorBoard events under the run (needs the tensorboard package)")

    @field_validator("compile", mode="before")
    @classmethod
    def _compile(cls, v: Any) -> str:
        return compile_mode(v)

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if v in ("auto", "cpu", "cuda", "mps") or (v.startswith("cuda:") and v[5:].isdigit()):
            return v
        raise ValueError("allowed: auto, cpu, cuda, cuda:N, mps")


class DataSettings(Section):
    """Windows of latents for dynamics training."""

    section: ClassVar[str] = "data"
    seq_len: int = Field(16, ge=2)
    stride: int = Field(8, ge=1)
    alternating: bool = False
    seq_len_short: int = Field(32, ge=2)
    seq_len_long: int = Field(64, ge=2)
    batch_size_short: int = Field(2, ge=1)
    batch_size_long: int = Field(1, ge=1)
    long_ratio: float = Field(0.1, ge=0, le=1)
    val_fraction: float = Field(0.1, ge=0, lt=1, description="fraction of videos held out")
    num_workers: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _lengths(self) -> DataSettings:
        if self.alternating and self.seq_len_long < self.seq_len_short:
            raise ValueError("seq_len_long must be >= seq_len_short")
        return self


class DiffusionSettings(Section):
    """Diffusion forcing and shortcut forcing (tau = 0 clean, tau = 1 noise)."""

    section: ClassVar[str] = "diffusion"
    shortcut: bool = Field(True, description="shortcut forcing: few-step sampling (eval and rollout use 4 steps)")
    k_max: int = Field(64, ge=1, le=4096, description="finest step count; d_min = 1/k_max")
    step_sampling: Literal["inverse", "uniform"] = "inverse"
    bootstrap_fraction: float = Field(0.25, ge=0, le=1)
    single_image_fraction: float = Field(0.1, ge=0, le=1, description="items trained as single images (0.1: +0.6 dB over 0.3 in the demo)")
    bootstrap_warmup: int = Field(0, ge=0, description="steps of plain flow loss before bootstrap starts")
    ema_teacher: bool = False
    context_fraction: float = Field(0.3, ge=0, le=1, description="fraction of frames drawn as nearly-clean context")
    context_tau_max: float = Field(0.2, ge=0, le=1, description="context frames draw tau ~ U[0, context_tau_max]")
    loss_weight: Literal["ramp", "uniform"] = Field(
        "ramp", description="per-frame loss weight: ramp (1 - 0.9 tau, the paper's) or uniform"
    )

    @field_validator("k_max")
    @classmethod
    def _k_max(cls, v: int) -> int:
        if not is_power_of_two(v):
            raise ValueError("must be a power of two (1, 2, 4, ..., 4096)")
        return v


class SamplingSettings(Section):
    """Autoregressive rollouts: eval, rollout and training previews."""

    section: ClassVar[str] = "sampling"
    steps: list[int] = Field(default_factory=lambda: [4])
    tau_ctx: float = Field(0.1, ge=0, lt=1)
    context: int = Field(16, ge=1)
    horizon: int = Field(16, ge=1)
    clips: int = Field(8, ge=1)
    seed: int = 0
    batch_size: int = Field(8, ge=1)

    @field_validator("steps")
    @classmethod
    def _steps(cls, v: list[int]) -> list[int]:
        if not v:
            raise ValueError("give at least one step count")
        for k in v:
            if not is_power_of_two(k):
                raise ValueError(f"step count {k} is not a power of two (1, 2, 4, 8, ...)")
        return v


class PlaySettings(Section):
    """``ahri play`` (``[play]`` in a config file, ``AHRI_PLAY_*``): the caps that stop a recording, so that a
    page left recording cannot fill the disk."""

    section: ClassVar[str] = "play"
    record_minutes: float = Field(30.0, gt=0, description="a recording stops after this many minutes of video")
    record_gb: float = Field(2.0, gt=0, description="a recording stops when its file reaches this size (GB)")
    record_keep_free_gb: float = Field(
        1.0, ge=0, description="a recording does not start, or stops, when the disk has less free (GB)"
    )


class LatentActionSettings(Section):
    """Latent actions inferred from video (docs/actions.md): dynamics training and the few-label map."""

    section: ClassVar[str] = "latent_actions"
    enabled: bool = Field(False, description="train an inverse-dynamics encoder jointly; its codes are the actions")
    codes: int = Field(16, ge=2, le=64, description="code-book size (FSQ grid): 2, 3, 4, 6, 8, 9, 12, 16, 25, 27, 32, 64")
    quantize: bool = Field(True, description="False: a continuous code of the same number of dimensions (no rounding)")
    dropout: float = Field(0.1, ge=0, le=1, description="share of items trained with 'no action' instead of their codes")
    ignore_actions: bool = Field(False, description="ignore the latent set's real actions (train as if from video alone)")
    label_share: float = Field(0.1, gt=0, le=1, description="action map: share of training videos whose real actions are used")
    forward_weight: float = Field(
        1.0, ge=0, description="weight of the encoder's forward-model loss (0: no forward head; trained by the dynamics loss alone)"
    )
    forward_mixing: int = Field(
        4, description="token-mixing groups in the forward head: 0 (each token from itself alone), 1, 2, 4, 8 or 16"
    )
    history: int = Field(
        2, ge=0, le=4, description="frames before t - 1 whose changes the encoder also reads (0 to 4; 0: t - 1 and t only)"
    )

    @field_validator("codes")
    @classmethod
    def _codes(cls, v: int) -> int:
        allowed = (2, 3, 4, 6, 8, 9, 12, 16, 25, 27, 32, 64)
        if v not in allowed:
            raise ValueError(f"allowed: {', '.join(map(str, allowed))}")
        return v

    @field_validator("forward_mixing")
    @classmethod
    def _mixing(cls, v: int) -> int:
        if v not in (0, 1, 2, 4, 8, 16):
            raise ValueError("allowed: 0, 1, 2, 4, 8, 16")
        return v


MODEL_SHAPE = ("dim", "depth", "heads")  # the dynamics model's fields that [model] can set


def _head_width(dim: int, heads: int) -> str | None:
    """Why ``dim`` cannot be split into ``heads`` heads (None: it can)."""
    if dim % heads:
        return f"dim {dim} is not divisible by heads {heads}"
    if (dim // heads) % 2:
        return f"head width dim/heads = {dim // heads} must be even (rotary position encoding)"
    return None


class ModelSettings(Section):
    """The dynamics model's shape (``[model]``, ``AHRI_MODEL_*``, ``ahri train --dim/--depth/--heads``).

    None: the preset's value. Only a new run takes them: a resumed run keeps the shape it was made with.
    """

    section: ClassVar[str] = "model"
    dim: int | None = Field(None, ge=8, le=16384, description="model width (default: the preset's)")
    depth: int | None = Field(None, ge=1, le=512, description="blocks, spatial and temporal (default: the preset's)")
    heads: int | None = Field(None, ge=1, le=256, description="attention heads; dim must be divisible by heads "
                              "(default: the preset's)")

    @field_validator("heads")
    @classmethod
    def _heads(cls, v: int | None, info: Any) -> int | None:
        dim = info.data.get("dim")
        if v is not None and dim is not None:
            why = _head_width(dim, v)
            if why:
                raise ValueError(why)
        return v

    def overrides(self) -> dict[str, int]:
        """The shape fields given (for ``dynamics_config``); the rest stay the preset's."""
        return {k: getattr(self, k) for k in MODEL_SHAPE if getattr(self, k) is not None}

    def shape(self, preset: str) -> dict[str, int]:
        """dim, depth and heads of a new model of ``preset``: the ones given, else the preset's; checked
        against the preset's other fields (key/value heads, temporal layers)."""
        base = DYNAMICS_PRESETS.get(preset)
        if base is None:
            raise ConfigError(f"unknown dynamics preset {preset!r}; accepted: {', '.join(DYNAMICS_PRESETS)}")
        shape = {**{k: int(base[k]) for k in MODEL_SHAPE}, **self.overrides()}
        dim, depth, heads = shape["dim"], shape["depth"], shape["heads"]
        which = "heads" if self.heads is not None else "dim"
        why = _head_width(dim, heads)
        kv = base.get("kv_heads")
        if why is None and kv and heads % kv:
            why = f"heads {heads} is not divisible by the {preset} preset's key/value heads {kv}"
        if why is not None:
            raise ConfigError(f"invalid setting model.{which}={shape[which]}: {why} (preset {preset})")
        every = int(base["temporal_every"])
        if depth < every:
            raise ConfigError(f"invalid setting model.depth={depth}: the {preset} preset makes every {every}th block "
                              f"temporal, so depth must be >= {every}")
        return shape


class TokenizerSettings(Section):
    """Tokenizer-stage settings (``[tokenizer]`` in a config file, ``AHRI_TOKENIZER_*``).

    Model overrides (None = the preset's value) apply only to a new run; a resumed run rebuilds its
    model from the checkpoint.
    """

    section: ClassVar[str] = "tokenizer"
    size: str | None = Field(
        None, description='frame size "HxW" in pixels (e.g. 48x80) or one number for a square; default: the '
        "preset's pixel budget shaped to the videos' aspect"
    )
    fit: Literal["pad", "crop", "squash"] = Field(
        "pad", description="how frames of another aspect are made HxW: pad (whole frame kept), crop or squash"
    )
    fps: float | None = Field(
        None, gt=0, le=240, description="highest frame rate videos are read at (a slower video keeps its own)"
    )
    patch_size: int | None = Field(None, ge=1, le=64)
    tokens: int | None = Field(None, ge=1, le=4096, description="latent tokens per frame")
    channels: int | None = Field(None, ge=1, le=1024, description="bottleneck width per token")
    mask_max: float | None = Field(None, ge=0, lt=1, description="MAE drop rate drawn from U(0, mask_max)")
    val_fraction: float = Field(0.1, ge=0, lt=1, description="fraction of videos held out for validation")
    val_videos: list[str] | None = Field(
        None, description="ids of the videos held out (instead of the hash split with val_fraction)"
    )
    split_file: Path | None = Field(
        None, description='file naming the held-out videos: JSON {"val": [...], "train": [...]} or lines "val ID ..."'
    )
    val_frames: int = Field(256, ge=1, description="held-out frames scored at each validation")
    max_frames_per_video: int = Field(
        20_000, ge=1, description="frames cached per video; a longer video keeps every k-th frame, spread over all of it"
    )
    perceptual_weight: float = Field(0.0, ge=0, description="weight of the perceptual term (needs perceptual_model)")
    perceptual_model: Path | None = Field(
        None, description="local torch.export file (.pt2) f(recon, target) -> per-item distance; nothing is downloaded"
    )

    @field_validator("size", mode="before")
    @classmethod
    def _size(cls, v: Any) -> str | None:
        from ..models.tokenizer import parse_size

        hw = parse_size(v)
        return None if hw is None else f"{hw[0]}x{hw[1]}"

    def split_rule(self) -> SplitRule:
        """The train/validation split: chosen videos (``split_file`` or ``val_videos``) or the hash rule."""
        from ..data.frames import SplitRule

        if self.split_file is not None and self.val_videos:
            raise ConfigError("--split and --val-videos both choose the held-out videos; give one of them")
        if self.split_file is not None:
            return SplitRule.from_file(self.split_file)
        if self.val_videos:
            return SplitRule.chosen(self.val_videos)
        return SplitRule.by_hash(self.val_fraction)

    def overrides(self) -> dict[str, Any]:
        """Model settings given (None: the preset's); ``height``/``width`` from ``size``."""
        from ..models.tokenizer import parse_size

        hw = parse_size(self.size)
        return {
            "height": hw[0] if hw else None,
            "width": hw[1] if hw else None,
            "fit": self.fit if "fit" in self.model_fields_set else None,
            "fps": self.fps,
            "patch_size": self.patch_size,
            "tokens": self.tokens,
            "channels": self.channels,
            "mask_max": self.mask_max,
        }


class DemoSettings(Section):
    """``ahri demo`` (``[demo]`` in a config file, ``AHRI_DEMO_*``). Defaults are tuned for 2 CPU cores, 15 min."""

    section: ClassVar[str] = "demo"
    minutes: float = Field(15.0, gt=0, le=24 * 60, description="wall-clock budget of the whole demo")
    clips: int = Field(96, ge=2, description="built-in game clips to render")
    frames: int = Field(160, ge=8, description="frames per clip (20 fps)")
    size: int = Field(64, ge=16, description="frame size of the clips")
    seed: int = Field(0, ge=0)
    tokenizer_preset: str = "cpu"
    dynamics_preset: str = "cpu"
    tokenizer_share: float = Field(0.35, gt=0, lt=1, description="share of the training time for the tokenizer")
    eval_share: float = Field(0.04, ge=0, lt=0.5, description="share of the budget reserved for eval and rollout")
    val_fraction: float = Field(0.15, gt=0, lt=1, description="clips held out (by whole clip)")
    # dynamics training
    seq_len_short: int = Field(16, ge=2)
    seq_len_long: int = Field(32, ge=2)
    batch_size_short: int = Field(8, ge=1)
    batch_size_long: int = Field(4, ge=1)
    long_ratio: float = Field(0.1, ge=0, le=1)
    stride: int = Field(4, ge=1)
    k_max: int = Field(64, ge=1)
    dynamics_lr: float = Field(3e-3, gt=0, description="the cpu preset's default too")
    single_image_fraction: float = Field(
        0.1, ge=0, le=1, description="dynamics items trained as single images (the library default too)"
    )
    dynamics_ema: float = Field(0.99, ge=0, lt=1, description="EMA decay of the dynamics weights (0 = off)")
    tokenizer_batch_size: int | None = Field(None, ge=1)
    tokenizer_mask_max: float = Field(
        0.9, ge=0, lt=1,
        description="MAE drop rate bound of the demo's tokenizer (the preset's 0.9: better rollouts than 0, docs/evaluation.md)",
    )
    precision: Precision = Field("auto", description="auto (measured on this machine per model), bf16 or fp32")
    # optional step caps (reproducible runs on a busy machine: the time budget still applies)
    tokenizer_max_steps: int | None = Field(None, ge=1)
    dynamics_max_steps: int | None = Field(None, ge=1)
    # evaluation
    steps: list[int] = Field(default_factory=lambda: [4, 64])
    context: int = Field(16, ge=1)
    horizon: int = Field(16, ge=1)
    eval_clips: int = Field(32, ge=1, description="held-out windows scored (more = a tighter estimate)")
    tau_ctx: float = Field(0.1, ge=0, lt=1)
    rollout_horizon: int = Field(32, ge=1)
    samples: int = Field(2, ge=0, description="side-by-side mp4s written by the evaluation")

    @field_validator("k_max")
    @classmethod
    def _k(cls, v: int) -> int:
        if not is_power_of_two(v):
            raise ValueError("must be a power of two")
        return v

    @field_validator("steps")
    @classmethod
    def _steps(cls, v: list[int]) -> list[int]:
        if not v or any(not is_power_of_two(k) for k in v):
            raise ValueError("step counts must be powers of two")
        return v

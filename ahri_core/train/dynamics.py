"""Training the dynamics model: diffusion forcing (+ shortcut forcing) on windows of latents.

``train_dynamics(latents, run_dir, train=..., data=..., diffusion=...)`` is the library entry point that
``ahri train`` and ``ahri demo`` call; ``models.dynamics.load_dynamics_run(run_or_path)`` rebuilds a trained
model for eval and rollout. The objective lives in :mod:`ahri_core.diffusion`, the windows and the batch sampler in
:mod:`ahri_core.data.windows`, the model in :mod:`ahri_core.models.dynamics`.

Run directory (``runs/<name>/``):
- ``run.json``: stage, resolved settings, the latent set (path, tokenizer id), model config, status;
- ``metrics.jsonl``: one record per log interval (``"kind": "train"``) and per validation (``"val"``);
- ``model.safetensors`` (raw weights) and ``ema.safetensors`` (EMA weights, when EMA is on; what eval and
  rollout load), ``best.safetensors`` (the lowest held-out next-frame error), each with the model config
  and the resolved settings in the metadata; ``model.state.pt``: everything ``--resume`` needs to continue
  bit for bit (fixed seed, same device).

The stage is a :class:`DynamicsObjective` run by the one training loop (``train/loop.py``).
"""

from __future__ import annotations

import copy
import functools
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..checkpoint import config_mismatch
from ..config.settings import DataSettings, DiffusionSettings, LatentActionSettings, TrainSettings
from ..data.windows import (
    LatentSet,
    LatentVideo,
    all_finite,
    load_latent_set,
    make_loader,
    validation_windows,
)
from ..diffusion import add_noise, forcing_loss, sample_noise_levels
from ..errors import CheckpointError, ConfigError, DataError
from ..eval.metrics import memorising_gap
from ..fileio import read_jsonl
from ..models.dynamics import KIND, DynamicsConfig, DynamicsModel, dynamics_config, param_count
from ..models.dynamics import describe as describe_dynamics
from ..models.latent_actions import KIND as LAM_KIND
from ..models.latent_actions import (
    LatentActionConfig,
    LatentActionDynamics,
    latent_action_config,
    split_config,
)
from ..progress import Progress, ensure
from ..runtime import autocast, resolve_device
from . import distributed
from .checkpointing import load_resume_state
from .common import (
    RunDir,
    RunningRMS,
    StopRequest,
    check_resume_settings,
    seed_everything,
    with_preset_data,
    with_preset_defaults,
)
from .loop import run_loop
from .objectives.base import Objective, StepOut

STAGE = "dynamics"
VAL_TAUS = (0.1, 0.5, 0.9)  # validation: every frame noised to each of these levels
VAL_TAU_CTX = 0.1  # validation of next-frame prediction: context noised (and labelled) like the sampler does
VAL_WINDOWS = 32
# Settings that may differ when a run is resumed: the budget and logging (they do not change what is
# computed), and where and how fast it runs (device, precision, threads: a resume then stays bit-exact only
# on the same device and precision).
RESUMABLE = {
    "train": {"max_steps", "minutes", "epochs", "device", "resume", "log_every", "val_every", "checkpoint_every", "run",
              "threads", "precision", "max_bad_steps", "fsdp", "compile"},
    "data": {"num_workers"},
    "diffusion": set(),
    "latent_actions": {"label_share"},
}


@dataclass
class TrainResult:
    """What a finished (or stopped) training run produced."""

    run_dir: Path
    weights: Path
    step: int
    epoch: float
    seconds: float
    stopped: str = ""  # "" when the budget ran out, else the signal name
    last: dict[str, Any] = field(default_factory=dict)  # the last train record
    val: dict[str, Any] = field(default_factory=dict)  # the last validation record
    first_val: dict[str, Any] = field(default_factory=dict)  # the validation at step 0 (or the first one)
    best: dict[str, Any] | None = None  # {"metric", "value", "step"} of best.safetensors
    precision: dict[str, Any] = field(default_factory=dict)  # the precision used and why


# ---------------------------------------------------------------------------------------------- helpers
def _settings_dict(train: TrainSettings, data: DataSettings, diffusion: DiffusionSettings,
                   latent_actions: LatentActionSettings | None = None) -> dict[str, Any]:
    out = {
        "train": train.model_dump(mode="json"),
        "data": data.model_dump(mode="json"),
        "diffusion": diffusion.model_dump(mode="json"),
    }
    if latent_actions is not None and _uses_latent_settings(latent_actions):
        out["latent_actions"] = latent_actions.model_dump(mode="json")
    return out


def _uses_latent_settings(s: LatentActionSettings | None) -> bool:
    """Whether a run's actions differ from the latent set's: latent actions, or real actions ignored. Runs that
    use neither keep the settings (and run.json) they always had."""
    return s is not None and (s.enabled or s.ignore_actions)


def model_config_for(
    latents: LatentSet, train: TrainSettings, data: DataSettings, diffusion: DiffusionSettings,
    latent_actions: LatentActionSettings | None = None, **overrides: Any
) -> DynamicsConfig:
    """The model config a run builds: the preset, the latent shape, the actions, k_max and the longest window.

    ``latent_actions``: with ``enabled`` the actions are the latent action vectors (continuous, one number per
    FSQ dimension); with ``ignore_actions`` (and not enabled) the model takes no actions at all."""
    max_frames = max(data.seq_len_short, data.seq_len_long) if data.alternating else data.seq_len
    fields: dict[str, Any] = dict(
        k_max=diffusion.k_max,
        max_frames=max_frames,
        action_kind=latents.action_kind,
        action_count=latents.action_count,
        action_dim=latents.action_dim,
        grad_checkpointing=train.grad_checkpointing,
    )
    if latent_actions is not None and latent_actions.enabled:
        fields.update(action_kind="continuous", action_count=0,
                      action_dim=len(latent_action_config(latent_actions.codes, latents.tokens, latents.channels).levels))
    elif latent_actions is not None and latent_actions.ignore_actions:
        fields.update(action_kind="none", action_count=0, action_dim=0)
    fields.update(overrides)
    return dynamics_config(train.preset, tokens=latents.tokens, channels=latents.channels,
                           latent_grid=latents.token_grid, **fields)


def _loader_shapes(train: TrainSettings, data: DataSettings) -> tuple[tuple[int, int], tuple[int, int] | None, float]:
    if data.alternating:
        return (data.seq_len_short, data.batch_size_short), (data.seq_len_long, data.batch_size_long), data.long_ratio
    return (data.seq_len, train.batch_size), None, 0.0


def _val_length(data: DataSettings) -> int:
    return data.seq_len_short if data.alternating else data.seq_len


@torch.no_grad()
def validate(
    model: DynamicsModel,
    videos: list[LatentVideo],
    keys: list[tuple[int, int, int]],
    device: torch.device,
    precision: str = "fp32",
    shortcut: bool = False,
    batch_size: int = 8,
    seed: int = 12345,
    ignore_actions: bool = False,
    next_only: bool = False,
) -> dict[str, float]:
    """Held-out losses with fixed noise (the same at every call).

    ``tau=<v>``: x-space MSE with every frame at noise level v (d = d_min);
    ``next``: next-frame MSE of a one-step prediction, context frames at tau_ctx = 0.1 and the last frame
    pure noise (d = 1 for shortcut models, d_min otherwise) -- the rollout's first frame in one step;
    ``copy_last``: MSE of repeating the last context frame (the baseline ``next`` must beat).
    A latent-action model is conditioned on the actions its encoder infers from the window itself (frame t's
    from frames t - 1 and t), and also reports ``next_no_action``: ``next`` with "no action" everywhere (what
    the inferred codes are worth; see docs/actions.md). ``next_only``: only ``next`` and ``copy_last`` (one
    model call per batch).
    """
    was_training = model.training
    model.eval()
    g = torch.Generator().manual_seed(seed)
    d_min = 1.0 / model.config.k_max
    taus = () if next_only else VAL_TAUS
    sums: dict[str, float] = {f"tau={t:g}": 0.0 for t in taus}
    sums.update(next=0.0, copy_last=0.0)
    lam = isinstance(model, LatentActionDynamics)
    if lam and not next_only:
        sums["next_no_action"] = 0.0
    n = 0
    kind = "none" if lam or ignore_actions else model.config.action_kind
    for i in range(0, len(keys), batch_size):
        chunk = keys[i : i + batch_size]
        x = torch.stack([videos[v].latents[s : s + L] for v, s, L in chunk]).float()
        B, T = x.shape[:2]
        acts = None
        if kind != "none":
            rows = []
            for v, s, L in chunk:
                a = videos[v].actions
                if a is None:
                    a = torch.full((L,), -1, dtype=torch.long) if kind == "discrete" else torch.full(
                        (L, model.config.action_dim), float("nan")
                    )
                else:
                    a = a[s : s + L]
                rows.append(a)
            acts = torch.stack(rows).to(device)
        noise = torch.randn(x.shape, generator=g)
        x, noise = x.to(device), noise.to(device)
        if lam:
            acts = model.latent_actions(x)
        step = torch.full((B, T), d_min, device=device)
        with autocast(device, precision):
            for t in taus:
                tau = torch.full((B, T), t, device=device)
                xh = model(add_noise(x, noise, tau), tau, step, actions=acts)
                sums[f"tau={t:g}"] += float((xh.float() - x).pow(2).mean()) * B
            tau = torch.full((B, T), VAL_TAU_CTX, device=device)
            tau[:, -1] = 1.0
            st = step.clone()
            st[:, -1] = 1.0 if shortcut else d_min
            xh = model(add_noise(x, noise, tau), tau, st, actions=acts)
            if lam and not next_only:
                xn = model(add_noise(x, noise, tau), tau, st, actions=None)
                sums["next_no_action"] += float((xn[:, -1].float() - x[:, -1]).pow(2).mean()) * B
        sums["next"] += float((xh[:, -1].float() - x[:, -1]).pow(2).mean()) * B
        sums["copy_last"] += float((x[:, -2] - x[:, -1]).pow(2).mean()) * B
        n += B
    model.train(was_training)
    out = {k: v / max(n, 1) for k, v in sums.items()}
    if taus:
        out["mean"] = sum(out[f"tau={t:g}"] for t in taus) / len(taus)
    return out


# ---------------------------------------------------------------------------------------------- the objective
class _Windows:
    """The loader's batches with an exact position: (epoch, batches consumed in it)."""

    def __init__(self, loader: Any, sampler: Any) -> None:
        self.loader, self.sampler = loader, sampler
        self.per_epoch = len(sampler)
        self.epoch, self.position = 0, 0
        self._it: Any = None

    def next(self) -> Any:
        while True:
            if self._it is None:
                self.sampler.set_position(self.epoch, self.position)
                self._it = iter(self.loader)
            try:
                batch = next(self._it)
            except StopIteration:
                self._it = None
                self.epoch, self.position = self.epoch + 1, 0
                continue
            self.position += 1
            if self.position >= self.per_epoch:  # the epoch's last batch: the next call starts a new epoch
                self._it = None
                self.epoch, self.position = self.epoch + 1, 0
            return batch

    @property
    def epochs_done(self) -> float:
        return self.epoch + self.position / self.per_epoch

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.position, self._it = int(state["epoch"]), int(state["position"]), None


class DynamicsObjective(Objective):
    stage = STAGE
    kind = KIND
    task = "train"
    best_metric = "val_next"
    best_mode = "min"
    reduce = {"tau_min": "min", "tau_max": "max", "short_batches": "sum", "long_batches": "sum", "T": "last", "B": "last"}

    def __init__(self, cfg: DynamicsConfig, lset: LatentSet, train: TrainSettings, data: DataSettings,
                 diffusion: DiffusionSettings, settings: dict[str, Any], device: torch.device,
                 latent_actions: LatentActionSettings | None = None) -> None:
        self.cfg, self.lset, self.train, self.data, self.diffusion = cfg, lset, train, data, diffusion
        self.settings, self.device = settings, device
        la = latent_actions if _uses_latent_settings(latent_actions) else None
        self.latent_settings = la
        # latent actions: the encoder is a part of the model, so the loop's optimizer, EMA, checkpoints and
        # DDP see it; the real actions of the set (if any) are never read
        self.lam_cfg: LatentActionConfig | None = (
            latent_action_config(la.codes, lset.tokens, lset.channels, la.quantize, forward_head=la.forward_weight > 0,
                                 head_mixing=la.forward_mixing, history=la.history)
            if la is not None and la.enabled else None
        )
        if self.lam_cfg is not None:
            self.kind = LAM_KIND
        self.model = self._build().to(device)
        self.model.train()
        self.normalizer = RunningRMS().to(device)
        self.gen = torch.Generator().manual_seed(train.seed + 1)  # tau, d, item flags (CPU)
        self.noise_gen = torch.Generator(device=device).manual_seed(train.seed + 2)  # the noise tensors
        short, long, ratio = _loader_shapes(train, data)
        self.dist = distributed.current()
        action_kind = "none" if la is not None else lset.action_kind  # latent or ignored: no real actions loaded
        loader, sampler = make_loader(lset.train, short, long, ratio, data.stride, train.seed, action_kind,
                                      lset.action_dim, data.num_workers, rank=self.dist.rank, world=self.dist.world,
                                      pin_memory=device.type == "cuda")
        self.windows = _Windows(loader, sampler)
        self.short, self.long = short, long
        self.teacher = copy.deepcopy(self.model) if (diffusion.ema_teacher and diffusion.shortcut) else None
        self.val_keys = validation_windows(lset.val, _val_length(data), data.stride, VAL_WINDOWS) if lset.val else []
        # the same prediction on fixed windows of the training videos: held-out against seen video (memorising)
        self.fit_keys = (validation_windows(lset.train, _val_length(data), data.stride, VAL_WINDOWS)
                         if lset.val and lset.train else [])

    def _build(self) -> DynamicsModel:
        return DynamicsModel(self.cfg) if self.lam_cfg is None else LatentActionDynamics(self.cfg, self.lam_cfg)

    def model_config(self) -> dict[str, Any]:
        if self.lam_cfg is not None:
            return {"dynamics": self.cfg.model_dump(mode="json"), "latent_actions": self.lam_cfg.model_dump(mode="json")}
        return self.cfg.model_dump(mode="json")

    def weights_extra(self) -> dict[str, Any]:
        extra = {"settings": self.settings, "latents": self.lset.describe(), "tokenizer_id": self.lset.tokenizer_id,
                 "shortcut": self.diffusion.shortcut, "k_max": self.diffusion.k_max, "max_frames": self.cfg.max_frames}
        if self.latent_settings is not None:
            extra["real_actions"] = "ignored"
        return extra

    def steps_per_epoch(self) -> int:
        return self.windows.per_epoch

    def epochs_done(self) -> float:
        return self.windows.epochs_done

    def next_batch(self) -> Any:
        return self.windows.next().to(self.device)

    def _global_size(self, batch: Any) -> int:
        """The size of the batch all ranks share (this rank holds every ``world``-th item of it)."""
        if not self.dist.enabled:
            return batch.size
        return self.long[1] if batch.kind == "L" and self.long is not None else self.short[1]

    def compute(self, batch: Any, step: int, precision: str) -> StepOut:
        d = self.diffusion
        B, T = batch.size, batch.frames
        Bg = self._global_size(batch)
        # noise levels and noise are drawn for the global batch, then each rank keeps its items: any number of
        # ranks trains on the same numbers a single process would
        levels = sample_noise_levels(
            Bg, T, k_max=d.k_max, shortcut=d.shortcut, step_sampling=d.step_sampling,
            bootstrap_fraction=d.bootstrap_fraction, single_image_fraction=d.single_image_fraction,
            context_fraction=d.context_fraction, context_tau_max=d.context_tau_max,
            bootstrap=step >= d.bootstrap_warmup, generator=self.gen,
        ).to(self.device)
        noise = torch.randn((Bg, *batch.latents.shape[1:]), generator=self.noise_gen, device=self.device)
        any_bootstrap = bool(levels.bootstrap.any())
        if Bg != B:
            mine = slice(self.dist.rank, None, self.dist.world)
            levels, noise = levels.select(mine), noise[mine]
        teacher = self._teacher(any_bootstrap)
        net: Any = self.train_net
        actions = batch.actions
        code_logs: dict[str, float] = {}
        if self.lam_cfg is not None:
            # items that train with "no action" instead of their codes, drawn for the global batch like the levels
            keep = torch.rand(Bg, generator=self.gen) >= self.latent_settings.dropout
            if Bg != B:
                keep = keep[self.dist.rank :: self.dist.world]
            keep = keep.to(self.device)
            # The student infers the codes inside its own forward (gradients reach the encoder, through DDP);
            # the shortcut teacher is given the same codes, detached.
            with torch.no_grad():
                actions = self.model.latent_actions(batch.latents, keep, levels.isolated)
            net = functools.partial(net, clean=batch.latents, keep=keep)
            code_logs = self._code_stats(actions)
        elif self.latent_settings is not None:
            actions = None  # real actions ignored
        with autocast(self.device, precision):
            parts = forcing_loss(net, batch.latents, levels, noise, actions, self.normalizer, teacher=teacher,
                                 weighting=d.loss_weight)
        loss = parts.loss
        fwd = self.model.last_forward_loss if self.lam_cfg is not None else None
        if fwd is not None:
            # LAPO-style: the encoder also trains through a small forward model that sees nothing of frame t but
            # the action (computed inside the student's forward above)
            loss = loss + self.latent_settings.forward_weight * fwd
            code_logs["forward_loss"] = float(fwd.detach())
            self.model.last_forward_loss = None
        logs = {"loss": parts.raw, "flow_loss": parts.flow, "bootstrap_loss": parts.bootstrap,
                "tau_min": parts.tau_min, "tau_max": parts.tau_max, "short_batches": float(batch.kind == "S"),
                "long_batches": float(batch.kind == "L"), "batch": batch.kind, "T": T, "B": Bg, **code_logs}
        return StepOut(loss, logs, B * T)

    def _code_stats(self, actions: torch.Tensor) -> dict[str, float]:
        """How many codes a batch uses: the perplexity of its codes (anti-collapse watch; at most the code count)."""
        if self.lam_cfg is None or not self.lam_cfg.quantize:
            return {}
        idx = self.model.action_model.fsq.to_index(actions).flatten()
        idx = idx[idx >= 0]
        if not idx.numel():
            return {}
        p = torch.bincount(idx, minlength=self.lam_cfg.codes).float() / idx.numel()
        ent = -(p[p > 0] * p[p > 0].log()).sum()
        return {"code_perplexity": float(ent.exp()), "codes_used": float((p > 0).sum())}

    def _teacher(self, needed: bool) -> torch.nn.Module:
        """The model that makes the shortcut targets (run without gradient): the EMA teacher, or the model itself.
        Under FSDP a whole (unsharded) copy does it, so that no rank runs a sharded forward the others skip."""
        if self.fsdp and self.diffusion.shortcut and self.teacher is None:
            self.teacher = self._build().to(self.device)
            self._raw_teacher = not self.diffusion.ema_teacher
        if self.teacher is not None and needed:  # the same on every rank: decided on the global batch
            if getattr(self, "_raw_teacher", False):
                self.teacher.load_state_dict(distributed.full_tensors(self.model.state_dict()))
            else:
                self.teacher.load_state_dict(distributed.full_tensors(self.ema.averaged(self.model)))
        return self.teacher if self.teacher is not None else self.model

    def timing_step(self, precision: str) -> None:
        (T, B) = self.short
        c = self.cfg
        x = torch.randn(B, T, self.lset.tokens, self.lset.channels, device=self.device)
        tau = torch.rand(B, T, device=self.device)
        step = torch.full((B, T), 1.0 / c.k_max, device=self.device)
        kw = {"clean": x} if self.lam_cfg is not None else {}
        with autocast(self.device, precision):
            out = self.model(x, tau, step, **kw)
        out.float().pow(2).mean().backward()

    def shape_key(self) -> str:
        T, B = self.short
        return f"{json.dumps(self.cfg.weights_fields(), sort_keys=True, default=str)} batch {B}x{T}"

    def validate(self, step: int, precision: str) -> dict[str, float]:
        if not self.val_keys:
            return {}
        v = validate(self.model, self.lset.val, self.val_keys, self.device, precision, self.diffusion.shortcut,
                     ignore_actions=self.latent_settings is not None)
        out = {f"val_{k}": x for k, x in v.items()}
        if self.fit_keys:
            f = validate(self.model, self.lset.train, self.fit_keys, self.device, precision, self.diffusion.shortcut,
                         ignore_actions=self.latent_settings is not None, next_only=True)
            out["val_train_next"], out["val_train_copy_last"] = f["next"], f["copy_last"]
            gap = memorising_gap(v["next"], v["copy_last"], f["next"], f["copy_last"])
            if gap is not None:  # undefined when copy-last or the fit is exact
                out["val_memorising"] = gap
        return out

    def val_line(self, v: dict[str, Any]) -> str:
        taus = " ".join(f"tau{t:g}={v[f'val_tau={t:g}']:.4f}" for t in VAL_TAUS)
        line = f"val @ step {v['step']}: {taus}  next={v['val_next']:.4f} (copy-last {v['val_copy_last']:.4f}"
        if "val_next_no_action" in v:
            line += f", no action {v['val_next_no_action']:.4f}"
        line += ")"
        if v.get("val_memorising") is not None:
            line += f"  memorising {v['val_memorising']:.1f}x"
        return line

    def interval(self, frames: int, seconds: float) -> dict[str, Any]:
        return {"tokens_per_s": frames * self.lset.tokens / max(seconds, 1e-9)}

    def display(self, rec: dict[str, Any]) -> dict[str, Any]:
        """The seed's log line: epoch [batch/of], batch kind and length, loss, tau range, batches/s."""
        w = self.windows
        out = {
            "epoch": f"{w.epoch + 1} [{w.position}/{w.per_epoch}]",
            "batch": f"{rec.get('batch', 'S')} T={rec.get('T', 0)}",
            "loss": rec["loss"],
            "tau": f"[{rec.get('tau_min', 0):.2f}-{rec.get('tau_max', 1):.2f}]",
            "batch/s": round(rec["batches_per_s"], 2),
        }
        if rec.get("bootstrap_loss") is not None:
            out["boot"] = rec["bootstrap_loss"]
        if rec.get("code_perplexity") is not None:
            out["codes"] = round(rec["code_perplexity"], 1)
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"normalizer": self.normalizer.state_dict(), "gen": self.gen.get_state(),
                "noise_gen": self.noise_gen.get_state().cpu(), "windows": self.windows.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.normalizer.load_state_dict(state["normalizer"])
        self.gen.set_state(state["gen"])
        self.noise_gen.set_state(state["noise_gen"].to(self.noise_gen.get_state().device))
        self.windows.load_state_dict(state["windows"])


# ---------------------------------------------------------------------------------------------- training
def train_dynamics(
    latents: str | os.PathLike | LatentSet,
    run_dir: str | os.PathLike,
    train: TrainSettings | None = None,
    data: DataSettings | None = None,
    diffusion: DiffusionSettings | None = None,
    progress: Progress | None = None,
    on_step: Callable[[int, dict[str, Any]], None] | None = None,
    model_overrides: dict[str, Any] | None = None,
    *,
    stop: StopRequest | None = None,
    after_backward: Callable[[int, torch.nn.Module], None] | None = None,
    cache_dir: str | os.PathLike | None = None,
    latent_actions: LatentActionSettings | None = None,
) -> TrainResult:
    """Train (or, with ``train.resume``, continue) a dynamics model on a latent set.

    ``latents``: a latent set directory or an in-memory :class:`LatentSet`. ``run_dir``: where the run
    lives (created; an existing run needs ``train.resume``). The budget is ``train.max_steps`` /
    ``train.minutes`` / ``train.epochs``, whichever ends first. ``on_step(step, record)`` is called after
    every optimizer step (record: the step's loss terms, batch shape, lr). SIGTERM and the first Ctrl-C
    checkpoint and stop. ``cache_dir``: where the precision choice is cached (default: the workspace's
    ``cache/`` when the run is under ``<workspace>/runs``). ``latent_actions``: learn latent actions from the
    video alone (``enabled``; docs/actions.md) and/or ignore the set's real actions (``ignore_actions``).
    Returns a :class:`TrainResult`.
    """
    train = with_preset_defaults(train or TrainSettings(), "dynamics")
    distributed.setup(train.device)  # joins the process group when launched by torchrun; else nothing
    data = with_preset_data(data or DataSettings(), train.preset)
    diffusion = diffusion or DiffusionSettings()
    prog = ensure(progress)
    if isinstance(latents, LatentSet):
        lset = latents
    else:  # a val_fraction given now re-splits the set's videos (same hash rule); else the index's split
        given = "val_fraction" in data.model_fields_set
        lset = load_latent_set(latents, val_fraction=data.val_fraction if given else None)
    if not lset.train:
        raise DataError(f"latent set {lset.path or '<memory>'} has no training videos")
    _check_finite(lset)
    device = resolve_device(train.device)
    settings = _settings_dict(train, data, diffusion, latent_actions)
    run = RunDir(run_dir)
    resuming = train.resume and run.state.is_file()
    state = None
    if resuming:
        before = run.meta().get("settings", {})
        if ("latent_actions" in before) != ("latent_actions" in settings):
            raise ConfigError(
                f"--resume of {run.path}: the run was trained {'with' if 'latent_actions' in before else 'without'} "
                "latent actions / ignored real actions (latent_actions settings); resume it with the same ones"
            )
        check_resume_settings(before, settings, run.path, RESUMABLE)
        state = load_resume_state(run, STAGE)

    seed_everything(train.seed)
    overrides = dict(model_overrides or {})
    stored_dyn, stored_lam = split_config(state["config"]) if resuming else ({}, None)
    if stored_lam is not None and latent_actions is not None:
        # the forward head's shape is the run's (runs from before token mixing have none)
        # (and its encoder reads the history it was made with: runs from before ``history`` read none)
        kept = {"forward_mixing": int(stored_lam.get("head_mixing", 0)), "history": int(stored_lam.get("history", 0))}
        latent_actions = latent_actions.model_copy(update=kept)
        if isinstance(settings.get("latent_actions"), dict):
            settings["latent_actions"].update(kept)  # what run.json records
    if resuming and "pack" not in overrides:
        # a run keeps the packing it was made with (runs from before ``pack`` existed are unpacked)
        overrides.update(pack=int(stored_dyn.get("pack", 1)), pack_rows=int(stored_dyn.get("pack_rows", 1)),
                         token_grid=stored_dyn.get("token_grid"))
    cfg = model_config_for(lset, train, data, diffusion, latent_actions, **overrides)
    if resuming:
        diff = config_mismatch(cfg.weights_fields(), DynamicsConfig(**stored_dyn).weights_fields())
        if diff:
            raise CheckpointError(
                f"--resume of {run.path}: the checkpoint was made with another model config ({', '.join(diff[:4])})"
            )
    if diffusion.ema_teacher and diffusion.shortcut and train.ema <= 0:
        raise ConfigError("diffusion.ema_teacher needs EMA weights: set --ema (train.ema > 0)")
    split = {"train": sorted(v.id for v in lset.train), "val": sorted(v.id for v in lset.val)}
    if resuming:
        before = run.meta().get("split_videos")
        if before and before != split:
            raise ConfigError(
                f"--resume of {run.path}: the latent set's train/val videos differ from the run's "
                f"({len(before['train'])}/{len(before['val'])} then, {len(split['train'])}/{len(split['val'])} now); "
                "resume on the same latent set and split"
            )
    else:
        run.create(STAGE, settings, resume=train.resume)
    with run.failing_before_loop():
        obj = DynamicsObjective(cfg, lset, train, data, diffusion, settings, device, latent_actions)
        run.update_meta(stage=STAGE, settings=settings, latents=lset.describe(), tokenizer_id=lset.tokenizer_id,
                        model=obj.model_config(), shortcut=diffusion.shortcut, k_max=diffusion.k_max,
                        max_frames=cfg.max_frames, split_videos=split,
                        val_fraction_given="val_fraction" in data.model_fields_set)
        prog.log(describe_dynamics(cfg, param_count(obj.model)))
        if not obj.val_keys and not resuming:
            prog.log("no held-out video long enough for validation; validation is skipped")
        if cache_dir is None and run.path.parent.name == "runs":
            cache_dir = run.path.parent.parent / "cache"
        res = run_loop(run, obj, train, resume_state=state, progress=prog, stop=stop, cache_dir=cache_dir,
                       on_step=on_step, after_backward=after_backward)
    if res.status == "interrupted":
        prog.log(f"stopped by {res.reason} at step {res.step}; checkpoint written, continue with --resume")
    return TrainResult(
        run_dir=run.path,
        weights=run.ema_weights if obj.ema is not None else run.weights,
        step=res.step,
        epoch=res.epochs,
        seconds=res.seconds,
        stopped=res.reason or "" if res.status == "interrupted" else "",
        last=res.last,
        val=res.val,
        first_val=res.first_val,
        best=res.best,
        precision=res.precision.to_dict(),
    )


def _check_finite(lset: LatentSet) -> None:
    """Latents from a damaged tokenizer are refused before training, naming the video."""
    for v in [*lset.train, *lset.val]:
        if not all_finite(v.latents):
            where = f" in {lset.path}" if lset.path else ""
            raise DataError(f"latents of video {v.id}{where} hold non-finite values; re-run `ahri tokenize` "
                            "with a sound tokenizer")


def run_metrics(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of ``runs/<name>/metrics.jsonl``."""
    return read_jsonl(Path(run_dir) / "metrics.jsonl")

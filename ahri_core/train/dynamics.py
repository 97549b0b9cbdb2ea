"""Training the dynamics model: diffusion forcing (+ shortcut forcing) on windows of latents.

``train_dynamics(latents, run_dir, train=..., data=..., diffusion=...)`` is the library entry point that
``ahri train`` and ``ahri demo`` call; ``models.dynamics_io.load_dynamics_run(run_or_path)`` rebuilds a trained
model for eval and rollout. The loss lives in :mod:`ahri_core.diffusion`, the windows and the batch sampler in
:mod:`ahri_core.data.windows`, the model in :mod:`ahri_core.models.dynamics`.

Run directory (``runs/<name>/``):
- ``run.json``: stage, resolved settings, the latent set (path, tokenizer id), model config, status;
- ``metrics.jsonl``: one record per log interval (``"kind": "train"``) and per validation (``"val"``);
- ``model.safetensors`` (raw weights) and ``ema.safetensors`` (EMA weights, when EMA is on; what eval and
  rollout load), ``best.safetensors`` (the lowest held-out next-frame error), each with the model config
  and the resolved settings in the metadata; ``model.state.pt``: everything ``--resume`` needs to continue
  bit for bit (fixed seed, same device).

The stage is a :class:`~.objectives.dynamics.DynamicsObjective` run by the one training loop (``train/loop.py``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError

from ..checkpoint import config_mismatch
from ..config.settings import DataSettings, DiffusionSettings, LatentActionSettings, TrainSettings
from ..data.windows import (
    LatentSet,
    all_finite,
    load_latent_set,
)
from ..errors import CheckpointError, ConfigError, DataError
from ..models.dynamics import dynamics_config, param_count
from ..models.dynamics_config import DynamicsConfig, one_line
from ..models.dynamics_config import describe as describe_dynamics
from ..models.latent_actions import (
    latent_action_config,
    split_config,
)
from ..progress import Progress, ensure
from ..runtime import resolve_device
from . import distributed
from .checkpointing import load_resume_state
from .common import (
    RunDir,
    StopRequest,
    check_resume_settings,
    seed_everything,
    with_preset_data,
    with_preset_defaults,
    with_run_optimizer,
)
from .loop import run_loop
from .objectives.dynamics import STAGE, DynamicsObjective, uses_latent_settings

# Settings that may differ when a run is resumed: the budget and logging (they do not change what is
# computed), and where and how fast it runs (device, precision, threads: a resume then stays bit-exact only
# on the same device and precision).
RESUMABLE = {
    "train": {"max_steps", "minutes", "epochs", "device", "resume", "log_every", "val_every", "checkpoint_every", "run",
              "threads", "precision", "max_bad_steps", "fsdp", "compile", "tensorboard"},
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
    if latent_actions is not None and uses_latent_settings(latent_actions):
        out["latent_actions"] = latent_actions.model_dump(mode="json")
    return out


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
    train = train or TrainSettings()
    optimizer_given = "optimizer" in train.model_fields_set
    train = with_preset_defaults(train, "dynamics")
    distributed.setup(train.device)  # joins the process group when launched by torchrun; else nothing
    data = with_preset_data(data or DataSettings(), train.preset)
    diffusion = diffusion or DiffusionSettings()
    prog = ensure(progress)
    lset = _latent_set(latents, data)
    device = resolve_device(train.device)
    run = RunDir(run_dir).claim()
    try:
        resuming = train.resume and run.state.is_file()
        before = run.meta().get("settings", {}) if resuming else {}
        if resuming:
            train = with_run_optimizer(train, before, optimizer_given)
        settings = _settings_dict(train, data, diffusion, latent_actions)
        state = None
        if resuming:
            state = _resume_state(run, before, settings)

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
            diff = config_mismatch(cfg.weights_fields(), _stored_config(stored_dyn, run).weights_fields())
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
            run.claim()  # a new run: its folder exists now
        with run.failing_before_loop():
            obj = DynamicsObjective(cfg, lset, train, data, diffusion, settings, device, latent_actions)
            obj.runs_dir = run.path.parent if run.path.parent.name == "runs" else None
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
    finally:
        run.release()  # the writer lock: another process may write the run from now on
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


def _latent_set(latents: str | os.PathLike | LatentSet, data: DataSettings) -> LatentSet:
    """The latent set to train on, checked to have training videos and finite latents."""
    if isinstance(latents, LatentSet):
        lset = latents
    else:  # a val_fraction given now re-splits the set's videos (same hash rule); else the index's split
        given = "val_fraction" in data.model_fields_set
        lset = load_latent_set(latents, val_fraction=data.val_fraction if given else None)
    if not lset.train:
        raise DataError(f"latent set {lset.path or '<memory>'} has no training videos")
    _check_finite(lset)
    return lset


def _resume_state(run: RunDir, before: dict[str, Any], settings: dict[str, Any]) -> dict[str, Any]:
    """The training state of a run to resume, after checking that its settings allow it (``before``: the settings
    in the run's run.json)."""
    if ("latent_actions" in before) != ("latent_actions" in settings):
        raise ConfigError(
            f"--resume of {run.path}: the run was trained {'with' if 'latent_actions' in before else 'without'} "
            "latent actions / ignored real actions (latent_actions settings); resume it with the same ones"
        )
    check_resume_settings(before, settings, run.path, RESUMABLE)
    return load_resume_state(run, STAGE)



def _stored_config(stored: dict[str, Any], run: RunDir) -> DynamicsConfig:
    """The dynamics config a run's checkpoint was made with (refused in one line when it cannot be rebuilt)."""
    try:
        return DynamicsConfig(**stored)
    except ValidationError as e:
        raise CheckpointError(f"--resume of {run.path}: the checkpoint's dynamics config is not valid ({one_line(e)})") from None

def _check_finite(lset: LatentSet) -> None:
    """Latents from a damaged tokenizer are refused before training, naming the video."""
    for v in [*lset.train, *lset.val]:
        if not all_finite(v.latents):
            where = f" in {lset.path}" if lset.path else ""
            raise DataError(f"latents of video {v.id}{where} hold non-finite values; re-run `ahri tokenize` "
                            "with a sound tokenizer")

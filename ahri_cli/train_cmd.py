"""``ahri train``: train the dynamics model (default) or, with ``--stage tokenizer``, the tokenizer."""

from __future__ import annotations

import inspect
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from ahri_core.config.base import Section, load
from ahri_core.config.presets import DYNAMICS_PRESETS
from ahri_core.config.settings import (
    MODEL_SHAPE,
    DataSettings,
    DiffusionSettings,
    LatentActionSettings,
    ModelSettings,
    TokenizerSettings,
    TrainSettings,
)
from ahri_core.errors import ConfigError
from ahri_core.workspace import load_run_meta, read_run_meta, run_status

from .launch import NprocOption, launch_nproc
from .memcheck import check_dynamics, check_tokenizer
from .options import (
    CompileWhen,
    DeviceOption,
    DynamicsPreset,
    FitChoice,
    OptimizerChoice,
    PrecisionChoice,
    ThreadsOption,
    TokenizerPreset,
    check_size,
    renamed,
    setup_threads,
)
from .output import command_line, escape, info, next_step, out
from .output import result as result_line
from .progress import RichProgress, run_log
from .state import STATE

INTERRUPTED = 130  # the exit code of a run stopped by Ctrl-C or SIGTERM (after its checkpoint)
Preset = Enum(  # type: ignore[misc]
    "Preset", {n: n for n in dict.fromkeys([*TokenizerPreset.__members__, *DynamicsPreset.__members__])}, type=str,
    module=__name__,
)


class Stage(str, Enum):
    dynamics = "dynamics"
    tokenizer = "tokenizer"
    action_map = "action-map"


class StepSampling(str, Enum):
    inverse = "inverse"
    uniform = "uniform"


ALTERNATING_ONLY = ("seq_len_short", "seq_len_long", "batch_size_short", "batch_size_long", "long_ratio")
EXAMPLES = """
More examples:

  ahri train --max-steps 2000                      (dynamics on the newest latent set, preset cpu)

  ahri train --alternating --long-ratio 0.1 --minutes 30

  ahri train --shortcut --k-max 64 --step-sampling inverse --alternating --seq-len-short 32 --seq-len-long 64 --batch-size-short 2 --batch-size-long 1 --long-ratio 0.1

  ahri train --run my-run --resume                 (continue a run exactly where it stopped, same budget)

  ahri train --run my-run --resume --max-steps 5000  (continue it with a larger budget)

  ahri train --stage tokenizer --minutes 10

  ahri train --latent-actions --no-actions --max-steps 1000   (a controllable model from video alone)

  ahri train --stage action-map --run my-run       (map real actions to its latent codes with a few labels)
"""


def _runs_of(stage: str) -> list[tuple[float, str, dict[str, Any]]]:
    """(modified time, name, run.json) of the workspace's runs of ``stage``."""
    runs = STATE.workspace.runs
    found = []
    if runs.is_dir():
        for d in runs.iterdir():
            m = read_run_meta(d)
            if m.get("stage") == stage:
                found.append(((d / "run.json").stat().st_mtime, d.name, m))
    return sorted(found)


def _finished(meta: dict[str, Any]) -> bool:
    return run_status(meta)[0] == "finished"


def _resume_target(stage: str, name: str | None) -> str:
    """The run ``--resume`` continues: ``name`` (which must exist) or the newest unfinished run of ``stage``."""
    runs = _runs_of(stage)
    if name is None:
        open_runs = [n for _, n, m in runs
                     if not _finished(m) and (STATE.workspace.run_dir(n) / "model.state.pt").is_file()]
        if not open_runs:
            raise ConfigError(f"--resume: no unfinished {stage} run in {STATE.workspace.runs}; name one with --run NAME")
        return open_runs[-1]
    run_dir = STATE.workspace.run_dir(name)
    if not (run_dir / "run.json").is_file():
        known = ", ".join(n for _, n, _ in runs[-8:]) or "none"
        raise ConfigError(f"--resume: there is no run {name!r} in {STATE.workspace.runs} ({stage} runs: {known})")
    if not (run_dir / "model.state.pt").is_file():
        raise ConfigError(f"--resume: run {run_dir} has no training state to resume from (it stopped before its first checkpoint)")
    load_run_meta(run_dir)  # a damaged run.json is refused here, naming it
    return name


def _stored_settings(run_dir: Path) -> dict[str, Any]:
    return read_run_meta(run_dir).get("settings") or {}


def _merged(stored: dict[str, Any], section: str, flags: dict[str, Any]) -> dict[str, Any]:
    """A resumed run keeps its own settings; flags given now override them (the library refuses changes
    that would alter what is computed, and allows the budget, logging, device and threads to change)."""
    base = dict(stored.get(section, {}))
    base.update({k: v for k, v in flags.items() if v is not None})
    return base


BUDGET = ("max_steps", "minutes", "epochs")


def _resume_budget(train_flags: dict[str, Any], stored: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """Train settings of a resumed run: its own, with flags given now on top. A budget given now replaces the
    run's whole budget; with none, the run's own budget continues (what is left of it); a finished run
    needs a larger one."""
    merged = _merged(stored, "train", train_flags)
    if any(train_flags.get(k) is not None for k in BUDGET):
        return {**merged, **{k: train_flags.get(k) for k in BUDGET}}
    meta = read_run_meta(run_dir)
    budget = meta.get("budget")  # the budget of the run's latest session (kept by the training loop)
    if isinstance(budget, dict) and any(budget.get(k) is not None for k in BUDGET):
        merged.update({k: budget.get(k) for k in BUDGET})
    if _finished(meta):
        raise ConfigError(
            f"--resume: run {run_dir.name} already finished its budget (step {meta.get('step')}); "
            "give a larger one to train further, e.g. --max-steps N or --minutes M"
        )
    return merged


def _summary(result: Any, elapsed_label: str = "seconds") -> Table:
    t = Table(title=f"dynamics run {result.run_dir.name}", show_header=True)
    t.add_column("")
    t.add_column("value", justify="right")
    t.add_row("steps", str(result.step))
    t.add_row("epochs", f"{result.epoch:.2f}")
    t.add_row("minutes", f"{result.seconds / 60:.1f}")
    last = result.last or {}
    if last:
        t.add_row("train loss (last interval)", f"{last.get('loss', float('nan')):.4f}")
        if last.get("bootstrap_loss") is not None:
            t.add_row("  flow / bootstrap", f"{last['flow_loss']:.4f} / {last['bootstrap_loss']:.4f}")
        t.add_row("batches/s", f"{last.get('batches_per_s', 0):.2f}")
    first, val = result.first_val or {}, result.val or {}
    for key in [k for k in val if k.startswith("val_")]:
        a = first.get(key)
        t.add_row(key.replace("val_", "val "), (f"{a:.4f} -> " if a is not None else "") + f"{val[key]:.4f}")
    return t


def train(
    stage: Annotated[Stage, typer.Option("--stage", help="What to train.")] = Stage.dynamics,
    latents: Annotated[
        Path | None,
        typer.Option("--latents", help="Latent set (from ahri tokenize). \\[default: the newest in the workspace]"),
    ] = None,
    videos: Annotated[
        list[Path] | None,
        typer.Option("--videos", help="tokenizer stage: a folder of videos, or video files (repeatable). "
                     "\\[default: <workspace>/videos]"),
    ] = None,
    size: Annotated[
        str | None,
        typer.Option(
            "--size", metavar="HxW", callback=check_size,
            help="tokenizer stage: frame size in pixels, e.g. 48x80 (one number: square). "
            "\\[default: the preset's pixel budget shaped to the videos' aspect]",
        ),
    ] = None,
    fit: Annotated[
        FitChoice | None,
        typer.Option(
            "--fit", help="tokenizer stage: how frames of another aspect become HxW: pad (keep the whole frame, "
            "black bars), crop (cut the sides) or squash (stretch). \\[default: pad]",
        ),
    ] = None,
    tokens: Annotated[int | None, typer.Option("--tokens", help="tokenizer stage: latent tokens per frame.")] = None,
    channels: Annotated[int | None, typer.Option("--channels", help="tokenizer stage: channels per latent token.")] = None,
    mask_max: Annotated[
        float | None, typer.Option("--mask-max", help="tokenizer stage: MAE drop rate drawn from U(0, X). \\[default: 0.9]")
    ] = None,
    val_fraction: Annotated[
        float | None,
        typer.Option("--val-fraction", help="Share of videos held out, by whole video. \\[default: tokenizer 0.1; "
                     "dynamics: the latent set's own split]"),
    ] = None,
    val_videos: Annotated[
        list[str] | None,
        typer.Option("--val-videos", metavar="ID", help="tokenizer stage: hold out these video ids (repeatable; commas also "
                     "separate ids) instead of the hash split."),
    ] = None,
    split: Annotated[
        Path | None,
        typer.Option("--split", metavar="FILE", help='tokenizer stage: file naming the held-out videos: a JSON object with "val" '
                     '(and optionally "train") lists of ids, or text lines "val ID ..." / "train ID ...".'),
    ] = None,
    fps: Annotated[
        float | None,
        typer.Option("--fps", help="tokenizer stage: highest frame rate videos are read at; a slower video keeps "
                     "its own. \\[default: the preset's, 20]"),
    ] = None,
    preset: Annotated[
        Preset | None,
        typer.Option("--preset", help="Model preset (tokenizer and dynamics: tiny, cpu, small, medium, large). \\[default: cpu]"),
    ] = None,
    run: Annotated[str | None, typer.Option("--run", help="Run name under <workspace>/runs. \\[default: stage-date-time]")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue --run (default: the newest unfinished run) exactly.")] = False,
    max_steps: Annotated[int | None, typer.Option("--max-steps", help="Stop after this many optimizer steps.")] = None,
    minutes: Annotated[float | None, typer.Option("--minutes", help="Stop after this many minutes.")] = None,
    epochs: Annotated[float | None, typer.Option("--epochs", help="Stop after this many epochs.")] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size", help="Windows per batch (without --alternating). \\[default: per stage and preset]")] = None,
    lr: Annotated[float | None, typer.Option("--lr", help="Peak learning rate (warmup, then cosine). \\[default: per stage and preset]")] = None,
    warmup_steps: Annotated[int | None, typer.Option("--warmup-steps", help="Linear warmup steps. \\[default: per stage and preset]")] = None,
    ema: Annotated[float | None, typer.Option("--ema", help="EMA decay of the weights (0 = off). \\[default: per stage and preset]")] = None,
    optimizer: Annotated[
        OptimizerChoice | None,
        typer.Option("--optimizer", help="adamw, or muon (Muon on the attention and MLP matrices, AdamW on the rest; "
                     "the same --lr). \\[default: per stage and preset]"),
    ] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="Seed of init, data order and noise. \\[default: 0]")] = None,
    device: DeviceOption = None,
    precision: Annotated[
        PrecisionChoice | None,
        typer.Option("--precision", help="auto (measured on this machine for this model), bf16 or fp32. \\[default: auto]"),
    ] = None,
    threads: ThreadsOption = None,
    grad_checkpointing: Annotated[
        bool | None, typer.Option("--grad-checkpointing/--no-grad-checkpointing", help="Recompute activations in backward.")
    ] = None,
    grad_accum: Annotated[
        int | None, typer.Option("--grad-accum", min=1, metavar="K",
                                 help="Add up the gradients of K batches per optimizer step (a K times larger batch).")
    ] = None,
    fsdp: Annotated[
        bool | None, typer.Option("--fsdp/--no-fsdp", help="With several processes: shard parameters and optimizer "
                                  "state (FSDP2) instead of copying them (DDP).")
    ] = None,
    compile_model: Annotated[
        CompileWhen | None,
        typer.Option("--compile", help="torch.compile the training step: auto (timed in the run's first steps, kept "
                     "where the budget repays the start-up), on or off. \\[default: auto]"),
    ] = None,
    nproc: NprocOption = None,
    tensorboard: Annotated[
        bool | None, typer.Option("--tensorboard/--no-tensorboard", help="TensorBoard events under the run (needs "
                                  "the tensorboard package). \\[default: on]")
    ] = None,
    checkpoint_every: Annotated[int | None, typer.Option("--checkpoint-every", help="Steps between checkpoints. \\[default: 500]")] = None,
    val_every: Annotated[int | None, typer.Option("--val-every", help="Steps between validations. \\[default: 250]")] = None,
    log_every: Annotated[int | None, typer.Option("--log-every", help="Steps between metric records. \\[default: 10]")] = None,
    seq_len: Annotated[int | None, typer.Option("--seq-len", help="Frames per window. \\[default: 16]")] = None,
    stride: Annotated[int | None, typer.Option("--stride", help="Frames between window starts. \\[default: 4 on the tiny and cpu presets, else 8]")] = None,
    alternating: Annotated[
        bool | None, typer.Option("--alternating/--no-alternating", help="Mix short and long batches from one loader.")
    ] = None,
    seq_len_short: Annotated[int | None, typer.Option("--seq-len-short", help="Short batch length. \\[default: 16 on tiny/cpu, else 32]")] = None,
    seq_len_long: Annotated[int | None, typer.Option("--seq-len-long", help="Long batch length. \\[default: 32 on tiny/cpu, else 64]")] = None,
    batch_size_short: Annotated[int | None, typer.Option("--batch-size-short", help="Short batch size. \\[default: 8 on tiny/cpu, else 2]")] = None,
    batch_size_long: Annotated[int | None, typer.Option("--batch-size-long", help="Long batch size. \\[default: 4 on tiny/cpu, else 1]")] = None,
    long_ratio: Annotated[float | None, typer.Option("--long-ratio", help="Fraction of batches that are long. \\[default: 0.1]")] = None,
    shortcut: Annotated[
        bool | None, typer.Option("--shortcut/--no-shortcut", help="Shortcut forcing (few-step sampling). \\[default: on]")
    ] = None,
    k_max: Annotated[int | None, typer.Option("--k-max", help="Finest step count, a power of two. \\[default: 64]")] = None,
    step_sampling: Annotated[
        StepSampling | None, typer.Option("--step-sampling", help="P(d): inverse (1/d) or uniform. \\[default: inverse]")
    ] = None,
    bootstrap_fraction: Annotated[
        float | None, typer.Option("--bootstrap-fraction", help="Items with bootstrap targets. \\[default: 0.25]")
    ] = None,
    bootstrap_warmup: Annotated[
        int | None, typer.Option("--bootstrap-warmup", help="Steps of plain flow loss first. \\[default: 0]")
    ] = None,
    ema_teacher: Annotated[
        bool | None, typer.Option("--ema-teacher/--no-ema-teacher", help="Bootstrap targets from the EMA weights.")
    ] = None,
    single_image_fraction: Annotated[
        float | None, typer.Option("--single-image-fraction", help="Items trained as single images. \\[default: 0.1]")
    ] = None,
    context_fraction: Annotated[
        float | None, typer.Option("--context-fraction", help="Frames drawn as nearly-clean context. \\[default: 0.3]")
    ] = None,
    latent_actions: Annotated[
        bool | None, typer.Option("--latent-actions", help="Learn latent actions from the video alone and condition "
                                  "the model on them (docs/actions.md).")
    ] = None,
    latent_action_codes: Annotated[
        int | None, typer.Option("--latent-action-codes", metavar="N", help="Latent action code-book size (with "
                                 "--latent-actions): 2, 3, 4, 6, 8, 9, 12, 16, 25, 27, 32 or 64. \\[default: 16]")
    ] = None,
    latent_action_history: Annotated[
        int | None, typer.Option("--latent-action-history", metavar="N", help="Frames before t - 1 whose changes the "
                                 "latent-action encoder also reads (with --latent-actions): 0 to 4. \\[default: 2]")
    ] = None,
    no_actions: Annotated[
        bool | None, typer.Option("--no-actions", help="Ignore the latent set's real actions (train as if from video alone).")
    ] = None,
    dim: Annotated[
        int | None, typer.Option("--dim", metavar="N", help="Dynamics model width (new runs). \\[default: the preset's]")
    ] = None,
    depth: Annotated[
        int | None, typer.Option("--depth", metavar="N", help="Dynamics model blocks, spatial and temporal (new runs). "
                                 "\\[default: the preset's]")
    ] = None,
    heads: Annotated[
        int | None, typer.Option("--heads", metavar="N", help="Dynamics model attention heads; --dim must be divisible "
                                 "by them (new runs). \\[default: the preset's]")
    ] = None,
    data: Annotated[Path | None, typer.Option("--data", hidden=True, callback=renamed("--data", "--videos"))] = None,
) -> None:
    """Train the dynamics model on tokenized latents (or the tokenizer with --stage tokenizer).

    Exit codes: 0 done, 1 failed (data, divergence), 2 usage or settings, 130 interrupted (Ctrl-C or SIGTERM, after a checkpoint: continue with the printed --resume command).

    Example:  ahri train --alternating --long-ratio 0.1 --minutes 30
    """
    params = dict(locals())
    given = {k: v for k, v in params.items() if v is not None and v != []}
    code = launch_nproc(nproc)
    if code is not None:
        raise typer.Exit(code)
    from ahri_core.train import distributed

    distributed.setup(device or "auto")  # joins the process group under torchrun; else nothing
    train_flags = {**section_flags(TrainSettings, params), "resume": resume or None}
    if stage is Stage.tokenizer:
        _train_tokenizer(train_flags, given)
        return
    if stage is Stage.action_map:
        _fit_action_map(run, latents, seed, given)
        return
    _train_dynamics(params, train_flags, given)


def _train_dynamics(params: dict[str, Any], train_flags: dict[str, Any], given: dict[str, Any]) -> None:
    """The dynamics stage of ``ahri train``: ``params`` are the command's parameters, ``given`` those given."""
    for flag, key in (("--latent-action-codes", "latent_action_codes"), ("--latent-action-history", "latent_action_history")):
        if key in given and not params["latent_actions"]:
            raise ConfigError(f"{flag}: only used with --latent-actions")
    wrong = [f"--{k.replace('_', '-')}" for k in TOKENIZER_ONLY if k in given]
    if wrong:
        raise ConfigError(f"{', '.join(wrong)}: only used by --stage tokenizer (the dynamics stage reads --latents)")
    data_flags = section_flags(DataSettings, params)
    diff_flags = section_flags(DiffusionSettings, params)
    lat_flags = section_flags(LatentActionSettings, params)

    ws = STATE.workspace
    name, resume, latents = params["run"], params["resume"], params["latents"]
    stored: dict[str, Any] = {}
    if resume:
        name = _resume_target("dynamics", name)
        stored = _stored_settings(ws.run_dir(name))
        train_flags = _resume_budget({**train_flags, "run": name}, stored, ws.run_dir(name))
        train_flags["resume"] = True
        data_flags = _merged(stored, "data", data_flags)
        if params["val_fraction"] is None and not read_run_meta(ws.run_dir(name)).get("val_fraction_given"):
            data_flags.pop("val_fraction", None)  # the run used the latent set's own split: keep using it
        diff_flags = _merged(stored, "diffusion", diff_flags)
        lat_flags = _merged(stored, "latent_actions", lat_flags)
    if name is None:
        from ahri_core.train.common import default_run_name

        name = default_run_name("dynamics")
    train_flags["run"] = name
    tset = load(TrainSettings, train_flags, STATE.config)
    dset = load(DataSettings, data_flags, STATE.config)
    fset = load(DiffusionSettings, diff_flags, STATE.config)
    aset = load(LatentActionSettings, lat_flags, STATE.config)
    mset = load(ModelSettings, section_flags(ModelSettings, params), STATE.config)
    if not dset.alternating:
        extra = [f"--{k.replace('_', '-')}" for k in ALTERNATING_ONLY if k in given]
        if extra:
            raise ConfigError(f"{', '.join(extra)}: only used with --alternating (add --alternating)")
    elif "batch_size" in given:
        raise ConfigError("--batch-size does not apply with --alternating; use --batch-size-short/--batch-size-long")
    if tset.max_steps is None and tset.minutes is None and tset.epochs is None:
        raise ConfigError("give a training budget: --max-steps N, --minutes M or --epochs E")

    from ahri_core.data.windows import resolve_latents

    if tset.preset not in DYNAMICS_PRESETS:
        raise ConfigError(f"unknown dynamics preset {tset.preset!r} ({_origin('train', 'preset', given)}); "
                          f"accepted: {', '.join(DYNAMICS_PRESETS)}")
    shape = _model_shape(mset, tset.preset, read_run_meta(ws.run_dir(name)) if resume else None, name)

    if latents is None and resume:
        p = (read_run_meta(ws.run_dir(name)).get("latents") or {}).get("path")
        latents = Path(p) if p else None
    lat_path = resolve_latents(latents, ws.latents)
    from ahri_core.data.index import LatentIndex

    LatentIndex.read(lat_path)  # a damaged index is refused before the run's folder is made
    check_dynamics(tset, dset, shape, lat_path)

    from ahri_core.train.dynamics import train_dynamics

    setup_threads(tset.threads)
    run_dir = ws.run_dir(name)
    with run_log(run_dir / "log.txt"):
        info(f"[bold]dynamics[/] run [cyan]{escape(name)}[/] on latents {escape(str(lat_path))}")
        with RichProgress() as progress:
            result = train_dynamics(lat_path, run_dir, tset, dset, fset, progress=progress, latent_actions=aset,
                                    model_overrides=shape)
        out.print(_summary(result))
        result_line(f"weights {result.weights}")
        if result.stopped:
            info(f"stopped by {result.stopped}; continue with: {escape(command_line('train', '--run', name, '--resume'))}")
            raise typer.Exit(INTERRUPTED)
        next_step("eval", name)


def _origin(section: str, key: str, given: dict[str, Any]) -> str:
    """Where a setting came from, for an error: its flag, or the config file's line that set it."""
    from ahri_core.config.base import line_of, where_in_file

    line = line_of(Path(STATE.config), [section, key]) if STATE.config is not None and key not in given else None
    return where_in_file(STATE.config, line) if line is not None else f"--{key.replace('_', '-')}"


def _model_shape(mset: ModelSettings, preset: str, meta: dict[str, Any] | None, name: str) -> dict[str, int]:
    """The dynamics model's dim, depth and heads for the run: a new run's from ``[model]`` (the preset's where
    unset); a resumed run keeps its own (``meta``: its run.json) and refuses a different one."""
    if meta is None:
        mset.shape(preset)  # checks the combination against the preset before any work
        return mset.overrides()
    model = meta.get("model") or {}
    stored = model.get("dynamics", model) if isinstance(model, dict) else {}
    kept = {k: int(stored[k]) for k in MODEL_SHAPE if isinstance(stored.get(k), int)}
    for k, v in mset.overrides().items():
        if k in kept and kept[k] != v:
            raise ConfigError(f"--{k}: run {name} was made with {k} {kept[k]}, not {v}; "
                              "a resumed run keeps its model's shape")
    return kept


# Parameters of ``train`` whose settings field has another name.
FIELD_OF = {"compile_model": "compile", "latent_actions": "enabled", "latent_action_codes": "codes",
            "latent_action_history": "history", "no_actions": "ignore_actions"}


def section_flags(cls: type[Section], params: dict[str, Any], skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """The fields of ``cls`` that parameters of ``train`` set (None: not given), choices as their values."""
    flags = {}
    for param, value in params.items():
        field = FIELD_OF.get(param, param)
        if field in cls.model_fields and field not in skip:
            flags[field] = value.value if isinstance(value, Enum) else value
    return flags


def _stage_params(classes: tuple[type[Section], ...], extra: tuple[str, ...]) -> tuple[str, ...]:
    """The parameters of ``train`` used by one stage only: those setting a field of ``classes``, and ``extra``;
    ``val_fraction`` is both stages'."""
    names = inspect.signature(train).parameters
    return tuple(p for p in names if p != "val_fraction"
                 and (p in extra or any(FIELD_OF.get(p, p) in c.model_fields for c in classes)))


DYNAMICS_ONLY = _stage_params((DataSettings, DiffusionSettings, LatentActionSettings, ModelSettings),
                              ("latents", "grad_checkpointing"))
TOKENIZER_ONLY = _stage_params((TokenizerSettings,), ("data", "videos", "split"))


def _fit_action_map(run: str | None, latents: Path | None, seed: int | None, given: dict[str, Any]) -> None:
    """``--stage action-map``: map each real action to a latent code of a latent-action run, from the real actions of
    a few of its training videos (``[latent_actions] label_share`` of them)."""
    from ahri_core.train.action_map import fit_action_map

    allowed = {"stage", "run", "latents", "seed", "device", "threads", "resume"}
    wrong = [f"--{k.replace('_', '-')}" for k in given if k not in allowed]
    if wrong:
        raise ConfigError(f"{', '.join(wrong)}: not used by --stage action-map (it takes --run, --latents, --seed)")
    if run is None:
        raise ConfigError("--stage action-map needs --run RUN (a run trained with --latent-actions)")
    ws = STATE.workspace
    run_dir = ws.run_dir(run) if not Path(run).is_dir() else Path(run)
    if not (run_dir / "run.json").is_file():
        raise ConfigError(f"--run {run}: no such run in {ws.runs}")
    aset = load(LatentActionSettings, {}, STATE.config)
    setup_threads(given.get("threads"))
    res = fit_action_map(run_dir, latents, label_share=aset.label_share, seed=seed or 0)
    t = Table(title=f"action map of {run_dir.name}: {len(res['labelled_videos'])} labelled videos "
              f"({res['labelled_frames']} frames)", show_header=True)
    t.add_column("action")
    t.add_column("code", justify="right")
    t.add_column("frames", justify="right")
    meanings = res.get("meanings") or []
    for a, code in res["codes"].items():
        i = int(a)
        t.add_row(meanings[i] if i < len(meanings) else a, str(code), str(sum(res["counts"][i])))
    out.print(t)
    p = res["held_out_probe"]
    if p.get("frames"):
        out.print(f"held-out videos: code -> action accuracy {p['accuracy']:.3f} vs {p['majority']:.3f} for always "
                  f"the most frequent action ({p['frames']} frames)", highlight=False)
    result_line(f"wrote {run_dir / 'action_map.json'}")


def _train_tokenizer(train_flags: dict[str, Any], given: dict[str, Any]) -> None:
    from ahri_core.train.tokenizer import summary_lines, train_tokenizer

    wrong = [f"--{k.replace('_', '-')}" for k in DYNAMICS_ONLY if k in given]
    if wrong:
        raise ConfigError(f"{', '.join(wrong)}: only used by the dynamics stage (drop them with --stage tokenizer)")
    ws = STATE.workspace
    name = train_flags.get("run")
    stored: dict[str, Any] = {}
    if train_flags.get("resume"):
        name = _resume_target("tokenizer", name)
        stored = _stored_settings(ws.run_dir(name))
        train_flags = _resume_budget({**train_flags, "run": name}, stored, ws.run_dir(name))
        train_flags["resume"] = True
    if name is None:
        from ahri_core.train.common import default_run_name

        name = default_run_name("tokenizer")
    train_flags = {**train_flags, "run": name}
    tset = load(TrainSettings, train_flags, STATE.config)
    tok_flags = section_flags(TokenizerSettings, given, skip=("val_videos",))
    from .tokenize_cmd import chosen_split

    rule = chosen_split(given.get("val_videos"), given.get("split"), given.get("val_fraction"))
    if stored:
        tok_flags = _merged(stored, "tokenizer", {k: v for k, v in tok_flags.items() if v is not None})
    if rule is not None:  # a split given now replaces any other (a resumed run then refuses a change)
        tok_flags["split_file"] = rule.source if given.get("split") is not None else None
        tok_flags["val_videos"] = list(rule.val_videos) if given.get("split") is None else None
    tok = load(TokenizerSettings, tok_flags, STATE.config)
    if tset.max_steps is None and tset.minutes is None and tset.epochs is None:
        raise ConfigError("give a training budget: --max-steps N, --minutes M or --epochs E")
    paths = list(given.get("videos") or [])
    one_folder = len(paths) == 1 and Path(paths[0]).is_dir()  # --videos DIR: a folder, as --data DIR was
    if paths and not one_folder:
        missing = [str(p) for p in paths if not Path(p).is_file()]
        if missing:
            raise ConfigError(f"--videos: no such file {missing[0]}")
        videos: list[Any] = list(given["videos"])
    else:
        from ahri_core.sources.store import list_videos

        src = Path(paths[0]) if one_folder else Path(given["data"]) if given.get("data") else ws.videos
        if not src.is_dir():
            raise ConfigError(f"video folder {src} does not exist; run `ahri fetch` first (e.g. ahri fetch --source game)")
        videos = list_videos(src)
        if not videos:
            raise ConfigError(f"no videos under {src}; run `ahri fetch` first (e.g. ahri fetch --source game)")
    check_tokenizer(tset)
    setup_threads(tset.threads)
    run_dir = ws.run_dir(name)
    with run_log(run_dir / "log.txt"):
        info(f"[bold]tokenizer[/] run [cyan]{escape(name)}[/] on {len(videos)} videos")
        with RichProgress() as progress:
            summary = train_tokenizer(run_dir, videos, tset, tok, progress, cache_dir=ws.cache)
        for line in summary_lines(summary):
            result_line(line)
        if summary.get("stopped"):
            info(f"stopped by {summary['stopped']}; continue with: "
                 f"{escape(command_line('train', '--stage', 'tokenizer', '--run', name, '--resume'))}")
            raise typer.Exit(INTERRUPTED)
        next_step("tokenize", "--tokenizer", name)


def register(app: typer.Typer) -> None:
    from .helpfmt import TRAIN_PANELS, with_panels

    app.command(
        "train",
        help=inspect.cleandoc(train.__doc__ or "") + "\n" + EXAMPLES,
        no_args_is_help=False,
        cls=with_panels(TRAIN_PANELS),
    )(train)

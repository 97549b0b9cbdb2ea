"""``ahri demo``: render game clips (or import one's own videos), train, tokenize, train dynamics, evaluate and
roll out, within a budget; the same command after Ctrl-C continues."""

from __future__ import annotations

import contextlib
from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from ahri_core.config.base import load
from ahri_core.errors import ConfigError

from .options import (
    DynamicsPreset,
    PrecisionChoice,
    ThreadsOption,
    TokenizerPreset,
    check_square_size,
    setup_threads,
)
from .output import command_line, console, escape, info, out, quote_arg, result
from .progress import RichProgress, run_log
from .state import STATE


def demo(
    videos: Annotated[
        str | None,
        typer.Option("--videos", metavar="DIR|URL",
                     help="Your own videos instead of the built-in game: a folder (searched recursively), a video "
                          "file, or a channel, playlist or video URL. Without actions, latent actions are learnt."),
    ] = None,
    max_videos: Annotated[
        int | None, typer.Option("--max-videos", min=1, help="With --videos: import at most this many videos.")
    ] = None,
    minutes: Annotated[
        float | None, typer.Option("--minutes", help="Wall-clock budget of the whole demo. \\[default: 15]")
    ] = None,
    clips: Annotated[int | None, typer.Option("--clips", help="Built-in game clips to render. \\[default: 96]")] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="Seed of clips, training and sampling. \\[default: 0]")] = None,
    precision: Annotated[
        PrecisionChoice | None,
        typer.Option("--precision", help="Precision of every model: auto (chosen per machine and model), bf16 or fp32. \\[default: auto]"),
    ] = None,
    threads: ThreadsOption = None,
    # Smaller models and data for quick end-to-end checks; hidden from --help.
    tokenizer_preset: Annotated[TokenizerPreset | None, typer.Option("--tokenizer-preset", hidden=True)] = None,
    dynamics_preset: Annotated[DynamicsPreset | None, typer.Option("--dynamics-preset", hidden=True)] = None,
    frames: Annotated[int | None, typer.Option("--frames", hidden=True)] = None,
    size: Annotated[str | None, typer.Option("--size", hidden=True, callback=check_square_size)] = None,
    context: Annotated[int | None, typer.Option("--context", hidden=True)] = None,
    horizon: Annotated[int | None, typer.Option("--horizon", hidden=True)] = None,
    eval_clips: Annotated[int | None, typer.Option("--eval-clips", hidden=True)] = None,
    rollout_horizon: Annotated[int | None, typer.Option("--rollout-horizon", hidden=True)] = None,
) -> None:
    """The whole flow in one budget: game clips or --videos -> tokenizer -> latents -> dynamics -> eval.

    --videos takes your own (a folder or a channel URL) and ends with the command to play the model.
    After Ctrl-C the same command continues where it stopped.

    Example:  ahri demo --minutes 15
    (your videos:  ahri demo --videos ~/Videos/replays --minutes 60)
    """
    from ahri_core.config.settings import DemoSettings, FetchSettings
    from ahri_core.demo import STAGES, VIDEO_STAGES, run_demo

    if videos is None and max_videos is not None:
        raise ConfigError("--max-videos: only used with --videos")
    if videos is not None and (clips is not None or frames is not None):
        raise ConfigError(f"{'--clips' if clips is not None else '--frames'}: the built-in game's; "
                          "with --videos the flow takes your videos as they are")
    if videos is not None:
        from ahri_core.demo_videos import check_source

        videos = check_source(videos)  # a path made absolute: the same folder is the same flow from anywhere

    flags = dict(
        minutes=minutes, clips=clips, seed=seed,
        tokenizer_preset=tokenizer_preset.value if tokenizer_preset else None,
        dynamics_preset=dynamics_preset.value if dynamics_preset else None,
        precision=precision.value if precision else None,
        frames=frames, size=size, context=context, horizon=horizon, eval_clips=eval_clips,
        rollout_horizon=rollout_horizon,
    )
    s = load(DemoSettings, flags, STATE.config)
    ws = STATE.workspace
    fetch = load(FetchSettings, {"max_videos": max_videos}, STATE.config) if videos is not None else None
    n_threads = setup_threads(threads)
    log_path = ws.root / "logs" / f"demo-{datetime.now().strftime('%Y%m%d-%H%M%S')}.txt"
    before = _run_names(ws.runs)
    try:
        with run_log(log_path):
            what = f"{s.clips} game clips" if videos is None else f"videos from {escape(videos)}"
            info(
                f"ahri demo: {what}, budget {s.minutes:g} min, {n_threads} CPU threads, "
                f"workspace {escape(str(ws.root))}"
            )
            info("stages: " + " -> ".join(STAGES if videos is None else VIDEO_STAGES))
            try:
                with RichProgress(console) as progress:
                    res = run_demo(s, ws, progress, videos=videos, fetch=fetch)
            except KeyboardInterrupt:
                info(f"stopped; continue with the same command: {escape(_same_command())}")
                raise
            _report(res)
            _report_flow(res, s)
            result(f"log:      {log_path}")
    finally:
        _copy_log(log_path, ws.runs, before)


def _same_command() -> str:
    """The command line of this call, to run again."""
    return " ".join(["ahri", *(quote_arg(a) for a in STATE.argv)])


def _report_flow(res, s) -> None:  # noqa: ANN001 - ahri_core.demo.DemoResult, DemoSettings
    """Every stage's run or output, the held-out videos, and the commands to evaluate again and to play."""
    from ahri_core.config.settings import SamplingSettings

    sm = res.summary
    root = STATE.workspace.root
    t = Table(title="runs and outputs (in the workspace)")
    t.add_column("stage")
    t.add_column("run or output", overflow="fold")
    for stage, where in sm["stage_outputs"].items():
        shown = str(where or "-")
        # paths in the workspace as they sit in it: a table folds long cells, and a whole path is for copying
        with contextlib.suppress(ValueError):
            shown = str(Path(shown).relative_to(root)) if Path(shown).is_absolute() else shown
        t.add_row(stage, escape(shown))
    out.print(t)
    result(f"workspace: {root}")
    held = sm["held_out_videos"]
    shown = ", ".join(held[:12]) + (f", ... (all in {res.path.name})" if len(held) > 12 else "")
    out.print(f"held out: {len(held)} of {sm['videos']} videos: {shown}", highlight=False, markup=False)
    if sm["latent_actions"]:
        out.print("actions:  none in the videos; the model learnt latent actions from them", highlight=False)
    dyn = sm["dynamics"]["name"]
    ev = ["eval", dyn, *(a for k in s.steps for a in ("--steps", str(k))), "--context", str(s.context),
          "--horizon", str(s.horizon), "--clips", str(s.eval_clips)]
    play = ["play", dyn]
    d = load(SamplingSettings, {}, STATE.config)  # what play takes without flags
    if s.context != d.context:
        play += ["--context", str(s.context)]
    if [min(s.steps)] != d.steps:
        play += ["--steps", str(min(s.steps))]
    # one line each, never wrapped: they are to be copied as they are
    out.print(f"evaluate: {command_line(*ev)}", highlight=False, markup=False, soft_wrap=True)
    out.print(f"play:     {command_line(*play)}", highlight=False, markup=False, soft_wrap=True)


def _run_names(runs: Path) -> dict[str, float]:
    """Each run's name and the time its run.json last changed (0 without one)."""
    if not runs.is_dir():
        return {}
    found = {}
    for d in runs.iterdir():
        if d.is_dir():
            try:
                found[d.name] = (d / "run.json").stat().st_mtime
            except OSError:
                found[d.name] = 0.0
    return found


def _copy_log(log_path: Path, runs: Path, before: dict[str, float]) -> None:
    """Each run the demo created gets the demo's log as its log.txt; a run it continued (made by an earlier
    session of the flow) gets this session's log after its own."""
    if not log_path.is_file():
        return
    from ahri_core.fileio import atomic_path

    for name, changed in sorted(_run_names(runs).items()):
        if name in before and changed == before[name]:
            continue
        dest = runs / name / "log.txt"
        with contextlib.suppress(OSError), atomic_path(dest) as tmp:
            with open(tmp, "wb") as f:
                if name in before and dest.is_file():
                    f.write(dest.read_bytes())
                f.write(log_path.read_bytes())


def _report(res) -> None:  # noqa: ANN001 - ahri_core.demo.DemoResult
    sm = res.summary
    ev = sm["eval"]
    t = Table(title=f"ahri demo: {sm['minutes_used']:.1f} of {sm['minutes_budget']:g} minutes")
    t.add_column("stage")
    t.add_column("seconds", justify="right")
    for name, sec in sm["stage_seconds"].items():
        t.add_row(name, f"{sec:.0f}")
    out.print(t)
    q = Table(title=f"held-out clips ({ev['clips']}): PSNR averaged over horizons {ev['horizon_avg']}")
    q.add_column("")
    q.add_column("PSNR (dB)", justify="right")
    q.add_column("vs copy-last", justify="right")
    q.add_column("frames/s", justify="right")
    for name, v in ev["psnr"].items():
        gain = ev["gain_over_copy_last_db"][name]
        q.add_row(name, f"{v:.2f}", f"[{'green' if gain >= 1 else 'red'}]{gain:+.2f} dB[/]", f"{ev['frames_per_s'][name]:.1f}")
    q.add_row("[dim]copy last frame[/]", f"{ev['copy_last_psnr']:.2f}", "", "")
    q.add_row("[dim]tokenizer ceiling[/]", f"{ev['tokenizer_ceiling_psnr']:.2f}", "", "")
    out.print(q)
    tok = sm["tokenizer"]
    if tok.get("val_psnr") is not None:
        out.print(f"tokenizer held-out reconstruction: {tok['val_psnr']:.2f} dB", highlight=False)
    for k, ok in sm["acceptance"].items():
        out.print(f"{'[green]ok[/]' if ok else '[red]no[/]'}  {k.replace('_', ' ')}")
    result(f"eval:     {ev['dir']}")
    result(f"plot:     {ev['plot']}")
    for v in ev["videos"]:
        result(f"sample:   {v}")
    if sm.get("rollout"):
        result(f"rollout:  {sm['rollout']['out']}")
    result(f"summary:  {res.path}")


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)

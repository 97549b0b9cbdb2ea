"""``ahri demo``: render game clips, train, tokenize, train dynamics, evaluate and roll out, within a budget."""

from __future__ import annotations

import contextlib
import shutil
from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from ahri_core.config.base import load

from .options import (
    DynamicsPreset,
    PrecisionChoice,
    ThreadsOption,
    TokenizerPreset,
    check_square_size,
    setup_threads,
)
from .output import console, escape, info, out, result
from .progress import RichProgress, run_log
from .state import STATE


def demo(
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
    """The whole flow on this machine, no network: game clips -> tokenizer -> latents -> dynamics -> eval -> rollout.

    Example:  ahri demo --minutes 15
    """
    from ahri_core.config.settings import DemoSettings
    from ahri_core.demo import STAGES, run_demo

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
    n_threads = setup_threads(threads)
    log_path = ws.root / "logs" / f"demo-{datetime.now().strftime('%Y%m%d-%H%M%S')}.txt"
    before = _run_names(ws.runs)
    try:
        with run_log(log_path):
            info(
                f"ahri demo: {s.clips} game clips, budget {s.minutes:g} min, {n_threads} CPU threads, "
                f"workspace {escape(str(ws.root))}"
            )
            info("stages: " + " -> ".join(STAGES))
            with RichProgress(console) as progress:
                res = run_demo(s, ws, progress)
            _report(res)
            result(f"log:      {log_path}")
    finally:
        _copy_log(log_path, ws.runs, before)


def _run_names(runs: Path) -> set[str]:
    return {d.name for d in runs.iterdir() if d.is_dir()} if runs.is_dir() else set()


def _copy_log(log_path: Path, runs: Path, before: set[str]) -> None:
    """Each run the demo created gets the demo's log as its log.txt."""
    if not log_path.is_file():
        return
    from ahri_core.fileio import atomic_path

    for name in sorted(_run_names(runs) - before):
        dest = runs / name / "log.txt"
        with contextlib.suppress(OSError), atomic_path(dest) as tmp:
            shutil.copyfile(log_path, tmp)


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

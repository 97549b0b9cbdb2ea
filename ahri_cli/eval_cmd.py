"""``ahri eval``: rollouts on held-out videos in pixel space, next to copy-last-frame and the tokenizer ceiling."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from ahri_core.config.base import load
from ahri_core.config.settings import SamplingSettings
from ahri_core.errors import ConfigError

from .options import (
    DeviceOption,
    PrecisionChoice,
    PrecisionOption,
    RunOption,
    TauCtxOption,
    ThreadsOption,
    TokenizerOption,
    either,
    existing_path,
    renamed,
    run_argument,
    run_or_path,
    setup_threads,
)
from .output import console, escape, info, out, result
from .progress import RichProgress
from .state import STATE


def _pm(block: dict[str, Any], i: int, fmt: str = "{:.2f}") -> str:
    m, c = block["mean"][i], block["ci95"][i]
    s = fmt.format(m)
    return s if c != c else f"{s} ± {fmt.format(c)}"  # c != c: NaN (one clip)


def horizon_table(metrics: dict[str, Any], metric: str = "psnr") -> Table:
    """One row per horizon step: each step count, copy-last-frame and the tokenizer ceiling."""
    steps = list(metrics["steps"])
    unit = " (dB)" if metric == "psnr" else ""
    where = "held-out" if metrics.get("split", "val") == "val" else "TRAINING"
    t = Table(title=f"{metric.upper()}{unit} per horizon step: mean ± 95% interval over {metrics['clip_count']} {where} clips")
    t.add_column("h", justify="right")
    for k in steps:
        t.add_column(f"{k} steps", justify="right")
    t.add_column("copy last", justify="right", style="dim")
    t.add_column("tokenizer ceiling", justify="right", style="dim")
    fmt = "{:.2f}" if metric == "psnr" else "{:.3f}" if metric == "ssim" else "{:.4f}"
    for i in range(metrics["settings"]["horizon"]):
        row = [str(i + 1)]
        row += [_pm(metrics["steps"][k][metric], i, fmt) for k in steps]
        row += [_pm(metrics["baselines"]["copy_last"][metric], i, fmt)]
        row += [_pm(metrics["baselines"]["tokenizer_ceiling"][metric], i, fmt)]
        t.add_row(*row)
    return t


def summary_table(metrics: dict[str, Any]) -> Table:
    s = metrics["summary"]
    near = next(k for k in s if k.startswith("psnr_h1_")).split("_")[-1]
    H = metrics["settings"]["horizon"]
    t = Table(title="averages over horizon steps")
    for col in (
        "",
        f"PSNR h1-{near}",
        f"PSNR h1-{H}",
        f"SSIM h1-{near}",
        f"vs copy-last h1-{near}",
        "latent MSE",
        "frames/s",
    ):
        t.add_column(col, justify="right" if col else "left")
    copy = s[f"psnr_h1_{near}"]["copy_last"]
    for k, block in metrics["steps"].items():
        name = f"steps_{k}"
        lat = sum(block["latent_mse"]["mean"]) / len(block["latent_mse"]["mean"])
        gain = s[f"psnr_h1_{near}"][name] - copy
        fps = block.get("frames_per_s")
        t.add_row(
            f"{k} steps",
            f"{s[f'psnr_h1_{near}'][name]:.2f}",
            f"{s[f'psnr_h1_{H}'][name]:.2f}",
            f"{s[f'ssim_h1_{near}'][name]:.3f}",
            f"[{'green' if gain >= 0 else 'red'}]{gain:+.2f} dB[/]",
            f"{lat:.4f}",
            f"{fps:.1f}" if fps else "-",
        )
    for name, label in (("copy_last", "copy last"), ("tokenizer_ceiling", "ceiling")):
        t.add_row(
            f"[dim]{label}[/]",
            f"{s[f'psnr_h1_{near}'][name]:.2f}",
            f"{s[f'psnr_h1_{H}'][name]:.2f}",
            f"{s[f'ssim_h1_{near}'][name]:.3f}",
            "",
            "",
            "",
        )
    return t


def detail_table(metrics: dict[str, Any]) -> Table | None:
    """What did not move, and how sharp: PSNR on the pixels unchanged since the last context frame, and the
    high-frequency energy relative to the tokenizer ceiling, at a few horizon steps."""
    st, sh = metrics.get("static_region"), metrics.get("sharpness")
    if not st or not sh:
        return None
    H = metrics["settings"]["horizon"]
    hs = [h for h in (1, 4, 16) if h <= H] or [H]
    t = Table(title="what did not move (PSNR on unchanged pixels) and sharpness (vs ceiling, 1 = as sharp)")
    t.add_column("")
    for h in hs:
        t.add_column(f"static h{h}", justify="right")
    for h in hs:
        t.add_column(f"sharp h{h}", justify="right")

    def cell(v: float | None, fmt: str) -> str:
        return "-" if v is None else format(v, fmt)

    names = [f"steps_{k}" for k in metrics["steps"]] + ["copy_last", "tokenizer_ceiling"]
    labels = {"copy_last": "[dim]copy last[/]", "tokenizer_ceiling": "[dim]ceiling[/]"}
    for name in names:
        row = [labels.get(name, name.replace("steps_", "") + " steps")]
        row += [cell(st["psnr"][name][h - 1], ".2f") for h in hs]
        row += [cell(sh["ratio"][name][h - 1], ".2f") for h in hs]
        t.add_row(*row)
    t.add_row("[dim]unchanged share[/]", *[f"{st['fraction'][h - 1]:.0%}" for h in hs], *[""] * len(hs))
    return t


MEMORISING = 1.5  # held-out / training error ratio above which eval warns (docs/evaluation.md)


def probe_table(metrics: dict[str, Any]) -> Table | None:
    """Does the model use its context? Context sensitivity and teacher-forced next-frame latent MSE."""
    p = metrics.get("probes")
    if not p:
        return None
    t = Table(title="does the model use its context? (latent space)")
    t.add_column("probe")
    t.add_column("value", justify="right")
    t.add_column("reads", style="dim")
    c = p.get("context") or {}
    if "sensitivity" in c:
        t.add_row(f"context sensitivity ({c['steps']} steps)", f"{c['sensitivity']:.2f}", "0 ignores, 1 follows")
        t.add_row("  share from frames before last", f"{c['history_share']:.2f}", "0: last frame only")
        t.add_row("PSNR h1 drop, other clip's context", f"{c['psnr_drop_db']:+.2f} dB", "large: context used")
    elif c.get("skipped"):
        t.add_row("context sensitivity", "-", "needs 2+ clips")
    tf = p["teacher_forced"]
    a = tf["all_h"]
    t.add_row("next-frame MSE, teacher-forced", f"{a['model']:.4f}", "1 step, true context")
    for k, block in metrics.get("steps", {}).items():
        t.add_row(f"  rollout h1, {k} steps (sampled)", f"{block['latent_mse']['mean'][0]:.4f}", "")
    t.add_row("  copy last frame", f"{a['copy_last']:.4f}", "")
    t.add_row("  mean latent", f"{a['mean_latent']:.4f}", tf["mean_latent_from"].split(" (")[0])
    t.add_row("  skill vs copy last", f"{tf['skill_vs_copy_last']:+.2f}", "1 - model / copy")
    act = p.get("actions")
    if act:
        t.add_row("action use", f"{act['use']:+.2f}", "0: actions ignored")
        ro = act.get("rollout")
        if ro:
            t.add_row(f"  rollout, other clip's ({ro['steps']} steps)", f"{ro['gain_db_h1_16']:+.2f} dB",
                      "PSNR h1-16 lost; 0: ignored")
    mem = p.get("memorisation") or {}
    if "gap" in mem:
        t.add_row("error / copy last, held-out", f"{mem['held_out']['relative']:.2f}", "teacher-forced")
        t.add_row("  on training clips", f"{mem['train']['relative']:.2f}", "")
        gap = mem["gap"]
        t.add_row("  memorising gap", f"{gap:.1f}x" if math.isfinite(gap) else "-", "1: none; >1.5: more video")
    elif mem.get("skipped"):
        t.add_row("memorising gap", "-", "not the run's training data")
    return t


def memorisation_hint(metrics: dict[str, Any]) -> str | None:
    """One line for the user when the run predicts its training clips much better than new video."""
    mem = (metrics.get("probes") or {}).get("memorisation") or {}
    gap = mem.get("gap")
    if gap is None or not gap > MEMORISING:
        return None
    if gap > 2:
        how = ("Twice the video is likely to help more than more steps: on a side-scroller, at the same steps, twice "
               "the footage took a gap of 2.4x to 1.4x and gained 1.0 dB over horizons 1-16")
    else:
        how = ("More video should still help, less than at a larger gap: on a side-scroller, at the same steps, 1.8x "
               "the footage took a gap of 1.4x to 1.2x and gained 0.2 dB over horizons 1-16")
    return (f"The model predicts its training clips {gap:.1f}x better than held-out video (relative to copy-last): "
            f"it is likely memorising them (or the held-out video differs in kind). {how} (docs/own-game.md).")


def latent_action_table(metrics: dict[str, Any]) -> Table | None:
    """A latent-action run: PSNR per horizon step with the inferred, random and no latent actions, and the gains."""
    la = metrics.get("latent_actions")
    if not la:
        return None
    codes = la.get("codes")
    t = Table(title=f"latent actions ({codes} codes)" if codes else "latent actions (continuous)", show_header=True)
    t.add_column("h", justify="right")
    for name in ("inferred", "random", "no action", "inferred - random", "inferred - no action"):
        t.add_column(name, justify="right")
    blocks = [la["psnr_inferred"], la["psnr_random"], la["psnr_no_action"], la["gain_over_random_db"],
              la["gain_over_no_action_db"]]
    for i in range(len(la["psnr_inferred"]["mean"])):
        t.add_row(str(i + 1), *[_pm(b, i) for b in blocks])
    return t


def eval_(
    run: Annotated[
        str | None,
        typer.Argument(help="Dynamics run (name in the workspace or path). Default: the latest finished one."),
    ] = None,
    latents: Annotated[
        Path | None,
        typer.Option("--latents", help="Latent set (folder with index.json); its val split is used. Default: the run's."),
    ] = None,
    run_option: RunOption = None,
    context: Annotated[int | None, typer.Option("--context", help="Context frames. \\[default: 16]")] = None,
    horizon: Annotated[int | None, typer.Option("--horizon", help="Frames to predict. \\[default: 16]")] = None,
    steps: Annotated[
        list[int] | None,
        typer.Option("--steps", help="Denoising steps per frame, a power of two; repeat for several. \\[default: 4]"),
    ] = None,
    tau_ctx: TauCtxOption = None,
    clips: Annotated[int | None, typer.Option("--clips", help="Held-out clips to evaluate. \\[default: 8]")] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="Seed of clip choice and sampling. \\[default: 0]")] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size", help="Clips per rollout batch. \\[default: 8]")] = None,
    tokenizer: TokenizerOption = None,
    out_dir: Annotated[Path | None, typer.Option("--out", help="Output folder. \\[default: <run>/eval/<id>]")] = None,
    samples: Annotated[int, typer.Option("--samples", help="Side-by-side mp4s to write.", min=0)] = 2,
    split: Annotated[
        str, typer.Option("--split", help="val (held-out videos) or train (to measure the train/val gap).")
    ] = "val",
    probes: Annotated[
        bool, typer.Option("--probes/--no-probes", help="Context sensitivity, teacher-forced next-frame MSE, action use and memorising.")
    ] = True,
    device: DeviceOption = "auto",
    precision: PrecisionOption = PrecisionChoice.auto,
    threads: ThreadsOption = None,
    data: Annotated[Path | None, typer.Option("--data", hidden=True, callback=renamed("--data", "--latents"))] = None,
) -> None:
    """Evaluate a dynamics run on held-out videos: PSNR/SSIM/MSE per horizon step against baselines.

    Example:  ahri eval dynamics-20250101-120000 --steps 4 --steps 64 --clips 16
    """
    from ahri_core.eval.evaluate import evaluate
    from ahri_core.inference.world import latest_dynamics_run, load_world_model
    from ahri_core.runtime import resolve_device

    flags = dict(
        context=context, horizon=horizon, steps=steps or None, tau_ctx=tau_ctx, clips=clips, seed=seed,
        batch_size=batch_size,
    )
    settings = load(SamplingSettings, flags, STATE.config)
    if split not in ("val", "train"):
        raise ConfigError(f"--split {split!r}: allowed val, train")
    run = run_argument(run, run_option)
    data = existing_path(either(latents, data, "--latents", "--data"), "--latents" if latents is not None else "--data",
                         "latent set folder")
    tok = run_or_path(tokenizer, "--tokenizer")
    ws = STATE.workspace
    if run is None:
        try:
            latest_dynamics_run(ws)
        except ConfigError:
            raise ConfigError(
                f"no finished dynamics run in {ws.runs}; train one (ahri train) or name one: ahri eval RUN"
            ) from None
    setup_threads(threads)
    dev = resolve_device(device or "auto")
    world = load_world_model(run, ws, tokenizer=tok, device=dev)
    info(
        f"evaluating [bold]{escape(world.name)}[/] (k_max {world.traits.k_max}, shortcut {world.traits.shortcut}) "
        f"with steps {settings.steps}, context {settings.context}, horizon {settings.horizon}, "
        f"tau_ctx {settings.tau_ctx:g}"
    )
    with RichProgress(console) as progress:
        report = evaluate(
            world, data, settings, out_dir=out_dir, workspace=ws, samples=samples,
            precision=precision.value, progress=progress, split=split, probes=probes,
        )
    m = report.metrics
    chosen = m.get("precision")
    if isinstance(chosen, dict) and chosen.get("precision"):
        info(escape(f"precision {chosen['precision']} ({chosen.get('reason', '')})"))
    out.print(horizon_table(m, "psnr"))
    out.print(summary_table(m))
    dt = detail_table(m)
    if dt is not None:
        out.print(dt)
    pt = probe_table(m)
    if pt is not None:
        out.print(pt)
    lt = latent_action_table(m)
    if lt is not None:
        out.print(lt)
    hint = memorisation_hint(m)
    if hint:
        console.print(f"[yellow]note:[/] {escape(hint)}", highlight=False)
    if m["truth"] != "video frames":
        console.print(f"[yellow]note:[/] compared against {escape(str(m['truth']))}", highlight=False)
    result(f"metrics: {report.metrics_path}")
    result(f"plot:    {m['files']['plot']}")
    for v in m["files"]["videos"]:
        result(f"video:   {v}")


def register(app: typer.Typer) -> None:
    app.command("eval")(eval_)

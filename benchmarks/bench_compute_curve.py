"""What more compute buys: rollout PSNR against training minutes and model width, for one game.

Works in a game workspace that ``bench_atari.py`` made (its tokenizer ``runs/tok`` and latent set
``latents/tok``). For each budget in ``--minutes`` a dynamics run is trained with the README's recipe (preset
``cpu``, ``--alternating --long-ratio 0.1``, seed 0, the library's defaults otherwise); for each width in
``--dims`` one more run at ``--size-minutes``, its width set through ``[model] dim`` (the same model as
``ahri train --dim N``). A finished run of the same name is reused, and so is
bench_atari's own ``runs/dyn`` for the budget it was trained with. Every run is then scored by
``ahri_core.eval.evaluate.evaluate`` on the same held-out windows (seed 0): PSNR by horizon for 4 sampling steps
against copy-last and the tokenizer ceiling, and the teacher-forced next-frame probe.

Runs one after another on every core (the budgets are wall-clock minutes, so nothing else should run).

Example (a Breakout workspace of bench_atari, about 50 minutes on 2 cores):
    python benchmarks/bench_compute_curve.py --game-work /tmp/ahri-atari/breakout --minutes 10 20 40 \\
        --dims 64 256 --size-minutes 10
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ahri_core.config.presets import DYNAMICS_PRESETS
from ahri_core.runtime import cpu_name

HERE = Path(__file__).resolve().parent


def finished(run: Path) -> dict | None:
    meta = run / "run.json"
    if not meta.is_file():
        return None
    m = json.loads(meta.read_text())
    return m if m.get("status") == "finished" else None


def check_reusable(run: Path, minutes: float, dim: int | None, seed: int) -> None:
    """A finished run is reused only when it was trained the way this bench would train it."""
    meta = finished(run) or {}
    s = meta.get("settings", {})
    t, d = s.get("train", {}) or {}, s.get("data", {}) or {}
    want = {"preset": "cpu", "minutes": minutes, "seed": seed, "alternating": True, "long_ratio": 0.1,
            "dim": dim or DYNAMICS_PRESETS["cpu"]["dim"]}
    have = {"preset": t.get("preset"), "minutes": t.get("minutes"), "seed": t.get("seed"),
            "alternating": d.get("alternating"), "long_ratio": d.get("long_ratio"),
            "dim": (meta.get("model") or {}).get("dim")}
    diff = [f"{k} {have[k]!r} (wanted {want[k]!r})" for k in want if have[k] != want[k]]
    if diff:
        raise SystemExit(f"{run} was trained another way: {', '.join(diff)}; remove it or use another --game-work")


def train_run(run: Path, latents: Path, minutes: float, dim: int | None, seed: int) -> None:
    from ahri_core.config.settings import DataSettings, DiffusionSettings, ModelSettings, TrainSettings
    from ahri_core.train.dynamics import train_dynamics

    if finished(run) is None:  # new, or stopped part way (then continued with the same budget)
        # eager steps, as in the recorded curve (--compile auto would compile the longer budgets only)
        train = TrainSettings(preset="cpu", minutes=minutes, seed=seed, resume=(run / "run.json").is_file(),
                              compile="off")
        data = DataSettings(alternating=True, long_ratio=0.1)
        model = ModelSettings(dim=dim)  # what `ahri train --dim N` builds
        model.shape(train.preset)
        train_dynamics(latents, run, train, data, DiffusionSettings(), model_overrides=model.overrides() or None)
        if finished(run) is None:  # stopped (SIGTERM, Ctrl-C): score nothing half-trained
            raise SystemExit(f"{run} was stopped before its {minutes:g} minutes; run the same command again to continue it")


def score(ws, run: Path, args: argparse.Namespace) -> dict:
    from ahri_core.config.settings import SamplingSettings
    from ahri_core.eval.evaluate import evaluate
    from ahri_core.inference.world import load_world_model
    from ahri_core.models.dynamics import param_count

    world = load_world_model(run, ws, tokenizer=str(Path(args.game_work) / "runs" / "tok"))
    s = SamplingSettings(steps=[4], horizon=args.horizon, clips=args.clips, seed=0)
    out = run / "curve-eval"
    evaluate(world, Path(args.game_work) / "latents" / "tok", s, out_dir=out, workspace=ws, samples=0)
    m = json.loads((out / "metrics.json").read_text())
    meta = finished(run) or {}
    tf = ((m.get("probes") or {}).get("teacher_forced") or {}).get("all_h", {})
    return {
        "run": run.name,
        "minutes": (meta.get("settings", {}).get("train", {}) or {}).get("minutes"),
        "dim": world.dynamics.config.dim,
        "params": param_count(world.dynamics),
        "pack": world.dynamics.config.pack,
        "steps": meta.get("step"),
        "train_seconds": meta.get("seconds"),
        "threads": meta.get("threads"),
        "precision": (meta.get("precision") or {}).get("precision"),
        "psnr_mean": m["summary"][f"psnr_h1_{args.horizon}"],  # over h = 1..horizon
        "psnr_by_h": {"copy_last": m["baselines"]["copy_last"]["psnr"]["mean"],
                      "tokenizer_ceiling": m["baselines"]["tokenizer_ceiling"]["psnr"]["mean"],
                      "steps_4": m["steps"]["4"]["psnr"]["mean"]},
        "teacher_forced": tf,
        "clips": m["clip_count"],
    }


def table(rows: list[dict]) -> str:
    lines = ["| run | width | parameters | minutes | steps | 4 steps, h 1-H | gain over copy-last | h = 1 (copy-last) |"
             " teacher-forced MSE |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        p = r["psnr_mean"]
        h1, c1 = r["psnr_by_h"]["steps_4"][0], r["psnr_by_h"]["copy_last"][0]
        tf = r["teacher_forced"].get("model") if isinstance(r["teacher_forced"], dict) else None
        lines.append(f"| {r['run']} | {r['dim']} | {r['params']:,} | {r['minutes'] or 0:g} | {r['steps'] or 0:,} | "
                     f"{p['steps_4']:.2f} | {p['steps_4'] - p['copy_last']:+.2f} | {h1:.2f} ({c1:.2f}) | "
                     + (f"{tf:.4f} |" if isinstance(tf, (int, float)) else "|"))
    return "\n".join(lines)


def main() -> None:
    from ahri_core.runtime import apply_threads
    from ahri_core.workspace import Workspace

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--game-work", required=True, help="a game workspace of bench_atari.py (runs/tok, latents/tok)")
    ap.add_argument("--minutes", type=float, nargs="*", default=[10, 20, 40, 80])
    ap.add_argument("--dims", type=int, nargs="*", default=[64, 256], help="other model widths (cpu preset: 128)")
    ap.add_argument("--size-minutes", type=float, default=10, help="budget of the width runs")
    ap.add_argument("--clips", type=int, default=16)
    ap.add_argument("--horizon", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=str(HERE / "results" / "compute_curve.json"))
    args = ap.parse_args()
    game = Path(args.game_work)
    latents = game / "latents" / "tok"
    if not (latents / "index.json").is_file() or finished(game / "runs" / "tok") is None:
        raise SystemExit(f"{game}: no finished tokenizer run (runs/tok) and latent set (latents/tok); run bench_atari.py first")
    ws = Workspace(game)
    apply_threads()  # every core, as `ahri train` does
    plan: list[tuple[Path, float, int | None]] = []
    dyn = finished(game / "runs" / "dyn")
    for m in args.minutes:
        if dyn is not None and (dyn.get("settings", {}).get("train", {}) or {}).get("minutes") == m:
            plan.append((game / "runs" / "dyn", m, None))
        else:
            plan.append((game / "runs" / f"curve-{m:g}m", m, None))
    plan += [(game / "runs" / f"curve-dim{d}-{args.size_minutes:g}m", args.size_minutes, d) for d in args.dims]
    rows = []
    for run, minutes, dim in plan:  # before any training: a run made another way stops the bench at once
        if finished(run) is not None:
            check_reusable(run, minutes, dim, args.seed)
    for run, minutes, dim in plan:
        train_run(run, latents, minutes, dim, args.seed)
        rows.append(score(ws, run, args))
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"cpu": cpu_name(), "settings": vars(args), "runs": rows}, indent=1))
        r = rows[-1]
        print(f"{run.name}: {r['steps']} steps, 4 steps h1-{args.horizon} {r['psnr_mean']['steps_4']:.2f} "
              f"(copy-last {r['psnr_mean']['copy_last']:.2f})", flush=True)
    print(f"\n{cpu_name()}\n")
    print(table(rows))


if __name__ == "__main__":
    main()

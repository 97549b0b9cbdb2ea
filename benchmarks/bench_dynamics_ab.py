"""Dynamics variants against each other on the same latent set, the same steps and the same held-out windows.

Each arm trains a dynamics model for ``--max-steps`` optimizer steps (equal steps, not equal minutes, so a
machine shared with other work does not decide the outcome; the seconds are reported too) with the preset's
defaults plus the arm's overrides, then ``ahri_core.eval.evaluate.evaluate`` scores it on the same held-out clips
(seed fixed): PSNR per horizon for 1 and 4 sampling steps against copy-last and the tokenizer ceiling, and
the probes (teacher-forced next-frame latent MSE against copy-last and the mean latent; context sensitivity).

An arm is ``name`` plus JSON objects of overrides: ``model`` (DynamicsConfig fields, e.g. {"registers": 8}
or {"temporal_every": 2}), ``diffusion`` (DiffusionSettings), ``data`` (DataSettings), ``train``
(TrainSettings).

Example:
    python benchmarks/bench_dynamics_ab.py --latents WS/latents/tok --tokenizer WS/runs/tok --max-steps 1500 \\
        --arm base '{}' --arm reg8 '{"model": {"registers": 8}}' --arm t2 '{"model": {"temporal_every": 2}}'
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from ahri_core.runtime import cpu_name

HERE = Path(__file__).resolve().parent




def run_arm(name: str, spec: dict, args: argparse.Namespace) -> dict:
    from ahri_core.config.settings import DataSettings, DiffusionSettings, SamplingSettings, TrainSettings
    from ahri_core.eval.evaluate import evaluate
    from ahri_core.inference.world import load_world_model
    from ahri_core.train.dynamics import train_dynamics
    from ahri_core.workspace import Workspace

    ws = Workspace(Path(args.work))
    run = ws.run_dir(name)
    # eager unless an arm asks: the arms' minutes are compared, and a compile trial would time only some of them
    train = TrainSettings(preset=args.preset, max_steps=args.max_steps, seed=args.seed, precision=args.precision,
                          val_every=max(args.max_steps // 2, 1), **{"compile": "off", **spec.get("train", {})})
    data = DataSettings(**{"alternating": True, "long_ratio": 0.1, **spec.get("data", {})})
    diffusion = DiffusionSettings(**spec.get("diffusion", {}))
    t0 = time.perf_counter()
    if not (run / "run.json").is_file() or json.loads((run / "run.json").read_text()).get("status") != "finished":
        train_dynamics(args.latents, run, train, data, diffusion, model_overrides=spec.get("model") or None)
    seconds = time.perf_counter() - t0
    world = load_world_model(run, ws, tokenizer=args.tokenizer)
    s = SamplingSettings(steps=[1, 4], context=args.context, horizon=args.horizon, clips=args.clips, seed=0)
    rep = evaluate(world, args.latents, s, out_dir=run / "ab-eval", workspace=ws, samples=0, precision=args.precision)
    m = json.loads((run / "ab-eval" / "metrics.json").read_text())
    tf = (m.get("probes") or {}).get("teacher_forced", {}).get("all_h", {})
    ctx = (m.get("probes") or {}).get("context", {})
    near = min(8, args.horizon)
    return {
        "arm": name, "spec": spec, "train_seconds": seconds, "clips": m["clip_count"],
        "psnr": {k: m["summary"][f"psnr_h1_{args.horizon}"][k] for k in m["summary"][f"psnr_h1_{args.horizon}"]},
        f"psnr_h1_{near}": m["summary"][f"psnr_h1_{near}"],
        "psnr_by_h": {"copy_last": m["baselines"]["copy_last"]["psnr"]["mean"],
                      **{f"steps_{k}": m["steps"][k]["psnr"]["mean"] for k in m["steps"]}},
        "teacher_forced": tf, "sensitivity": ctx.get("sensitivity"), "report": str(rep) if rep is None else None,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--latents", required=True)
    ap.add_argument("--tokenizer", required=True, help="the tokenizer run or weights that made the latents")
    ap.add_argument("--work", default="/tmp/ahri-ab", help="workspace for the arms' runs (reused)")
    ap.add_argument("--arm", nargs=2, action="append", metavar=("NAME", "JSON"), required=True)
    ap.add_argument("--preset", default="cpu")
    ap.add_argument("--max-steps", type=int, default=1500)
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--context", type=int, default=16)
    ap.add_argument("--horizon", type=int, default=16)
    ap.add_argument("--clips", type=int, default=32)
    ap.add_argument("--json", default=str(HERE / "results" / "dynamics_ab.json"))
    args = ap.parse_args()
    rows = []
    for name, spec in args.arm:
        rows.append(run_arm(name, json.loads(spec), args))
        Path(args.json).write_text(json.dumps({"cpu": cpu_name(), "settings": vars(args), "arms": rows}, indent=1))
        r = rows[-1]
        print(f"{name}: {r['train_seconds'] / 60:.1f} min; PSNR h1-{args.horizon}: "
              + ", ".join(f"{k} {v:.2f}" for k, v in r["psnr"].items())
              + f"; teacher-forced MSE {r['teacher_forced']}", flush=True)
    print(cpu_name())


if __name__ == "__main__":
    main()

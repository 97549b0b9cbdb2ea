"""Two versions of the code, one training step each, side by side in one run: is a change faster?

    python benchmarks/bench_step_ab.py --old HEAD~1                  # the previous commit against the working tree
    python benchmarks/bench_step_ab.py --old main --rounds 6 --out results/ab.json

The old version is exported with ``git archive`` into a temporary folder. Every round starts one fresh process per
version (the order alternates between rounds, so a neighbour's burst or a warming CPU falls on both), and each
process times ``ahri train``'s own step (``bench_runtime.dynamics_step`` / ``tokenizer_step`` of *its* tree: the
``cpu`` presets at the demo's shapes) in each precision: a few warm-up steps, then the median of ``--steps`` steps.
The table gives, per version, the median over rounds of those medians and the best single step; the speed-up is
new over old. Eager steps only: a compiled step's start-up is minutes and is measured in the run (``--compile``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

CHILD = r"""
import json, os, sys, time, torch
import ahri_core
assert ahri_core.__file__.startswith(os.getcwd()), f"imported {ahri_core.__file__}, not the tree in {os.getcwd()}"
torch.set_num_threads(int(sys.argv[1]))
from bench_runtime import dynamics_step, tokenizer_step
makers = {"dynamics": dynamics_step, "tokenizer": tokenizer_step}
out = {}
for name in sys.argv[4].split(","):
    step, frames = makers[name]()
    for p in sys.argv[5].split(","):
        for _ in range(int(sys.argv[3])):
            step(p)
        ts = []
        for _ in range(int(sys.argv[2])):
            t = time.perf_counter(); step(p); ts.append(time.perf_counter() - t)
        ts.sort()
        out[f"{name} {p}"] = {"median_s": ts[len(ts) // 2], "best_s": ts[0], "frames": frames}
print("RESULT " + json.dumps(out))
"""


def export(ref: str, dest: Path) -> Path:
    """The tree of ``ref`` (a commit, branch or tag of this repository) under ``dest``."""
    archive = subprocess.run(["git", "-C", str(REPO), "archive", "--format=tar", ref], check=True, capture_output=True)
    dest.mkdir(parents=True, exist_ok=True)
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
    return dest


def measure(tree: Path, args: argparse.Namespace) -> dict:
    env = {**os.environ, "PYTHONPATH": f"{tree}:{tree / 'benchmarks'}"}
    cmd = [sys.executable, "-c", CHILD, str(args.threads), str(args.steps), str(args.warmup), ",".join(args.models),
           ",".join(args.precisions)]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=tree)
    line = [ln for ln in res.stdout.splitlines() if ln.startswith("RESULT ")]
    if res.returncode or not line:
        raise SystemExit(f"the step of {tree} failed:\n{res.stderr[-2000:]}")
    return json.loads(line[-1][len("RESULT "):])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--old", required=True, help="git ref of the version to compare against (e.g. HEAD~1, main)")
    ap.add_argument("--new", default=None, help="git ref of the new version (default: the working tree)")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--steps", type=int, default=15, help="timed steps per process and cell")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--models", nargs="+", default=["dynamics", "tokenizer"], choices=["dynamics", "tokenizer"])
    ap.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    ap.add_argument("--out", type=Path, default=None, help="JSON file to write")
    args = ap.parse_args(argv)

    sys.path.insert(0, str(REPO))
    from ahri_core import runtime

    machine = runtime.describe()
    with tempfile.TemporaryDirectory(prefix="ahri-ab-") as tmp:
        trees = {"old": export(args.old, Path(tmp) / "old"),
                 "new": export(args.new, Path(tmp) / "new") if args.new else REPO}
        runs: dict[str, list[dict]] = {"old": [], "new": []}
        for r in range(args.rounds):
            order = ["old", "new"] if r % 2 == 0 else ["new", "old"]
            for name in order:
                runs[name].append(measure(trees[name], args))
            print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)
    cells = list(runs["old"][0])
    table = {}
    print(f"CPU: {machine['cpu']} ({machine['capability']}), torch {machine['torch']}, {args.threads} threads; "
          f"old {args.old}, new {args.new or 'working tree'}; {args.rounds} rounds")
    print(f"{'step':<20} {'old ms (best)':>14} {'new ms (best)':>14} {'new/old speed':>14} {'frames/s new':>13}")
    for c in cells:
        row = {}
        for name in ("old", "new"):
            med = statistics.median(run[c]["median_s"] for run in runs[name])
            best = min(run[c]["best_s"] for run in runs[name])
            row[name] = {"median_ms": med * 1e3, "best_ms": best * 1e3, "frames_per_s": runs[name][0][c]["frames"] / med}
        row["speedup"] = row["old"]["median_ms"] / row["new"]["median_ms"]
        table[c] = row
        print(f"{c:<20} {row['old']['median_ms']:>7.0f} ({row['old']['best_ms']:.0f}) "
              f"{row['new']['median_ms']:>7.0f} ({row['new']['best_ms']:.0f}) {row['speedup']:>13.2f}x "
              f"{row['new']['frames_per_s']:>13.0f}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"machine": machine, "date": datetime.now().isoformat(timespec="seconds"),
                                        "old": args.old, "new": args.new or "working tree", "threads": args.threads,
                                        "rounds": args.rounds, "cells": table, "runs": runs}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Atari games through the whole flow at their native aspect (210x160) and rate (15 fps), as a user runs it.

For each game: ``ahri fetch --source gym`` (sticky-random policy, actions and their meanings kept), a tokenizer
(``--preset cpu``, shaped to the game's aspect), ``ahri tokenize``, a dynamics run with the README's recipe
(``--alternating --long-ratio 0.1``), and ``ahri eval`` on the held-out videos with 4 and 64 sampling steps.
Everything runs through the installed ``ahri`` executable with its defaults otherwise; each game gets its own
workspace under ``--work`` (reused: a stage whose output exists is skipped, so a run can be continued).

Writes ``results/atari.json`` (per game: tokenizer held-out PSNR, the frame shape, PSNR by horizon for copy-last,
the tokenizer ceiling, 4 and 64 steps, and the teacher-forced probe) and prints a markdown table for
docs/benchmarks.md.

The defaults are the dynamics-quality target's budget: 40 clips of 400 frames (with 10, the models memorised
their clips: docs/dynamics.md, "Memorising"), tokenizer 20 and dynamics 40 minutes, about an hour a game on
2 cores. ``--games game`` puts the built-in game (64x64) through the same recipe and budget. A quick look at a
quarter of it:
    python benchmarks/bench_atari.py --games Pong Breakout --tokenizer-minutes 5 --dynamics-minutes 10
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from ahri_core.runtime import cpu_name

HERE = Path(__file__).resolve().parent
DEFAULT_JSON = HERE / "results" / "atari.json"
BUILTIN = "game"  # --games game: the built-in game instead of an Atari one




def ahri(*args: str, log: Path) -> None:
    exe = shutil.which("ahri") or str(Path(sys.executable).with_name("ahri"))
    t = time.perf_counter()
    with open(log, "a") as f:
        f.write(f"$ ahri {' '.join(args)}\n")
        f.flush()
        p = subprocess.run([exe, *args], stdout=f, stderr=subprocess.STDOUT, check=False)
    if p.returncode != 0:
        raise SystemExit(f"ahri {' '.join(args)} failed with exit code {p.returncode}; see {log}")
    print(f"  ahri {args[2] if len(args) > 2 else ''} {args[3] if len(args) > 3 else ''}... {time.perf_counter() - t:.0f}s",
          flush=True)


def last_val(run: Path) -> dict:
    rec: dict = {}
    for line in (run / "metrics.jsonl").read_text().splitlines():
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            continue
        if r.get("kind") == "val":
            rec = r
    return rec


def one_game(game: str, args: argparse.Namespace) -> dict:
    ws = Path(args.work) / game.lower()
    log = ws / "log.txt"
    ws.mkdir(parents=True, exist_ok=True)
    W = ["-w", str(ws)]
    t0 = time.perf_counter()
    have = list((ws / "videos").rglob("*.mp4"))
    if have and len(have) != args.clips:  # a workspace of another size would be scored under these settings
        raise SystemExit(f"{ws} holds {len(have)} clips, not --clips {args.clips}: use another --work or --clips {len(have)}")
    if not have:
        source = ["game"] if game.lower() == BUILTIN else ["gym", "--env", f"ALE/{game}-v5"]
        ahri(*W, "fetch", "--source", *source, "--clips", str(args.clips), "--frames", str(args.frames), "--seed",
             str(args.seed), log=log)
    tok = ws / "runs" / "tok"
    if not (tok / "run.json").is_file() or json.loads((tok / "run.json").read_text()).get("status") != "finished":
        ahri(*W, "train", "--stage", "tokenizer", "--preset", "cpu", "--run", "tok", "--minutes",
             str(args.tokenizer_minutes), "--seed", str(args.seed), log=log)
    if not (ws / "latents" / "tok" / "index.json").is_file():
        ahri(*W, "tokenize", "--tokenizer", "tok", log=log)
    dyn = ws / "runs" / "dyn"
    if not (dyn / "run.json").is_file() or json.loads((dyn / "run.json").read_text()).get("status") != "finished":
        ahri(*W, "train", "--preset", "cpu", "--run", "dyn", "--alternating", "--long-ratio", "0.1", "--minutes",
             str(args.dynamics_minutes), "--seed", str(args.seed), log=log)
    out = ws / "eval"
    if not (out / "metrics.json").is_file():
        ahri(*W, "eval", "dyn", "--steps", "4", "--steps", "64", "--horizon", str(args.horizon), "--clips", str(args.eval_clips),
             "--out", str(out), log=log)
    m = json.loads((out / "metrics.json").read_text())
    tok_meta = json.loads((tok / "run.json").read_text())
    model = tok_meta["settings"]["model"]
    index = json.loads((ws / "latents" / "tok" / "index.json").read_text())
    curves = {
        "copy_last": m["baselines"]["copy_last"]["psnr"]["mean"],
        "tokenizer_ceiling": m["baselines"]["tokenizer_ceiling"]["psnr"]["mean"],
        **{f"steps_{k}": m["steps"][k]["psnr"]["mean"] for k in m["steps"]},
    }
    probes = m.get("probes") or {}
    return {
        "game": game,
        "frame": [model["height"], model["width"]],
        "fit": model["fit"],
        "fps": index.get("fps"),
        "videos": len(index["videos"]),
        "val_videos": sum(v["split"] == "val" for v in index["videos"]),
        "frames": index["frames"],
        "tokenizer_val_psnr": last_val(tok).get("val_psnr"),
        # steps made in the budget: a machine shared with other work makes fewer
        "tokenizer_steps": tok_meta.get("step"),
        "dynamics_steps": json.loads((dyn / "run.json").read_text()).get("step"),
        "psnr_by_horizon": curves,
        "summary": m["summary"],
        "probes": probes,
        "clips": m["clip_count"],
        "minutes_total": (time.perf_counter() - t0) / 60,
    }


def table(rows: list[dict], horizons=(1, 2, 4, 8, 16)) -> str:
    lines = ["| game | frame | tok PSNR | curve | " + " | ".join(f"h={h}" for h in horizons) + " | mean 1-16 |",
             "|---|---|---|---|" + "---|" * (len(horizons) + 1)]
    for r in rows:
        first = True
        for name in ("copy_last", "steps_4", "steps_64", "tokenizer_ceiling"):
            c = r["psnr_by_horizon"].get(name)
            if c is None:
                continue
            vals = " | ".join(f"{c[h - 1]:.2f}" if h <= len(c) else "" for h in horizons)
            mean = sum(c[:16]) / len(c[:16])
            head = (f"| {r['game']} | {r['frame'][0]}x{r['frame'][1]} @ {r['fps']:g} fps | {r['tokenizer_val_psnr']:.2f} "
                    if first else "| | | ")
            lines.append(f"{head}| {name.replace('_', ' ')} | {vals} | {mean:.2f} |")
            first = False
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--games", nargs="+", default=["Pong", "Breakout", "MsPacman", "Boxing"])
    ap.add_argument("--work", default="/tmp/ahri-atari")
    ap.add_argument("--clips", type=int, default=40, help="recorded clips per game")
    ap.add_argument("--frames", type=int, default=400, help="frames per recorded clip")
    ap.add_argument("--tokenizer-minutes", type=float, default=20)
    ap.add_argument("--dynamics-minutes", type=float, default=40)
    ap.add_argument("--horizon", type=int, default=16)
    ap.add_argument("--eval-clips", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=str(DEFAULT_JSON))
    args = ap.parse_args()
    rows = []
    for g in args.games:
        print(f"{g}:", flush=True)
        rows.append(one_game(g, args))
        result = {"cpu": cpu_name(), "torch": __import__("torch").__version__, "settings": vars(args), "games": rows}
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=1))
    print(f"\n{cpu_name()}\n")
    print(table(rows))


if __name__ == "__main__":
    main()

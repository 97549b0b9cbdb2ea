"""Latent actions on the built-in game: controllability, gain over a no-action model, recovery of the real
actions and the few-label map, all on held-out videos (docs/actions.md).

    python benchmarks/bench_latent_actions.py --work /tmp/lamws --prepare   # fetch, tokenizer, two dynamics runs
    python benchmarks/bench_latent_actions.py --work /tmp/lamws             # measure the two runs

``--prepare`` runs, one at a time (``--steps`` the same for both dynamics runs):
    ahri fetch --source game --clips 48 --frames 160
    ahri train --stage tokenizer --preset cpu --mask-max 0 --max-steps 600 --run tok
    ahri tokenize --tokenizer tok
    ahri train --latent-actions --no-actions --max-steps N --run dyn-lam
    ahri train --no-actions --max-steps N --run dyn-none
Both dynamics runs ignore the real actions, so the comparison is "from video alone".

Prints a table and writes JSON (``--json``). Intervals are 95% Student-t over held-out clips (paired
differences where two conditions share clips); the probe's interval is a Wilson interval over frames.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from ahri_core.config.settings import SamplingSettings
from ahri_core.eval.action_probe import pair_counts, probe_accuracy
from ahri_core.eval.clips import select_clips
from ahri_core.eval.evaluate import evaluate
from ahri_core.eval.metrics import average_over, psnr_per_image, summarize
from ahri_core.inference.world import load_world_model
from ahri_core.models.latent_actions import video_codes
from ahri_core.runtime import cpu_name
from ahri_core.train.action_map import fit_action_map
from ahri_core.workspace import Workspace


def prepare(work: Path, steps: int, threads: int) -> None:
    base = ["ahri", "-q", "--workspace", str(work)]
    cmds = [
        ["fetch", "--source", "game", "--clips", "48", "--frames", "160"],
        ["train", "--stage", "tokenizer", "--preset", "cpu", "--mask-max", "0", "--max-steps", "600", "--run", "tok"],
        ["tokenize", "--tokenizer", "tok"],
        ["train", "--latent-actions", "--no-actions", "--max-steps", str(steps), "--run", "dyn-lam",
         "--threads", str(threads)],
        ["train", "--no-actions", "--max-steps", str(steps), "--run", "dyn-none", "--threads", str(threads)],
    ]
    for c in cmds:
        print("$", " ".join(["ahri", *c]), flush=True)
        subprocess.run([*base, *c], check=True)


def wilson(k: int, n: int) -> tuple[float, float]:
    if n == 0:
        return float("nan"), float("nan")
    p, z = k / n, 1.96
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return c - h, c + h


def horizontal_motion(frames: torch.Tensor, max_shift: int = 6, play_rows: float = 0.75) -> torch.Tensor:
    """How far the player moved right between consecutive frames (..., T, 3, H, W) -> (..., T - 1), in pixels.

    The camera follows the player, so a move right scrolls the scene left by the same amount: the shift v that
    best maps frame t + 1 onto frame t shifted by v (the play area only, without the HUD strip)."""
    h = int(frames.shape[-2] * play_rows)
    a, b = frames[..., :-1, :, :h, :].float(), frames[..., 1:, :, :h, :].float()
    W = frames.shape[-1]
    errs = []
    for v in range(-max_shift, max_shift + 1):
        if v >= 0:
            e = (b[..., : W - v] - a[..., v:]).pow(2).mean(dim=(-3, -2, -1))
        else:
            e = (b[..., -v:] - a[..., : W + v]).pow(2).mean(dim=(-3, -2, -1))
        errs.append(e)
    return torch.stack(errs, -1).argmin(-1).float() - max_shift


def measure(work: Path, lam_run: str, base_run: str, context: int, horizon: int, clips: int, steps: int,
            label_share: float, lags: list[int] | None = None) -> dict:
    ws = Workspace(work)
    lam = load_world_model(lam_run, ws)
    base = load_world_model(base_run, ws)
    lat_dir = Path(lam.info["latents"]["path"])
    s = SamplingSettings(steps=[steps], context=context, horizon=horizon, clips=clips, batch_size=16)
    t0 = time.perf_counter()
    ev_lam = evaluate(lam, lat_dir, s, out_dir=work / "bench" / "eval-lam", workspace=ws, samples=1, probes=False)
    ev_base = evaluate(base, lat_dir, s, out_dir=work / "bench" / "eval-none", workspace=ws, samples=1, probes=False)
    assert ev_lam.metrics["clips"] == ev_base.metrics["clips"], "the two evaluations must share their clips"
    la = ev_lam.metrics["latent_actions"]
    near = min(8, horizon)
    # paired per clip: the latent-action model with inferred codes vs the no-action model, same windows
    res: dict = {"cpu": cpu_name(), "clips": ev_lam.metrics["clip_count"], "context": context, "horizon": horizon,
                 "sampling_steps": steps, "lam_run": lam_run, "baseline_run": base_run}
    res["psnr"] = {
        "latent_inferred": la["psnr_inferred"],
        "latent_random": la["psnr_random"],
        "latent_no_action": la["psnr_no_action"],
        "no_action_model": ev_base.metrics["steps"][str(steps)]["psnr"],
        "copy_last": ev_lam.metrics["baselines"]["copy_last"]["psnr"],
        "tokenizer_ceiling": ev_lam.metrics["baselines"]["tokenizer_ceiling"]["psnr"],
    }
    res["controllability_db"] = la["gain_over_random_db"]
    res["controllability_db_h4"] = {k: v[min(3, horizon - 1)] for k, v in la["gain_over_random_db"].items()}

    # gain over the no-action model, per clip and horizon (re-run to pair clips: the evaluations keep means only)
    def per_clip_psnr(world, acts_fn) -> np.ndarray:
        lset_videos = {v.id: v for v in _val_videos(lat_dir)}
        refs = select_clips({k: v.frames for k, v in lset_videos.items()}, context, horizon, clips, s.seed)
        z = torch.stack([lset_videos[r.video_id].latents[r.start : r.start + context + horizon].float() for r in refs])
        sampler = world.sampler(steps, s.tau_ctx, precision=ev_lam.metrics["precision"]["precision"])
        out = []
        for i in range(0, len(z), s.batch_size):
            g = torch.Generator().manual_seed(s.seed * 1_000_003 + i)
            a = acts_fn(z[i : i + s.batch_size])
            out.append(sampler.rollout(z[i : i + s.batch_size, :context], horizon, actions=a, generator=g).latents)
        pred = world.decode(torch.cat(out))
        truth = world.decode(z[:, context:])  # decoded true latents: the same reference for both models
        return psnr_per_image(pred, truth).numpy()

    with torch.no_grad():
        p_lam = per_clip_psnr(lam, lambda zz: lam.latent_actions(zz))
        p_base = per_clip_psnr(base, lambda zz: None)
    diff = p_lam - p_base
    res["gain_over_no_action_model_db"] = summarize(diff)
    avg = diff[:, :near].mean(1)
    half = 1.96 * avg.std(ddof=1) / math.sqrt(len(avg)) if len(avg) > 1 else float("nan")
    res[f"gain_over_no_action_model_db_h1_{near}"] = {"mean": float(avg.mean()), "ci95": float(half)}
    res["reference_for_gain"] = "decoded true latents (both models through the same tokenizer)"
    copy = np.asarray(res["psnr"]["copy_last"]["mean"])
    res["beats_copy_last_every_horizon"] = bool((np.asarray(la["psnr_inferred"]["mean"]) > copy).all())
    res["latent_inferred_minus_copy_last_db_h1_8"] = average_over(
        np.asarray([la["psnr_inferred"]["mean"]]), 1, near) - average_over(np.asarray([copy]), 1, near)

    # recovery of the real actions: a probe fitted on the training videos, scored on the held-out ones
    from ahri_core.data.windows import load_latent_set

    lset = load_latent_set(lat_dir)
    K, A = lam.latent_actions.config.codes, lset.action_count
    codes_tr = [video_codes(lam.dynamics, v.latents) for v in lset.train]
    codes_te = [video_codes(lam.dynamics, v.latents) for v in lset.val]
    acts_tr, acts_te = [v.actions for v in lset.train], [v.actions for v in lset.val]
    tr, te = pair_counts(codes_tr, acts_tr, K, A), pair_counts(codes_te, acts_te, K, A)
    probe = probe_accuracy(tr, te)
    moves = movement_groups(lset.action_meanings) if len(lset.action_meanings) == A else None
    if moves is not None:  # reported beside the goal's probe, never in its place
        groups, names = moves
        merge = torch.zeros(len(names), A, dtype=torch.long)
        merge[torch.tensor(groups), torch.arange(A)] = 1
        probe["movement"] = {**probe_accuracy(merge @ tr, merge @ te), "groups": names}
    if lags:  # is the code late or early? the probe with the code of frame t against the action of t - lag
        probe["by_lag"] = {str(g): probe_accuracy(pair_counts(codes_tr, acts_tr, K, A, lag=g),
                                                  pair_counts(codes_te, acts_te, K, A, lag=g)) for g in lags}
    lo, hi = wilson(round(probe["accuracy"] * probe["frames"]), probe["frames"])
    probe["accuracy_ci95"] = [lo, hi]
    usage = tr.sum(0).float() / tr.sum()
    probe["code_perplexity"] = float(torch.exp(-(usage[usage > 0] * usage[usage > 0].log()).sum()))
    res["probe"] = probe

    if not lam.latent_actions.config.quantize:
        probe["note"] = "continuous code: binned on the FSQ grid of the same dimensions for the probe"
        res["seconds"] = time.perf_counter() - t0
        return res  # no codes to map
    # the few-label map: label_share of the training videos lend their actions
    amap = fit_action_map(lam.run_dir, lat_dir, label_share=label_share)
    res["action_map"] = {k: amap[k] for k in ("names", "label_share", "labelled_frames", "held_out_probe")}
    res["right_vs_left"] = right_vs_left(lam, lset, amap, context, horizon, steps, clips, s)
    # the motion estimator itself, on real frames with real actions
    res["motion_check_on_real_frames"] = real_motion_check(lam, lset, s)
    res["seconds"] = time.perf_counter() - t0
    return res


def movement_groups(meanings: list[str]) -> tuple[list[int], list[str]] | None:
    """Atari names: the group of each action once FIRE is set aside (RIGHTFIRE moves as RIGHT does, FIRE as
    NOOP) and the groups' names, or None when no two actions fall together. A probe over these groups asks whether the code knows
    how the player moved, which is what a video shows."""
    if not meanings:
        return None
    keys = [m.upper().replace("FIRE", "") or "NOOP" for m in meanings]
    order = list(dict.fromkeys(keys))
    return None if len(order) == len(keys) else ([order.index(k) for k in keys], order)


def _val_videos(lat_dir: Path):
    from ahri_core.data.windows import load_latent_set

    return load_latent_set(lat_dir).val


def right_vs_left(world, lset, amap, context, horizon, steps, clips, s) -> dict:
    """From held-out contexts, roll out with the code mapped from "right" and from "left" for every predicted
    frame; in how many clips does the player move further right under "right" (decoded frames)?"""
    names = {k.lower(): v for k, v in (amap.get("names") or {}).items()}  # Atari spells them RIGHT, LEFT
    if "right" not in names or "left" not in names:
        return {"skipped": "right or left missing from the action map"}
    vids = {v.id: v for v in lset.val}
    refs = select_clips({k: v.frames for k, v in vids.items()}, context, horizon, clips, s.seed)
    z = torch.stack([vids[r.video_id].latents[r.start : r.start + context].float() for r in refs])
    lam = world.latent_actions
    sampler = world.sampler(steps, s.tau_ctx, precision="fp32")
    motion = {}
    for key in ("right", "left"):
        with torch.no_grad():
            ctx_a = lam(z)
        fut = lam.vectors(torch.full((len(z), horizon), int(names[key])))
        acts = torch.cat([ctx_a, fut], 1)
        out = []
        for i in range(0, len(z), s.batch_size):
            g = torch.Generator().manual_seed(i)
            out.append(sampler.rollout(z[i : i + s.batch_size], horizon, actions=acts[i : i + s.batch_size],
                                       generator=g).latents)
        last_ctx = world.decode(z[:, -1:])
        frames = torch.cat([last_ctx, world.decode(torch.cat(out))], 1)
        motion[key] = horizontal_motion(frames).sum(1)  # pixels moved right over the horizon, per clip
    wins = int((motion["right"] > motion["left"]).sum())
    n = len(z)
    return {"codes": {"right": int(names["right"]), "left": int(names["left"])}, "clips": n,
            "right_further_right": wins, "share": wins / n, "share_ci95": list(wilson(wins, n)),
            "mean_px_right": float(motion["right"].mean()), "mean_px_left": float(motion["left"].mean())}


def real_motion_check(world, lset, s, frames: int = 64) -> dict:
    """Mean estimated rightward motion on decoded true latents where the real action was right vs left."""
    by = {"right": [], "left": []}
    meanings = [m.lower() for m in lset.action_meanings]
    for v in lset.val:
        f = world.decode(v.latents[:frames].float())
        m = horizontal_motion(f)
        a = v.actions[1:frames]
        for key in by:
            if key in meanings:  # the built-in game's names; other sets may lack them
                by[key] += m[a == meanings.index(key)].tolist()
    return {k: {"frames": len(x), "mean_px": float(np.mean(x)) if x else None} for k, x in by.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, required=True, help="workspace")
    ap.add_argument("--prepare", action="store_true", help="fetch, train the tokenizer and both dynamics runs first")
    ap.add_argument("--train-steps", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--lam-run", default="dyn-lam")
    ap.add_argument("--baseline-run", default="dyn-none")
    ap.add_argument("--context", type=int, default=8)
    ap.add_argument("--horizon", type=int, default=8)
    ap.add_argument("--clips", type=int, default=48)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--label-share", type=float, default=0.1)
    ap.add_argument("--probe-lags", type=int, nargs="*", default=[-2, -1, 0, 1, 2],
                    help="also probe the code of frame t against the action of frame t - lag, for each lag")
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    if a.prepare:
        prepare(a.work, a.train_steps, a.threads)
    r = measure(a.work, a.lam_run, a.baseline_run, a.context, a.horizon, a.clips, a.steps, a.label_share, a.probe_lags)
    print(f"CPU: {r['cpu']}; {r['clips']} held-out clips, context {a.context}, {a.steps} sampling steps")
    print(f"{'h':>2} {'inferred':>14} {'random':>14} {'no-act model':>14} {'copy-last':>10} {'delta(inf-rand)':>16}")
    P = r["psnr"]
    def pm(b, i):
        return f"{b['mean'][i]:.2f}±{b['ci95'][i]:.2f}"

    for i in range(a.horizon):
        print(f"{i + 1:>2} {pm(P['latent_inferred'], i):>14} {pm(P['latent_random'], i):>14} "
              f"{pm(P['no_action_model'], i):>14} {P['copy_last']['mean'][i]:>10.2f} {pm(r['controllability_db'], i):>16}")
    near = min(8, a.horizon)
    g = r[f"gain_over_no_action_model_db_h1_{near}"]
    print(f"gain over the no-action model, h1-{near}: {g['mean']:.2f} ± {g['ci95']:.2f} dB")
    p = r["probe"]
    print(f"probe: accuracy {p['accuracy']:.3f} (95% {p['accuracy_ci95'][0]:.3f}-{p['accuracy_ci95'][1]:.3f}) vs "
          f"majority {p['majority']:.3f}: x{p['ratio']:.2f}; code perplexity {p['code_perplexity']:.1f}")
    print(f"  the best single guess on the held-out videos scores {p['best_constant']:.3f}: x{p['ratio_best_constant']:.2f}")
    if "movement" in p:
        q = p["movement"]
        print(f"probe over movements ({', '.join(q['groups'])}): accuracy {q['accuracy']:.3f} vs majority "
              f"{q['majority']:.3f}: x{q['ratio']:.2f}")
    if "by_lag" in p:
        print("probe by lag (code of t, action of t - lag): "
              + ", ".join(f"{g}: x{q['ratio']:.2f}" for g, q in p["by_lag"].items()))
    if "right_vs_left" in r:
        print(f"right vs left: {json.dumps(r['right_vs_left'])}")
        print(f"motion estimator on real frames: {json.dumps(r['motion_check_on_real_frames'])}")
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(r, indent=1))
        print(f"wrote {a.json}")


if __name__ == "__main__":
    sys.exit(main())

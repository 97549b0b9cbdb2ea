"""Sampling speed: 64 vs 4 denoising steps, per-frame cost with and without the KV cache, eval/rollout frames/s.

Everything runs the one sampler (``ahri_core.inference.sampler``) on a dynamics model of the given preset with random
weights (speed does not depend on the weights) and latents of 16 x 32 values per frame
(16 model tokens: the cpu tokenizer's 64 x 12 latents run packed as 16 x 48 under the cpu dynamics preset).

1. Rollout wall time at 64 and at 4 steps per frame (KV cache on), same context and horizon: the ratio
   (ideal 16: a frame is K calls, its commit riding along with the next frame's first call; the context goes
   into the cache in one call).
2. Per-frame cost at frame 8 and at frame 64 of one long rollout, with the KV cache and without it (the
   uncached reference re-runs the whole window at every step). The window is opened wide enough that
   nothing slides out before frame 64.
3. Frames/s of eval-like (batch 8) and rollout-like (batch 1) sampling at 4 steps, of decoding latents with
   the cpu tokenizer, and end to end (sampling + decoding).

Each figure is the best of ``--repeat`` runs (the machines are shared; the best is the least disturbed).

    python benchmarks/bench_sampling.py                 # cpu preset
    python benchmarks/bench_sampling.py --preset tiny --quick --out sampling.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from datetime import datetime
from pathlib import Path

import torch

from ahri_core.inference.sampler import ModelTraits, Sampler
from ahri_core.models.dynamics import build_dynamics
from ahri_core.models.tokenizer import build_tokenizer, tokenizer_config
from ahri_core.runtime import choose_precision

_TOK = tokenizer_config("cpu")
TOKENS, CHANNELS = _TOK.tokens, _TOK.channels  # the cpu tokenizer's latents


def _model(preset: str, max_frames: int):
    torch.manual_seed(0)
    m = build_dynamics(preset, tokens=TOKENS, channels=CHANNELS, k_max=64, max_frames=max_frames)
    return m.eval(), ModelTraits(k_max=64, shortcut=True, max_frames=max_frames)


def _best(fn, repeat: int) -> float:
    return min(fn() for _ in range(repeat))


def rollout_seconds(model, traits, steps, batch, context, horizon, cache, precision, repeat) -> float:
    ctx = torch.randn(batch, context, TOKENS, CHANNELS)
    s = Sampler(model, traits, steps=steps, tau_ctx=0.1, cache=cache, precision=precision)
    s.rollout(ctx, 1)  # warm-up

    def run():
        return s.rollout(ctx, horizon, generator=0).seconds

    return _best(run, repeat)


def per_frame_cost(model, traits, cache, precision, frames, repeat, steps=4) -> dict[int, float]:
    """Seconds of one new frame (K steps, the commit of the frame before riding along) at each absolute frame
    index in ``frames``."""
    ctx = torch.randn(1, 1, TOKENS, CHANNELS)
    s = Sampler(model, traits, steps=steps, tau_ctx=0.1, cache=cache, precision=precision)
    horizon = max(frames)  # frame t (0-based) is horizon step t - 1 after one context frame
    best: dict[int, float] = {}
    for _ in range(repeat):
        res = s.rollout(ctx, horizon, generator=0)
        for f in frames:
            # the median of the three frames around f smooths single hiccups of a shared machine
            around = res.frame_seconds[max(0, f - 2) : f + 1]
            v = statistics.median(around)
            best[f] = min(best.get(f, float("inf")), v)
    return best


def decode_fps(batch: int, repeat: int) -> float:
    tok = build_tokenizer("cpu").eval()
    z = torch.rand(batch, TOKENS, CHANNELS) * 2 - 1

    def run():
        t = time.perf_counter()
        with torch.inference_mode():
            tok.decode(z)
        return time.perf_counter() - t

    tok.decode(z)
    return batch / _best(run, repeat)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="cpu", help="dynamics preset (tiny, cpu, small, ...)")
    ap.add_argument("--context", type=int, default=16)
    ap.add_argument("--horizon", type=int, default=16)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"],
                    help="auto: what ahri eval would pick here (ahri_core.runtime)")
    ap.add_argument("--quick", action="store_true", help="shorter runs (horizon 8, frame 32 instead of 64)")
    ap.add_argument("--out", type=Path, default=None, help="write the JSON here as well as printing it")
    args = ap.parse_args(argv)
    far = 32 if args.quick else 64
    horizon = 8 if args.quick else args.horizon
    if args.precision == "auto":
        m, tr = _model(args.preset, max_frames=args.context + 1)
        args.precision = choose_precision(
            "auto", torch.device("cpu"), step=lambda p: rollout_seconds(m, tr, 4, 1, args.context, 2, True, p, 1),
        ).precision
    results: dict = {
        "benchmark": "sampling",
        "date": datetime.now().isoformat(timespec="seconds"),
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "cpus": os.cpu_count(),
            "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
        },
        "settings": {
            "preset": args.preset, "context": args.context, "horizon": horizon, "repeat": args.repeat,
            "precision": args.precision, "latent_shape": [TOKENS, CHANNELS], "k_max": 64,
        },
    }
    rows: list[tuple[str, str]] = []

    # 1. 64 vs 4 steps (trained window: context + 1)
    model, traits = _model(args.preset, max_frames=args.context + 1)
    # interleaved (4, 64, 4, 64, ...) so that both see the same spells of a shared machine's load
    t4, t64 = float("inf"), float("inf")
    for _ in range(args.repeat):
        t4 = min(t4, rollout_seconds(model, traits, 4, 1, args.context, horizon, True, args.precision, 1))
        t64 = min(t64, rollout_seconds(model, traits, 64, 1, args.context, horizon, True, args.precision, 1))
    results["steps"] = {"seconds_4": t4, "seconds_64": t64, "ratio_64_over_4": t64 / t4, "ideal": 16}
    rows += [
        (f"rollout {horizon} frames, 4 steps (cached)", f"{t4:.3f} s"),
        (f"rollout {horizon} frames, 64 steps (cached)", f"{t64:.3f} s"),
        ("ratio 64 / 4 (ideal 16, cached ceiling 13)", f"{t64 / t4:.1f}"),
    ]

    # 2. per-frame cost at frame 8 vs frame `far`, with and without the cache
    model, traits = _model(args.preset, max_frames=far + 8)
    per = {}
    for cache in (True, False):
        c = per_frame_cost(model, traits, cache, args.precision, [8, far], args.repeat)
        key = "cached" if cache else "uncached"
        per[key] = {"frame_8_ms": 1e3 * c[8], f"frame_{far}_ms": 1e3 * c[far], "growth": c[far] / c[8]}
        rows += [
            (f"per frame at frame 8, {key} (4 steps)", f"{1e3 * c[8]:.1f} ms"),
            (f"per frame at frame {far}, {key} (4 steps)", f"{1e3 * c[far]:.1f} ms"),
            (f"growth frame {far} / frame 8, {key}", f"{c[far] / c[8]:.2f}x"),
        ]
    per["cache_speedup_at_far_frame"] = per["uncached"][f"frame_{far}_ms"] / per["cached"][f"frame_{far}_ms"]
    rows.append((f"cache speed-up at frame {far}", f"{per['cache_speedup_at_far_frame']:.1f}x"))
    results["per_frame"] = per

    # 3. frames/s: eval-like (batch 8) and rollout-like (batch 1), decode, end to end
    model, traits = _model(args.preset, max_frames=args.context + 1)
    fps = {}
    for name, batch in (("eval_batch8", 8), ("rollout_batch1", 1)):
        secs = rollout_seconds(model, traits, 4, batch, args.context, horizon, True, args.precision, args.repeat)
        fps[name] = batch * horizon / secs
    dec8, dec1 = decode_fps(8 * horizon, args.repeat), decode_fps(horizon, args.repeat)
    fps["decode_batch8x"] = dec8
    fps["decode_rollout"] = dec1
    fps["eval_end_to_end"] = 1 / (1 / fps["eval_batch8"] + 1 / dec8)
    fps["rollout_end_to_end"] = 1 / (1 / fps["rollout_batch1"] + 1 / dec1)
    results["frames_per_s"] = fps
    rows += [
        ("eval-like sampling, batch 8, 4 steps", f"{fps['eval_batch8']:.1f} frames/s"),
        ("rollout-like sampling, batch 1, 4 steps", f"{fps['rollout_batch1']:.1f} frames/s"),
        ("decode (cpu tokenizer), eval batch", f"{dec8:.0f} frames/s"),
        ("eval end to end (sampling + decode)", f"{fps['eval_end_to_end']:.1f} frames/s"),
        ("rollout end to end (sampling + decode)", f"{fps['rollout_end_to_end']:.1f} frames/s"),
    ]

    width = max(len(r[0]) for r in rows)
    print(f"sampling benchmark: preset {args.preset}, {args.precision}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, best of {args.repeat}")
    for k, v in rows:
        print(f"  {k:<{width}}  {v}")
    text = json.dumps(results, indent=2)
    if args.out is not None:
        args.out.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

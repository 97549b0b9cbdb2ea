"""Built-in game: frames/s of simulation and rendering, and the copy-last-frame PSNR baseline.

    python benchmarks/bench_game.py [--clips 16] [--frames 256] [--json out.json]

Speed: ``simulate`` (world + policy, size-independent) and ``render_trace`` timed separately on one
process (numpy may use its own threads only for the one-time texture build), best of 3 runs because
the machine is shared. The one-time cost of building the map and sprites for a size is reported apart.
Difficulty: PSNR of predicting frame t with frame t-h (per frame on [0, 1] RGB, identical frames
count as 100 dB, averaged over all frames of all clips) at 64x64, on the rendered arrays and after
an mp4 round trip through ``ahri_core.video`` (libx264 yuv420p, as ``ahri fetch`` stores clips).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from ahri_core.sources import game

HORIZONS = (1, 2, 4, 8)


def psnr_per_frame(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    mse = (((a.astype(np.float64) - b.astype(np.float64)) / 255.0) ** 2).reshape(len(a), -1).mean(axis=1)
    return np.where(mse > 0, -10.0 * np.log10(np.maximum(mse, 1e-30)), 100.0).clip(max=100.0)


def copy_last(clips: list[np.ndarray]) -> dict[int, float]:
    return {
        h: float(np.mean(np.concatenate([psnr_per_frame(f[h:], f[:-h]) for f in clips]))) for h in HORIZONS
    }


def best_of(fn, repeats: int = 3) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clips", type=int, default=16, help="clips for the PSNR baseline (seeds 0..N-1)")
    ap.add_argument("--frames", type=int, default=256, help="frames per clip")
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 256])
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    load = os.getloadavg()[0]

    speed = []
    n_speed = 4  # clips per timing run
    for size in args.sizes:
        t0 = time.perf_counter()
        game.render_clip(0, 2, size=size)  # builds and caches the map, sprites and HUD for this size
        setup = time.perf_counter() - t0
        t_sim, traces = best_of(lambda: [game.simulate(1000 + i, args.frames) for i in range(n_speed)])
        t_ren, _ = best_of(lambda: [game.render_trace(tr, size) for tr in traces])  # noqa: B023
        n = n_speed * args.frames
        speed.append(
            {
                "size": size,
                "frames": n,
                "setup_s": setup,
                "simulate_fps": n / t_sim,
                "render_fps": n / t_ren,
                "total_fps": n / (t_sim + t_ren),
            }
        )

    clips = [game.render_clip(seed, args.frames, size=64).frames for seed in range(args.clips)]
    raw = copy_last(clips)
    mp4 = None
    fidelity = None
    try:
        from ahri_core import video

        with tempfile.TemporaryDirectory() as tmp:
            decoded = []
            for i, f in enumerate(clips):
                path = Path(tmp) / f"clip{i}.mp4"
                video.write_video(path, f, game.GAME_FPS)
                decoded.append(video.read_frames(path))
        mp4 = copy_last(decoded)
        fidelity = float(
            np.mean(np.concatenate([psnr_per_frame(d, f) for d, f in zip(decoded, clips, strict=True)]))
        )
    except ImportError:
        pass

    print(f"load average before: {load:.1f}")
    print(f"{'size':>5s} {'setup s':>8s} {'simulate f/s':>13s} {'render f/s':>11s} {'total f/s':>10s}")
    for r in speed:
        print(
            f"{r['size']:5d} {r['setup_s']:8.2f} {r['simulate_fps']:13.0f} {r['render_fps']:11.0f} "
            f"{r['total_fps']:10.0f}"
        )
    print(f"\ncopy-last PSNR at 64x64, {args.clips} clips x {args.frames} frames (dB)")
    print(f"{'h':>3s} {'raw':>7s} {'mp4':>7s}")
    for h in HORIZONS:
        m = f"{mp4[h]:7.2f}" if mp4 else "    n/a"
        print(f"{h:3d} {raw[h]:7.2f} {m}")
    if fidelity is not None:
        print(f"mp4 round trip vs rendered frames: {fidelity:.2f} dB")

    if args.json:
        meta = {
            "machine": platform.platform(),
            "processor": platform.processor(),
            "numpy": np.__version__,
            "load_average": load,
            "clips": args.clips,
            "frames": args.frames,
            "speed": speed,
            "copy_last_psnr_raw": {str(h): v for h, v in raw.items()},
            "copy_last_psnr_mp4": {str(h): v for h, v in mp4.items()} if mp4 else None,
            "mp4_fidelity_db": fidelity,
        }
        args.json.write_text(json.dumps(meta, indent=2) + "\n")


if __name__ == "__main__":
    main()

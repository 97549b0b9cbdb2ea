"""Tokenizer throughput: ``ahri tokenize`` frames/s against PyAV decode-only of the same video, in one run;
tokenizer training frames/s (bf16 and fp32); and frame-sampler frames/s from the uint8 cache, which says
whether data loading or the model bounds training.

    python benchmarks/bench_tokenizer.py --preset cpu --frames 600 --out bench_tokenizer.json

Prints a table and writes JSON (machine, torch, threads, settings, every figure). Timings on a shared
machine are noisy: compare the ratios measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from train_steps import TokenizerBenchStep  # noqa: E402

from ahri_core.checkpoint import save_weights  # noqa: E402
from ahri_core.config.settings import TrainSettings  # noqa: E402
from ahri_core.data.frame_cache import cached_frames  # noqa: E402
from ahri_core.data.frames import FrameSampler, FrameSet, to_tensor  # noqa: E402
from ahri_core.models.tokenizer import build_tokenizer  # noqa: E402
from ahri_core.runtime import (
    autocast,  # noqa: E402
    cpu_name,  # noqa: E402
)


def make_video(dest: Path, frames: int, size: int) -> Path:
    from ahri_core.sources.game import GAME_FPS, render_clip
    from ahri_core.video import write_video

    clip = render_clip(7, frames, size)
    path = dest / "bench.mp4"
    write_video(path, clip.frames, GAME_FPS)
    return path


def time_decode(path: Path, fps: float, size: int, repeats: int) -> float:
    from ahri_core.video import iter_frames

    best = float("inf")
    n = 0
    for _ in range(repeats):
        t = time.perf_counter()
        n = sum(1 for _ in iter_frames(path, fps=fps, size=size, fit="crop"))
        best = min(best, time.perf_counter() - t)
    return n / best


def time_tokenize(path: Path, weights_dir: Path, out: Path, batch: int, device: str, precision: str, repeats: int) -> tuple[float, int]:
    import shutil

    from ahri_core.data.tokenize import tokenize_videos

    best, n = float("inf"), 0
    for _ in range(repeats):
        shutil.rmtree(out, ignore_errors=True)
        t = time.perf_counter()
        res = tokenize_videos(weights_dir, [path], out, batch_size=batch, device=device, precision=precision)
        best = min(best, time.perf_counter() - t)
        n = res.frames
    return n / best, n


@torch.no_grad()
def time_encode(model, frames: np.ndarray, batch: int, device: torch.device, precision: str) -> float:
    model.eval()
    x = to_tensor(frames[:batch], device)
    with autocast(device, precision):
        model.encode(x)
    t = time.perf_counter()
    done = 0
    for s in range(0, len(frames), batch):
        x = to_tensor(frames[s : s + batch], device)
        with autocast(device, precision):
            model.encode(x)
        done += len(x)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return done / (time.perf_counter() - t)


def time_train(model, frames: FrameSet, batch: int, steps: int, device: torch.device, precision: str) -> tuple[float, float]:
    """(frames per wall second, frames per CPU second of this process): the second is robust to a loaded machine.
    The step is ``ahri train --stage tokenizer``'s own (``train_steps.py``), on a fresh model of ``model``'s config."""
    bench = TokenizerBenchStep(model.cfg, TrainSettings(lr=1e-3, weight_decay=0.01, ema=0.0, batch_size=batch),
                               precision, device)
    sampler = FrameSampler(len(frames), batch, seed=0)
    times, cpu = [], []
    for _ in range(steps + 2):
        t, c = time.perf_counter(), time.process_time()
        bench(to_tensor(frames.get(sampler.next()), device))
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    return batch / float(np.median(times[2:])), batch / float(np.median(cpu[2:]))


def time_sampler(frames: FrameSet, batch: int, iters: int, device: torch.device) -> float:
    sampler = FrameSampler(len(frames), batch, seed=0)
    t = time.perf_counter()
    for _ in range(iters):
        to_tensor(frames.get(sampler.next()), device)
    return iters * batch / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="cpu")
    ap.add_argument("--frames", type=int, default=600, help="frames of the generated game video")
    ap.add_argument("--video", type=Path, default=None, help="benchmark this video instead of a generated one")
    ap.add_argument("--batch-size", type=int, default=64, help="tokenize batch")
    ap.add_argument("--train-batch", type=int, default=32)
    ap.add_argument("--train-steps", type=int, default=6)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", type=Path, default=Path("bench_tokenizer.json"))
    args = ap.parse_args()

    device = torch.device(args.device)
    torch.manual_seed(0)
    model = build_tokenizer(args.preset).to(device)
    cfg = model.cfg
    res: dict = {
        "machine": {"cpu": cpu_name(), "cores": os.cpu_count(), "torch": torch.__version__, "threads": torch.get_num_threads(),
                    "python": platform.python_version(), "device": str(device)},
        "settings": {**vars(args), "video": str(args.video) if args.video else None, "out": str(args.out),
                     "model": cfg.to_dict(), "params": model.num_params(), "compression": cfg.compression},
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        video = args.video or make_video(tmp, args.frames, cfg.image_size)
        run = tmp / "run"
        run.mkdir()
        save_weights(run / "model.safetensors", model, "tokenizer", cfg.to_dict())
        decode_fps = time_decode(video, cfg.fps, cfg.image_size, args.repeats)
        tok_fps, n = {}, 0
        for prec in ("bf16", "fp32", "auto"):  # auto: what `ahri tokenize` picks on this machine
            tok_fps[prec], n = time_tokenize(video, run, tmp / "lat", args.batch_size, args.device, prec, args.repeats)
        frames = cached_frames(video, cfg.fps, cfg.image_size, tmp / "cache")
        enc = {p: time_encode(model, np.asarray(frames), args.batch_size, device, p) for p in ("bf16", "fp32")}
        fs = FrameSet([frames], ["v"])
        timed = {p: time_train(model, fs, args.train_batch, args.train_steps, device, p) for p in ("bf16", "fp32")}
        train = {p: v[0] for p, v in timed.items()}
        train_cpu = {p: v[1] for p, v in timed.items()}
        sampler_fps = time_sampler(fs, args.train_batch, 200, device)
    res["results"] = {
        "video_frames": n,
        "decode_only_fps": decode_fps,
        "tokenize_fps": tok_fps,
        "tokenize_vs_decode": {p: v / decode_fps for p, v in tok_fps.items()},
        "encode_only_fps": enc,
        "train_fps": train,
        "train_frames_per_cpu_second": train_cpu,
        "sampler_fps": sampler_fps,
        "sampler_vs_train_bf16": sampler_fps / train["bf16"],
    }
    r = res["results"]
    rows = [
        ("PyAV decode only (resample + resize)", f"{decode_fps:,.0f} frames/s", ""),
        ("ahri tokenize, bf16", f"{tok_fps['bf16']:,.0f} frames/s", f"{tok_fps['bf16'] / decode_fps:.2f}x decode"),
        ("ahri tokenize, fp32", f"{tok_fps['fp32']:,.0f} frames/s", f"{tok_fps['fp32'] / decode_fps:.2f}x decode"),
        ("encoder only, bf16", f"{enc['bf16']:,.0f} frames/s", ""),
        ("encoder only, fp32", f"{enc['fp32']:,.0f} frames/s", ""),
        (f"training step, bf16 (batch {args.train_batch})", f"{train['bf16']:,.0f} frames/s", ""),
        (f"training step, fp32 (batch {args.train_batch})", f"{train['fp32']:,.0f} frames/s", f"bf16 {train['bf16'] / train['fp32']:.2f}x"),
        ("training, bf16, per CPU-second of this process", f"{train_cpu['bf16']:,.0f} frames/s", "load-independent"),
        ("frame sampler from uint8 cache", f"{sampler_fps:,.0f} frames/s", f"{r['sampler_vs_train_bf16']:.0f}x training"),
    ]
    print(f"tokenizer benchmark: preset {args.preset} ({cfg.image_size}x{cfg.image_size}, {cfg.compression:.1f}x), "
          f"{res['machine']['cpu']}, {res['machine']['threads']} threads, torch {torch.__version__}")
    w = max(len(a) for a, _, _ in rows)
    for a, b, c in rows:
        print(f"  {a:<{w}}  {b:>18}  {c}")
    args.out.write_text(json.dumps(res, indent=2, default=str) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

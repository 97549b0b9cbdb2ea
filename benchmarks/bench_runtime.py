"""What precision and how many threads suit this machine: the numbers behind ``--precision auto`` and
the ``--threads`` default.

Prints, for this CPU (named in the output): fp32 vs bf16 matmul GFLOP/s; the training-step time of the
``cpu`` tokenizer and ``cpu`` dynamics presets in both precisions; what ``--precision auto`` picks for
each; and training throughput with 1, 2, ... threads on an idle machine and with one core kept busy by
another process (a busy loop), for each thread count tried and for the default policy ("auto": the
cores this process may use, less those found busy at start; shown as threads idle/busy).

    python benchmarks/bench_runtime.py                      # ~2-3 minutes on 2 cores
    python benchmarks/bench_runtime.py --seconds 5 --out benchmarks/results/runtime.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_dynamics_train import matmul_peak  # noqa: E402
from train_steps import BenchStep, TokenizerBenchStep  # noqa: E402

from ahri_core import runtime  # noqa: E402
from ahri_core.config.presets import TRAINING_PRESETS  # noqa: E402
from ahri_core.config.settings import TrainSettings  # noqa: E402
from ahri_core.models.dynamics import build_dynamics  # noqa: E402
from ahri_core.models.tokenizer import tokenizer_config  # noqa: E402

CPU = torch.device("cpu")


def tokenizer_step(batch: int = 16, optimizer: str | None = None):
    """One training step (``ahri train --stage tokenizer``'s own, ``train_steps.py``) of the cpu tokenizer preset
    (MAE masking on; the preset's optimizer, Muon, unless ``optimizer`` says otherwise) as a function of
    precision."""
    torch.manual_seed(0)
    cfg = tokenizer_config("cpu")
    optimizer = optimizer or TRAINING_PRESETS["tokenizer"]["cpu"].get("optimizer", "adamw")
    bench = TokenizerBenchStep(cfg, TrainSettings(lr=1e-4, weight_decay=0.01, grad_clip=1.0, ema=0.0,
                                                  batch_size=batch, optimizer=optimizer), "fp32")
    x = torch.rand(batch, 3, *cfg.size, generator=torch.Generator().manual_seed(1))

    def step(precision: str) -> None:
        bench(x, precision=precision)

    return step, batch


def dynamics_step(batch: int = 8, frames: int = 16, tokens: int = 64, channels: int = 12):
    """One training step (``ahri train``'s own, ``train_steps.py``) of the cpu dynamics preset at the demo's
    short-batch shape (shortcut forcing on)."""
    torch.manual_seed(0)
    model = build_dynamics("cpu", tokens=tokens, channels=channels, max_frames=32, k_max=64).train()
    bench = BenchStep.on_model(model, TrainSettings(lr=1e-4, weight_decay=0.01, grad_clip=1.0, ema=0.0), "fp32")
    g = torch.Generator().manual_seed(0)
    x = torch.tanh(torch.randn(batch, frames, tokens, channels, generator=g))

    def step(precision: str) -> None:
        bench(x, precision=precision)

    return step, batch * frames


def throughput(step, frames_per_step: int, precision: str, seconds: float) -> float:
    """Frames per second of ``step`` over about ``seconds`` (after one warm-up step)."""
    step(precision)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds or n < 3:
        step(precision)
        n += 1
    return n * frames_per_step / (time.perf_counter() - t0)


def busy_core() -> subprocess.Popen:
    """Another process that keeps one core busy (what a second job or a browser does to a laptop)."""
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=6.0, help="measuring time per cell")
    ap.add_argument("--threads", type=int, nargs="*", default=None, help="thread counts to try (default: 1..cores)")
    ap.add_argument("--out", type=Path, default=None, help="JSON file to write")
    args = ap.parse_args()
    cores = runtime.available_cores()
    counts = args.threads or list(range(1, cores + 1))
    runtime.apply_threads(cores)
    machine = runtime.describe()
    print(f"CPU: {machine['cpu']} ({machine['capability']}, native bf16: {machine['native_bf16']}: "
          f"{machine['native_bf16_why']}); {cores} cores available; torch {machine['torch']}")
    result: dict = {"machine": machine, "date": datetime.now().isoformat(timespec="seconds")}

    mm = {p: matmul_peak(dt) for p, dt in (("fp32", torch.float32), ("bf16", torch.bfloat16))}
    result["matmul_gflops"] = mm
    print(f"matmul 1024^3: fp32 {mm['fp32']:.1f} GFLOP/s, bf16 {mm['bf16']:.1f} GFLOP/s ({mm['bf16'] / mm['fp32']:.2f}x)")

    models = {"tokenizer cpu": tokenizer_step, "dynamics cpu": dynamics_step}
    result["steps"] = {}
    for name, make in models.items():
        step, frames = make()
        times = runtime.time_step(step, budget_s=args.seconds)
        choice = runtime.choose_precision("auto", CPU, step=step, key=name, cache_dir=None, budget_s=args.seconds)
        result["steps"][name] = {"step_s": times, "frames_per_s": {p: frames / t for p, t in times.items()},
                                 "auto": choice.precision, "auto_reason": choice.reason}
        print(f"{name:>14}: step fp32 {times['fp32'] * 1e3:.0f} ms, bf16 {times['bf16'] * 1e3:.0f} ms "
              f"(bf16 {times['fp32'] / times['bf16']:.2f}x) -> auto: {choice.precision}")

    result["threads"] = []
    print(f"{'model':>14} {'threads':>12} {'idle f/s':>9} {'busy f/s':>9} {'busy/idle':>9} {'busy/best':>10}")
    for name, make in models.items():
        step, frames = make()
        precision = result["steps"][name]["auto"]
        best_idle = 0.0
        for n in [*counts, "auto"]:
            runtime.apply_threads(runtime.default_threads() if n == "auto" else n)
            n_idle = runtime.threads_in_use()
            idle = throughput(step, frames, precision, args.seconds)
            hog = busy_core()
            try:
                time.sleep(0.5)
                runtime.apply_threads(runtime.default_threads() if n == "auto" else n)  # the policy sees the busy core
                n_busy = runtime.threads_in_use()
                busy = throughput(step, frames, precision, args.seconds)
            finally:
                hog.kill()
                hog.wait()
            best_idle = max(best_idle, idle)
            row = {"model": name, "threads": n, "threads_idle": n_idle, "threads_busy": n_busy, "precision": precision,
                   "idle_frames_per_s": idle, "busy_frames_per_s": busy, "busy_over_idle": busy / idle,
                   "busy_over_best_idle": busy / best_idle}
            result["threads"].append(row)
            label = f"auto ({n_idle}/{n_busy})" if n == "auto" else str(n)
            print(f"{name:>14} {label:>12} {idle:>9.1f} {busy:>9.1f} {busy / idle:>9.2f} {busy / best_idle:>10.2f}")
    runtime.apply_threads(cores)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

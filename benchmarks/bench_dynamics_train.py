"""Dynamics training throughput: tokens/s, frames/s and model FLOP/s as a fraction of matmul peaks.

One training step is ``ahri train``'s own (``TrainStep`` on ``DynamicsObjective``, see ``train_steps.py``:
noise levels, diffusion-forcing loss with shortcut bootstrap targets, backward, clipping, AdamW) on synthetic latents of the cpu tokenizer's shape. The
model FLOPs are counted analytically from the config (matmuls and attention, forward x 3 for training;
the bootstrap teacher's two extra forwards are counted separately). The bf16 and fp32 matmul peaks are
measured in the same run, so the fractions compare like with like on a shared machine.

    python benchmarks/bench_dynamics_train.py                       # presets tiny and cpu
    python benchmarks/bench_dynamics_train.py --presets cpu small --steps 5 --out results.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import datetime
from pathlib import Path

import torch
from train_steps import BenchStep, bootstrap_items

from ahri_core.config.settings import DiffusionSettings, TrainSettings
from ahri_core.models.dynamics import build_dynamics, param_count
from ahri_core.models.dynamics_config import DynamicsConfig
from ahri_core.runtime import choose_precision


# ---------------------------------------------------------------------------------------------- FLOPs
def forward_flops(cfg: DynamicsConfig, batch: int, frames: int) -> float:
    """Multiply-adds x 2 of one forward pass over (batch, frames) frames: the linear layers, both
    attention matmuls (spatial: all L x L pairs of a frame; temporal: causal, T(T+1)/2 pairs per token
    position), the per-frame conditioning and modulation. Norms and elementwise ops are left out."""
    D, N, R, C = cfg.dim, cfg.model_tokens, cfg.registers, cfg.pack * cfg.channels
    L = N + R
    hd = D // cfg.heads
    kv = cfg.kv_heads or cfg.heads
    hidden = max(8, (int(D * cfg.mlp_ratio * 2 / 3) + 7) // 8 * 8)
    frames_total = batch * frames
    per_token_block = 2 * (D * D + D * 2 * kv * hd + D * D) + 2 * 3 * D * hidden  # q, kv, out; SwiGLU
    per_frame_block = 2 * D * 6 * D  # adaLN modulation
    flops = 0.0
    for kind in cfg.layer_kinds():
        flops += frames_total * (L * per_token_block + per_frame_block)
        if kind == "S":
            flops += frames_total * 4 * L * L * D  # QK^T and AV over a frame
        else:
            flops += batch * L * 4 * D * frames * (frames + 1) / 2  # causal over frames, per token position
    flops += frames_total * N * 2 * C * D * 2  # latent in, head out
    flops += frames_total * (2 * 256 * D + 2 * D * D + 2 * D * 2 * D)  # tau MLP, output modulation
    return flops


def matmul_peak(dtype: torch.dtype, n: int = 1024, reps: int = 10) -> float:
    """Best GFLOP/s of an n x n matmul in ``dtype`` (CPU)."""
    a = torch.randn(n, n).to(dtype)
    b = torch.randn(n, n).to(dtype)
    for _ in range(2):
        a @ b
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


# ---------------------------------------------------------------------------------------------- steps
def bench_config(
    preset: str, batch: int, frames: int, tokens: int, channels: int, shortcut: bool, steps: int, warmup: int,
    precision: str, grad_checkpointing: bool = False,
) -> dict:
    torch.manual_seed(0)
    model = build_dynamics(preset, tokens=tokens, channels=channels, max_frames=frames, k_max=64,
                           action_kind="discrete", action_count=8, grad_checkpointing=grad_checkpointing)
    model.train()
    train = TrainSettings(lr=1e-4, weight_decay=0.01, grad_clip=1.0, ema=0.0)
    step = BenchStep.on_model(model, train, precision, DiffusionSettings(shortcut=shortcut))
    g = torch.Generator().manual_seed(0)
    x = torch.tanh(torch.randn(batch, frames, tokens, channels, generator=g))
    actions = torch.randint(-1, 8, (batch, frames), generator=g)
    boot_items = []
    times = []
    for i in range(warmup + steps):
        t = time.perf_counter()
        res = step(x, actions)
        if i >= warmup:
            times.append(time.perf_counter() - t)
            boot_items.append(bootstrap_items(res))
    sec = sorted(times)[len(times) // 2]  # median: robust to a neighbour's burst
    fwd = forward_flops(model.config, batch, frames)
    model_flops = 3 * fwd
    teacher_flops = 2 * fwd * (sum(boot_items) / len(boot_items))
    return {
        "preset": preset,
        "params": param_count(model),
        "batch": batch,
        "frames": frames,
        "tokens_per_frame": tokens,
        "shortcut": shortcut,
        "precision": precision,
        "grad_checkpointing": grad_checkpointing,
        "step_s": sec,
        "frames_per_s": batch * frames / sec,
        "tokens_per_s": batch * frames * tokens / sec,
        "model_gflop_per_step": model_flops / 1e9,
        "teacher_gflop_per_step": teacher_flops / 1e9,
        "model_gflop_per_s": model_flops / sec / 1e9,
        "all_gflop_per_s": (model_flops + teacher_flops) / sec / 1e9,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", nargs="+", default=["tiny", "cpu"])
    ap.add_argument("--shapes", nargs="+", default=["2x32", "1x64", "8x16"], help="BATCHxFRAMES per step")
    ap.add_argument("--tokens", type=int, default=16, help="latent tokens per frame (cpu tokenizer: 16)")
    ap.add_argument("--channels", type=int, default=32, help="latent channels (cpu tokenizer: 32)")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto",
                    help="auto: what ahri train would pick here for each preset and shape (ahri_core.runtime)")
    ap.add_argument("--no-shortcut", action="store_true", help="plain diffusion forcing (no bootstrap teacher)")
    ap.add_argument("--out", type=Path, default=Path(__file__).with_name("results") / "dynamics_train.json")
    args = ap.parse_args(argv)

    peak_bf16 = matmul_peak(torch.bfloat16)
    peak_fp32 = matmul_peak(torch.float32)
    rows = []
    for preset in args.presets:
        for shape in args.shapes:
            b, t = (int(v) for v in shape.lower().split("x"))
            precision = choose_precision(
                args.precision, torch.device("cpu"),
                step=lambda p, preset=preset, b=b, t=t: bench_config(preset, b, t, args.tokens, args.channels,
                                                                     not args.no_shortcut, 1, 0, p),
            ).precision
            r = bench_config(preset, b, t, args.tokens, args.channels, not args.no_shortcut, args.steps,
                             args.warmup, precision)
            r["fraction_of_bf16_peak"] = r["model_gflop_per_s"] / peak_bf16
            r["fraction_of_fp32_peak"] = r["model_gflop_per_s"] / peak_fp32
            rows.append(r)
            print(f"  {preset} {shape}: {r['step_s'] * 1e3:.0f} ms/step", file=sys.stderr, flush=True)
    # peaks again at the end: a neighbour's load shows up as a difference
    peak_bf16_end, peak_fp32_end = matmul_peak(torch.bfloat16), matmul_peak(torch.float32)
    result = {
        "benchmark": "dynamics_train",
        "date": datetime.now().isoformat(timespec="seconds"),
        "machine": platform.machine(),
        "processor": platform.processor(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "peak_gflops": {"bf16": peak_bf16, "fp32": peak_fp32, "bf16_end": peak_bf16_end, "fp32_end": peak_fp32_end},
        "settings": vars(args) | {"out": str(args.out)},
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))

    print(f"matmul peak: bf16 {peak_bf16:.0f} GFLOP/s, fp32 {peak_fp32:.0f} GFLOP/s "
          f"(end of run: {peak_bf16_end:.0f} / {peak_fp32_end:.0f}); {torch.get_num_threads()} threads")
    head = (f"{'preset':<7}{'params':>9}{'BxT':>7}{'ms/step':>9}{'frames/s':>10}{'tokens/s':>10}"
            f"{'GFLOP/step':>11}{'GFLOP/s':>9}{'% bf16':>8}{'% fp32':>8}")
    print(head)
    for r in rows:
        print(f"{r['preset']:<7}{r['params'] / 1e6:>8.2f}M{r['batch']:>3}x{r['frames']:<3}{r['step_s'] * 1e3:>9.0f}"
              f"{r['frames_per_s']:>10.0f}{r['tokens_per_s']:>10.0f}{r['model_gflop_per_step']:>11.2f}"
              f"{r['model_gflop_per_s']:>9.1f}{100 * r['fraction_of_bf16_peak']:>7.1f}%"
              f"{100 * r['fraction_of_fp32_peak']:>7.1f}%")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

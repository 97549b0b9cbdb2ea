"""Peak memory of a dynamics training step (forward + backward) against sequence length T.

For one preset and batch size, each (T, gradient checkpointing on/off) runs in a fresh subprocess, so
one measurement cannot inherit another's peak. A short warm-up step (T = 2) first allocates the gradient
buffers and the kernels' workspaces; the figure is the growth of the peak during the measured step:
- CUDA: ``torch.cuda.max_memory_allocated()`` minus the allocation before the step;
- CPU: the peak resident set (``ru_maxrss``) minus the peak before the step.
The growth exponent is the least-squares slope of log(memory) against log(T); the factorized attention
(spatial within frames, causal temporal per token position) should keep it close to 1 (linear).

Example:
    python benchmarks/bench_dynamics_memory.py                       # cpu preset on CPU, about a minute
    python benchmarks/bench_dynamics_memory.py --preset small --device cuda --batch 2
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
DEFAULT_JSON = HERE / "results" / "dynamics_memory.json"


def child(spec: dict) -> dict:
    """One measurement in this (fresh) process."""
    import resource

    from ahri_core.models.dynamics import build_dynamics

    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    dev = torch.device(spec["device"])
    torch.manual_seed(0)
    model = build_dynamics(
        spec["preset"], tokens=spec["tokens"], channels=spec["channels"], grad_checkpointing=spec["ckpt"]
    ).to(dev)
    model.train()
    B, N, C = spec["batch"], spec["tokens"], spec["channels"]
    k_max = model.config.k_max

    def batch(T: int):
        z = torch.randn(B, T, N, C, device=dev)  # (batch, time, tokens, channels)
        tau = torch.rand(B, T, device=dev)
        step = torch.full((B, T), 1.0 / k_max, device=dev)
        isolated = torch.zeros(B, dtype=torch.bool, device=dev)
        isolated[: int(0.3 * B)] = True
        return z, tau, step, isolated

    def train_step(z, tau, step, isolated):
        ctx = torch.autocast(dev.type, dtype=torch.bfloat16) if spec["precision"] == "bf16" else torch.autocast(
            dev.type, enabled=False
        )
        with ctx:
            x_hat = model(z, tau, step, isolated=isolated)
        loss = (x_hat.float() - z).pow(2).mean()
        loss.backward()
        return loss

    def rss_bytes() -> int:
        r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return r if sys.platform == "darwin" else r * 1024

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    train_step(*batch(2))  # warm-up: gradient buffers, kernel workspaces
    model.zero_grad(set_to_none=False)
    inputs = batch(spec["T"])
    sync()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = rss_bytes()
    t0 = time.perf_counter()
    train_step(*inputs)
    sync()
    seconds = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() if dev.type == "cuda" else rss_bytes()
    return {"T": spec["T"], "ckpt": spec["ckpt"], "peak_bytes": peak, "base_bytes": base,
            "step_bytes": max(peak - base, 1), "seconds": seconds}


def slope(xs: list[float], ys: list[float]) -> float:
    lx, ly = [math.log(x) for x in xs], [math.log(y) for y in ys]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly)) / sum((a - mx) ** 2 for a in lx)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="cpu")
    ap.add_argument("--tokens", type=int, default=16, help="latent tokens per frame (tokenizer cpu preset: 16)")
    ap.add_argument("--channels", type=int, default=32)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--lengths", type=int, nargs="+", default=[32, 64, 128, 256])
    ap.add_argument("--device", default="auto", help="auto, cpu or cuda")
    ap.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto",
                    help="auto: bf16 on a GPU that supports it, else fp32 (memory is not timed)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads in each run (0 = torch's default)")
    ap.add_argument("--json", type=Path, default=DEFAULT_JSON)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return 0

    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    if args.precision == "auto":
        from ahri_core.runtime import choose_precision

        args.precision = choose_precision("auto", torch.device(device)).precision
    from ahri_core.models.dynamics import param_count

    params = param_count(args.preset, tokens=args.tokens, channels=args.channels)
    rows = []
    env = dict(os.environ)
    env["PYTHONPATH"] = str(HERE.parent) + os.pathsep + env.get("PYTHONPATH", "")
    # glibc: serve every block over 128 KiB by mmap and give it back on free (no dynamic threshold), so the
    # resident set follows what is allocated instead of keeping freed heap pages (fragmentation).
    env.setdefault("MALLOC_MMAP_THRESHOLD_", "131072")
    for T in args.lengths:
        for ckpt in (False, True):
            spec = dict(preset=args.preset, tokens=args.tokens, channels=args.channels, batch=args.batch, T=T,
                        ckpt=ckpt, device=device, precision=args.precision, threads=args.threads)
            proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True,
                                  text=True, env=env)
            if proc.returncode != 0:
                tail = proc.stderr.strip().splitlines()[-1:] or ["(no message)"]
                rows.append({"T": T, "ckpt": ckpt, "error": tail[0]})
                print(f"T={T} ckpt={ckpt}: failed: {tail[0]}", file=sys.stderr)
                continue
            rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    fits = {}
    for ckpt in (False, True):
        ok = [r for r in rows if r["ckpt"] == ckpt and "error" not in r]
        if len(ok) >= 2:
            fits["checkpointing" if ckpt else "plain"] = slope([r["T"] for r in ok], [r["step_bytes"] for r in ok])
    result = {
        "benchmark": "dynamics_memory",
        "date": time.strftime("%Y-%m-%d"),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "device": torch.cuda.get_device_name(0) if device.startswith("cuda") else "cpu",
        "torch": torch.__version__,
        "threads": args.threads or torch.get_num_threads(),
        "settings": {"preset": args.preset, "params": params, "tokens": args.tokens, "channels": args.channels,
                     "batch": args.batch, "precision": args.precision,
                     "measure": "cuda max_memory_allocated" if device.startswith("cuda") else "ru_maxrss growth"},
        "rows": rows,
        "exponent": fits,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.json.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2))
    tmp.replace(args.json)

    mib = 1024 * 1024
    print(f"dynamics training-step memory: preset {args.preset} ({params / 1e6:.1f}M params), batch {args.batch}, "
          f"{args.tokens}x{args.channels} latents, {args.precision}, {result['device']}")
    print("| T | plain MiB | checkpointing MiB | ratio | plain s | ckpt s |")
    print("|---:|---:|---:|---:|---:|---:|")
    for T in args.lengths:
        p = next((r for r in rows if r["T"] == T and not r["ckpt"]), {})
        c = next((r for r in rows if r["T"] == T and r["ckpt"]), {})
        if "step_bytes" in p and "step_bytes" in c:
            print(f"| {T} | {p['step_bytes'] / mib:.1f} | {c['step_bytes'] / mib:.1f} | "
                  f"{c['step_bytes'] / p['step_bytes']:.2f} | {p['seconds']:.2f} | {c['seconds']:.2f} |")
        else:
            print(f"| {T} | {p.get('error', '-')} | {c.get('error', '-')} | | | |")
    print("growth exponent (log-log slope): " + ", ".join(f"{k} {v:.2f}" for k, v in fits.items()))
    print(f"JSON: {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

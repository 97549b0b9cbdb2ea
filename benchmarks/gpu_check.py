"""GPU check: training speed, MFU, memory against T and rollout cost of a dynamics preset, in one run.

On a machine with a GPU this is the one command to run; it takes under 8 minutes and writes one JSON:

    python benchmarks/gpu_check.py                        # small preset, 60 s of training
    python benchmarks/gpu_check.py --presets              # only the table of every dynamics preset
    python benchmarks/gpu_check.py --smoke --device cpu   # seconds, tiny preset: what the tests run

The parts, in order (each part's wall time is in the JSON under "seconds"):

1. matmul rate: the best FLOP/s of square bf16 (and fp32) matmuls, CUDA 4096^2 and 8192^2 timed between
   synchronizations, CPU 1024^2. MFU is taken against this measured bf16 rate, not a data-sheet peak.
2. training: the preset on random latents of the cpu tokenizer's shape (64 tokens x 12 channels by default)
   for ``--seconds``. One step is ``ahri train``'s own (``TrainStep`` on ``DynamicsObjective``, see
   ``train_steps.py``): noise levels and the diffusion-forcing loss with shortcut bootstrap targets (the
   teacher's two extra forward passes on the bootstrap items are in the time), backward, gradient clipping,
   AdamW and, where the preset trains with one, the EMA update with its warm-up. bf16
   autocast on CUDA; on a CPU the precision ``auto`` picks. A batch that does not fit is halved until it does.
3. rollout: the KV-cached sampler (``ahri_core.inference.sampler``, as ``benchmarks/bench_sampling.py`` uses it), the same
   rollout at 4 and at 64 denoising steps per frame (the ratio: ideal 16, and 65 / 5 = 13 with the one commit
   call per frame), and the cost of one new frame (4 steps + its commit) with 8 and with 64 frames of context.
4. memory: the peak of one training step (as in 2.) at each T in ``--lengths``, batch 1, with gradient
   checkpointing (and without, for comparison). CUDA: ``torch.cuda.max_memory_allocated``; "step" is the growth
   over what was allocated before the step (weights and optimizer state), so it holds the gradients and the
   activations. CPU: the growth of the peak resident set (VmHWM, reset before each step), an approximation.
   An out-of-memory is recorded as "oom".
5. presets: parameters and training FLOPs per token of every dynamics preset and, on a GPU, memory per batch
   item at T = 64 with and without checkpointing (the peak at batch 2 minus the peak at batch 1; with it, the
   batch that 15 GiB of a 16 GB card holds) and a short training throughput (``--preset-seconds``) with its
   MFU. A CPU measures the memory of the presets under 5M parameters only (VmHWM) and no throughput.

Model FLOPs (for MFU). A frame enters the model as L = N + R tokens of width D (N model tokens after packing,
R registers). One forward pass costs, per frame,

    2 * (L * P_block + N * P_io + P_frame)  +  attention

where P_block counts the weights every token is multiplied by in the blocks (attention q, kv, out and the
SwiGLU), P_io the input and output projections (latent tokens only) and P_frame the weights used once per
frame (tau MLP, AdaLN modulations). Attention adds 4 * L^2 * D per frame for each spatial layer (QK^T and AV
within the frame) and 4 * L * D * (T + 1) / 2 for each temporal layer (causal: frame t attends to t + 1
frames, T + 1 over 2 on average). Training is 3 x forward (backward costs 2 x), the usual
"6 x parameters per token" plus the attention term. Recomputation under checkpointing and the bootstrap
teacher's forward passes are not model FLOPs: MFU counts only useful work (``mfu``), and ``mfu_with_teacher``
adds the teacher's passes. Per latent token = per frame / latent tokens per frame.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import json
import math
import os
import platform
import statistics
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from torch import nn
from train_steps import BenchStep, bootstrap_items

from ahri_core.config.presets import DYNAMICS_PRESETS
from ahri_core.config.settings import TrainSettings
from ahri_core.inference.sampler import ModelTraits, Sampler
from ahri_core.models.dynamics import DynamicsModel, build_dynamics, dynamics_config, param_count
from ahri_core.models.tokenizer import tokenizer_config
from ahri_core.runtime import choose_precision, cpu_name, process_memory, resolve_device
from ahri_core.train.common import with_preset_defaults

RESULTS = Path(__file__).resolve().parent / "results"
K_MAX = 64
GIB = 1024**3
CARD_16GB = 15 * GIB  # what a 16 GB card leaves to one process, about


# ---------------------------------------------------------------------------------------------- helpers
def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def is_oom(err: BaseException) -> bool:
    oom = getattr(torch.cuda, "OutOfMemoryError", None)
    return (oom is not None and isinstance(err, oom)) or "out of memory" in str(err).lower()


def free_memory(dev: torch.device) -> None:
    gc.collect()
    if dev.type == "cuda":
        torch.cuda.empty_cache()


def guarded(dev: torch.device, fn, *args, **kwargs) -> Any:
    """``fn(...)``, or "oom" when it runs out of memory (the failed call's tensors are freed first)."""
    try:
        return fn(*args, **kwargs)
    except (RuntimeError, MemoryError) as err:
        if not is_oom(err):
            raise
    free_memory(dev)  # outside the except block: the traceback (and the tensors its frames hold) is gone
    return "oom"


def median_of(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


class CpuPeak:
    """Growth of this process's peak resident set over one block (Linux; None elsewhere).

    The peak (VmHWM) is reset to the current resident set through /proc/self/clear_refs before the block, and
    glibc is asked to hand large blocks back on free (mmap threshold 128 KiB, trim before the block), so the
    resident set follows what is allocated. An approximation: what torch's CPU allocator keeps is not seen.
    """

    _libc: Any = None

    @classmethod
    def setup(cls) -> None:
        with contextlib.suppress(OSError, AttributeError):
            cls._libc = ctypes.CDLL("libc.so.6")
            cls._libc.mallopt(-3, 131072)  # M_MMAP_THRESHOLD

    def __enter__(self) -> CpuPeak:
        gc.collect()
        if self._libc is not None:
            with contextlib.suppress(AttributeError):
                self._libc.malloc_trim(0)
        self.ok = False
        with contextlib.suppress(OSError):
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self.ok = True
        self.base = process_memory().get("VmRSS")
        return self

    def __exit__(self, *exc) -> None:
        peak = process_memory().get("VmHWM")
        self.growth = peak - self.base if (self.ok and peak is not None and self.base is not None) else None
        self.peak = peak if self.ok else None


class Peak:
    """Peak memory of one block on ``dev``: ``peak`` (bytes in use at the peak) and ``growth`` (over the start)."""

    def __init__(self, dev: torch.device) -> None:
        self.dev = dev

    def __enter__(self) -> Peak:
        if self.dev.type == "cuda":
            sync(self.dev)
            torch.cuda.reset_peak_memory_stats(self.dev)
            self.base = torch.cuda.memory_allocated(self.dev)
        else:
            self._cpu = CpuPeak().__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self.dev.type == "cuda":
            sync(self.dev)
            self.peak = torch.cuda.max_memory_allocated(self.dev)
            self.growth = self.peak - self.base
        else:
            self._cpu.__exit__(*exc)
            self.peak, self.growth = self._cpu.peak, self._cpu.growth


# ---------------------------------------------------------------------------------------------- FLOPs
def model_flops(model: DynamicsModel, frames: int) -> dict[str, float]:
    """Forward and training FLOPs per frame and per latent token for windows of ``frames`` frames (docstring)."""
    cfg = model.config
    n, d = cfg.model_tokens, cfg.dim
    length = n + cfg.registers
    p_block = p_io = p_frame = 0
    for name, m in model.named_modules():
        if not isinstance(m, nn.Linear):
            continue
        size = m.weight.numel()
        if name in ("latent_in", "head"):
            p_io += size
        elif name.startswith("blocks.") and not name.endswith(".mod"):
            p_block += size
        else:  # tau MLP, the blocks' and the output's AdaLN modulation: once per frame
            p_frame += size
    attention = 0.0
    for kind in cfg.layer_kinds():
        attention += 4 * length * length * d if kind == "S" else 4 * length * d * (frames + 1) / 2
    forward = 2 * (length * p_block + n * p_io + p_frame) + attention
    return {"forward_per_frame": forward, "train_per_frame": 3 * forward,
            "train_per_token": 3 * forward / cfg.tokens, "params_per_token": p_block * length / cfg.tokens}


# ---------------------------------------------------------------------------------------------- 1. matmul
def matmul_rate(dev: torch.device, dtype: torch.dtype, sizes: list[int], seconds: float) -> dict[str, Any]:
    """Best FLOP/s of n x n matmuls in ``dtype``, over about ``seconds`` per size."""
    best, per_size = 0.0, {}
    for n in sizes:
        a = torch.randn(n, n, device=dev).to(dtype)
        b = torch.randn(n, n, device=dev).to(dtype)
        a @ b
        sync(dev)
        t0 = time.perf_counter()
        a @ b
        sync(dev)
        one = max(time.perf_counter() - t0, 1e-6)
        reps = max(1, min(200, int(seconds / 4 / one)))  # a few timed batches of reps in the budget
        rate, start = 0.0, time.perf_counter()
        while True:
            sync(dev)
            t0 = time.perf_counter()
            for _ in range(reps):
                a @ b
            sync(dev)
            rate = max(rate, 2 * n**3 * reps / (time.perf_counter() - t0))
            if time.perf_counter() - start >= seconds:
                break
        per_size[str(n)] = rate
        best = max(best, rate)
        del a, b
    free_memory(dev)
    return {"flops": best, "by_size": per_size}


# ---------------------------------------------------------------------------------------------- 2. training
class Trainer:
    """One training step as ``ahri train`` computes it (see the module docstring), on given latents: the
    real objective and step (:mod:`train_steps`), with the preset's training settings."""

    def __init__(self, model: DynamicsModel, preset: str, dev: torch.device, precision: str) -> None:
        train = with_preset_defaults(TrainSettings(preset=preset), "dynamics")
        self.model, self.dev, self.precision = model, dev, precision
        self.bench = BenchStep.on_model(model, train, precision)

    def step(self, x: torch.Tensor) -> tuple[float, float]:
        """Returns the loss and the fraction of items that took the bootstrap target."""
        res = self.bench(x)
        return res.outs[-1].logs["loss"] if res.outs else math.nan, bootstrap_items(res)


def make_model(preset: str, tokens: int, channels: int, dev: torch.device, **overrides: Any) -> DynamicsModel:
    torch.manual_seed(0)
    with dev:  # initialised where it runs: large presets build in a blink on a GPU
        return build_dynamics(preset, tokens=tokens, channels=channels, k_max=K_MAX, **overrides)


def latents(batch: int, frames: int, tokens: int, channels: int, dev: torch.device) -> torch.Tensor:
    g = torch.Generator().manual_seed(2)
    return torch.tanh(torch.randn(batch, frames, tokens, channels, generator=g)).to(dev)


def _train_once(preset, batch, frames, tokens, channels, dev, precision, seconds, warmup, min_steps) -> dict:
    model = make_model(preset, tokens, channels, dev).train()
    trainer = Trainer(model, preset, dev, precision)
    x = latents(batch, frames, tokens, channels, dev)
    for _ in range(warmup):
        trainer.step(x)
    losses, boot = [], []
    sync(dev)
    t0 = time.perf_counter()
    while True:
        loss, b = trainer.step(x)
        losses.append(loss)
        boot.append(b)
        if time.perf_counter() - t0 >= seconds and len(losses) >= min_steps:
            break
    sync(dev)
    elapsed = time.perf_counter() - t0
    fl = model_flops(model, frames)
    steps = len(losses)
    frames_per_s = steps * batch * frames / elapsed
    achieved = fl["train_per_frame"] * frames_per_s
    teacher = 2 * fl["forward_per_frame"] * frames_per_s * statistics.mean(boot)
    return {
        "preset": preset, "params": param_count(model), "batch": batch, "frames": frames, "precision": precision,
        "latent_shape": [tokens, channels], "model_tokens": model.config.model_tokens, "pack": model.config.pack,
        "steps": steps, "seconds": elapsed, "step_ms": 1e3 * elapsed / steps,
        "frames_per_s": frames_per_s, "tokens_per_s": frames_per_s * tokens,
        "model_flops_per_token": fl["train_per_token"], "model_flops_per_s": achieved,
        "teacher_flops_per_s": teacher, "bootstrap_items": statistics.mean(boot),
        "loss_first": losses[0], "loss_last": losses[-1], "loss_finite": all(map(math.isfinite, losses)),
    }


def train_speed(preset, batch, frames, tokens, channels, dev, precision, seconds, warmup, min_steps=3) -> dict:
    """Training throughput; a batch that runs out of memory is halved until one fits."""
    tried = []
    while batch >= 1:
        out = guarded(dev, _train_once, preset, batch, frames, tokens, channels, dev, precision, seconds, warmup,
                      min_steps)
        if out != "oom":
            out["oom_batches"] = tried
            return out
        tried.append(batch)
        batch //= 2
    return {"preset": preset, "frames": frames, "error": "oom", "oom_batches": tried}


def add_mfu(row: dict, mm: dict) -> dict:
    """MFU against the measured bf16 matmul rate (the fp32 rate where bf16 matmuls do not run)."""
    ref = "bf16" if mm["bf16"].get("flops") else "fp32"
    peak = mm[ref].get("flops")
    if row.get("model_flops_per_s") is not None and peak:
        row["mfu"] = row["model_flops_per_s"] / peak
        row["mfu_with_teacher"] = (row["model_flops_per_s"] + row["teacher_flops_per_s"]) / peak
        row["mfu_reference"] = f"measured {ref} matmul"
        if mm["fp32"].get("flops"):
            row["fraction_of_fp32_matmul"] = row["model_flops_per_s"] / mm["fp32"]["flops"]
    return row


def matmul_rates(dev: torch.device, sizes: list[int], seconds: float) -> dict[str, Any]:
    out: dict[str, Any] = {"sizes": sizes}
    for name, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
        try:
            out[name] = matmul_rate(dev, dtype, sizes, seconds)
        except RuntimeError as err:  # a card or build without bf16 matmuls
            out[name] = {"flops": None, "error": str(err).splitlines()[0][:200]}
    return out


# ---------------------------------------------------------------------------------------------- 3. memory
def _step_memory(trainer: Trainer, x: torch.Tensor) -> dict:
    with Peak(trainer.dev) as p:
        t0 = time.perf_counter()
        trainer.step(x)
        sync(trainer.dev)
        seconds = time.perf_counter() - t0
    return {"peak_bytes": p.peak, "step_bytes": p.growth, "seconds": seconds}


def memory_rows(preset, lengths, batch, tokens, channels, dev, precision, plain: bool) -> list[dict]:
    """One training step's peak at each T (batch ``batch``), checkpointing on (and off when ``plain``)."""
    model = make_model(preset, tokens, channels, dev).train()
    trainer = Trainer(model, preset, dev, precision)
    trainer.step(latents(batch, 2, tokens, channels, dev))  # warm-up: optimizer state, kernels
    rows = []
    for frames in lengths:
        for ckpt in (True, False) if plain else (True,):
            model.set_grad_checkpointing(ckpt)
            x = latents(batch, frames, tokens, channels, dev)
            out = guarded(dev, _step_memory, trainer, x)
            del x
            row = {"T": frames, "batch": batch, "grad_checkpointing": ckpt}
            row.update({"error": "oom"} if out == "oom" else out)
            rows.append(row)
            free_memory(dev)
    model.set_grad_checkpointing(False)
    return rows


# ---------------------------------------------------------------------------------------------- 4. rollout
def _timed_rollout(sampler: Sampler, ctx: torch.Tensor, horizon: int, dev: torch.device):
    sync(dev)
    t0 = time.perf_counter()
    res = sampler.rollout(ctx, horizon, generator=0)
    sync(dev)
    return time.perf_counter() - t0, res


def rollout_costs(preset, tokens, channels, dev, precision, context, horizon, points, repeat) -> dict:
    torch.manual_seed(0)
    model = make_model(preset, tokens, channels, dev, max_frames=context + 1).eval()
    traits = ModelTraits(k_max=K_MAX, shortcut=True, max_frames=context + 1)
    ctx = torch.randn(1, context, tokens, channels)
    samplers = {k: Sampler(model, traits, steps=k, tau_ctx=0.1, cache=True, precision=precision) for k in (4, 64)}
    _timed_rollout(samplers[4], ctx, 2, dev)  # warm-up
    best = {4: float("inf"), 64: float("inf")}
    for _ in range(repeat):  # interleaved, so both see the same spells of a shared machine's load
        for k in (4, 64):
            best[k] = min(best[k], _timed_rollout(samplers[k], ctx, horizon, dev)[0])
    out: dict[str, Any] = {
        "batch": 1, "context": context, "horizon": horizon, "precision": precision, "cache": True,
        "seconds_4": best[4], "seconds_64": best[64], "ratio_64_over_4": best[64] / best[4],
        "ideal": 16,
    }
    # One long rollout after a single given frame; new frame h (0-based) has 1 + h frames of context before it.
    # Each frame's time covers its 4 steps (the commit of the frame before rides along); the median of three
    # neighbours smooths hiccups.
    far = max(points)
    model = make_model(preset, tokens, channels, dev, max_frames=far + 8).eval()
    traits = ModelTraits(k_max=K_MAX, shortcut=True, max_frames=far + 8)
    s = Sampler(model, traits, steps=4, tau_ctx=0.1, cache=True, precision=precision)
    one = torch.randn(1, 1, tokens, channels)
    _timed_rollout(s, one, 2, dev)
    frame_ms: dict[str, float] = {}
    for _ in range(repeat):
        _, res = _timed_rollout(s, one, far + 2, dev)
        for f in points:
            v = 1e3 * median_of(res.frame_seconds[f - 2 : f + 1])
            frame_ms[str(f)] = min(frame_ms.get(str(f), float("inf")), v)
    out["frame_ms"] = frame_ms  # keyed by frames of context
    out["frame_steps"] = 4
    out["frame_growth"] = frame_ms[str(far)] / frame_ms[str(min(points))]
    return out


# ---------------------------------------------------------------------------------------------- 5. presets
def _per_item(preset, frames, tokens, channels, dev, precision, ckpt) -> dict:
    """Peak of a training step at batch 1 and 2: per item = the difference, fixed = the rest."""
    model = make_model(preset, tokens, channels, dev, grad_checkpointing=ckpt).train()
    trainer = Trainer(model, preset, dev, precision)
    trainer.step(latents(1, 2, tokens, channels, dev))
    peaks = {}
    for b in (1, 2):
        out = guarded(dev, _step_memory, trainer, latents(b, frames, tokens, channels, dev))
        if out == "oom":
            return {"error": f"oom at batch {b}"}
        peaks[b] = out["peak_bytes"] if dev.type == "cuda" else out["step_bytes"]
    if peaks[1] is None or peaks[2] is None:
        return {"error": "not measurable here"}
    per_item = max(peaks[2] - peaks[1], 0)
    row = {"per_item_bytes": per_item, "batch1_bytes": peaks[1]}
    if dev.type == "cuda" and per_item > 0:
        row["batch_in_15gib"] = max(0, int((CARD_16GB - (peaks[1] - per_item)) // per_item))
    return row


def presets_table(tokens, channels, dev, precision, measure_memory, train_seconds, frames, batch, deadline) -> list:
    rows = []
    for name in DYNAMICS_PRESETS:
        cfg = dynamics_config(name, tokens=tokens, channels=channels)
        with torch.device("meta"):
            meta = DynamicsModel(cfg)
        fl = model_flops(meta, frames)
        row: dict[str, Any] = {
            "preset": name, "params": sum(p.numel() for p in meta.parameters()), "dim": cfg.dim, "depth": cfg.depth,
            "heads": cfg.heads, "kv_heads": cfg.kv_heads or cfg.heads, "model_tokens": cfg.model_tokens,
            "pack": cfg.pack, "registers": cfg.registers, "max_frames": cfg.max_frames, "T": frames,
            "train_flops_per_token": fl["train_per_token"], "memory": None, "throughput": None,
        }
        del meta
        if measure_memory(row["params"]):
            if time.monotonic() > deadline:
                row["memory"] = "skipped: time budget"
            else:
                row["memory"] = {}
                for ck in (False, True):
                    got = guarded(dev, _per_item, name, frames, tokens, channels, dev, precision, ck)
                    row["memory"]["checkpointing" if ck else "plain"] = {"error": "oom"} if got == "oom" else got
                free_memory(dev)
        if train_seconds > 0:
            if time.monotonic() > deadline:
                row["throughput"] = "skipped: time budget"
            else:
                tr = train_speed(name, batch, frames, tokens, channels, dev, precision, train_seconds, warmup=3)
                row["throughput"] = {k: tr.get(k) for k in ("batch", "tokens_per_s", "frames_per_s", "step_ms",
                                                           "model_flops_per_s", "teacher_flops_per_s", "error")}
                free_memory(dev)
        rows.append(row)
    return rows


# ---------------------------------------------------------------------------------------------- main
def _ints(text: str) -> list[int]:
    return [int(v) for v in text.replace(" ", "").split(",") if v]


def _fmt_bytes(v: Any) -> str:
    return f"{v / 2**20:,.0f} MiB" if isinstance(v, (int, float)) else str(v)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    ap.add_argument("--preset", default=None, help="dynamics preset to train (default small; tiny with --smoke)")
    ap.add_argument("--seconds", type=float, default=None, help="training time (default 60; 3 with --smoke)")
    ap.add_argument("--lengths", default=None, help="T for the memory part (default 64,128,256; 8,16 with --smoke)")
    ap.add_argument("--batch", type=int, default=None, help="training batch (default 8; halved on out-of-memory)")
    ap.add_argument("--frames", type=int, default=None, help="training window T (default 64; 8 with --smoke)")
    ap.add_argument("--tokens", type=int, default=None, help="latent tokens per frame (default: the cpu tokenizer's)")
    ap.add_argument("--channels", type=int, default=None, help="latent channels (default: the cpu tokenizer's)")
    ap.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto",
                    help="auto: bf16 on a GPU that has it; on CPU what ahri train would pick (fp32 with --smoke)")
    ap.add_argument("--context", type=int, default=16, help="context frames of the 4 vs 64 step rollouts")
    ap.add_argument("--horizon", type=int, default=None, help="frames of the 4 vs 64 step rollouts (default 16)")
    ap.add_argument("--frame-points", default="8,64", help="frames of context at which a new frame is timed")
    ap.add_argument("--presets", action="store_true",
                    help="only the presets table (parameters; on a GPU also memory per item and throughput)")
    ap.add_argument("--preset-seconds", type=float, default=8.0, help="training time per preset in the table (GPU)")
    ap.add_argument("--budget", type=float, default=450.0,
                    help="seconds; the presets table skips what would start after this (the check stays < 8 min)")
    ap.add_argument("--threads", type=int, default=None,
                    help="CPU threads (default: torch's; 1 with --smoke, which must not crowd a shared machine)")
    ap.add_argument("--smoke", action="store_true", help="tiny preset, a few seconds: checks the script, not the card")
    ap.add_argument("--out", type=Path, default=None,
                    help="JSON path (default benchmarks/results/gpu_check.json, gpu_check_presets.json with --presets)")
    args = ap.parse_args(argv)

    start = time.monotonic()
    deadline = start + args.budget
    threads = args.threads if args.threads is not None else (1 if args.smoke else 0)
    if threads:
        torch.set_num_threads(threads)
    dev = resolve_device(args.device)
    cuda = dev.type == "cuda"
    smoke = args.smoke
    tok = tokenizer_config("cpu")
    tokens = args.tokens or (16 if smoke else tok.tokens)
    channels = args.channels or (8 if smoke else tok.channels)
    preset = args.preset or ("tiny" if smoke else "small")
    seconds = args.seconds if args.seconds is not None else (3.0 if smoke else 60.0)
    lengths = _ints(args.lengths) if args.lengths else ([8, 16] if smoke else [64, 128, 256])
    batch = args.batch or (2 if smoke else 8)
    frames = args.frames or (8 if smoke else 64)
    horizon = args.horizon or (4 if smoke else 16)
    context = min(args.context, 4) if smoke else args.context
    points = _ints(args.frame_points)
    repeat = 1 if smoke else 2
    out_path = args.out or RESULTS / ("gpu_check_presets.json" if args.presets else "gpu_check.json")

    if args.precision == "auto" and not cuda and (smoke or args.presets):
        precision, why = "fp32", "CPU, smoke run or presets table: fp32 without timing"
    else:
        built: dict[str, DynamicsModel] = {}

        def timing(p: str) -> None:  # only called on a CPU with native bf16, to time both precisions
            if "m" not in built:
                built["m"] = make_model(preset, tokens, channels, dev).train()
            Trainer(built["m"], preset, dev, p).step(latents(1, 4, tokens, channels, dev))

        choice = choose_precision(args.precision, dev, step=timing, key=f"gpu_check {preset}", budget_s=1.5)
        precision, why = choice.precision, choice.reason
        built.clear()
    name = torch.cuda.get_device_name(dev) if cuda else cpu_name()
    result: dict[str, Any] = {
        "benchmark": "gpu_check_presets" if args.presets else "gpu_check",
        "smoke": smoke,
        "date": datetime.now().isoformat(timespec="seconds"),
        "device": {
            "type": dev.type, "name": name, "torch": torch.__version__, "cuda": torch.version.cuda,
            "memory_bytes": torch.cuda.get_device_properties(dev).total_memory if cuda else None,
            "cpu": cpu_name(), "threads": torch.get_num_threads(), "platform": platform.platform(),
        },
        "settings": {
            "preset": preset, "batch": batch, "frames": frames, "seconds": seconds, "lengths": lengths,
            "latent_shape": [tokens, channels], "precision": precision, "precision_reason": why, "k_max": K_MAX,
            "context": context, "horizon": horizon, "frame_points": points,
        },
        "seconds": {},
    }
    timings = result["seconds"]

    def part(label: str):
        t0 = time.monotonic()
        print(f"[{time.monotonic() - start:6.1f} s] {label} ...", file=sys.stderr, flush=True)
        return lambda: timings.__setitem__(label, time.monotonic() - t0)

    done = part("matmul")
    sizes = [4096, 8192] if cuda else ([256] if smoke else [1024])
    budget = 0.3 if smoke else 2.0
    mm = result["matmul"] = matmul_rates(dev, sizes, budget)
    done()

    if not args.presets:
        done = part("train")
        tr = train_speed(preset, batch, frames, tokens, channels, dev, precision, seconds, warmup=1 if smoke else 5)
        result["train"] = add_mfu(tr, mm)
        free_memory(dev)
        done()

        done = part("rollout")
        result["rollout"] = rollout_costs(preset, tokens, channels, dev, precision, context, horizon, points, repeat)
        free_memory(dev)
        done()

        if not cuda:  # from here on glibc hands large blocks back at once: slower, so after the timed parts
            CpuPeak.setup()
        done = part("memory")
        result["memory"] = {
            "batch": 1,
            "measure": "torch.cuda.max_memory_allocated" if cuda else "VmHWM growth (approximate)",
            "rows": memory_rows(preset, lengths, 1, tokens, channels, dev, precision, plain=True),
        }
        free_memory(dev)
        done()

    if not cuda:
        CpuPeak.setup()
    done = part("presets")
    if cuda:
        def measure(params: int) -> bool:
            return True
        preset_seconds = args.preset_seconds
    else:  # a CPU measures the memory of the small presets only, and no throughput (bench_dynamics_train.py does)
        def measure(params: int) -> bool:
            return not smoke and params < 5_000_000
        preset_seconds = 0.0
    result["presets"] = presets_table(tokens, channels, dev, precision, measure, preset_seconds, 64, 8, deadline)
    for row in result["presets"]:
        if isinstance(row["throughput"], dict):
            add_mfu(row["throughput"], mm)
    done()
    timings["total"] = time.monotonic() - start

    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(out_path.name + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    tmp.replace(out_path)
    report(result)
    print(f"JSON: {out_path}")
    return 0


def report(r: dict) -> None:
    s = r["settings"]
    print(f"gpu check on {r['device']['name']} ({r['device']['type']}), torch {r['device']['torch']}, "
          f"precision {s['precision']}{' (SMOKE: not benchmark numbers)' if r['smoke'] else ''}")
    if "matmul" in r:
        print("  matmul: " + ", ".join(
            f"{k} {r['matmul'][k]['flops'] / 1e9:,.0f} GFLOP/s" if r["matmul"][k]["flops"] else f"{k} failed"
            for k in ("bf16", "fp32")))
    tr = r.get("train")
    if tr and "error" not in tr:
        print(f"  train {tr['preset']} ({tr['params'] / 1e6:.1f}M), batch {tr['batch']} x T {tr['frames']}: "
              f"{tr['steps']} steps in {tr['seconds']:.1f} s, {tr['tokens_per_s']:,.0f} tokens/s, "
              f"{tr['frames_per_s']:,.1f} frames/s, MFU {100 * tr.get('mfu', float('nan')):.1f}% "
              f"({100 * tr.get('mfu_with_teacher', float('nan')):.1f}% with the teacher's passes)")
    elif tr:
        print(f"  train: {tr['error']} (batches tried {tr['oom_batches']})")
    if "memory" in r:
        for row in r["memory"]["rows"]:
            what = row.get("error") or f"peak {_fmt_bytes(row['peak_bytes'])}, step {_fmt_bytes(row['step_bytes'])}"
            print(f"  memory T={row['T']:<4} checkpointing {'on ' if row['grad_checkpointing'] else 'off'}: {what}")
    ro = r.get("rollout")
    if ro:
        fm = ", ".join(f"{k} frames of context {v:.1f} ms" for k, v in ro["frame_ms"].items())
        print(f"  rollout {ro['horizon']} frames: 4 steps {ro['seconds_4']:.3f} s, 64 steps {ro['seconds_64']:.3f} s, "
              f"ratio {ro['ratio_64_over_4']:.1f}; one frame (4 steps + commit): {fm}")
    print("  | preset | params | train GFLOP/token (T=64) | per item plain | per item ckpt | tokens/s | MFU |")
    for p in r.get("presets", []):
        mem = p["memory"] if isinstance(p["memory"], dict) else {}
        cells = [_fmt_bytes(mem.get(k, {}).get("per_item_bytes", mem.get(k, {}).get("error", p["memory"])))
                 for k in ("plain", "checkpointing")]
        thr = p["throughput"]
        ok = isinstance(thr, dict) and thr.get("tokens_per_s")
        tps = f"{thr['tokens_per_s']:,.0f}" if ok else str(thr.get("error") if isinstance(thr, dict) else thr)
        mfu = f"{100 * thr['mfu']:.1f}%" if ok and "mfu" in thr else "-"
        print(f"  | {p['preset']} | {p['params'] / 1e6:.2f}M | {p['train_flops_per_token'] / 1e9:.3f} | "
              f"{cells[0]} | {cells[1]} | {tps} | {mfu} |")
    print("  seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in r["seconds"].items()))


if __name__ == "__main__":
    sys.exit(main())

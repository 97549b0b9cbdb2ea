"""A rough estimate of a training run's peak memory, and the machine's memory, to warn before a run starts.

The estimate is an order of magnitude, not a measurement: a transformer of ``dim`` x ``depth`` blocks has about
``(10 + 2 * mlp_ratio) * dim**2`` parameters per block (attention, MLP and the adaptive-norm conditioning); training in fp32 with AdamW keeps each parameter five
times (weights, gradients, two moments, and an EMA copy when there is one); the activations kept for the
backward pass grow with every token of a batch (batch x frames x tokens), each block keeping a few dim-wide
vectors per token and its attention scores (heads x tokens**2 per frame). Gradient checkpointing keeps only the
block inputs, plus one block's activations while it is recomputed.

It is meant to tell a run that cannot fit (the medium preset on a 24 GB machine) from one that can, before the
kernel kills it hours later; the allocator, the data loader and the framework add some hundreds of megabytes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

FLOAT = 4  # bytes of an fp32 value
OVERHEAD = 600 * 2**20  # the framework, the data loader, the interpreter


@dataclass(frozen=True)
class MemoryEstimate:
    params: int  # parameter count
    weights_bytes: int  # weights, gradients, optimizer moments (and the EMA copy)
    activations_bytes: int  # kept for the backward pass, at the largest batch
    total_bytes: int

    def line(self) -> str:
        return (f"about {gib(self.total_bytes)} ({self.params / 1e6:.0f}M parameters: {gib(self.weights_bytes)} "
                f"with gradients and optimizer state; activations {gib(self.activations_bytes)})")


def gib(n: float) -> str:
    return f"{n / 2**30:.1f} GB" if n >= 2**30 / 10 else f"{n / 2**20:.0f} MB"


def estimate_training_memory(
    *, dim: int, depth: int, heads: int, mlp_ratio: float, tokens: int, frames: int, batch: int,
    ema: bool = False, grad_checkpointing: bool = False,
) -> MemoryEstimate:
    """The peak memory of one training step of a transformer: ``tokens`` per frame (registers included),
    ``frames`` per item, ``batch`` items (the largest batch of the run: with alternating short and long
    batches, the larger of the two)."""
    per_block = int((10 + 2 * mlp_ratio) * dim * dim)
    params = per_block * depth
    copies = 5 if ema else 4
    weights = params * FLOAT * copies
    n = batch * frames * tokens  # token vectors in a batch
    # each block keeps its input, the normalised and modulated inputs, q/k/v, the attention output and the MLP
    # hidden layer before and after its activation (calibrated on the small preset: one measured step)
    per_token = (12 + 3 * mlp_ratio) * dim * FLOAT
    scores = batch * frames * heads * tokens * tokens * FLOAT * 2  # scores and their softmax, per block
    per_block_act = n * per_token + scores
    if grad_checkpointing:  # the block inputs, and one block recomputed with its gradients
        act = depth * n * dim * FLOAT + 2 * per_block_act
    else:  # every block's activations, and the gradients of one block's while it is differentiated
        act = (depth + 1) * per_block_act
    return MemoryEstimate(params=params, weights_bytes=weights, activations_bytes=int(act),
                          total_bytes=int(weights + act + OVERHEAD))


def machine_memory() -> dict[str, int]:
    """{"total", "available"} in bytes: MemAvailable of /proc/meminfo (Linux), else the free pages the system
    reports; empty when neither can be read."""
    found: dict[str, int] = {}
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in ("MemTotal", "MemAvailable"):
                    found["total" if key == "MemTotal" else "available"] = int(rest.split()[0]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    if len(found) < 2 and hasattr(os, "sysconf"):
        try:
            page = os.sysconf("SC_PAGE_SIZE")
            found.setdefault("total", os.sysconf("SC_PHYS_PAGES") * page)
            found.setdefault("available", os.sysconf("SC_AVPHYS_PAGES") * page)
        except (ValueError, OSError):
            pass
    return found


MARGIN = 0.8  # the estimate is rough (it measured up to a third low on small models): warn within 20% of the limit


def memory_warning(est: MemoryEstimate, available: int | None = None) -> str | None:
    """A one-line warning when ``est`` comes within :data:`MARGIN` of the available memory (``available``:
    bytes; default the machine's now), else None."""
    if available is None:
        available = machine_memory().get("available")
    if not available or est.total_bytes <= MARGIN * available:
        return None
    return (f"this run needs {est.line()} and {gib(available)} of memory is available now: the system may kill "
            "it for lack of memory")

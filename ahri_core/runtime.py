"""Where and how models run: the device, the precision and the CPU threads, chosen in one place.

Training, ``tokenize``, eval, rollout and the demo all come here; nothing above this module picks a
device or an autocast dtype on its own.

Precision ``auto`` (the default everywhere):
- CUDA: bf16 where the card supports it, else fp32.
- CPU without native bf16 (AVX2-only x86, most laptops): fp32 at once. bf16 autocast is emulated there,
  and one such CPU ran a bf16 matmul about 190x slower than fp32.
- CPU with native bf16 (AVX512-BF16 / AMX, ARM BF16): the caller's actual step (a training step, or
  a forward pass) is timed in both precisions for a second or two, and bf16 is kept only when it is
  clearly faster. A matmul alone does not decide it: small models can lose more to the casts than the
  matmuls save. The result is cached per machine (CPU name, torch version) and per model shape in
  ``<workspace>/cache/precision.json``, so later runs choose at once.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import torch

from .errors import ConfigError

Precision = Literal["auto", "bf16", "fp32"]  # what a user asks for
PRECISIONS = ("auto", "bf16", "fp32")
CACHE_FILE = "precision.json"
BF16_MARGIN = 0.9  # bf16 must take at most 90% of the fp32 step time to be chosen


# ---------------------------------------------------------------------------------------------- device
def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """``auto`` is the first CUDA device when there is one, else the CPU; a named device must exist."""
    if isinstance(name, torch.device):
        return name
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device {name!r} is not a device name (use auto, cpu, cuda or cuda:N)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} requested but CUDA is not available (use --device cpu or auto)")
    if dev.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise ConfigError(f"device {name!r} requested but MPS is not available (use --device cpu or auto)")
    return dev


def autocast(device: torch.device, precision: str):
    """bf16 autocast on CPU and CUDA for a resolved precision ("bf16"); a no-op for "fp32".

    No fp16 anywhere, so no GradScaler. ``auto`` must be resolved first (:func:`choose_precision`).
    """
    if precision == "auto":
        raise ValueError("precision 'auto' must be resolved with runtime.choose_precision before autocast")
    if precision == "bf16" and device.type in ("cpu", "cuda"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


# ---------------------------------------------------------------------------------------------- CPU facts
def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux), for cache keys and every number written down."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def process_memory() -> dict[str, int]:
    """This process's memory from ``/proc/self/status`` in bytes: VmRSS, VmHWM (peak resident set), RssAnon
    (its own memory), RssFile (mapped file pages), RssShmem; empty off Linux. For benchmarks."""
    out = {}
    try:
        with open("/proc/self/status") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "RssShmem"):
                    out[key] = int(rest.split()[0]) * 1024
    except OSError:
        pass
    return out


def cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key = line.split(":", 1)[0].strip().lower()
            if key in ("flags", "features"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_capability() -> str:
    """The SIMD level torch dispatches to (AVX2, AVX512, DEFAULT, ...)."""
    try:
        return str(torch.backends.cpu.get_cpu_capability())
    except Exception:  # noqa: BLE001 - older torch
        return "unknown"


def native_bf16() -> tuple[bool, str]:
    """Whether this CPU computes bf16 in hardware, and the evidence, in words.

    The capability torch reports is the first filter: AVX2 (or less) means emulated bf16. Past it, the
    CPU's own flags decide (avx512_bf16 or amx_bf16 on x86, bf16 on ARM), then oneDNN's own check.
    """
    cap = cpu_capability()
    flags = cpu_flags()
    if cap in ("AVX2", "AVX", "DEFAULT", "NO AVX"):
        return False, f"CPU capability {cap} has no native bf16"
    hw = sorted(flags & {"avx512_bf16", "amx_bf16", "bf16"})
    if flags and not hw:
        return False, f"CPU capability {cap}, but no bf16 instructions in the CPU flags"
    try:
        onednn = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except Exception:  # noqa: BLE001 - not every build has the op
        onednn = bool(hw)
    if not onednn:
        return False, f"CPU capability {cap}; oneDNN reports no bf16 support"
    return True, f"CPU capability {cap} with {', '.join(hw) or 'bf16'}"


# ---------------------------------------------------------------------------------------------- threads
def available_cores() -> int:
    """The cores this process may run on (its CPU affinity), not the machine's total."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _cpu_times(cpus: set[int]) -> tuple[float, float] | None:
    """(busy, total) jiffies summed over ``cpus`` from /proc/stat, or None where there is no /proc/stat."""
    try:
        lines = Path("/proc/stat").read_text().splitlines()
    except OSError:
        return None
    busy = total = 0.0
    for line in lines:
        name, *vals = line.split()
        if not name.startswith("cpu") or name == "cpu" or int(name[3:]) not in cpus:
            continue
        v = [float(x) for x in vals]
        idle = v[3] + (v[4] if len(v) > 4 else 0.0)  # idle + iowait
        busy += sum(v[:8]) - idle
        total += sum(v[:8])
    return busy, total


def busy_cores(seconds: float = 0.3) -> float:
    """How many of this process's cores other work keeps busy right now (0 on an idle machine)."""
    try:
        cpus = set(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return 0.0
    a = _cpu_times(cpus)
    if a is None:
        return 0.0
    time.sleep(seconds)
    b = _cpu_times(cpus)
    if b is None or b[1] <= a[1]:
        return 0.0
    return len(cpus) * (b[0] - a[0]) / (b[1] - a[1])


def default_threads() -> int:
    """Intra-op threads when none are given: the cores this process may use, less those other work keeps
    busy at start (measured over 0.3 s).

    Under torchrun the node's cores are divided among its processes (``LOCAL_WORLD_SIZE``).

    Why (docs/benchmarks.md, "Threads"): on a 2-core machine with one core taken by another process, two
    threads fell to 25-36% of their idle training throughput (every small op waits at a barrier for the
    thread that lost its core), while one thread kept 61-65% of it; on an idle machine two threads are
    1.5-1.8x faster than one.
    """
    cores = available_cores()
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
    if local > 1:  # torchrun: the processes of this node share its cores (the others are busy starting too)
        return max(1, cores // local)
    return max(1, min(cores, cores - int(round(busy_cores())))) if cores > 1 else 1


def apply_threads(threads: int | None = None) -> int:
    """Set torch's intra-op (and, once per process, inter-op) threads. Returns the count in use.

    ``None`` uses :func:`default_threads`. Values above the available cores are allowed (the user may
    know better) but values below 1 are refused.
    """
    n = default_threads() if threads is None else int(threads)
    if n < 1:
        raise ConfigError(f"--threads {threads}: must be >= 1 (this process may use {available_cores()} cores)")
    torch.set_num_threads(n)
    with contextlib.suppress(RuntimeError):  # inter-op threads can only be set before parallel work starts
        torch.set_num_interop_threads(max(1, min(n, 4)))
    return n


def threads_in_use() -> int:
    return torch.get_num_threads()


# ---------------------------------------------------------------------------------------------- precision
@dataclass
class PrecisionChoice:
    """The precision a run uses and why (recorded in run.json and the first log line)."""

    precision: str  # "bf16" or "fp32"
    reason: str
    requested: str = "auto"
    timings: dict[str, float] = field(default_factory=dict)  # seconds per step, when measured
    cached: bool = False
    device: str = ""  # the device type the choice was made for

    def line(self) -> str:
        return f"precision {self.precision} ({self.reason})"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# Raised whenever a change of the model code changes which precision or compile choice is faster, so that a
# measurement cached by older code is taken again instead of reused. 2: attention runs in float32 on the CPU whatever
# the precision (bf16 steps 1.3-1.4x faster); 3: q, k and v are cast to float32 once per attention instead of around
# the norm, the rotation and the kernel each (bf16 steps 1.1-1.15x faster again).
MEASURE_REVISION = "3"


def machine_key() -> dict[str, str]:
    """What a cached measurement is only valid for."""
    return {"cpu": cpu_name(), "torch": torch.__version__, "capability": cpu_capability(), "threads": str(threads_in_use()),
            "revision": MEASURE_REVISION}


def time_step(step: Callable[[str], Any], precisions: tuple[str, ...] = ("fp32", "bf16"), budget_s: float = 2.0) -> dict[str, float]:
    """Median seconds of ``step(precision)`` for each precision, alternating them for about ``budget_s``.

    One untimed call each first (allocation, kernel selection). At least 3 timed calls each.
    """
    for p in precisions:
        step(p)
    times: dict[str, list[float]] = {p: [] for p in precisions}
    t_start = time.perf_counter()
    while True:
        for p in precisions:
            t0 = time.perf_counter()
            step(p)
            times[p].append(time.perf_counter() - t0)
        n = len(times[precisions[0]])
        if n >= 3 and (time.perf_counter() - t_start >= budget_s or n >= 20):
            break
    return {p: statistics.median(v) for p, v in times.items()}


def _read_cache(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, json.JSONDecodeError):
        return {}


def _write_cache(path: Path, data: dict[str, Any]) -> None:
    from .fileio import write_json_atomic

    with contextlib.suppress(OSError):  # a read-only workspace only loses the cache
        write_json_atomic(path, data)


def choose_precision(
    requested: str,
    device: torch.device,
    *,
    step: Callable[[str], Any] | None = None,
    key: str = "",
    cache_dir: str | os.PathLike | None = None,
    budget_s: float = 2.0,
) -> PrecisionChoice:
    """Resolve ``auto`` (or confirm a forced precision) for ``device``. See the module docstring.

    ``step(precision)``: one representative step of the caller's model (training: forward + backward;
    inference: a forward pass), used only on a CPU with native bf16. ``key``: the model's shape in
    words (part of the cache key). ``cache_dir``: where ``precision.json`` lives (None: no cache).
    """
    choice = _choose(requested, device, step, key, cache_dir, budget_s)
    choice.device = device.type
    return choice


def _choose(requested: str, device: torch.device, step: Callable[[str], Any] | None, key: str,
            cache_dir: str | os.PathLike | None, budget_s: float) -> PrecisionChoice:
    if requested not in PRECISIONS:
        raise ConfigError(f"precision {requested!r}: allowed {', '.join(PRECISIONS)}")
    if requested != "auto":
        return PrecisionChoice(requested, "forced by --precision", requested)
    if device.type == "cuda":
        ok = torch.cuda.is_bf16_supported()
        name = torch.cuda.get_device_name(device)
        return PrecisionChoice("bf16" if ok else "fp32", f"{name} {'supports' if ok else 'lacks'} bf16")
    if device.type != "cpu":
        return PrecisionChoice("fp32", f"{device.type} device: fp32")
    native, why = native_bf16()
    if not native:
        return PrecisionChoice("fp32", why)
    if step is None:
        return PrecisionChoice("fp32", f"{why}, but no step to time; fp32 is the safe choice")
    mkey = machine_key()
    full_key = json.dumps({**mkey, "model": key}, sort_keys=True)
    path = Path(cache_dir) / CACHE_FILE if cache_dir is not None else None
    if path is not None:
        hit = _read_cache(path).get(full_key)
        if isinstance(hit, dict) and hit.get("precision") in ("bf16", "fp32"):
            return PrecisionChoice(hit["precision"], hit.get("reason", "cached measurement"), timings=hit.get("timings", {}),
                                   cached=True)
    timings = time_step(step, budget_s=budget_s)
    fp32, bf16 = timings["fp32"], timings["bf16"]
    if bf16 <= BF16_MARGIN * fp32:
        choice = PrecisionChoice("bf16", f"{why}; measured bf16 {fp32 / bf16:.2f}x faster than fp32 for this model",
                                 timings=timings)
    else:
        choice = PrecisionChoice("fp32", f"{why}, but measured bf16 at {fp32 / bf16:.2f}x the fp32 speed for this model",
                                 timings=timings)
    if path is not None:
        data = _read_cache(path)
        data[full_key] = {"precision": choice.precision, "reason": choice.reason, "timings": timings,
                          "measured": datetime.now().isoformat(timespec="seconds")}
        _write_cache(path, data)
    return choice


def describe() -> dict[str, Any]:
    """Facts about this machine for ``ahri info`` and benchmark JSON."""
    native, why = native_bf16()
    return {
        "cpu": cpu_name(),
        "capability": cpu_capability(),
        "native_bf16": native,
        "native_bf16_why": why,
        "cores_available": available_cores(),
        "threads": threads_in_use(),
        "torch": torch.__version__,
        "cuda": torch.cuda.is_available(),
    }

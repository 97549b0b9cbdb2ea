"""Several processes, one training run: the torch.distributed glue that ``ahri`` uses.

``torchrun`` (or ``ahri train --nproc N``, which starts torchrun's own launcher) sets ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK`` and ``LOCAL_WORLD_SIZE`` for each process. :func:`setup` reads them, joins the
process group (gloo on CPU, NCCL on CUDA) and pins each process to its own GPU. Without those variables
everything here is a no-op, so a single process pays nothing.

What the training loop does with it (train/loop.py):
- every rank draws the same global batch plan (same seed) and keeps its share of the items
  (:func:`shard`), so any number of ranks walks the same data in the same order, alternating lengths
  included (every rank picks the same length for each step), and a run resumes with another rank count;
- the decisions that must be the same on every rank (stop, skip a non-finite step, the precision, the best
  checkpoint) are agreed on through :func:`agree`, :func:`broadcast` and :func:`from_main`; the clock that the
  minutes budget and the learning-rate schedule follow is rank 0's (:func:`clock_and_flags`);
- rank 0 alone writes checkpoints, logs and progress (:attr:`Dist.main`).
"""

from __future__ import annotations

import atexit
import contextlib
import datetime
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as tdist

from ..errors import ConfigError

T = TypeVar("T")
ENV_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")


@dataclass(frozen=True)
class Dist:
    """Where this process stands: its rank among ``world`` processes (``local_*``: on this node)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        """Rank 0: the process that writes files and shows progress."""
        return self.rank == 0


def from_env(environ: dict[str, str] | None = None) -> Dist:
    """The launcher's variables as a :class:`Dist` (a single process when they are absent)."""
    env = os.environ if environ is None else environ
    try:
        world = int(env.get("WORLD_SIZE", "1"))
        rank = int(env.get("RANK", "0"))
        local_rank = int(env.get("LOCAL_RANK", str(rank)))
        local_world = int(env.get("LOCAL_WORLD_SIZE", str(world)))
    except ValueError:
        shown = ", ".join(f"{k}={env.get(k)!r}" for k in ENV_VARS if k in env)
        raise ConfigError(f"distributed environment variables are not whole numbers ({shown})") from None
    if world < 1 or not 0 <= rank < world:
        raise ConfigError(f"distributed environment: RANK {rank} is not within WORLD_SIZE {world}")
    return Dist(rank, world, local_rank, max(1, local_world))


_current = Dist()


def current() -> Dist:
    """This process's place, as set by :func:`setup` (a single process before it is called)."""
    if tdist.is_available() and tdist.is_initialized():
        return Dist(tdist.get_rank(), tdist.get_world_size(), _current.local_rank, _current.local_world)
    return _current


def setup(device: str = "auto", timeout_minutes: float = 30.0) -> Dist:
    """Join the process group when launched by torchrun; returns this process's :class:`Dist`.

    ``device``: the device setting (auto, cpu, cuda, cuda:N). With CUDA each process takes the GPU of its
    local rank. Calling it again is harmless. Without a launcher it returns a single-process Dist.
    """
    global _current
    d = from_env()
    _current = d
    if not d.enabled:
        return d
    if not tdist.is_available():
        raise ConfigError("this torch build has no torch.distributed; run with one process")
    use_cuda = torch.cuda.is_available() and device != "cpu" and not str(device).startswith("cpu")
    if use_cuda:
        torch.cuda.set_device(d.local_rank % max(1, torch.cuda.device_count()))
    if not tdist.is_initialized():
        backend = "nccl" if use_cuda else "gloo"
        tdist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=timeout_minutes))
        atexit.register(leave)
    return current()


def leave() -> None:
    """Leave the process group (at exit, or before the command line's ``os._exit`` under torchrun): a gloo group
    left to the end of the process could abort it ("terminate called without an active exception")."""
    with contextlib.suppress(Exception):
        if tdist.is_initialized():
            tdist.destroy_process_group()


def shard(items: Sequence[T], dist: Dist | None = None) -> list[T]:
    """This rank's share of ``items``: every ``world``-th item from its rank (all of them for one process)."""
    d = dist or current()
    return list(items[d.rank :: d.world]) if d.enabled else list(items)


def barrier() -> None:
    if current().enabled:
        tdist.barrier()


def broadcast(obj: T, src: int = 0) -> T:
    """Rank ``src``'s ``obj`` on every rank (a picklable value made by this program, never user data)."""
    if not current().enabled:
        return obj
    box = [obj]
    tdist.broadcast_object_list(box, src=src)
    return box[0]


def gather(obj: T) -> list[T]:
    """Every rank's ``obj``, in rank order, on every rank."""
    d = current()
    if not d.enabled:
        return [obj]
    out: list[Any] = [None] * d.world
    tdist.all_gather_object(out, obj)
    return out


def comm_device() -> torch.device:
    """Where the tensors of a collective live: the GPU of this rank under NCCL, else the CPU (gloo)."""
    if tdist.is_available() and tdist.is_initialized() and tdist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def agree(*flags: bool) -> tuple[bool, ...]:
    """Each flag true on every rank when it is true on any rank (one small all-reduce)."""
    if not current().enabled:
        return tuple(bool(f) for f in flags)
    t = torch.tensor([1.0 if f else 0.0 for f in flags], device=comm_device())
    tdist.all_reduce(t, op=tdist.ReduceOp.MAX)
    return tuple(bool(v) for v in t.tolist())


def clock_and_flags(seconds: float, *flags: bool) -> tuple[float, tuple[bool, ...]]:
    """Rank 0's ``seconds`` on every rank, and each flag true on every rank when it is true on any rank, in one
    small all-reduce. Each process reads its own clock; when the budget and the learning-rate schedule
    followed them, two processes could disagree at the last step (one ends while the other waits in a
    collective) and their schedules, hence their weights, would drift apart. Rank 0's clock decides for all."""
    if not current().enabled:
        return float(seconds), tuple(bool(f) for f in flags)
    first = float(seconds) if current().main else -math.inf
    t = torch.tensor([first, *(1.0 if f else 0.0 for f in flags)], dtype=torch.float64, device=comm_device())
    tdist.all_reduce(t, op=tdist.ReduceOp.MAX)
    values = t.tolist()
    return values[0], tuple(bool(v) for v in values[1:])


def from_main(obj: T) -> T:
    """Rank 0's ``obj`` on every rank (a decision rank 0 makes for all, e.g. "this is the best checkpoint")."""
    return broadcast(obj, src=0)


def mean(values: Sequence[float]) -> list[float]:
    """The mean over ranks of each value (one all-reduce)."""
    d = current()
    if not d.enabled:
        return [float(v) for v in values]
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=comm_device())
    tdist.all_reduce(t, op=tdist.ReduceOp.SUM)
    return [v / d.world for v in t.tolist()]


@contextlib.contextmanager
def main_first():
    """Rank 0 runs the block first (e.g. creates a directory), then the others."""
    d = current()
    if d.enabled and not d.main:
        tdist.barrier()
    try:
        yield
    finally:
        if d.enabled and d.main:
            tdist.barrier()


def full_tensors(state: dict[str, Any]) -> dict[str, Any]:
    """A state dict with every sharded tensor (FSDP2 DTensor) gathered whole. A collective under FSDP:
    every rank must call it. Plain tensors are returned as they are."""
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover - torch without DTensor
        return state
    return {k: (v.full_tensor() if isinstance(v, DTensor) else v) for k, v in state.items()}


def as_number(x: torch.Tensor | float) -> float:
    """A (possibly sharded) scalar as a float; gathers a DTensor (a collective under FSDP)."""
    try:
        from torch.distributed.tensor import DTensor

        if isinstance(x, DTensor):
            x = x.full_tensor()
    except ImportError:  # pragma: no cover
        pass
    return float(x)

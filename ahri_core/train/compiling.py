"""Whether a run trains through ``torch.compile``: ``--compile auto`` (the default), ``on`` or ``off``.

What is compiled: each transformer block of the model, in place (:func:`compile_regions`); the blocks of one kind
share their graphs, so compiling takes less time than compiling the whole model, for the same step time.
Compiling pays only where a run is long enough to repay its start-up: on a 2-core AMD EPYC with AVX-512 the
`cpu` preset's compiled steps ran 1.25x (dynamics, fp32) to 1.4x (bf16) and 1.2x (tokenizer) faster than eager
ones after 20-120 s of compiling from an empty cache (a fifth of that with inductor's cache warm), and 1.1x on an
AVX2-only one (docs/benchmarks.md), so a 40-minute run gains minutes and a 5-minute run loses. ``auto`` therefore measures,
inside the run, on the run's own steps:

1. a cached answer for this machine, device, precision and model shape (``<workspace>/cache/compile.json``)
   decides at once: compile from the first step when the measured speed-up, over the time the budget has
   left, saves at least ``REPAY`` times the measured start-up;
2. otherwise the first steps run eager and are timed (``EAGER_WARMUP`` untimed, then ``TIMED``); when the
   budget left is shorter than ``TRIAL_MIN_S`` the run stays eager without trying; else the model is compiled
   and the next ``COMPILED_SPAN`` steps are timed too (the start-up is what they took beyond their median,
   recompiles for new shapes included). Compiled steps at least ``SPEEDUP_MIN``
   times faster are kept; slower ones are dropped and the run goes on eager. Both ways the measurement is
   cached. Every step of the trial is a real training step; what a failed trial costs is its start-up.

The choice and its reason go into run.json (``compile``) and the log. Compiling is not tried on its own with
several processes or where ``torch.compile`` cannot run (no C++ compiler for the CPU backend, no Triton for
CUDA, an unsupported Python); ``--compile on`` compiles from the first step wherever it is asked.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import torch

from ..runtime import _read_cache, _write_cache, machine_key

CACHE_FILE = "compile.json"
SPEEDUP_MIN = 1.1  # compiled steps must be at least this much faster than eager ones to be kept
REPAY = 2.0  # from a cached measurement: compile when the budget's expected saving is this many start-ups
TRIAL_MIN_S = 900.0  # a budget with less time than this left after the eager steps does not try (a first
# compile of the `cpu` dynamics model's blocks took about 2 minutes on a 2-core machine: a trial that finds no
# speed-up costs at most about an eighth of 15 minutes, and at 1.4x (bf16), 15 minutes gain 3.5 minutes of steps)
EAGER_WARMUP = 3  # untimed eager steps (allocation, kernel choice)
TIMED = 10  # timed steps of each kind
# compiled steps the trial spans at least: a new shape (the long windows, the teacher's item count) compiles
# again when it first comes, and the start-up must count those too (one run's second compile, at its first
# long window 40 steps in, took twice as long as its first)
COMPILED_SPAN = 60
REGION_VARIANTS = 32  # recompiles allowed per compiled block's code (compile_regions)
TIMINGS = ("eager_s", "compiled_s", "startup_s")  # a cached measurement


@dataclass
class CompileChoice:
    """Whether the run's steps are compiled and why (run.json ``compile``, the log)."""

    compiled: bool
    reason: str
    requested: str = "auto"
    timings: dict[str, float] = field(default_factory=dict)  # eager_s, compiled_s (per step), startup_s
    cached: bool = False
    decided: bool = True  # False while the trial runs

    def line(self) -> str:
        return f"compile {'on' if self.compiled else 'off'} ({self.reason})"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def compile_regions(model: torch.nn.Module, on: bool) -> None:
    """Compile (``on``) or restore to eager, in place, every transformer block of ``model``: each submodule whose
    class sets ``compile_region``. The blocks of one kind share their code, so torch.compile
    builds their graphs once and every block (and the shortcut teacher, the same modules run without gradient)
    reuses them. Against compiling the whole model, on a 2-core AMD EPYC with AVX-512 (bf16, empty inductor cache):
    a `cpu` dynamics run (`--compile on`, Mario latents) reached step 10 after 124 against 138 s and step 400 after
    216 against 235 s, with the same losses; timed alone, the tokenizer step compiled in 21 against 47 s (106
    against 110 ms a step; eager 127). The weights, their names and the optimizer are untouched."""
    if on:
        # the variants one block's code meets in training: spatial or temporal, with or without gradient (the
        # shortcut teacher), short or long windows; torch's default limit of 8 would leave some of them eager
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, REGION_VARIANTS)
    for m in model.modules():
        if getattr(type(m), "compile_region", False):
            # nn.Module calls _compiled_call_impl instead of its eager call where it is set (what nn.Module.compile
            # sets); this one compiles training calls only, so that validation, previews and sampling (eval mode,
            # other shapes, a KV cache) stay eager instead of compiling graphs of their own
            m._compiled_call_impl = _training_only(m, torch.compile(m._call_impl)) if on else None


def _training_only(module: torch.nn.Module, compiled: Callable[..., Any]) -> Callable[..., Any]:
    def call(*args: Any, **kwargs: Any) -> Any:
        return compiled(*args, **kwargs) if module.training else module._call_impl(*args, **kwargs)

    return call


def unsupported(device: torch.device) -> str | None:
    """Why ``torch.compile`` cannot run here (None: it can)."""
    if not torch._dynamo.is_dynamo_supported():
        return "torch.compile does not support this Python"
    if device.type == "cpu":
        cxx = os.environ.get("CXX", "").split()  # may be "ccache g++"
        if not (cxx and shutil.which(cxx[-1])) and not any(shutil.which(c) for c in ("g++", "c++", "clang++")):
            return "no C++ compiler (g++ or clang++) for torch.compile's CPU backend"
        return None
    if device.type == "cuda":
        try:
            import triton  # noqa: F401
        except ImportError:
            return "Triton is not installed, which torch.compile needs on CUDA"
        return None
    return f"torch.compile is not tried on {device.type}"


def repays(timings: dict[str, float], seconds_left: float) -> tuple[bool, str]:
    """From a measurement: whether compiling from now on saves ``REPAY`` start-ups over ``seconds_left``."""
    eager, compiled, startup = timings["eager_s"], timings["compiled_s"], timings["startup_s"]
    speedup = eager / compiled if compiled > 0 else 0.0
    if speedup < SPEEDUP_MIN:
        return False, f"measured compiled steps {speedup:.2f}x the eager speed for this model"
    saving = seconds_left * (1 - 1 / speedup)
    if saving < REPAY * startup:
        return False, (f"measured {speedup:.2f}x faster after {startup:.0f} s of compiling, too little for "
                       f"{seconds_left / 60:.1f} minutes of budget")
    return True, f"measured {speedup:.2f}x faster after {startup:.0f} s of compiling"


class Compiling:
    """The run's compile choice, made once (``on``, ``off``, a cache hit) or by a trial on its first steps.

    ``apply(on)`` switches the objective's training forwards to compiled (True) or eager (False) ones;
    ``seconds_left(step_s)`` is what the budget has left, in seconds, at ``step_s`` seconds a step. The loop
    calls :meth:`start` once, then :meth:`after_step` with each step's seconds; either returns a line to log
    when the choice changes."""

    def __init__(self, requested: str, device: torch.device, *, key: str, cache_dir: str | os.PathLike | None,
                 apply: Callable[[bool], None], seconds_left: Callable[[float], float], processes: int = 1) -> None:
        self.requested = requested  # auto, on or off (TrainSettings.compile validated it)
        self.device, self.apply, self.seconds_left, self.processes = device, apply, seconds_left, processes
        self.full_key = json.dumps({**machine_key(), "device": device.type, "model": key}, sort_keys=True)
        self.path = Path(cache_dir) / CACHE_FILE if cache_dir is not None else None
        self.choice = CompileChoice(False, "not decided", self.requested)
        self.phase = "done"
        self.eager: list[float] = []
        self.compiled: list[float] = []

    def start(self, steps_left: int | None = None, minutes_left: float | None = None,
              kept: dict[str, Any] | None = None) -> str:
        """Decide what can be decided before the first step; returns the line to log. ``steps_left``,
        ``minutes_left``: what the budget holds (None: no such limit); ``kept``: the choice a resumed run made
        (its resume state), which auto keeps once it was decided, so the run goes on as it trained."""
        req = self.requested
        few = EAGER_WARMUP + TIMED + COMPILED_SPAN
        if req == "auto" and kept and kept.get("requested") == "auto" and kept.get("decided"):
            on = bool(kept.get("compiled"))
            if on and unsupported(self.device) is None:
                self.apply(True)
            else:
                on = False
            self.choice = CompileChoice(on, f"{kept.get('reason', '')}; kept on resume", req,
                                        timings=dict(kept.get("timings") or {}), cached=bool(kept.get("cached")))
        elif req == "off":
            self.choice = CompileChoice(False, "--compile off", req)
        elif req == "on":
            self.apply(True)
            self.choice = CompileChoice(True, "--compile on", req)
        elif self.processes > 1:
            self.choice = CompileChoice(False, "not tried with several processes; --compile on compiles", req)
        elif (why := unsupported(self.device)) is not None:
            self.choice = CompileChoice(False, why, req)
        elif steps_left is not None and steps_left < few:
            self.choice = CompileChoice(False, f"{steps_left} steps are too few to try it", req)
        elif minutes_left is not None and 60 * minutes_left < TRIAL_MIN_S:
            self.choice = CompileChoice(False, f"{minutes_left:.1f} minutes are too short to repay it", req)
        elif (entry := self._entry()).get("failed"):
            self.choice = CompileChoice(False, f"compiling failed here before ({entry['failed']})", req, cached=True)
        elif all(isinstance(entry.get(k), (int, float)) for k in TIMINGS):
            hit = {k: float(entry[k]) for k in TIMINGS}
            on, why = repays(hit, self.seconds_left(hit["eager_s"]))
            if on:
                self.apply(True)
            self.choice = CompileChoice(on, f"{why} (cached)", req, timings=hit, cached=True)
        else:
            self.phase = "eager"
            self.choice = CompileChoice(False, "timing eager steps first, then compiled ones", req, decided=False)
        return self.choice.line()

    def after_step(self, seconds: float) -> str | None:
        """Count one training step of ``seconds``; returns a line to log when the choice changes."""
        if self.phase == "eager":
            self.eager.append(seconds)
            if len(self.eager) < EAGER_WARMUP + TIMED:
                return None
            eager_s = statistics.median(self.eager[EAGER_WARMUP:])
            left = self.seconds_left(eager_s)
            if left < TRIAL_MIN_S:
                self.phase = "done"
                self.choice = CompileChoice(False, f"too little budget left ({left / 60:.1f} minutes) to try it",
                                            self.requested, timings={"eager_s": eager_s})
                return self.choice.line()
            self.phase = "compiled"
            self.apply(True)
            self.choice = CompileChoice(True, "trying compiled steps against eager ones", self.requested,
                                        timings={"eager_s": eager_s}, decided=False)
            return f"compile: eager steps {eager_s * 1e3:.0f} ms; compiling the model to compare (a minute or so)"
        if self.phase == "compiled":
            self.compiled.append(seconds)
            # the compiled steps hold the start-up (the first compile and those of new shapes); the trial ends
            # after COMPILED_SPAN of them, once TIMED ran at speed
            eager_s = self.choice.timings["eager_s"]
            fast = [s for s in self.compiled if s < 3 * eager_s]
            if len(self.compiled) < COMPILED_SPAN or (len(fast) < TIMED and len(self.compiled) < 2 * COMPILED_SPAN):
                return None
            compiled_s = statistics.median(fast[-TIMED:] if len(fast) >= TIMED else self.compiled[-TIMED:])
            startup = max(0.0, sum(self.compiled) - len(self.compiled) * compiled_s)
            timings = {"eager_s": eager_s, "compiled_s": compiled_s, "startup_s": startup}
            speedup = eager_s / compiled_s if compiled_s > 0 else 0.0
            self.phase = "done"
            keep = speedup >= SPEEDUP_MIN
            if not keep:
                self.apply(False)
            why = (f"measured {speedup:.2f}x faster after {startup:.0f} s of compiling" if keep else
                   f"measured compiled steps {speedup:.2f}x the eager speed after {startup:.0f} s of compiling; eager "
                   "from here on")
            self.choice = CompileChoice(keep, why, self.requested, timings=timings)
            self._store(timings)
            return self.choice.line()
        return None

    def failed(self, error: BaseException) -> str:
        """A compiled step of the trial (or of a cached choice) raised ``error``: eager from here on, and the
        failure cached so that later runs of this shape do not try again. Returns the line to log."""
        self.apply(False)
        self.phase = "done"
        what = " ".join(f"{type(error).__name__}: {error}".split())[:300]
        self.choice = CompileChoice(False, f"compiling failed ({what}); eager from here on", self.requested)
        self._store({"failed": what})
        return self.choice.line()

    @property
    def may_fail(self) -> bool:
        """Whether a failing step is the compiler's to fall back from: auto's compiled steps (``on`` fails)."""
        return self.requested == "auto" and self.choice.compiled

    def _entry(self) -> dict[str, Any]:
        """This machine's and model's entry of the cache: measured timings, or ``failed`` (empty: none)."""
        hit = _read_cache(self.path).get(self.full_key) if self.path is not None else None
        return hit if isinstance(hit, dict) else {}

    def _store(self, entry: dict[str, Any]) -> None:
        if self.path is None:
            return
        data = _read_cache(self.path)
        data[self.full_key] = {**entry, "measured": datetime.now().isoformat(timespec="seconds")}
        _write_cache(self.path, data)

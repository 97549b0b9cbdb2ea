"""The one sampler: autoregressive rollouts of the dynamics model, frame by frame.

Evaluation, ``ahri rollout``, the demo and training previews all call :class:`Sampler`; nothing else in the
project runs the denoising loop.

Per new frame (convention of :mod:`ahri_core.diffusion`: tau = 0 clean, tau = 1 noise, x-prediction):

* start from pure noise at tau = 1 exactly and take K Euler steps of size d = 1/K to tau = 0, each with the
  implied noise (:func:`ahri_core.diffusion.euler_step`; the last step returns the prediction x_hat, so no
  division by zero ever happens). The grid 1, 1 - 1/K, ..., 1/K, 0 is exact in floating point for K a power
  of two.
* K < k_max (a step larger than d_min) is only meaningful for a model trained with shortcut forcing; a plain
  flow model is refused (:func:`check_steps`).
* context corruption: every context latent, the given frames and the frames the model predicted itself, is
  noised to ``tau_ctx`` and labelled ``tau_ctx`` (one function, :meth:`Sampler._corrupt`, does both) and
  labelled with the finest step d_min, the step that training pairs with nearly clean frames.
* with the KV cache each finished frame is committed once (its context-noised version), and the K denoising
  steps of the next frame run uncommitted on one frame only, so a frame costs the same at any rollout length.
  The uncached path (``cache=False``) re-runs the whole window at every step; it is the reference the tests
  compare against and what the benchmark measures the cache against.
* the model never sees more frames at once than it was trained on (``ModelTraits.max_frames``): older context
  slides out of the window.

Random draws come from one ``torch.Generator`` in a fixed order (context noise for all context frames, then
per new frame: its initial noise, then the noise that corrupts it as context), so a seed fixes a rollout and
the cached and uncached paths see identical noise.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch

from ..config.base import is_power_of_two
from ..diffusion import add_noise, euler_step
from ..errors import ConfigError
from ..progress import Progress, ensure
from ..runtime import autocast


@dataclass(frozen=True)
class ModelTraits:
    """What the sampler must know about a trained dynamics model."""

    k_max: int  # finest step count the model was trained for; d_min = 1 / k_max
    shortcut: bool  # trained with shortcut forcing (steps larger than d_min are meaningful)
    max_frames: int | None = None  # longest window seen in training (context + new frame); None = no limit

    @property
    def d_min(self) -> float:
        return 1.0 / self.k_max


def _cfg_get(cfg: Any, name: str) -> Any:
    if cfg is None:
        return None
    if isinstance(cfg, dict):
        return cfg.get(name)
    return getattr(cfg, name, None)


def traits_of(model: Any, info: dict | None = None, **overrides: Any) -> ModelTraits:
    """Read :class:`ModelTraits` from a model (its ``config``) and/or a run's info dict.

    ``info`` may carry ``k_max``, ``shortcut`` and ``max_frames`` (the training loop records them); explicit
    ``overrides`` win. A model that says nothing about shortcut training is treated as a plain flow model.
    """
    cfg = getattr(model, "config", None)
    found: dict[str, Any] = {}
    for name in ("k_max", "shortcut", "max_frames"):
        for src in (overrides, info or {}, cfg):
            v = _cfg_get(src, name)
            if v is not None:
                found[name] = v
                break
    if "k_max" not in found:
        raise ConfigError("the dynamics model does not say its k_max (finest step count); pass k_max to the sampler")
    k_max = int(found["k_max"])
    if not is_power_of_two(k_max):
        raise ConfigError(f"model k_max={k_max} is not a power of two")
    mf = found.get("max_frames")
    return ModelTraits(k_max=k_max, shortcut=bool(found.get("shortcut", False)), max_frames=int(mf) if mf else None)


def check_steps(steps: int, traits: ModelTraits) -> None:
    """Refuse step counts the model cannot take: not a power of two, finer than d_min, or coarser without shortcut."""
    if not isinstance(steps, int) or not is_power_of_two(steps):
        raise ConfigError(f"sampling steps={steps!r} is not a power of two (1, 2, 4, 8, ...)")
    if steps > traits.k_max:
        raise ConfigError(
            f"sampling steps={steps} is finer than the model's k_max={traits.k_max} (steps below d_min=1/{traits.k_max} "
            f"were never trained); use at most --steps {traits.k_max}"
        )
    if steps < traits.k_max and not traits.shortcut:
        raise ConfigError(
            f"sampling steps={steps} < k_max={traits.k_max} needs a model trained with shortcut forcing "
            f"(ahri train --shortcut); this model was not, so use --steps {traits.k_max}"
        )


def tau_grid(steps: int) -> list[tuple[float, float]]:
    """The K Euler steps as (tau, tau_next) pairs: 1 -> 1 - 1/K -> ... -> 1/K -> 0, exact for powers of two."""
    return [((steps - i) / steps, (steps - i - 1) / steps) for i in range(steps)]


@dataclass
class RolloutResult:
    """Predicted clean latents and timings of one batched rollout."""

    latents: torch.Tensor  # (batch, horizon, tokens, channels), float32
    seconds: float  # wall time of the whole rollout (context included)
    frame_seconds: list[float] = field(default_factory=list)  # wall time of each new frame (all clips)
    model_calls: int = 0

    @property
    def frames(self) -> int:
        return int(self.latents.shape[0] * self.latents.shape[1])

    @property
    def frames_per_s(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else float("inf")


def _no_action_like(actions: torch.Tensor, length: int) -> torch.Tensor:
    shape = (actions.shape[0], length, *actions.shape[2:])
    if actions.is_floating_point():
        return torch.full(shape, float("nan"), dtype=actions.dtype, device=actions.device)
    return torch.full(shape, -1, dtype=actions.dtype, device=actions.device)


class Sampler:
    """Autoregressive K-step sampler with context corruption, KV cache and a sliding window.

    ``precision``: "bf16" runs the model under bf16 autocast (the Euler update itself stays in float32),
    "fp32" runs it in float32; "auto" must be resolved first (``runtime.choose_precision``).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        traits: ModelTraits,
        steps: int = 4,
        tau_ctx: float = 0.1,
        cache: bool = True,
        precision: str = "fp32",
    ) -> None:
        check_steps(steps, traits)
        if not 0.0 <= float(tau_ctx) < 1.0:
            raise ConfigError(f"tau_ctx={tau_ctx} is outside [0, 1) (0 turns context corruption off)")
        if precision not in ("bf16", "fp32"):
            raise ConfigError(f"precision={precision!r}: allowed bf16, fp32")
        if traits.max_frames is not None and traits.max_frames < 2:
            raise ConfigError(f"model max_frames={traits.max_frames}: a rollout needs a window of at least 2 frames")
        self.model = model
        self.traits = traits
        self.steps = steps
        self.tau_ctx = float(tau_ctx)
        self.cache = cache
        self.precision = precision

    # ------------------------------------------------------------------------------------------ helpers
    @property
    def device(self) -> torch.device:
        try:
            return next(self.model.parameters()).device
        except StopIteration:
            return torch.device("cpu")

    def _autocast(self):
        return autocast(self.device, self.precision)

    def _corrupt(self, x: torch.Tensor, noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Context corruption in one place: the latents noised by tau_ctx and the labels (tau, step) they carry.

        x, noise (B, T, N, C) -> z (B, T, N, C), tau (B, T) == tau_ctx, step (B, T) == d_min.
        """
        b, t = x.shape[:2]
        tau = torch.full((b, t), self.tau_ctx, dtype=torch.float32, device=x.device)
        step = torch.full((b, t), self.traits.d_min, dtype=torch.float32, device=x.device)
        z = x if self.tau_ctx == 0.0 else add_noise(x, noise, tau)
        return z, tau, step

    def _window(self) -> int | None:
        """How many committed frames the model may see beside the new one."""
        return None if self.traits.max_frames is None else self.traits.max_frames - 1

    def _call(self, z, tau, step, actions):
        with self._autocast():
            out = self.model(z, tau, step, actions)
        return out.float()

    def _call_step(self, z, tau, step, actions, cache, commit):
        with self._autocast():
            out = self.model.step(z, tau, step, actions, cache, commit)
        return out.float()

    @staticmethod
    def _randn(shape, generator: torch.Generator, device: torch.device) -> torch.Tensor:
        # Drawn on the CPU generator so that a seed gives the same rollout on any device.
        return torch.randn(shape, generator=generator, dtype=torch.float32).to(device)

    # ------------------------------------------------------------------------------------------ rollout
    @torch.inference_mode()
    def rollout(
        self,
        context: torch.Tensor,
        horizon: int,
        actions: torch.Tensor | None = None,
        generator: torch.Generator | int | None = None,
        progress: Progress | None = None,
    ) -> RolloutResult:
        """Predict ``horizon`` frames after ``context``.

        context: (B, C, N, Ch) clean latents of the C given frames (C >= 1).
        actions: None (every frame "no action"), or actions for the frames 0 .. C + horizon - 1 following the
          project convention (``actions[t]`` produced frame t): (B, L) int64 with -1 = none, or (B, L, A) float
          with NaN rows = none. L < C + horizon is padded with "no action" (so user-given future actions may
          be shorter than the horizon); longer is cut.
        generator: a torch.Generator (CPU) or an int seed; None draws from seed 0.
        """
        if context.dim() != 4:
            raise ConfigError(f"context latents must be (batch, frames, tokens, channels), got shape {tuple(context.shape)}")
        if context.shape[1] < 1:
            raise ConfigError("a rollout needs at least one context frame")
        if horizon < 1:
            raise ConfigError(f"horizon={horizon} must be at least 1")
        if generator is None or isinstance(generator, int):
            seed = 0 if generator is None else generator
            generator = torch.Generator().manual_seed(seed)
        prog = ensure(progress)
        dev = self.device
        ctx = context.to(dev, torch.float32)
        b, c, n, ch = ctx.shape
        total = c + horizon
        if _cfg_get(getattr(self.model, "config", None), "action_kind") == "none":
            actions = None  # a model trained without actions only knows "no action"
        if actions is not None:
            actions = actions.to(dev)
            if actions.shape[0] != b:
                raise ConfigError(f"actions batch {actions.shape[0]} != context batch {b}")
            if actions.shape[1] < total:
                actions = torch.cat([actions, _no_action_like(actions, total - actions.shape[1])], dim=1)
            actions = actions[:, :total]

        t0 = time.perf_counter()
        if self.cache:
            preds, frame_seconds, calls = self._rollout_cached(ctx, horizon, actions, generator, prog)
        else:
            z_ctx, tau_c, step_c = self._corrupt(ctx, self._randn((b, c, n, ch), generator, dev))
            preds, frame_seconds, calls = self._rollout_uncached(z_ctx, tau_c, step_c, horizon, actions, generator, prog)
        seconds = time.perf_counter() - t0
        return RolloutResult(latents=preds, seconds=seconds, frame_seconds=frame_seconds, model_calls=calls)

    def _denoise(self, call, b, n, ch, generator, dev) -> tuple[torch.Tensor, int]:
        """K Euler steps from tau = 1 to 0 for one new frame; ``call(z, tau, step)`` returns x_hat (B, 1, N, Ch)."""
        z = self._randn((b, 1, n, ch), generator, dev)  # tau = 1: pure noise
        d = torch.full((b, 1), 1.0 / self.steps, device=dev)
        for tau_v, tau_next_v in tau_grid(self.steps):
            tau = torch.full((b, 1), tau_v, device=dev)
            x_hat = call(z, tau, d)
            z = euler_step(z, x_hat, tau, torch.full((b, 1), tau_next_v, device=dev))
        # The last step (tau_next = 0) returns x_hat exactly.
        return z, self.steps

    def stream(
        self,
        context: torch.Tensor,
        actions: torch.Tensor | None = None,
        generator: torch.Generator | int | None = None,
        cache_frames: int | None = None,
    ) -> Stream:
        """A cached rollout made a frame at a time (:class:`Stream`): what :meth:`rollout` does, in pieces, for a
        caller that chooses each frame's action as it goes (``ahri play``). ``context`` (B, C, N, Ch) clean
        latents; ``actions`` for those C frames ((B, C) / (B, C, A) / None); ``cache_frames`` the KV-cache window
        (default: the model's ``max_frames``, else C + 64)."""
        if generator is None or isinstance(generator, int):
            generator = torch.Generator().manual_seed(0 if generator is None else generator)
        return Stream(self, context, actions, generator, cache_frames)

    def _rollout_cached(self, ctx, horizon, actions, generator, prog):
        c = ctx.shape[1]
        st = Stream(self, ctx, None if actions is None else actions[:, :c], generator,
                    self.traits.max_frames if self.traits.max_frames is not None else c + horizon)
        preds, frame_seconds = [], []
        prog.start("rollout", total=horizon)
        for h in range(horizon):
            tf = time.perf_counter()
            a = None if actions is None else actions[:, c + h : c + h + 1]
            x = st.denoise(a)
            preds.append(x)
            if h + 1 < horizon:
                st.commit(x, a)
            frame_seconds.append(time.perf_counter() - tf)
            prog.advance("rollout", 1)
        prog.finish("rollout")
        return torch.cat(preds, dim=1), frame_seconds, st.calls

    def _rollout_uncached(self, z_ctx, tau_c, step_c, horizon, actions, generator, prog):
        b, c, n, ch = z_ctx.shape
        dev = z_ctx.device
        window = self._window()
        zs, taus, stepss = [z_ctx], [tau_c], [step_c]  # committed (corrupted) frames
        calls = 0
        preds, frame_seconds = [], []
        prog.start("rollout", total=horizon)
        for h in range(horizon):
            tf = time.perf_counter()
            t = c + h
            past_z, past_tau, past_step = torch.cat(zs, 1), torch.cat(taus, 1), torch.cat(stepss, 1)
            if window is not None and past_z.shape[1] > window:
                past_z, past_tau, past_step = past_z[:, -window:], past_tau[:, -window:], past_step[:, -window:]
            start = t - past_z.shape[1]
            a = None if actions is None else actions[:, start : t + 1]

            def call(z, tau, d, past_z=past_z, past_tau=past_tau, past_step=past_step, a=a):
                out = self._call(
                    torch.cat([past_z, z], 1), torch.cat([past_tau, tau], 1), torch.cat([past_step, d], 1), a
                )
                return out[:, -1:]

            x, k = self._denoise(call, b, n, ch, generator, dev)
            calls += k
            preds.append(x)
            if h + 1 < horizon:
                zc, tc, sc = self._corrupt(x, self._randn((b, 1, n, ch), generator, dev))
                zs.append(zc)
                taus.append(tc)
                stepss.append(sc)
            frame_seconds.append(time.perf_counter() - tf)
            prog.advance("rollout", 1)
        prog.finish("rollout")
        return torch.cat(preds, dim=1), frame_seconds, calls


class Stream:
    """One cached rollout advanced a frame at a time; made by :meth:`Sampler.stream`.

    The context is corrupted (noise level ``tau_ctx``) and committed to a KV cache at once, in one model call
    when the model has ``prefill`` (frames that would slide out of the window anyway are skipped). Then, per frame: :meth:`denoise` runs the sampler's K Euler
    steps from pure noise for the next frame (the cache is left as it is), and :meth:`commit` adds that frame,
    corrupted like the context, for the frames after it. Noise is drawn from ``generator`` in the same order as
    :meth:`Sampler.rollout`, so the same seed gives the same frames. ``calls`` counts the model calls.
    """

    def __init__(self, sampler: Sampler, context: torch.Tensor, actions: torch.Tensor | None,
                 generator: torch.Generator, cache_frames: int | None = None) -> None:
        if context.dim() != 4 or context.shape[1] < 1:
            raise ConfigError(f"context latents must be (batch, frames >= 1, tokens, channels), got {tuple(context.shape)}")
        self.sampler, self.generator = sampler, generator
        dev = sampler.device
        ctx = context.to(dev, torch.float32)
        b, c, n, ch = ctx.shape
        self.shape = (b, n, ch)
        self.calls = 0
        self._pending: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None] | None = None
        self.frames = 0  # frames committed, context included
        with torch.inference_mode():
            z, tau, step = sampler._corrupt(ctx, sampler._randn((b, c, n, ch), generator, dev))
            if cache_frames is None:
                mf = sampler.traits.max_frames
                cache_frames = mf if mf is not None else c + 64
            # new_cache(batch, max_frames): a new frame attends to at most max_frames frames, itself included.
            self.cache = sampler.model.new_cache(b, cache_frames)
            window = sampler._window()
            first = 0 if window is None else max(0, c - window)
            if hasattr(sampler.model, "prefill") and 0 < c - first <= self.cache.slots:
                # the whole context in one call (the same keys and values as one call per frame)
                a = None if actions is None else actions[:, first:c].to(dev)
                with sampler._autocast():
                    sampler.model.prefill(z[:, first:], tau[:, first:], step[:, first:], a, self.cache)
                self.calls += 1
            else:
                for t in range(first, c):
                    a = None if actions is None else actions[:, t : t + 1].to(dev)
                    sampler._call_step(z[:, t : t + 1], tau[:, t : t + 1], step[:, t : t + 1], a, self.cache, True)
                    self.calls += 1
        self.frames = c

    @torch.inference_mode()
    def denoise(self, action: torch.Tensor | None = None) -> torch.Tensor:
        """The next frame's clean latents (B, 1, N, Ch), given the action that makes it ((B, 1) / (B, 1, A) /
        None). The cache is left as it is, but for a commit that waited for this call (:meth:`commit`)."""
        s = self.sampler
        b, n, ch = self.shape
        a = None if action is None else action.to(s.device)

        pending, self._pending = self._pending, None

        def call(z, tau, d):
            nonlocal pending
            if pending is None:
                return s._call_step(z, tau, d, a, self.cache, False)
            with s._autocast():  # the frame committed last rides along with the first denoising call
                out = s.model.commit_and_step(pending, z, tau, d, a, self.cache)
            pending = None
            return out.float()

        x, k = s._denoise(call, b, n, ch, self.generator, s.device)
        self.calls += k
        return x

    @torch.inference_mode()
    def commit(self, x: torch.Tensor, action: torch.Tensor | None = None) -> None:
        """Add frame ``x`` (B, 1, N, Ch), made by ``action``, to the context of the frames after it.

        With a model that has ``commit_and_step`` the model call is made with the next frame's first denoising
        step (one call instead of two; the same computation and the same random draws)."""
        s = self.sampler
        self.flush()
        a = None if action is None else action.to(s.device)
        zc, tc, sc = s._corrupt(x, s._randn(tuple(x.shape), self.generator, x.device))
        if hasattr(s.model, "commit_and_step"):
            self._pending = (zc, tc, sc, a)
        else:
            s._call_step(zc, tc, sc, a, self.cache, True)
            self.calls += 1
        self.frames += 1

    @torch.inference_mode()
    def flush(self) -> None:
        """Make a commit still waiting for the next frame now (the cache then holds every committed frame)."""
        if self._pending is not None:
            pending, self._pending = self._pending, None
            self.sampler._call_step(*pending, self.cache, True)
            self.calls += 1


def rollout(
    model: torch.nn.Module,
    context: torch.Tensor,
    horizon: int,
    steps: int = 4,
    tau_ctx: float = 0.1,
    actions: torch.Tensor | None = None,
    seed: int | torch.Generator | None = 0,
    traits: ModelTraits | None = None,
    cache: bool = True,
    precision: str = "fp32",
    progress: Progress | None = None,
) -> RolloutResult:
    """One-call form of :class:`Sampler` (training previews use this)."""
    traits = traits if traits is not None else traits_of(model)
    s = Sampler(model, traits, steps=steps, tau_ctx=tau_ctx, cache=cache, precision=precision)
    return s.rollout(context, horizon, actions=actions, generator=seed, progress=progress)

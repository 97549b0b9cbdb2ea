"""The noise convention, in one place.

tau = 0 is clean, tau = 1 is pure noise:  z_tau = (1 - tau) * x + tau * noise   (flow matching path).
Models predict the clean signal x (x-prediction). A step of size d moves tau to tau - d.
The DreamerV4 paper uses the opposite direction (its tau = 1 is clean); every formula here is written
in this project's convention and pinned by tests/test_diffusion.py.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch


def _expand(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Broadcast a per-(batch, frame) value (B, T) over the trailing dims of ``like`` (B, T, ...)."""
    while t.dim() < like.dim():
        t = t.unsqueeze(-1)
    return t.to(like.dtype)


def add_noise(x: torch.Tensor, noise: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
    """z_tau = (1 - tau) x + tau noise, tau shaped like the leading dims of x."""
    t = _expand(tau, x)
    return (1 - t) * x + t * noise


def ramp_weight(tau: torch.Tensor) -> torch.Tensor:
    """Loss weight 1 - 0.9 tau: largest (1.0) on clean frames, 0.1 on pure noise.

    The paper's 0.9 * tau_paper + 0.1 with tau_paper = 1 - tau.
    """
    return 1.0 - 0.9 * tau


def implied_noise(z: torch.Tensor, x_hat: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
    """The noise that, with the predicted clean x_hat, reproduces z at level tau (tau > 0)."""
    t = _expand(tau, z)
    return (z - (1 - t) * x_hat) / t


def euler_step(z: torch.Tensor, x_hat: torch.Tensor, tau: torch.Tensor, tau_next: torch.Tensor) -> torch.Tensor:
    """One Euler step from tau to tau_next < tau with the implied noise.

    z' = (1 - tau') x_hat + tau' eps_hat,  eps_hat = (z - (1 - tau) x_hat) / tau,
    equivalently z' = z + (tau - tau') (x_hat - z) / tau. Where tau_next == 0 the result is x_hat exactly
    (no division by zero anywhere: tau > 0 is required of the current level).
    """
    t = _expand(tau, z)
    t_next = _expand(tau_next, z)
    out = z + (t - t_next) * (x_hat - z) / t
    return torch.where(t_next == 0, x_hat, out)


# ==============================================================================================
# Training objective: diffusion forcing + shortcut forcing (owned by the dynamics-training stage).
#
# Everything below is written in this module's convention (tau = 0 clean, x-prediction) and is
# pinned by tests/test_diffusion.py. Random draws take an explicit ``torch.Generator`` so that a
# training run is reproducible and can resume exactly.
# ==============================================================================================

STEP_SAMPLINGS = ("inverse", "uniform")


def step_sizes(k_max: int) -> torch.Tensor:
    """The shortcut step sizes d: powers of two from d_min = 1/k_max up to 1 (float32, ascending).

    For k_max = 64: 1/64, 2/64, 4/64, ..., 64/64. Every value and every multiple j*d <= 1 is exact in
    floating point, so tau grids built from them compare exactly.
    """
    if k_max < 1 or k_max & (k_max - 1):
        raise ValueError(f"k_max must be a power of two, got {k_max}")
    n = int(math.log2(k_max)) + 1
    return torch.tensor([2.0**i / k_max for i in range(n)], dtype=torch.float32)


def step_probabilities(k_max: int, sampling: str = "inverse") -> torch.Tensor:
    """P(d) over :func:`step_sizes`: ``inverse`` P(d) proportional to 1/d (small steps most often, the
    seed log's choice), ``uniform`` the same probability for every power of two (the paper's)."""
    d = step_sizes(k_max)
    if sampling == "inverse":
        w = 1.0 / d
    elif sampling == "uniform":
        w = torch.ones_like(d)
    else:
        raise ValueError(f"step sampling must be one of {STEP_SAMPLINGS}, got {sampling!r}")
    return w / w.sum()


def sample_step_sizes(
    shape: tuple[int, ...], k_max: int, sampling: str = "inverse", generator: torch.Generator | None = None
) -> torch.Tensor:
    """Draw a step size d independently for every element of ``shape`` (normally (batch, frames))."""
    d = step_sizes(k_max)
    n = math.prod(shape)
    if n == 0:
        return torch.zeros(shape)
    idx = torch.multinomial(step_probabilities(k_max, sampling), n, replacement=True, generator=generator)
    return d[idx].reshape(shape)


def sample_tau_on_grid(step: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """tau uniform on the grid that a step d reaches, {d, 2d, ..., 1}, per element.

    tau >= d keeps every level of a shortcut step (and its two half steps, tau - d/2 > 0) on the path,
    and tau = 1 (pure noise, where sampling starts) is always included.
    """
    n = torch.round(1.0 / step)  # steps of size d from 1 down to 0
    u = torch.rand(step.shape, generator=generator)
    j = torch.clamp(torch.floor(u * n), max=n - 1) + 1  # uniform on 1..n
    return j * step


@dataclass
class NoiseLevels:
    """Per-(item, frame) noise levels of one training batch (all float32 / bool, on CPU)."""

    tau: torch.Tensor  # (batch, frames) noise level, 0 clean, 1 noise
    step: torch.Tensor  # (batch, frames) step size d the model is conditioned on
    bootstrap: torch.Tensor  # (batch, frames) bool: frame trained against the two-half-step target
    isolated: torch.Tensor  # (batch,) bool: item trained as single images (no temporal context)
    context: torch.Tensor  # (batch, frames) bool: frame drawn as nearly-clean context

    def to(self, device: torch.device | str) -> NoiseLevels:
        return NoiseLevels(*(t.to(device) for t in (self.tau, self.step, self.bootstrap, self.isolated, self.context)))

    def select(self, items: slice | torch.Tensor) -> NoiseLevels:
        """The levels of some batch items (e.g. one process's share of a global batch)."""
        return NoiseLevels(*(t[items] for t in (self.tau, self.step, self.bootstrap, self.isolated, self.context)))


def sample_noise_levels(
    batch: int,
    frames: int,
    *,
    k_max: int = 64,
    shortcut: bool = False,
    step_sampling: str = "inverse",
    bootstrap_fraction: float = 0.25,
    single_image_fraction: float = 0.3,
    context_fraction: float = 0.0,
    context_tau_max: float = 0.2,
    bootstrap: bool = True,
    generator: torch.Generator | None = None,
) -> NoiseLevels:
    """Draw (tau, d) for every (item, frame) independently: diffusion forcing and shortcut forcing.

    - Items: each item is a single-image item with probability ``single_image_fraction`` (the model sees
      no other frame) and, for shortcut models with ``bootstrap`` on, a bootstrap item with probability
      ``bootstrap_fraction``.
    - Frames of bootstrap items draw d from :func:`step_probabilities`; every other frame uses d = d_min.
      tau is uniform on the grid of its d, {d, 2d, ..., 1}. Frames with d > d_min get the bootstrap
      target; frames with d = d_min the plain flow target (the clean frame).
    - Context frames: independently of position, a frame becomes a nearly-clean context frame with
      probability ``context_fraction``: tau ~ U[0, context_tau_max], d = d_min, flow target. This puts the
      sampler's context corruption (tau_ctx = 0.1, labelled with d_min) squarely inside the training
      distribution, and makes "clean past, noisy present" common enough to learn prediction quickly.
    Nothing depends on a frame's position in the window.
    """
    g = generator
    d_min = 1.0 / k_max
    isolated = torch.rand(batch, generator=g) < single_image_fraction
    boot_items = torch.rand(batch, generator=g) < bootstrap_fraction
    if not (shortcut and bootstrap):
        boot_items = torch.zeros_like(boot_items)
    d_draw = sample_step_sizes((batch, frames), k_max, step_sampling, generator=g)
    step = torch.where(boot_items[:, None], d_draw, torch.full_like(d_draw, d_min))
    tau = sample_tau_on_grid(step, generator=g)
    ctx = torch.rand(batch, frames, generator=g) < context_fraction
    ctx_tau = torch.rand(batch, frames, generator=g) * context_tau_max
    tau = torch.where(ctx, ctx_tau, tau)
    step = torch.where(ctx, torch.full_like(step, d_min), step)
    boot = step > d_min * 1.5
    return NoiseLevels(tau=tau, step=step, bootstrap=boot, isolated=isolated, context=ctx)


# A model call in the interface of the dynamics model: f(z, tau, step) -> x_hat (other inputs bound).
Predictor = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@torch.no_grad()
def bootstrap_target(
    f: Predictor, z: torch.Tensor, tau: torch.Tensor, step: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """The shortcut-forcing target in x-space from two half steps of the teacher ``f`` (no gradient).

    With x-prediction one step of size d from tau moves z to  z' = z + d (x_hat - z) / tau.
    The teacher takes two half steps of size d/2:
        b1 = (f(z, tau, d/2) - z) / tau,                 z1 = z + (d/2) b1
        b2 = (f(z1, tau - d/2, d/2) - z1) / (tau - d/2),  z2 = z1 + (d/2) b2 = z + (d/2)(b1 + b2)
    The student's single step lands on z2 exactly when its x_hat equals
        x_target = z + tau (b1 + b2) / 2  =  z + tau (z2 - z) / d,
    so the loss is mse(f(z, tau, d), stopgrad(x_target)) in x-space (no division of the loss by small
    numbers, unlike the velocity form, whose targets blow up as tau goes to 0). tau >= d is required so that tau - d/2 > 0.

    ``mask`` (batch, frames) selects the frames that take the half steps; the others keep (z, tau, d)
    in both teacher calls (they are context for the masked frames) and their returned value is
    meaningless. Computation is in float32 whatever the teacher's precision.
    """
    if mask is None:
        mask = torch.ones_like(tau, dtype=torch.bool)
    z = z.float()
    half = torch.where(mask, step / 2, step)
    safe_tau = torch.where(mask, tau, torch.ones_like(tau))  # unmasked frames may sit at tau = 0
    m = _expand(mask.float(), z)
    x1 = f(z, tau, half).float()
    b1 = m * (x1 - z) / _expand(safe_tau, z)
    z1 = z + _expand(half, z) * b1
    tau1 = torch.where(mask, tau - half, tau)
    x2 = f(z1, tau1, half).float()
    b2 = m * (x2 - z1) / _expand(torch.where(mask, tau1, torch.ones_like(tau1)), z)
    return z + _expand(tau, z) * (b1 + b2) / 2


@dataclass
class LossParts:
    """One training step's objective. ``loss`` is normalised and carries the gradient; the rest are
    detached floats for logging (``flow``/``bootstrap`` are the weighted means before normalisation,
    NaN when no frame of that kind was in the batch)."""

    loss: torch.Tensor
    raw: float
    flow: float
    bootstrap: float
    flow_frames: int
    bootstrap_frames: int
    tau_min: float
    tau_max: float


def forcing_loss(
    model: Callable[..., torch.Tensor],
    x: torch.Tensor,
    levels: NoiseLevels,
    noise: torch.Tensor,
    actions: torch.Tensor | None = None,
    normalizer: Callable[[torch.Tensor], torch.Tensor] | None = None,
    teacher: Callable[..., torch.Tensor] | None = None,
    weighting: str = "ramp",
) -> LossParts:
    """Diffusion-forcing loss with shortcut bootstrap terms, ramp-weighted and RMS-normalised.

    x (batch, frames, tokens, channels) clean latents; ``noise`` like x; ``levels`` from
    :func:`sample_noise_levels` (on x's device). ``model``/``teacher`` follow the dynamics interface
    ``m(z, tau, step, actions=..., isolated=...) -> x_hat``; the teacher defaults to the model itself
    (run without gradient) and only runs on the items that hold bootstrap frames.

    Per frame: squared error averaged over tokens and channels, times the ramp weight 1 - 0.9 tau
    (``weighting="uniform"``: weight 1 at every noise level);
    target = x where d = d_min (flow), the two-half-step x-space target where d > d_min (bootstrap).
    The mean over all frames is divided by a running RMS (``normalizer``) before backward.
    """
    x = x.float()
    tau, step, boot = levels.tau, levels.step, levels.bootstrap
    z = add_noise(x, noise.float(), tau)
    target = x
    boot_items = boot.any(dim=1)
    if bool(boot_items.any()):
        idx = boot_items.nonzero().squeeze(1)
        t_model = teacher if teacher is not None else model
        a_sub = actions[idx] if actions is not None else None
        iso_sub = levels.isolated[idx]

        def f(zz: torch.Tensor, tt: torch.Tensor, ss: torch.Tensor) -> torch.Tensor:
            return t_model(zz, tt, ss, actions=a_sub, isolated=iso_sub)

        tgt_sub = bootstrap_target(f, z[idx], tau[idx], step[idx], boot[idx])
        target = x.clone()
        m = _expand(boot[idx].float(), x)
        target[idx] = m * tgt_sub + (1 - m) * x[idx]
    x_hat = model(z, tau, step, actions=actions, isolated=levels.isolated)
    err = (x_hat.float() - target.detach()).pow(2).flatten(2).mean(-1)  # (batch, frames)
    if weighting == "ramp":
        weighted = ramp_weight(tau) * err
    elif weighting == "uniform":
        weighted = err
    else:
        raise ValueError(f"weighting={weighting!r}: expected 'ramp' or 'uniform'")
    raw = weighted.mean()
    loss = normalizer(raw) if normalizer is not None else raw

    w_det = weighted.detach()

    def _mean(sel: torch.Tensor) -> float:
        return float(w_det[sel].mean()) if bool(sel.any()) else float("nan")

    flow_sel = ~boot
    return LossParts(
        loss=loss,
        raw=float(raw.detach()),
        flow=_mean(flow_sel),
        bootstrap=_mean(boot),
        flow_frames=int(flow_sel.sum()),
        bootstrap_frames=int(boot.sum()),
        tau_min=float(tau.min()),
        tau_max=float(tau.max()),
    )

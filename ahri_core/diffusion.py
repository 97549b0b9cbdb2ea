"""The noise convention, in one place.

tau = 0 is clean, tau = 1 is pure noise:  z_tau = (1 - tau) * x + tau * noise   (flow matching path).
Models predict the clean signal x (x-prediction). A step of size d moves tau to tau - d.
The DreamerV4 paper uses the opposite direction (its tau = 1 is clean); every formula here is written
in this project's convention and pinned by tests/test_diffusion.py.
"""

from __future__ import annotations

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

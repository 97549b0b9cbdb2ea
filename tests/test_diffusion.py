"""The noise convention and the training objective (diffusion forcing + shortcut forcing)."""

from __future__ import annotations

import math

import pytest
import torch

from ahri_core.diffusion import (
    add_noise,
    bootstrap_target,
    euler_step,
    forcing_loss,
    implied_noise,
    ramp_weight,
    sample_noise_levels,
    sample_step_sizes,
    sample_tau_on_grid,
    step_probabilities,
    step_sizes,
)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------------------------------------- convention
def test_convention_round_trips():
    x = torch.rand(2, 3, 4, 5)
    noise = torch.randn_like(x)
    # tau = 0 is the clean signal, tau = 1 pure noise
    assert torch.equal(add_noise(x, noise, torch.zeros(2, 3)), x)
    assert torch.equal(add_noise(x, noise, torch.ones(2, 3)), noise)
    tau = torch.rand(2, 3) * 0.9 + 0.05
    z = add_noise(x, noise, tau)
    # the implied noise of the true x is the noise that was added
    assert torch.allclose(implied_noise(z, x, tau), noise, atol=1e-5)
    # an Euler step with the true x lands exactly on the path at the new level
    tau_next = tau * 0.5
    assert torch.allclose(euler_step(z, x, tau, tau_next), add_noise(x, noise, tau_next), atol=1e-5)
    # the last step returns x itself
    assert torch.equal(euler_step(z, x, tau, torch.zeros_like(tau)), x)


def test_ramp_weight_largest_on_clean_frames():
    tau = torch.linspace(0, 1, 11)
    w = ramp_weight(tau)
    assert w[0] == pytest.approx(1.0) and w[-1] == pytest.approx(0.1)
    assert torch.all(w[1:] < w[:-1]), "the weight must fall as frames get noisier"


# ---------------------------------------------------------------------------------------------- sampling
def test_step_grid_and_probabilities():
    d = step_sizes(64)
    assert d.tolist() == [1 / 64, 2 / 64, 4 / 64, 8 / 64, 16 / 64, 32 / 64, 1.0]
    p_inv = step_probabilities(64, "inverse")
    assert torch.allclose(p_inv * d, (p_inv * d)[0].expand(7))  # P(d) * d constant: P proportional to 1/d
    assert torch.allclose(step_probabilities(64, "uniform"), torch.full((7,), 1 / 7))
    with pytest.raises(ValueError):
        step_sizes(48)


@pytest.mark.parametrize("sampling", ["inverse", "uniform"])
def test_step_sizes_follow_the_distribution(sampling):
    n = 40000
    d = sample_step_sizes((n,), 64, sampling, generator=gen(1))
    grid = step_sizes(64)
    counts = torch.stack([(d == v).sum() for v in grid]).float()
    assert counts.sum() == n, "every d is on the power-of-two grid"
    expected = step_probabilities(64, sampling) * n
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 22.5, f"chi-square {chi2:.1f} with 6 dof (p < 0.001 would be 22.5)"
    # and the two distributions really differ
    other = "uniform" if sampling == "inverse" else "inverse"
    exp_other = step_probabilities(64, other) * n
    assert float(((counts - exp_other) ** 2 / exp_other).sum()) > 1000


def test_tau_on_the_grid_of_d_and_covers_it():
    d = sample_step_sizes((20000,), 16, "uniform", generator=gen(2))
    tau = sample_tau_on_grid(d, generator=gen(3))
    k = tau / d
    assert torch.allclose(k, k.round()), "tau must be a multiple of d"
    assert (tau >= d).all() and (tau <= 1).all()
    assert (tau - d / 2 > 0).all()
    for v in step_sizes(16):
        got = set((tau[d == v] / v).round().long().tolist())
        assert got == set(range(1, int(round(1 / float(v))) + 1)), f"d={v}: tau grid not covered"


def test_levels_are_per_frame_and_not_tied_to_position():
    B, T = 512, 16
    lv = sample_noise_levels(B, T, k_max=64, shortcut=True, bootstrap_fraction=1.0, context_fraction=0.0, generator=gen(4))
    # frames of one item differ (not one tau per sequence), and the mean is flat over positions
    assert (lv.tau.std(dim=1) > 0).float().mean() > 0.99
    assert (lv.step != lv.step[:, :1]).any(dim=1).float().mean() > 0.9
    per_pos = lv.tau.mean(dim=0)
    assert float(per_pos.max() - per_pos.min()) < 0.08
    # tau on d's grid, bootstrap exactly where d > d_min
    k = lv.tau / lv.step
    assert torch.allclose(k, k.round())
    assert torch.equal(lv.bootstrap, lv.step > 1 / 64)


def test_fractions_of_items_and_context_frames():
    B, T = 4000, 8
    lv = sample_noise_levels(
        B, T, k_max=64, shortcut=True, bootstrap_fraction=0.25, single_image_fraction=0.3,
        context_fraction=0.2, context_tau_max=0.2, generator=gen(5),
    )
    assert lv.isolated.shape == (B,)
    assert abs(lv.isolated.float().mean().item() - 0.3) < 0.03
    boot_items = (lv.step > 1 / 64).any(dim=1)
    # an item with d > d_min anywhere is a bootstrap item; with 8 frames nearly every one shows it
    assert 0.20 < boot_items.float().mean().item() < 0.26
    assert abs(lv.context.float().mean().item() - 0.2) < 0.02
    assert (lv.tau[lv.context] <= 0.2).all() and (lv.step[lv.context] == 1 / 64).all()
    assert not (lv.bootstrap & lv.context).any()
    # a model without shortcut training, or before the bootstrap warm-up: d = d_min everywhere
    for kw in ({"shortcut": False}, {"shortcut": True, "bootstrap": False}):
        flat = sample_noise_levels(64, 8, k_max=64, generator=gen(6), **kw)
        assert (flat.step == 1 / 64).all() and not flat.bootstrap.any()


def test_levels_are_reproducible_from_the_generator():
    a = sample_noise_levels(8, 8, shortcut=True, generator=gen(7))
    b = sample_noise_levels(8, 8, shortcut=True, generator=gen(7))
    assert torch.equal(a.tau, b.tau) and torch.equal(a.step, b.step) and torch.equal(a.isolated, b.isolated)


# ---------------------------------------------------------------------------------------------- bootstrap
def toy(z: torch.Tensor, tau: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
    """A deterministic nonlinear 'network' of (z, tau, d)."""
    t = tau[..., None, None]
    s = step[..., None, None]
    return torch.tanh(0.7 * z + 0.3 * t) - 0.2 * s * z**2


def test_bootstrap_target_equals_two_explicit_half_steps():
    g = gen(8)
    z = torch.randn(2, 3, 4, 5, generator=g)
    d = torch.tensor([[0.25, 0.5, 1.0], [0.125, 0.25, 0.5]])
    tau = torch.tensor([[0.5, 1.0, 1.0], [0.375, 0.75, 0.5]])
    target = bootstrap_target(toy, z, tau, d)
    # by hand, in the order of the derivation in bootstrap_target's docstring
    t = tau[..., None, None]
    h = d[..., None, None] / 2
    b1 = (toy(z, tau, d / 2) - z) / t
    z1 = z + h * b1
    b2 = (toy(z1, tau - d / 2, d / 2) - z1) / (t - h)
    expected = z + t * (b1 + b2) / 2
    assert torch.allclose(target, expected, atol=1e-6)
    # and it is the x-space image of the two-step endpoint: one student step with x = target lands on z2
    z2 = z1 + h * b2
    student_step = euler_step(z, target, tau, tau - d)
    assert torch.allclose(student_step, z2, atol=1e-5)


def test_bootstrap_target_of_the_true_x_is_x():
    # a perfect teacher on a single clean point: both half steps point at x, so the target is x
    x = torch.randn(1, 2, 3, 4)
    noise = torch.randn_like(x)
    tau = torch.tensor([[1.0, 0.5]])
    d = torch.tensor([[0.5, 0.25]])
    z = add_noise(x, noise, tau)
    target = bootstrap_target(lambda zz, tt, ss: x.expand_as(zz), z, tau, d)
    assert torch.allclose(target, x, atol=1e-5)


def test_bootstrap_mask_keeps_other_frames_as_context():
    calls = []

    def spy(z, tau, step):
        calls.append((z.clone(), tau.clone(), step.clone()))
        return toy(z, tau, step)

    z = torch.randn(1, 3, 2, 2)
    tau = torch.tensor([[0.05, 1.0, 0.5]])  # frame 0 is nearly clean context
    d = torch.tensor([[1 / 64, 0.5, 1 / 64]])
    mask = torch.tensor([[False, True, False]])
    bootstrap_target(spy, z, tau, d, mask)
    (z_a, tau_a, d_a), (z_b, tau_b, d_b) = calls
    assert torch.equal(tau_a, tau) and torch.equal(d_a[0, [0, 2]], d[0, [0, 2]]) and d_a[0, 1] == 0.25
    assert torch.equal(tau_b[0, [0, 2]], tau[0, [0, 2]]) and tau_b[0, 1] == 0.75
    assert torch.equal(z_b[:, [0, 2]], z[:, [0, 2]]), "unmasked frames are not moved"
    assert not torch.equal(z_b[:, 1], z[:, 1])


# ---------------------------------------------------------------------------------------------- the loss
class Echo(torch.nn.Module):
    """Interface-compatible stand-in: x_hat = a * z + b (one parameter pair), records its calls."""

    def __init__(self) -> None:
        super().__init__()
        self.a = torch.nn.Parameter(torch.tensor(0.5))
        self.b = torch.nn.Parameter(torch.tensor(0.1))
        self.calls: list[dict] = []

    def forward(self, z, tau, step, actions=None, isolated=None):
        self.calls.append({"grad": torch.is_grad_enabled(), "B": z.shape[0], "isolated": isolated})
        return self.a * z + self.b


def test_forcing_loss_flow_target_and_ramp_weight():
    m = Echo()
    x = torch.randn(2, 4, 3, 2)
    noise = torch.randn_like(x)
    lv = sample_noise_levels(2, 4, shortcut=False, generator=gen(9))
    parts = forcing_loss(m, x, lv, noise)
    z = add_noise(x, noise, lv.tau)
    per_frame = (m.a * z + m.b - x).pow(2).mean(dim=(2, 3))
    expected = (ramp_weight(lv.tau) * per_frame).mean()
    assert parts.loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert parts.bootstrap_frames == 0 and math.isnan(parts.bootstrap)
    assert len(m.calls) == 1 and m.calls[0]["grad"]
    parts.loss.backward()
    assert m.a.grad is not None


def test_forcing_loss_uniform_weighting_is_the_plain_mean_and_unknown_weightings_are_refused():
    m = Echo()
    x = torch.randn(2, 4, 3, 2)
    noise = torch.randn_like(x)
    lv = sample_noise_levels(2, 4, shortcut=False, generator=gen(9))
    z = add_noise(x, noise, lv.tau)
    per_frame = (m.a * z + m.b - x).pow(2).mean(dim=(2, 3))
    uniform = forcing_loss(m, x, lv, noise, weighting="uniform").loss.item()
    ramp = forcing_loss(m, x, lv, noise).loss.item()
    assert uniform == pytest.approx(per_frame.mean().item(), rel=1e-5)
    assert ramp < uniform  # the ramp weighs every noisy frame below 1
    with pytest.raises(ValueError, match="weighting"):
        forcing_loss(m, x, lv, noise, weighting="paper")


def test_forcing_loss_bootstrap_runs_teacher_without_grad_on_bootstrap_items_only():
    m = Echo()
    x = torch.randn(6, 4, 3, 2)
    lv = sample_noise_levels(6, 4, shortcut=True, bootstrap_fraction=0.5, context_fraction=0.0, generator=gen(10))
    assert lv.bootstrap.any() and not lv.bootstrap.all()
    parts = forcing_loss(m, x, lv, torch.randn_like(x))
    teacher_calls = [c for c in m.calls if not c["grad"]]
    assert len(teacher_calls) == 2
    assert teacher_calls[0]["B"] == int(lv.bootstrap.any(dim=1).sum())
    assert parts.bootstrap_frames == int(lv.bootstrap.sum())
    assert parts.flow_frames + parts.bootstrap_frames == 24
    assert not math.isnan(parts.bootstrap) and not math.isnan(parts.flow)
    # a separate teacher is used instead of the model when given
    t = Echo()
    m.calls.clear()
    forcing_loss(m, x, lv, torch.randn_like(x), teacher=t)
    assert len(t.calls) == 2 and len(m.calls) == 1


def test_forcing_loss_is_normalised_by_the_running_rms():
    from ahri_core.train.common import RunningRMS

    m = Echo()
    x = torch.randn(2, 4, 3, 2) * 10
    lv = sample_noise_levels(2, 4, generator=gen(11))
    norm = RunningRMS()
    parts = forcing_loss(m, x, lv, torch.randn_like(x), normalizer=norm)
    assert parts.loss.item() == pytest.approx(1.0, rel=1e-4)  # first value divided by its own RMS
    assert parts.raw > 1.0

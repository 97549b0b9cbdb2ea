"""The one sampler: exact recovery with an oracle, context corruption labels, KV cache, step checks."""

from __future__ import annotations

import pytest
import torch
from sampling_fakes import GaussianDenoiser, OracleModel, TinyCausal

from ahri_core.errors import ConfigError
from ahri_core.inference.sampler import ModelTraits, Sampler, check_steps, rollout, tau_grid, traits_of

B, T_TOTAL, N, C = 2, 12, 5, 8


def _truth(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, T_TOTAL, N, C, generator=g)


def _index_actions(total: int = T_TOTAL) -> torch.Tensor:
    return torch.arange(total).repeat(B, 1)  # the oracle reads the frame index from the action


@pytest.mark.parametrize("cache", [True, False])
@pytest.mark.parametrize("steps", [1, 2, 4, 8, 16, 64])
def test_oracle_is_recovered_exactly_for_any_k(steps: int, cache: bool):
    truth = _truth()
    model = OracleModel(truth, k_max=64, shortcut=True)
    ctx = 4
    res = Sampler(model, traits_of(model), steps=steps, tau_ctx=0.1, cache=cache, precision="fp32").rollout(
        truth[:, :ctx], T_TOTAL - ctx, actions=_index_actions(), generator=3
    )
    assert res.latents.shape == (B, T_TOTAL - ctx, N, C)
    assert torch.equal(res.latents, truth[:, ctx:])


def test_tau_grid_is_exact_and_ends_at_zero():
    for k in (1, 2, 4, 64, 1024):
        g = tau_grid(k)
        assert g[0][0] == 1.0 and g[-1][1] == 0.0 and len(g) == k
        assert all(a - b == 1.0 / k for a, b in g)


@pytest.mark.parametrize("cache", [True, False])
def test_denoising_labels_start_at_one_with_step_one_over_k(cache: bool):
    truth = _truth()
    model = OracleModel(truth, k_max=16, shortcut=True)
    Sampler(model, traits_of(model), steps=4, tau_ctx=0.1, cache=cache, precision="fp32").rollout(
        truth[:, :3], 2, actions=_index_actions(5), generator=0
    )
    new = [c for c in model.calls if c.commit is not True]
    taus = [float(c.tau[0, -1]) for c in new]
    assert taus == [1.0, 0.75, 0.5, 0.25] * 2
    assert all(float(c.step[0, -1]) == 0.25 for c in new)
    # the first denoising input is pure noise
    first = new[0].z[:, -1]
    assert abs(float(first.std()) - 1.0) < 0.2


def _context_frames_seen(model: OracleModel, cache: bool):
    """(z, tau label, step label, frame index) of every context frame the model was given."""
    seen = []
    for c in model.calls:
        if cache:
            if c.commit:
                seen.append((c.z[:, 0], c.tau[:, 0], c.step[:, 0], c.actions[:, 0]))
        else:
            for t in range(c.z.shape[1] - 1):  # the last frame is the one being denoised
                seen.append((c.z[:, t], c.tau[:, t], c.step[:, t], c.actions[:, t]))
    return seen


@pytest.mark.parametrize("cache", [True, False])
@pytest.mark.parametrize("tau_ctx", [0.1, 0.3])
def test_context_noise_applied_equals_label_passed(cache: bool, tau_ctx: float):
    # Big frames so that the statistics are sharp; the oracle makes predicted frames equal the truth, so
    # self-predicted context frames are checked against a known clean value as well.
    g = torch.Generator().manual_seed(1)
    truth = 3.0 + torch.randn(B, 8, 64, 32, generator=g)
    model = OracleModel(truth, k_max=8, shortcut=True)
    ctx = 3
    Sampler(model, traits_of(model), steps=2, tau_ctx=tau_ctx, cache=cache, precision="fp32").rollout(
        truth[:, :ctx], 5, actions=torch.arange(8).repeat(B, 1), generator=5
    )
    seen = _context_frames_seen(model, cache)
    predicted = {int(idx[0]) for _, _, _, idx in seen if int(idx[0]) >= ctx}
    assert predicted == {3, 4, 5, 6}  # every self-predicted frame but the last went back in as context
    for z, tau, step, idx in seen:
        assert torch.all(tau == tau_ctx)  # labelled tau_ctx ...
        assert torch.all(step == 1.0 / 8)  # ... with the finest step d_min
        x = truth[torch.arange(B), idx]
        eps = (z - (1 - tau[:, None, None]) * x) / tau[:, None, None]  # ... and noised by that same tau
        assert abs(float(eps.mean())) < 0.05
        assert abs(float(eps.std()) - 1.0) < 0.05


def test_context_noise_is_exactly_the_documented_draws():
    truth = _truth()
    model = OracleModel(truth, k_max=4, shortcut=True)
    ctx, horizon, tau_ctx = 3, 3, 0.2
    Sampler(model, traits_of(model), steps=2, tau_ctx=tau_ctx, cache=True, precision="fp32").rollout(
        truth[:, :ctx], horizon, actions=_index_actions(ctx + horizon), generator=11
    )
    g = torch.Generator().manual_seed(11)
    ctx_noise = torch.randn(B, ctx, N, C, generator=g)
    expected = [(1 - tau_ctx) * truth[:, t] + tau_ctx * ctx_noise[:, t] for t in range(ctx)]
    for h in range(horizon - 1):
        torch.randn(B, 1, N, C, generator=g)  # the new frame's initial noise
        eps = torch.randn(B, 1, N, C, generator=g)[:, 0]
        expected.append((1 - tau_ctx) * truth[:, ctx + h] + tau_ctx * eps)
    commits = [c for c in model.calls if c.commit]
    assert len(commits) == len(expected)
    for c, e in zip(commits, expected, strict=True):
        torch.testing.assert_close(c.z[:, 0], e, rtol=0, atol=1e-6)


@pytest.mark.parametrize("cache", [True, False])
def test_tau_ctx_zero_feeds_clean_context_labelled_clean(cache: bool):
    truth = _truth()
    model = OracleModel(truth, k_max=4, shortcut=True)
    Sampler(model, traits_of(model), steps=4, tau_ctx=0.0, cache=cache, precision="fp32").rollout(
        truth[:, :3], 3, actions=_index_actions(6), generator=0
    )
    for z, tau, _, idx in _context_frames_seen(model, cache):
        assert torch.all(tau == 0)
        assert torch.equal(z, truth[torch.arange(B), idx])


def test_refuses_few_steps_without_shortcut_training():
    plain = ModelTraits(k_max=64, shortcut=False)
    with pytest.raises(ConfigError, match="shortcut"):
        check_steps(4, plain)
    check_steps(64, plain)  # the full step count is fine
    model = OracleModel(_truth(), k_max=64, shortcut=False)
    with pytest.raises(ConfigError, match="shortcut forcing"):
        Sampler(model, traits_of(model), steps=4)
    with pytest.raises(ConfigError, match="power of two"):
        check_steps(3, ModelTraits(k_max=64, shortcut=True))
    with pytest.raises(ConfigError, match="k_max"):
        check_steps(128, ModelTraits(k_max=64, shortcut=True))


def test_traits_read_from_config_and_run_info():
    model = OracleModel(_truth(), k_max=32, shortcut=False, max_frames=16)
    t = traits_of(model)
    assert (t.k_max, t.shortcut, t.max_frames) == (32, False, 16)
    t = traits_of(model, {"shortcut": True, "max_frames": 8})
    assert (t.shortcut, t.max_frames) == (True, 8)


def _tiny(seed: int = 0, **cfg) -> TinyCausal:
    torch.manual_seed(seed)
    return TinyCausal(channels=4, tokens=3, **cfg).eval()


@pytest.mark.parametrize("max_frames", [None, 5])
def test_kv_cached_rollout_equals_uncached(max_frames):
    model = _tiny(k_max=8, shortcut=True, max_frames=max_frames)
    g = torch.Generator().manual_seed(0)
    ctx = torch.randn(2, 6, 3, 4, generator=g)
    actions = torch.randint(-1, 5, (2, 6 + 7), generator=g)
    kw = dict(steps=4, tau_ctx=0.1, precision="fp32")
    a = Sampler(model, traits_of(model), cache=True, **kw).rollout(ctx, 7, actions=actions, generator=4)
    b = Sampler(model, traits_of(model), cache=False, **kw).rollout(ctx, 7, actions=actions, generator=4)
    torch.testing.assert_close(a.latents, b.latents, rtol=1e-5, atol=1e-5)
    assert not torch.equal(a.latents[:, 0], a.latents[:, -1])


def test_sliding_window_bounds_what_the_model_sees():
    truth = _truth()
    model = OracleModel(truth, k_max=4, shortcut=True, max_frames=4)
    Sampler(model, traits_of(model), steps=2, cache=False, precision="fp32").rollout(
        truth[:, :6], 6, actions=_index_actions(), generator=0
    )
    assert max(c.z.shape[1] for c in model.calls) == 4
    # the window holds the latest frames: predicting frame t the model sees t-3 .. t
    last = model.calls[-1]
    assert last.actions[0].tolist() == [8, 9, 10, 11]
    model.calls.clear()
    Sampler(model, traits_of(model), steps=2, cache=True, precision="fp32").rollout(
        truth[:, :6], 6, actions=_index_actions(), generator=0
    )
    assert all(c.z.shape[1] == 1 for c in model.calls)
    commits = [int(c.actions[0, 0]) for c in model.calls if c.commit]
    assert commits[:3] == [3, 4, 5]  # context older than the window is never computed


def test_cached_cost_per_frame_is_constant():
    truth = _truth()
    model = OracleModel(truth, k_max=8, shortcut=True)
    res = Sampler(model, traits_of(model), steps=4, cache=True, precision="fp32").rollout(
        truth[:, :4], 8, actions=_index_actions(), generator=0
    )
    assert res.model_calls == 4 + 8 * 4 + 7  # prefill, K per frame, one commit per finished frame but the last
    assert len(model.calls) == res.model_calls
    assert all(c.z.shape[1] == 1 for c in model.calls)


@pytest.mark.parametrize("max_frames", [None, 5])
def test_a_stream_made_a_frame_at_a_time_is_the_rollout(max_frames):
    """Sampler.stream (what ``ahri play`` drives) gives the frames of Sampler.rollout for the same seed and
    actions, chosen one frame at a time, with the same model calls."""
    model = _tiny(k_max=8, shortcut=True, max_frames=max_frames)
    g = torch.Generator().manual_seed(0)
    ctx = torch.randn(2, 6, 3, 4, generator=g)
    actions = torch.randint(-1, 5, (2, 6 + 5), generator=g)
    s = Sampler(model, traits_of(model), steps=4, tau_ctx=0.1, precision="fp32")
    ref = s.rollout(ctx, 5, actions=actions, generator=3)
    st = s.stream(ctx, actions[:, :6], generator=3)
    frames = []
    for h in range(5):
        a = actions[:, 6 + h : 7 + h]
        frames.append(st.denoise(a))
        if h < 4:
            st.commit(frames[-1], a)
    assert torch.equal(torch.cat(frames, dim=1), ref.latents)
    assert st.calls == ref.model_calls and st.frames == 6 + 4
    # another action for the last frame: another frame, from the same cache
    other = s.stream(ctx, actions[:, :6], generator=3)
    for h in range(4):
        other.commit(other.denoise(actions[:, 6 + h : 7 + h]), actions[:, 6 + h : 7 + h])
    assert torch.equal(other.denoise(actions[:, 10:11]), frames[-1])
    assert not torch.equal(s.stream(ctx, actions[:, :6], generator=3).denoise((actions[:, 6:7] + 2) % 5), frames[0])
    with pytest.raises(ConfigError, match="context latents"):
        s.stream(ctx[:, :0])


def test_seeded_and_batch_independent():
    model = _tiny(k_max=4, shortcut=True)
    ctx = torch.randn(2, 4, 3, 4, generator=torch.Generator().manual_seed(0))
    a = rollout(model, ctx, 3, steps=2, seed=1, precision="fp32").latents
    b = rollout(model, ctx, 3, steps=2, seed=1, precision="fp32").latents
    c = rollout(model, ctx, 3, steps=2, seed=2, precision="fp32").latents
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_short_future_actions_are_padded_with_no_action():
    model = _tiny(k_max=4, shortcut=True)
    ctx = torch.randn(1, 3, 3, 4, generator=torch.Generator().manual_seed(0))
    given = torch.tensor([[-1, 2, 3, 4]])  # three context actions and one future action
    full = torch.tensor([[-1, 2, 3, 4, -1, -1]])
    a = rollout(model, ctx, 3, steps=4, actions=given, seed=0, precision="fp32").latents
    b = rollout(model, ctx, 3, steps=4, actions=full, seed=0, precision="fp32").latents
    c = rollout(model, ctx, 3, steps=4, actions=None, seed=0, precision="fp32").latents
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_bf16_runs_close_to_fp32():
    model = _tiny(k_max=4, shortcut=True)
    ctx = torch.randn(2, 4, 3, 4, generator=torch.Generator().manual_seed(0))
    a = rollout(model, ctx, 4, steps=4, seed=0, precision="fp32").latents
    b = rollout(model, ctx, 4, steps=4, seed=0, precision="bf16").latents
    assert b.dtype == torch.float32
    assert float((a - b).abs().max()) < 0.1 * float(a.abs().max())


def test_bad_arguments_are_refused():
    model = _tiny(k_max=4, shortcut=True)
    s = Sampler(model, traits_of(model), steps=4)
    with pytest.raises(ConfigError, match="at least one context"):
        s.rollout(torch.zeros(1, 0, 3, 4), 2)
    with pytest.raises(ConfigError, match="horizon"):
        s.rollout(torch.zeros(1, 2, 3, 4), 0)
    with pytest.raises(ConfigError, match="tau_ctx"):
        Sampler(model, traits_of(model), steps=4, tau_ctx=1.0)


@pytest.mark.parametrize("cache", [True, False])
def test_exact_denoiser_samples_the_right_distribution(cache: bool):
    # Euler with the implied noise, given the exact denoiser of N(0.5, 0.3^2), converges to that Gaussian as K
    # grows. Re-noising with the initial noise (a common sampler mistake: it
    # correlates the steps) ends near std 0.69 at K = 64, fresh noise near
    # 0.20: both far outside the bounds below. One step returns the mean exactly.
    model = GaussianDenoiser(0.5, 0.3, k_max=64, shortcut=True)
    ctx = torch.zeros(40, 1, 50, 10)
    stds = {}
    for k in (1, 4, 16, 64):
        x = Sampler(model, traits_of(model), steps=k, cache=cache, precision="fp32").rollout(ctx, 1, generator=k).latents
        stds[k] = float(x.std())
        assert abs(float(x.mean()) - 0.5) < 0.01
    assert stds[1] == 0.0
    assert 0.28 < stds[64] < 0.31, stds
    assert stds[1] < stds[4] < stds[16] < stds[64]  # more steps: closer to the true spread, never past it


def _flipping_video(seed: int, frames: int = 40, tokens: int = 4, channels: int = 4) -> torch.Tensor:
    """Deterministic dynamics: every frame is the previous one with its sign flipped."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(tokens, channels, generator=g) * 1.6 - 0.8
    sign = torch.tensor([(-1.0) ** t for t in range(frames)])
    return sign[:, None, None] * x


@pytest.mark.slow
def test_more_steps_are_not_worse_than_fewer_on_a_trained_model(tmp_path):
    """A tiny model trained with shortcut forcing (k_max 8) on a world whose frames flip sign every step.

    One step returns the model's mean prediction, which MSE favours; from two steps on the sampler draws
    samples, and those must not get worse as the steps get finer. Re-noising with the initial noise instead
    of the implied noise (which correlates the steps) makes 8 steps about twice as bad as 2 on this model and fails here.
    """
    from ahri_core.config.settings import DataSettings, DiffusionSettings, TrainSettings
    from ahri_core.data.windows import LatentVideo, make_latent_set
    from ahri_core.models.dynamics_io import load_dynamics_run as load_dynamics
    from ahri_core.train.dynamics import train_dynamics

    train = [LatentVideo(f"t{i}", _flipping_video(i).half()) for i in range(16)]
    val = torch.stack([_flipping_video(100 + i) for i in range(6)])
    lset = make_latent_set(train, [LatentVideo("v", val[0].half())])
    train_dynamics(
        lset, tmp_path / "run",
        train=TrainSettings(preset="tiny", max_steps=800, batch_size=8, lr=3e-3, warmup_steps=10, precision="fp32",
                            val_every=10**6, checkpoint_every=10**6, log_every=10**6, device="cpu"),
        data=DataSettings(seq_len=6, stride=2),
        diffusion=DiffusionSettings(shortcut=True, k_max=8),
        model_overrides=dict(dim=32, depth=2, heads=2, kv_heads=None, registers=0, temporal_every=2),
    )
    model, info = load_dynamics(tmp_path / "run")
    traits = traits_of(model, info)
    ctx, horizon = 4, 4
    copy = float((val[:, ctx - 1 : ctx] - val[:, ctx : ctx + horizon]).pow(2).mean())
    mse = {}
    for k in (1, 2, 4, 8):
        res = Sampler(model, traits, steps=k, tau_ctx=0.1, precision="fp32").rollout(val[:, :ctx], horizon, generator=0)
        mse[k] = float((res.latents - val[:, ctx : ctx + horizon]).pow(2).mean())
    assert all(v < 0.4 * copy for v in mse.values()), (mse, copy)  # the model has learned the motion
    assert mse[4] <= 1.5 * mse[2] and mse[8] <= 1.5 * mse[2], mse


# ---------------------------------------------------------------------------------------------- the real model
# What the cached path keeps when old frames leave the window (docs/evaluation.md, "KV cache"): each committed
# frame's temporal keys/values are computed once, when the frame is committed, and kept until the frame leaves
# the window. At the first temporal layer a key depends on its own frame only; at deeper temporal layers it
# carries what the frame saw when it was committed: up to max_frames - 1 earlier frames, some of which have left
# the window since. So the cached rollout equals running the model over the whole history with every temporal
# layer restricted to a band of max_frames frames (sliding-window attention), while the uncached path re-runs
# the window from scratch (its oldest frame sees nothing earlier). The two agree until the window slides, and
# always with a single temporal layer.
def _real_model(depth: int, temporal_every: int, max_frames: int, seed: int = 0, **extra):
    from ahri_core.models.dynamics import build_dynamics

    torch.manual_seed(seed)
    model = build_dynamics(
        dict(dim=32, depth=depth, heads=4, kv_heads=2, registers=2, temporal_every=temporal_every, mlp_ratio=2.0,
             max_frames=max_frames, k_max=2, **extra),
        tokens=4, channels=3,
    ).eval()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():  # a new model's blocks are the identity (AdaLN-zero): make every block act
        for blk in model.blocks:
            blk.mod.weight.normal_(0, 0.2, generator=g)
            blk.mod.bias.normal_(0, 0.2, generator=g)
        model.mod_out.weight.normal_(0, 0.2, generator=g)
    return model


def _banded(model, band: int):
    """The same model with every temporal layer's causal attention limited to the ``band`` latest frames."""
    for blk in model.blocks:
        if not blk.temporal:
            continue
        orig = blk.attn.forward

        def forward(x, rope_q=None, rope_k=None, mask=None, is_causal=False, past=None, orig=orig):
            if is_causal and past is None and mask is None:
                i = torch.arange(x.shape[1], device=x.device)
                mask = (i[None, :] <= i[:, None]) & (i[:, None] - i[None, :] < band)
                is_causal = False
            return orig(x, rope_q=rope_q, rope_k=rope_k, mask=mask, is_causal=is_causal, past=past)

        blk.attn.forward = forward
    return model


LAYOUTS = {"S,T,S,T": (4, 2), "T,T,T": (3, 1), "S,T,S,T,S,T": (6, 2)}


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_real_model_cached_steps_are_sliding_window_attention_over_the_history(layout):
    depth, every = LAYOUTS[layout]
    M, T = 4, 11
    model = _real_model(depth, every, M)
    assert ",".join(model.config.layer_kinds()) == layout and len(model.temporal_index) >= 2
    g = torch.Generator().manual_seed(3)
    z = torch.randn(2, T, 4, 3, generator=g)
    tau = torch.rand(2, T, generator=g)
    step = torch.full((2, T), 0.5)
    cache = model.new_cache(2, M)
    got = torch.cat([model.step(z[:, t : t + 1], tau[:, t : t + 1], step[:, t : t + 1], None, cache, commit=True)
                     for t in range(T)], dim=1)
    with torch.no_grad():
        banded = _banded(_real_model(depth, every, M), M)(z, tau, step)
    torch.testing.assert_close(got, banded, rtol=1e-5, atol=1e-5)  # every frame, before and after the slide
    # a fresh window (what the uncached path computes) agrees only until the window slides
    for t in range(T):
        w = slice(max(0, t - M + 1), t + 1)
        with torch.no_grad():
            window = model(z[:, w], tau[:, w], step[:, w])
        diff = float((window[:, -1] - got[:, t]).abs().max())
        if t < M:
            assert diff < 1e-5, (t, diff)
        else:
            assert diff > 1e-4, (t, diff)  # deeper temporal layers kept what left the window


@pytest.mark.parametrize("layout", ["S,T,S,T", "T,T,T"])
def test_real_model_cached_rollout_past_max_frames(layout):
    """Sampler level: context 3, horizon 8, window 6 frames, so the window slides at the 4th predicted frame."""
    from dataclasses import replace

    depth, every = LAYOUTS[layout]
    M, c, H = 6, 3, 8
    model = _real_model(depth, every, M)
    traits = traits_of(model)
    assert traits.max_frames == M and c + H > M
    ctx = torch.randn(2, c, 4, 3, generator=torch.Generator().manual_seed(0)).clamp(-1, 1)
    kw = dict(steps=2, tau_ctx=0.1, precision="fp32")
    cached = Sampler(model, traits, cache=True, **kw).rollout(ctx, H, generator=4).latents
    uncached = Sampler(model, traits, cache=False, **kw).rollout(ctx, H, generator=4).latents
    slide = M - c  # predicted frame index h whose frame (c + h) is the first the window no longer holds whole
    # before the slide: the same numbers up to float rounding
    torch.testing.assert_close(cached[:, :slide], uncached[:, :slide], rtol=1e-5, atol=1e-5)
    # after: they differ, by design (see above), but stay close; the output scale of this model is ~0.15
    diff = (cached[:, slide:] - uncached[:, slide:]).abs()
    assert float(diff.max()) > 1e-4
    assert float(diff.max()) < 0.05 and float(diff.mean()) < 0.1 * float(cached.abs().mean())
    # the cached path is exactly the uncached path of the banded model over the whole history
    ref = _banded(_real_model(depth, every, M), M)
    full = Sampler(ref, replace(traits, max_frames=None), cache=False, **kw).rollout(ctx, H, generator=4).latents
    torch.testing.assert_close(cached, full, rtol=1e-5, atol=1e-5)


def test_real_model_with_one_temporal_layer_slides_without_any_difference():
    """With a single temporal layer every kept key depends on its own frame only: nothing to diverge."""
    model = _real_model(4, 4, 5)
    assert model.config.layer_kinds() == ["S", "S", "S", "T"]
    ctx = torch.randn(2, 2, 4, 3, generator=torch.Generator().manual_seed(1)).clamp(-1, 1)
    kw = dict(steps=2, tau_ctx=0.1, precision="fp32")
    a = Sampler(model, traits_of(model), cache=True, **kw).rollout(ctx, 9, generator=2).latents
    b = Sampler(model, traits_of(model), cache=False, **kw).rollout(ctx, 9, generator=2).latents
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("layout,actions", [("S,T,S,T", False), ("T,T,T", False), ("S,T,S,T", True)])
def test_one_call_context_and_folded_commits_give_the_same_rollout(layout, actions, monkeypatch):
    """The context goes into the cache in one call (prefill) and each finished frame is committed in the next
    frame's first denoising call (commit_and_step): the same rollout as one call per commit, before and after
    the window slides, with one model call per denoising step and one for the whole context."""
    from ahri_core.models.dynamics import DynamicsModel

    depth, every = LAYOUTS[layout]
    M, c, H = 5, 3, 7
    model = _real_model(depth, every, M, **(dict(action_kind="discrete", action_count=3) if actions else {}))
    traits = traits_of(model)
    ctx = torch.randn(2, c, 4, 3, generator=torch.Generator().manual_seed(0)).clamp(-1, 1)
    acts = torch.randint(-1, 3, (2, c + H), generator=torch.Generator().manual_seed(1)) if actions else None
    kw = dict(steps=2, tau_ctx=0.1, precision="fp32")
    fast = Sampler(model, traits, **kw).rollout(ctx, H, actions=acts, generator=4)
    assert fast.model_calls == 1 + H * 2
    monkeypatch.delattr(DynamicsModel, "commit_and_step")
    monkeypatch.delattr(DynamicsModel, "prefill")
    slow = Sampler(model, traits, **kw).rollout(ctx, H, actions=acts, generator=4)
    assert slow.model_calls == c + H * 2 + (H - 1)
    torch.testing.assert_close(fast.latents, slow.latents, rtol=1e-5, atol=1e-5)

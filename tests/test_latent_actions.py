"""Latent actions: FSQ math, the encoder's shapes and bottleneck, joint training, resume, files, the few-label map,
and eval / rollout of a latent-action run."""

from __future__ import annotations

import functools
import json
import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from dynamics_fixtures import clip, tiny_settings  # noqa: E402
from sampling_fakes import held_out, make_world  # noqa: E402

from ahri_core.checkpoint import read_metadata  # noqa: E402
from ahri_core.config.settings import DataSettings, DiffusionSettings, LatentActionSettings  # noqa: E402
from ahri_core.data.windows import make_latent_set  # noqa: E402
from ahri_core.diffusion import forcing_loss, sample_noise_levels  # noqa: E402
from ahri_core.errors import CheckpointError, ConfigError  # noqa: E402
from ahri_core.eval.action_probe import pair_counts, probe_accuracy  # noqa: E402
from ahri_core.models.dynamics import dynamics_config  # noqa: E402
from ahri_core.models.dynamics_io import load_dynamics_run  # noqa: E402
from ahri_core.models.latent_actions import (  # noqa: E402
    FSQ,
    KIND,
    LatentActionDynamics,
    LatentActionModel,
    latent_action_config,
    levels_for,
    load_world_dynamics,
    video_codes,
)
from ahri_core.train.action_map import action_map_from_counts, fit_action_map, parse_action_tokens  # noqa: E402
from ahri_core.train.dynamics import train_dynamics  # noqa: E402

# ---------------------------------------------------------------------------------------------- FSQ


@pytest.mark.parametrize("levels", [(2,), (3,), (4, 4), (2, 2, 2), (4, 3), (5, 5)])
def test_fsq_index_and_vector_round_trip_exactly(levels):
    q = FSQ(levels)
    assert q.codes == math.prod(levels) and q.dims == len(levels)
    idx = torch.arange(q.codes)
    v = q.to_vector(idx)
    assert v.shape == (q.codes, len(levels))
    assert torch.equal(q.to_index(v), idx)
    assert len({tuple(r.tolist()) for r in v}) == q.codes  # every code a distinct grid point
    # the grid of each dimension is evenly spaced in [-1, 1], both ends included
    for d, lv in enumerate(levels):
        assert torch.allclose(torch.unique(v[:, d]), torch.linspace(-1, 1, lv))
    # quantising a grid point's pre-image gives the grid point back
    h = torch.atanh(v.clamp(-0.999, 0.999))
    assert torch.allclose(q(h), v, atol=1e-6)
    # no action: -1 <-> a NaN row
    assert torch.isnan(q.to_vector(torch.tensor([-1]))).all()
    assert int(q.to_index(torch.full((1, len(levels)), float("nan")))[0]) == -1


def test_fsq_rounds_and_passes_gradients_straight_through():
    q = FSQ((4, 4))
    h = torch.tensor([[0.1, -2.0], [0.6, 3.0]], requires_grad=True)
    out = q(h)
    y = (torch.tanh(h) + 1) / 2 * 3
    assert torch.equal(out.detach(), torch.round(y.detach()) * 2 / 3 - 1)
    out.sum().backward()
    expected = (1 - torch.tanh(h.detach()) ** 2) / 2 * 3 * 2 / 3  # d/dh of the unrounded map
    assert torch.allclose(h.grad, expected)


def test_code_book_sizes_and_errors():
    assert levels_for(16) == (4, 4) and levels_for(8) == (2, 2, 2)
    with pytest.raises(ConfigError, match="codes=10"):
        levels_for(10)
    with pytest.raises(ValueError, match="allowed: 2, 3"):
        LatentActionSettings(codes=10)
    cfg = latent_action_config(16, 4, 4)
    assert cfg.bits() == 4.0 and cfg.dims == 2


# ---------------------------------------------------------------------------------------------- encoder


def test_encoder_shapes_first_frame_is_no_action_and_at_most_k_distinct_actions():
    torch.manual_seed(0)
    m = LatentActionModel(latent_action_config(8, 4, 3))
    x = torch.randn(5, 7, 4, 3) * 3
    a = m(x)
    assert a.shape == (5, 7, 3)
    assert torch.isnan(a[:, 0]).all() and torch.isfinite(a[:, 1:]).all()
    codes = m.codes(x)
    assert codes.shape == (5, 7) and (codes[:, 0] == -1).all()
    assert int(codes[:, 1:].min()) >= 0 and int(codes.max()) < 8
    assert len({tuple(r.tolist()) for r in a[:, 1:].reshape(-1, 3)}) <= 8
    assert torch.equal(m.vectors(codes[:, 1:]), a[:, 1:])
    with pytest.raises(Exception, match="latents must be"):
        m(torch.randn(2, 3, 5, 3))


@pytest.mark.parametrize("history", [0, 2])
def test_the_encoder_reads_exactly_its_history_of_frames(history):
    """The code of frame t depends on frames t - 1 - history .. t and on no other; before a window's first frame
    the first frame stands in (no change), so a window cut short gives what encode_pre gives without ``older``."""
    torch.manual_seed(0)
    m = LatentActionModel(latent_action_config(8, 4, 3, history=history))
    x = torch.randn(2, 10, 4, 3)
    base = m.forward_pre(x)[1]  # (B, 9, dims): frames 1 .. 9
    y = x.clone()
    y[:, 4] += 1.0
    changed = (m.forward_pre(y)[1] - base).abs().amax(dim=(0, 2)) > 1e-6
    frames = [t for t in range(1, 10) if changed[t - 1]]
    assert frames == list(range(4, 4 + history + 2)), frames
    # frame 1 of a window: its older frames are frame 0, as encode_pre assumes when given none
    assert torch.allclose(m.forward_pre(x)[1][:, 0], m.encode_pre(x[:, 0], x[:, 1]), atol=1e-6)
    if history:
        with pytest.raises(Exception, match="reads 2 older frames"):
            m.encode_pre(x[:, 2], x[:, 3], x[:, :1])


@pytest.mark.parametrize("history", [0, 3])
def test_video_codes_in_chunks_equal_the_whole_video_at_once(history):
    torch.manual_seed(1)
    lam = latent_action_config(16, 4, 4, history=history)
    cfg = dynamics_config("tiny", tokens=4, channels=4, action_kind="continuous", action_dim=lam.dims, k_max=8, max_frames=8)
    model = LatentActionDynamics(cfg, lam).eval()
    z = torch.randn(23, 4, 4) * 2
    whole = model.action_model.codes(z[None])[0]
    for batch in (1, 4, 7, 512):
        assert torch.equal(video_codes(model, z, batch=batch), whole), batch


def _train_through_bottleneck(cfg, steps=300, seed=0):
    """Train encoder + forward head on frames that are independent noise; return the held-out MSE of the
    predicted frame (1 = knows nothing of it)."""
    torch.manual_seed(seed)
    m = LatentActionModel(cfg)
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randn(64, 2, cfg.tokens, cfg.channels, generator=g)
        loss = m.forward_loss(x)
        opt.zero_grad()
        loss.backward()
        opt.step()
    x = torch.randn(2048, 2, cfg.tokens, cfg.channels, generator=g)
    with torch.no_grad():
        a = m.encode_pairs(x[:, 0], x[:, 1])
        pred = x[:, 0] + m.predict_change(x[:, 0], a)
    return float((pred - x[:, 1]).pow(2).mean())


def test_the_code_cannot_carry_an_unpredictable_future():
    """Frames of independent unit Gaussian noise: whatever the encoder does, 4 bits about a 16-number frame
    leave an MSE of at least 2^(-2 * 4 / 16) = 0.707 (rate-distortion bound); a continuous code as wide as the
    frame, trained the same way, transmits it (the check would see a leak)."""
    tight = latent_action_config(16, 4, 4)
    bound = 2 ** (-2 * tight.bits() / (4 * 4))
    mse_tight = _train_through_bottleneck(tight)
    wide = tight.model_copy(update={"levels": [2] * 16, "quantize": False})
    mse_wide = _train_through_bottleneck(wide)
    assert mse_tight >= bound - 0.03, (mse_tight, bound)
    assert mse_wide < 0.5 * bound, mse_wide


def test_token_mixing_head_starts_as_the_per_token_head_and_refuses_bad_groups():
    torch.manual_seed(0)
    plain = LatentActionModel(latent_action_config(16, 6, 3))
    torch.manual_seed(0)
    mixed = LatentActionModel(latent_action_config(16, 6, 3, head_mixing=4))
    assert mixed.head_mix.shape == (4, 6, 6) and not hasattr(plain, "head_mix")
    x, a = torch.randn(2, 5, 6, 3), torch.rand(2, 5, 2) * 2 - 1
    assert torch.equal(plain.predict_change(x, a), mixed.predict_change(x, a))  # the mix starts at zero
    with torch.no_grad():
        mixed.head_mix.normal_()
    assert not torch.allclose(plain.predict_change(x, a), mixed.predict_change(x, a))
    with pytest.raises(ValueError, match="head_mixing=3"):
        latent_action_config(16, 6, 3, head_mixing=3)  # 3 does not divide the head's 128 channels
    assert latent_action_config(16, 6, 3, forward_head=False, head_mixing=4).head_mixing == 0


def _scroll_pairs(n, g, tokens=8, channels=2):
    """(n, 2, tokens, channels) pairs of frames, the second rolled by d = +1 or -1 token; and d."""
    prev = torch.randn(n, tokens, channels, generator=g)
    d = torch.randint(0, 2, (n,), generator=g) * 2 - 1
    cur = torch.stack([torch.roll(p, int(k), dims=0) for p, k in zip(prev, d, strict=True)])
    return torch.stack([prev, cur], dim=1), d


def _scroll_fit(head_mixing, steps=400, seed=0):
    """Frames of 8 tokens that scroll one token left or right (random direction); the forward head is told
    the direction (its action) and predicts the change. Returns the final relative error (1 = "no change")."""
    torch.manual_seed(seed)
    m = LatentActionModel(latent_action_config(16, 8, 2, head_mixing=head_mixing))
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(seed)
    for i in range(steps + 1):
        x, d = _scroll_pairs(128, g)
        prev, cur = x[:, 0], x[:, 1]
        act = torch.stack([d.float(), torch.zeros(128)], dim=-1)
        change = cur - prev
        loss = (m.predict_change(prev, act) - change).pow(2).mean() / change.pow(2).mean()
        if i == steps:
            return loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()


def test_token_mixing_lets_the_forward_head_follow_a_scroll():
    """A scroll moves content between tokens: a head that sees each token alone cannot say what arrives from
    the neighbour (the best it can do is "the token leaves": half the error of "no change"), the token-mixing
    head can (measured: 0.45 against 0.001 after 400 steps)."""
    per_token, mixing = _scroll_fit(0), _scroll_fit(4)
    assert per_token > 0.35, per_token
    assert mixing < 0.1 * per_token, (mixing, per_token)


def test_range_loss_is_zero_inside_the_range_and_quadratic_outside():
    pre = torch.tensor([[0.0, 2.5], [-3.0, 4.0]])
    expected = (0 + 0 + 0.5**2 + 1.5**2) / 4
    assert LatentActionModel.range_loss(pre).item() == pytest.approx(expected)
    assert LatentActionModel.range_loss(torch.tensor([[-2.4, 2.4]])).item() == 0.0


@pytest.mark.parametrize("bounded", [True, False])
def test_a_saturated_encoder_comes_back_through_the_range_loss(bounded, monkeypatch):
    """An encoder whose values sit far out on tanh's flat tail gives every frame the same code and gets no
    gradient through the bound; the range loss pulls it back until the codes tell the two scroll directions
    apart. Without it (``bounded=False``: the range set out of reach) it stays on one code."""
    import ahri_core.models.latent_actions as la

    if not bounded:
        monkeypatch.setattr(la, "RANGE", 1e6)
    torch.manual_seed(0)
    m = LatentActionModel(latent_action_config(16, 8, 2, head_mixing=4))
    with torch.no_grad():
        m.frame_mlp[-1].bias.fill_(30.0)
    g = torch.Generator().manual_seed(0)
    test, _ = _scroll_pairs(256, g)
    assert int(m.codes(test)[:, 1].unique().numel()) == 1
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    for _ in range(300):
        loss = m.forward_loss(_scroll_pairs(64, g)[0])
        opt.zero_grad()
        loss.backward()
        opt.step()
    used = int(m.codes(test)[:, 1].unique().numel())
    assert (used >= 2) == bounded, used


# ---------------------------------------------------------------------------------------------- joint model


def _joint(codes=8, tokens=4, channels=4):
    lam = latent_action_config(codes, tokens, channels)
    cfg = dynamics_config("tiny", tokens=tokens, channels=channels, action_kind="continuous", action_dim=lam.dims,
                          k_max=8, max_frames=8)
    return LatentActionDynamics(cfg, lam)


def test_dynamics_loss_alone_trains_the_encoder_and_dropped_items_get_no_action():
    torch.manual_seed(0)
    m = _joint()
    m.lam_config = m.lam_config.model_copy(update={"forward_head": False})
    x = torch.randn(4, 6, 4, 4)
    keep = torch.tensor([True, False, True, True])
    iso = torch.tensor([False, False, True, False])
    a = m.latent_actions(x, keep, iso)
    assert torch.isnan(a[1]).all() and torch.isnan(a[2]).all() and torch.isnan(a[:, 0]).all()
    assert torch.isfinite(a[0, 1:]).all() and torch.isfinite(a[3, 1:]).all()
    # make the action input matter so the test does not depend on training first
    with torch.no_grad():
        for blk in m.blocks:
            blk.mod.weight.normal_(0, 0.05)
    levels = sample_noise_levels(4, 6, k_max=8, shortcut=False, generator=torch.Generator().manual_seed(0))
    noise = torch.randn_like(x)
    net = functools.partial(m, clean=x, keep=torch.ones(4, dtype=torch.bool))
    forcing_loss(net, x, levels, noise, None).loss.backward()
    g = m.action_model.frame_mlp[0].weight.grad
    assert g is not None and bool(torch.isfinite(g).all()) and float(g.abs().sum()) > 0
    assert all(p.grad is None or bool(torch.isfinite(p.grad).all()) for p in m.parameters())


def test_joint_model_refuses_a_mismatched_action_input():
    lam = latent_action_config(16, 4, 4)
    cfg = dynamics_config("tiny", tokens=4, channels=4, action_kind="discrete", action_count=3)
    with pytest.raises(ConfigError, match="continuous"):
        LatentActionDynamics(cfg, lam)


def _lam_settings(**kw):
    return LatentActionSettings(enabled=True, codes=8, **kw)


def test_training_writes_one_file_that_rebuilds_both_models(tmp_path):
    data = make_latent_set([clip(0), clip(1)], [clip(100)], action_count=3)
    train, dset, diff = tiny_settings(max_steps=6, val_every=6)
    r = train_dynamics(data, tmp_path / "run", train, dset, diff, latent_actions=_lam_settings())
    kind, cfg, extra = read_metadata(r.weights)
    assert kind == KIND and set(cfg) == {"dynamics", "latent_actions"}
    assert cfg["dynamics"]["action_kind"] == "continuous" and cfg["dynamics"]["action_dim"] == 3
    assert extra["real_actions"] == "ignored"
    model, info = load_world_dynamics(tmp_path / "run")
    assert isinstance(model, LatentActionDynamics) and info["latent_actions"]["levels"] == [2, 2, 2]
    assert "val_next_no_action" in r.val and "code_perplexity" in r.last and "forward_loss" in r.last
    assert 1.0 <= r.last["code_perplexity"] <= 8.0
    with pytest.raises(CheckpointError, match="not a dynamics model"):
        load_dynamics_run(tmp_path / "run")  # the plain loader names what the file holds


def test_plain_runs_are_unchanged_and_no_actions_ignores_real_actions(tmp_path):
    data = make_latent_set([clip(0), clip(1)], [clip(100)], action_count=3)
    train, dset, diff = tiny_settings(max_steps=2)
    r = train_dynamics(data, tmp_path / "plain", train, dset, diff)
    kind, cfg, extra = read_metadata(r.weights)
    assert kind == "dynamics" and cfg["action_kind"] == "discrete" and "real_actions" not in extra
    assert "latent_actions" not in json.loads((tmp_path / "plain" / "run.json").read_text())["settings"]
    model, _ = load_world_dynamics(tmp_path / "plain")
    assert not isinstance(model, LatentActionDynamics)
    r = train_dynamics(data, tmp_path / "none", train, dset, diff, latent_actions=LatentActionSettings(ignore_actions=True))
    kind, cfg, _ = read_metadata(r.weights)
    assert kind == "dynamics" and cfg["action_kind"] == "none"


def test_latent_actions_on_a_set_without_any_action(tmp_path):
    data = make_latent_set([clip(0, actions=False), clip(1, actions=False)], [clip(100, actions=False)])
    assert data.action_kind == "none"
    train, dset, diff = tiny_settings(max_steps=3)
    r = train_dynamics(data, tmp_path / "run", train, dset, diff, latent_actions=_lam_settings())
    assert r.step == 3 and math.isfinite(r.last["loss"])


def test_resume_is_exact_and_refuses_other_latent_settings(tmp_path):
    data = make_latent_set([clip(0), clip(1)], [clip(100)], action_count=3)
    train, dset, diff = tiny_settings(max_steps=6, checkpoint_every=3)
    whole = train_dynamics(data, tmp_path / "whole", train, dset, diff, latent_actions=_lam_settings())
    half, _, _ = tiny_settings(max_steps=3, checkpoint_every=3)
    train_dynamics(data, tmp_path / "split", half, dset, diff, latent_actions=_lam_settings())
    more = train.model_copy(update={"resume": True})
    with pytest.raises(ConfigError, match="latent actions"):
        train_dynamics(data, tmp_path / "split", more, dset, diff)
    with pytest.raises(ConfigError, match="codes"):
        train_dynamics(data, tmp_path / "split", more, dset, diff, latent_actions=LatentActionSettings(enabled=True, codes=16))
    resumed = train_dynamics(data, tmp_path / "split", more, dset, diff, latent_actions=_lam_settings())
    a, _ = load_world_dynamics(whole.weights)
    b, _ = load_world_dynamics(resumed.weights)
    for (k, va), (_, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(va, vb), k


def test_a_run_from_before_token_mixing_resumes_with_its_own_head(tmp_path):
    """Runs made before ``forward_mixing`` existed have a per-token head and no such setting in run.json; resumed
    with today's defaults (4 groups) they keep their head, and run.json records the head they have."""
    data = make_latent_set([clip(0), clip(1)], [clip(100)], action_count=3)
    half, dset, diff = tiny_settings(max_steps=3, checkpoint_every=3)
    train_dynamics(data, tmp_path / "old", half, dset, diff, latent_actions=_lam_settings(forward_mixing=0, history=0))
    meta_path = tmp_path / "old" / "run.json"
    meta = json.loads(meta_path.read_text())
    del meta["settings"]["latent_actions"]["forward_mixing"]
    del meta["settings"]["latent_actions"]["history"]  # nor had it a history setting: its encoder reads none
    meta_path.write_text(json.dumps(meta))
    more = half.model_copy(update={"resume": True, "max_steps": 5})
    r = train_dynamics(data, tmp_path / "old", more, dset, diff, latent_actions=_lam_settings(history=2))
    assert r.step == 5
    model, info = load_world_dynamics(r.weights)
    assert info["latent_actions"]["head_mixing"] == 0 and not hasattr(model.action_model, "head_mix")
    assert info["latent_actions"]["history"] == 0
    assert json.loads(meta_path.read_text())["settings"]["latent_actions"]["forward_mixing"] == 0
    assert json.loads(meta_path.read_text())["settings"]["latent_actions"]["history"] == 0
    fresh = train_dynamics(data, tmp_path / "new", half, dset, diff, latent_actions=_lam_settings())
    assert load_world_dynamics(fresh.weights)[1]["latent_actions"]["head_mixing"] == 4


def test_an_encoder_with_history_trains_resumes_and_keeps_its_history(tmp_path):
    data = make_latent_set([clip(0), clip(1)], [clip(100)], action_count=3)
    half, dset, diff = tiny_settings(max_steps=3, checkpoint_every=3)
    train_dynamics(data, tmp_path / "run", half, dset, diff, latent_actions=_lam_settings(history=2))
    more = half.model_copy(update={"resume": True, "max_steps": 5})
    with pytest.raises(ConfigError, match="history"):
        train_dynamics(data, tmp_path / "run", more, dset, diff, latent_actions=_lam_settings(history=1))
    r = train_dynamics(data, tmp_path / "run", more, dset, diff, latent_actions=_lam_settings(history=2))
    assert r.step == 5
    model, info = load_world_dynamics(r.weights)
    assert info["latent_actions"]["history"] == 2 and model.action_model.token_in.in_features == 5 * data.channels


# ---------------------------------------------------------------------------------------------- action map


def test_pair_counts_probe_and_map_are_exact():
    codes = [torch.tensor([-1, 0, 0, 1, 2, 2])]
    acts = [torch.tensor([0, 1, 1, 0, 2, -1])]
    c = pair_counts(codes, acts, code_count=3, action_count=3)
    assert c.tolist() == [[0, 1, 0], [2, 0, 0], [0, 0, 1]]
    p = probe_accuracy(c, c)
    assert p["accuracy"] == 1.0 and p["majority"] == pytest.approx(2 / 4) and p["ratio"] == pytest.approx(2.0)
    # held-out videos that mix the actions differently: the training majority (action 1) is rare there, the best
    # single guess on them (action 0, 3 of 5 frames) is the stricter yardstick
    shifted = torch.tensor([[3, 0, 0], [0, 1, 0], [0, 0, 1]])
    q = probe_accuracy(c, shifted)
    assert q["accuracy"] == pytest.approx(1 / 5) and q["majority"] == pytest.approx(1 / 5) and q["ratio"] == pytest.approx(1)
    assert q["best_constant"] == pytest.approx(3 / 5) and q["ratio_best_constant"] == pytest.approx(1 / 3)
    m = action_map_from_counts(c, ["idle", "left", "right"])
    assert m["codes"] == {"0": 1, "1": 0, "2": 2} and m["names"] == {"idle": 1, "left": 0, "right": 2}
    # lag 1 pairs the code of frame t with the action of frame t - 1
    assert pair_counts(codes, acts, 3, 3, lag=1).tolist() == [[1, 0, 1], [1, 1, 0], [0, 0, 1]]
    assert pair_counts(codes, acts, 3, 3, lag=-1).tolist() == [[1, 0, 0], [1, 0, 0], [0, 1, 0]]
    assert int(pair_counts(codes, acts, 3, 3, lag=7).sum()) == 0  # a lag longer than the video: no pairs
    assert parse_action_tokens("1, right,-1", 3, m["names"]) == [1, 2, -1]
    with pytest.raises(ConfigError, match="out of range"):
        parse_action_tokens("3", 3)
    with pytest.raises(ConfigError, match="names: idle"):
        parse_action_tokens("jump", 3, m["names"])


def test_action_map_prefers_the_code_that_means_the_action_over_the_busiest_one():
    # code 0 is "nothing moved": the most frequent code under every action, as in Breakout
    c = torch.tensor([
        [90, 0, 0, 1],  # idle
        [60, 30, 0, 1],  # left: code 1 only ever follows left
        [60, 0, 25, 1],  # right: code 2 only ever follows right
    ])
    assert c.argmax(1).tolist() == [0, 0, 0]  # the most frequent code would send every key to code 0
    m = action_map_from_counts(c, ["idle", "left", "right"])
    assert m["names"] == {"idle": 0, "left": 1, "right": 2}
    # a code seen once with an action does not beat one that follows it reliably many times
    c2 = torch.tensor([[50, 0, 0], [10, 40, 1], [10, 8, 0]])  # code 2: one frame, all "left"
    assert action_map_from_counts(c2)["codes"]["1"] == 1
    # an action is never mapped to a code it was not seen with
    c3 = torch.tensor([[5, 0], [0, 0], [0, 3]])
    assert action_map_from_counts(c3)["codes"] == {"0": 0, "2": 1}


# ---------------------------------------------------------------------------------------------- eval and rollout


@pytest.fixture(scope="module")
def lam_world(tmp_path_factory):
    ws, lat_dir, _ = make_world(tmp_path_factory.mktemp("lamws"), videos=4)
    run = ws.run_dir("dyn-lam")
    from ahri_core.config.settings import TrainSettings

    train_dynamics(
        lat_dir, run,
        train=TrainSettings(preset="tiny", max_steps=4, batch_size=2, warmup_steps=1, val_every=1000,
                            checkpoint_every=1000, log_every=1000, device="cpu", precision="fp32"),
        data=DataSettings(seq_len=8, stride=4), diffusion=DiffusionSettings(shortcut=True, k_max=8),
        latent_actions=LatentActionSettings(enabled=True, codes=8, ignore_actions=True),
    )
    return ws, lat_dir, run


def test_action_map_rollout_with_codes_names_and_another_clip(lam_world, tmp_path):
    from ahri_core.inference.rollout import rollout_clip
    from ahri_core.inference.world import load_world_model

    ws, lat_dir, run = lam_world
    res = fit_action_map(run, label_share=0.5)
    saved = json.loads((run / "action_map.json").read_text())
    train_ids = set(json.loads((lat_dir / "index.json").read_text())["videos"][i]["id"] for i in range(4)) - set(
        held_out(lat_dir))
    assert saved["codes"] == res["codes"] and len(res["labelled_videos"]) == max(1, round(0.5 * len(train_ids)))
    assert set(res["labelled_videos"]) <= train_ids
    assert all(0 <= c < 8 for c in res["codes"].values()) and "right" in res["meanings"]
    wm = load_world_model(run, ws)
    assert wm.latent_actions is not None and wm.code_count == 8 and not wm.actions_usable()
    assert wm.action_names() == {k: int(v) for k, v in res["names"].items()}
    clip_path = ws.videos / "game" / f"{held_out(lat_dir)[0]}.mp4"
    other = ws.videos / "game" / f"{held_out(lat_dir)[-1]}.mp4"
    rep = rollout_clip(clip_path, wm, steps=2, context=4, horizon=5, out=tmp_path / "a.mp4", precision="fp32",
                       future=[3, 3, -1])
    assert rep.future_actions == [3, 3, -1, -1, -1] and rep.actions_source == "given"
    rep2 = rollout_clip(clip_path, wm, steps=2, context=4, horizon=5, out=tmp_path / "b.mp4", precision="fp32",
                        codes_from=other)
    enc = wm.infer_codes(wm.encode(__import__("ahri_core.video", fromlist=["read_frames"]).read_frames(
        other, fps=wm.fps, size=wm.size, fit=wm.fit, max_frames=9)))
    assert rep2.future_actions == enc[4:9].tolist() and rep2.actions_source.startswith("codes of")
    with pytest.raises(ConfigError, match="not both"):
        rollout_clip(clip_path, wm, steps=2, context=4, horizon=5, future=[1], codes_from=other)


def test_eval_of_a_latent_action_run_reports_controllability(lam_world, tmp_path):
    from ahri_core.config.settings import SamplingSettings
    from ahri_core.eval.evaluate import evaluate
    from ahri_core.inference.world import load_world_model

    ws, lat_dir, run = lam_world
    wm = load_world_model(run, ws)
    s = SamplingSettings(steps=[2], context=4, horizon=3, clips=2, batch_size=2)
    rep = evaluate(wm, lat_dir, s, out_dir=tmp_path / "ev", workspace=ws, samples=0, precision="fp32", probes=True)
    la = rep.metrics["latent_actions"]
    assert la["codes"] == 8 and la["bits_per_frame"] == 3.0
    inferred = la["psnr_inferred"]["mean"]
    assert inferred == rep.metrics["steps"]["2"]["psnr"]["mean"]
    for name in ("random", "no_action"):
        gain = la[f"gain_over_{name}_db"]["mean"]
        assert len(gain) == 3
        assert gain == pytest.approx([a - b for a, b in zip(inferred, la[f"psnr_{name}"]["mean"], strict=True)])
    mem = rep.metrics["probes"]["memorisation"]  # the training windows are conditioned on inferred codes too
    assert mem["train_clips"] >= 1 and mem["gap"] > 0
    assert mem["held_out"]["model"] == pytest.approx(rep.metrics["probes"]["teacher_forced"]["all_h"]["model"])


def test_cli_flags(lam_world, tmp_path):
    from ahri_cli.main import main

    ws, lat_dir, run = lam_world
    clip_path = ws.videos / "game" / f"{held_out(lat_dir)[0]}.mp4"
    code = main(["--workspace", str(ws.root), "-q", "rollout", str(clip_path), "--run", str(run), "--steps", "2",
                 "--context", "4", "--horizon", "3", "--actions", "1,2", "--out", str(tmp_path / "r.mp4"),
                 "--precision", "fp32"])
    assert code in (0, None) and (tmp_path / "r.mp4").is_file()
    code = main(["--workspace", str(ws.root), "-q", "train", "--latent-action-codes", "8", "--max-steps", "1"])
    assert code == 2  # codes without --latent-actions
    code = main(["--workspace", str(ws.root), "-q", "train", "--latent-action-history", "2", "--max-steps", "1"])
    assert code == 2  # history without --latent-actions
    code = main(["--workspace", str(ws.root), "-q", "train", "--stage", "action-map", "--run", str(run)])
    assert code in (0, None) and (run / "action_map.json").is_file()


def _bench_latent_actions():
    import importlib.util

    path = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_latent_actions.py"
    spec = importlib.util.spec_from_file_location("bench_latent_actions", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("v", [-3, 0, 2])
def test_the_right_vs_left_check_reads_the_scroll_of_the_scene(v):
    """The few-label map's check (does "right" move the player right?) estimates the player's motion from the
    scroll of the scene, as the camera follows the player: a camera window moving v px right over a textured
    world per frame (the scene slides left) must read +v every frame; the HUD strip below is ignored."""
    bench = _bench_latent_actions()
    g = torch.Generator().manual_seed(0)
    world = torch.rand(3, 32, 200, generator=g)
    frames = torch.stack([world[:, :, 80 + v * t : 80 + v * t + 48] for t in range(6)])
    frames[:, :, 26:] = torch.rand(6, 3, 6, 48, generator=g)  # a changing HUD strip, below 3/4 of the height
    assert bench.horizontal_motion(frames).tolist() == [float(v)] * 5


def test_the_movement_probe_groups_atari_actions_by_how_they_move():
    """FIRE variants move as their base action, FIRE as NOOP; sets whose actions are all distinct get no groups."""
    bench = _bench_latent_actions()
    pong = ["NOOP", "FIRE", "RIGHT", "LEFT", "RIGHTFIRE", "LEFTFIRE"]
    assert bench.movement_groups(pong) == ([0, 0, 1, 2, 1, 2], ["NOOP", "RIGHT", "LEFT"])
    assert bench.movement_groups(["idle", "left", "right"]) is None and bench.movement_groups([]) is None

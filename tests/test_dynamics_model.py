"""The dynamics model: shapes, causality, isolation, conditioning, actions, KV cache, checkpointing, configs."""

from __future__ import annotations

import json

import pytest
import torch

from ahri_core.checkpoint import load_weights, read_metadata, save_weights
from ahri_core.config.presets import DYNAMICS_MAX_TOKENS, DYNAMICS_PRESETS
from ahri_core.errors import CheckpointError, ConfigError, DataError
from ahri_core.models.dynamics import build_dynamics, dynamics_config, param_count
from ahri_core.models.dynamics_config import DynamicsConfig
from ahri_core.models.dynamics_io import load_dynamics, save_dynamics

N, C = 5, 3  # tokens, channels


def make(seed: int = 0, active: bool = True, **overrides):
    """A tiny model in eval mode; ``active`` randomises the zero-initialised AdaLN layers so every
    block does something (a freshly built model starts with identity blocks)."""
    torch.manual_seed(seed)
    model = build_dynamics("tiny", tokens=N, channels=C, **overrides)
    if active:
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith(("mod.weight", "mod_out.weight")):
                    p.normal_(0, 0.2)
                elif name.endswith(("mod.bias", "mod_out.bias")):
                    p.normal_(0, 0.2)
    return model.eval()


def inputs(B: int = 2, T: int = 6, seed: int = 1, k_max: int = 64):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(B, T, N, C, generator=g)  # (batch, time, tokens, channels)
    tau = torch.rand(B, T, generator=g)
    exps = torch.randint(0, 7, (B, T), generator=g)
    step = (2.0**exps) / k_max
    return z, tau, step


# ---------------------------------------------------------------------------------------------- basics
def test_output_shape_and_dtype():
    model = make()
    z, tau, step = inputs(3, 7)
    out = model(z, tau, step)
    assert out.shape == (3, 7, N, C)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()


def test_output_shape_under_bf16_autocast_is_float32():
    model = make()
    z, tau, step = inputs(2, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(z, tau, step)
    assert out.dtype == torch.float32 and out.shape == (2, 4, N, C)


def test_wrong_shapes_are_refused():
    model = make()
    z, tau, step = inputs(2, 4)
    with pytest.raises(DataError, match="latents"):
        model(z[..., :2], tau, step)
    with pytest.raises(DataError, match="tau and step"):
        model(z, tau[:, :3], step)
    with pytest.raises(DataError, match="without actions"):
        model(z, tau, step, actions=torch.zeros(2, 4, dtype=torch.long))


@pytest.mark.parametrize("softcap", [None, 30.0])
def test_causality(softcap):
    model = make(softcap=softcap)
    z, tau, step = inputs(2, 8)
    out = model(z, tau, step)
    for t in (0, 3, 6):
        z2, tau2, step2 = z.clone(), tau.clone(), step.clone()
        z2[:, t + 1 :] += torch.randn_like(z2[:, t + 1 :])
        tau2[:, t + 1 :] = torch.rand_like(tau2[:, t + 1 :])
        step2[:, t + 1 :] = 1.0
        out2 = model(z2, tau2, step2)
        assert torch.allclose(out[:, : t + 1], out2[:, : t + 1], atol=1e-6)
        assert not torch.allclose(out[:, t + 1], out2[:, t + 1], atol=1e-3)


def test_past_frames_do_influence_later_frames():
    model = make()
    z, tau, step = inputs(2, 6)
    out = model(z, tau, step)
    z2 = z.clone()
    z2[:, 0] += 1.0
    out2 = model(z2, tau, step)
    assert (out2[:, 1:] - out[:, 1:]).abs().amax() > 1e-3


def test_isolated_items_see_no_other_frame():
    model = make()
    z, tau, step = inputs(3, 6)
    isolated = torch.tensor([True, False, True])
    out = model(z, tau, step, isolated=isolated)
    z2 = z.clone()
    z2[:, :3] += torch.randn_like(z2[:, :3])  # change frames 0..2 of every item
    tau2 = tau.clone()
    tau2[:, :3] = torch.rand_like(tau2[:, :3])
    out2 = model(z2, tau2, step, isolated=isolated)
    # isolated items: frames 3.. are untouched by the change of frames 0..2
    assert torch.allclose(out[isolated][:, 3:], out2[isolated][:, 3:], atol=1e-6)
    # the non-isolated item does change at frames 3..
    assert (out[1, 3:] - out2[1, 3:]).abs().amax() > 1e-3
    # an isolated frame equals the same frame run alone (T = 1)
    single = model(z[:1, 4:5], tau[:1, 4:5], step[:1, 4:5])
    assert torch.allclose(out[0, 4], single[0, 0], atol=1e-5)


def test_isolated_all_false_equals_none():
    model = make()
    z, tau, step = inputs(2, 5)
    a = model(z, tau, step)
    b = model(z, tau, step, isolated=torch.zeros(2, dtype=torch.bool))
    assert torch.allclose(a, b, atol=1e-6)


def test_independent_of_sequence_length_for_same_prefix():
    model = make()
    z, tau, step = inputs(2, 12)
    long = model(z, tau, step)
    short = model(z[:, :8], tau[:, :8], step[:, :8])
    assert torch.allclose(long[:, :8], short, atol=1e-5)


# ---------------------------------------------------------------------------------------------- conditioning
def test_tau_step_and_actions_change_the_output():
    model = make(action_kind="discrete", action_count=4)
    z, tau, step = inputs(2, 4)
    acts = torch.tensor([[-1, 0, 1, 2], [3, 3, -1, 0]])
    base = model(z, tau, step, acts)
    assert (model(z, tau * 0.5, step, acts) - base).abs().amax() > 1e-3
    assert (model(z, tau, torch.full_like(step, 1.0), acts) - base).abs().amax() > 1e-3
    acts2 = acts.clone()
    acts2[:, 2] = (acts2[:, 2] + 2) % 4
    out2 = model(z, tau, step, acts2)
    assert (out2[:, 2:] - base[:, 2:]).abs().amax() > 1e-3
    assert torch.allclose(out2[:, :2], base[:, :2], atol=1e-6)  # actions are causal too


@pytest.mark.parametrize("active", [False, True])
def test_conditioning_reaches_every_token(active):
    """Each output token depends on the frame's tau/d/action vector, also at init (a conditioning that reached
    only some tokens would leave the others deaf to the noise level)."""
    model = make(active=active, action_kind="discrete", action_count=3)
    z, tau, step = inputs(2, 3)
    cond = model.conditioning(tau, step, None, 2, 3).detach().requires_grad_(True)
    out = model.trunk(z, cond)
    for t in range(3):
        for n in range(N):
            (g,) = torch.autograd.grad(out[:, t, n].sum(), cond, retain_graph=True)
            assert g[:, t].abs().sum() > 0, (t, n)
    # the tau MLP itself receives gradient from the loss
    model.zero_grad()
    model(z, tau, step).pow(2).mean().backward()
    assert model.tau_mlp[0].weight.grad.abs().sum() > 0


def test_every_step_row_is_reachable():
    """log2(d * k_max) indexes the table: d_min -> row 0, d = 1 -> last row."""
    model = make()
    k = model.config.k_max
    ds = torch.tensor([[2.0**i / k for i in range(model.step_levels)]])
    assert model.step_index(ds).tolist() == [list(range(model.step_levels))]
    z, tau, _ = inputs(1, model.step_levels)
    model.zero_grad()
    model(z, tau.clamp_min(0.5), ds).pow(2).mean().backward()
    rows_with_grad = (model.step_embed.weight.grad.abs().sum(-1) > 0).tolist()
    assert all(rows_with_grad)


def test_discrete_no_action_row_for_minus_one_and_none():
    model = make(action_kind="discrete", action_count=4)
    z, tau, step = inputs(2, 4)
    none = model(z, tau, step, None)
    minus = model(z, tau, step, torch.full((2, 4), -1, dtype=torch.long))
    assert torch.allclose(none, minus, atol=0)
    real = model(z, tau, step, torch.zeros(2, 4, dtype=torch.long))
    assert (real - none).abs().amax() > 1e-3
    with pytest.raises(DataError, match="action ids"):
        model(z, tau, step, torch.full((2, 4), 4, dtype=torch.long))


def test_continuous_no_action_for_nan_rows_and_none():
    model = make(action_kind="continuous", action_dim=3)
    z, tau, step = inputs(2, 4)
    none = model(z, tau, step, None)
    nan = model(z, tau, step, torch.full((2, 4, 3), float("nan")))
    assert torch.allclose(none, nan, atol=0)
    acts = torch.randn(2, 4, 3)
    acts[:, 0] = float("nan")
    mixed = model(z, tau, step, acts)
    assert torch.isfinite(mixed).all()
    assert torch.allclose(mixed[:, 0], none[:, 0], atol=0)  # frame 0 has no action, nothing earlier differs
    assert (mixed[:, 1:] - none[:, 1:]).abs().amax() > 1e-3


# ---------------------------------------------------------------------------------------------- KV cache
@pytest.mark.parametrize("kind", ["none", "discrete"])
def test_cached_steps_equal_uncached_forward(kind):
    extra = dict(action_kind="discrete", action_count=4) if kind == "discrete" else {}
    model = make(**extra)
    B, T = 2, 9
    z, tau, step = inputs(B, T)
    acts = torch.randint(-1, 4, (B, T)) if kind == "discrete" else None
    full = model(z, tau, step, acts)
    cache = model.new_cache(B, 16)
    for t in range(T):
        a = None if acts is None else acts[:, t : t + 1]
        # a denoising call (commit=False) on another version of the frame must not disturb the cache
        model.step(torch.randn(B, 1, N, C), torch.full((B, 1), 0.9), step[:, t : t + 1], a, cache, commit=False)
        assert len(cache) == min(t, 15)
        got = model.step(z[:, t : t + 1], tau[:, t : t + 1], step[:, t : t + 1], a, cache, commit=False)
        assert torch.allclose(got[:, 0], full[:, t], atol=1e-5), t
        committed = model.step(z[:, t : t + 1], tau[:, t : t + 1], step[:, t : t + 1], a, cache, commit=True)
        assert torch.allclose(committed, got, atol=0)
    assert cache.frames == T


@pytest.mark.parametrize("kind", ["none", "discrete"])
def test_prefill_commits_the_same_keys_and_values_as_one_step_per_frame(kind):
    """The context of a rollout goes into the cache in one call; the keys, values and every later step are
    those of one commit per frame."""
    extra = dict(action_kind="discrete", action_count=4) if kind == "discrete" else {}
    model = make(**extra)
    B, T = 2, 6
    z, tau, step = inputs(B, T + 1)
    acts = torch.randint(-1, 4, (B, T + 1)) if kind == "discrete" else None
    one, many = model.new_cache(B, 8), model.new_cache(B, 8)
    for t in range(T):
        a = None if acts is None else acts[:, t : t + 1]
        model.step(z[:, t : t + 1], tau[:, t : t + 1], step[:, t : t + 1], a, one, commit=True)
    model.prefill(z[:, :T], tau[:, :T], step[:, :T], None if acts is None else acts[:, :T], many)
    assert many.frames == one.frames == T and len(many) == len(one)
    for layer in range(len(one.k)):
        assert torch.allclose(many.k[layer], one.k[layer], atol=1e-5)
        assert torch.allclose(many.v[layer], one.v[layer], atol=1e-5)
    a = None if acts is None else acts[:, T:]
    nxt = [model.step(z[:, T:], tau[:, T:], step[:, T:], a, c, commit=False) for c in (one, many)]
    assert torch.allclose(nxt[0], nxt[1], atol=1e-5)
    with pytest.raises(DataError, match="empty cache"):
        model.prefill(z[:, :2], tau[:, :2], step[:, :2], None if acts is None else acts[:, :2], many)
    with pytest.raises(DataError, match="at most 3 frames"):
        model.prefill(z[:, :5], tau[:, :5], step[:, :5], None if acts is None else acts[:, :5], model.new_cache(B, 4))


def test_sliding_window_keeps_cache_bounded():
    model = make()
    B, W = 2, 4
    cache = model.new_cache(B, W)
    z, tau, step = inputs(B, 11)
    sizes, shapes = [], set()
    for t in range(11):
        out = model.step(z[:, t : t + 1], tau[:, t : t + 1], step[:, t : t + 1], None, cache, commit=True)
        assert torch.isfinite(out).all()
        sizes.append(len(cache))
        shapes |= {tuple(k.shape) for k in cache.k if k is not None}
    assert sizes == [1, 2, 3, 3, 3, 3, 3, 3, 3, 3, 3]  # never more than max_frames - 1 context frames
    assert len(shapes) == 1 and next(iter(shapes))[2] == W - 1  # fixed buffer: constant per-frame cost
    assert cache.frames == 11
    # inside the window (first W frames) the cache still equals the forward
    cache = model.new_cache(B, W)
    full = model(z[:, :W], tau[:, :W], step[:, :W])
    for t in range(W):
        got = model.step(z[:, t : t + 1], tau[:, t : t + 1], step[:, t : t + 1], None, cache, commit=True)
        assert torch.allclose(got[:, 0], full[:, t], atol=1e-5)


def test_step_rejects_wrong_batch_and_length():
    model = make()
    cache = model.new_cache(2)
    assert cache.max_frames == model.config.max_frames
    z, tau, step = inputs(2, 2)
    with pytest.raises(DataError, match="one frame"):
        model.step(z, tau, step, None, cache, commit=True)
    with pytest.raises(DataError, match="batch"):
        model.step(z[:1, :1], tau[:1, :1], step[:1, :1], None, cache, commit=True)


# ---------------------------------------------------------------------------------------------- checkpointing
def test_grad_checkpointing_gives_same_gradients():
    ref = make(active=True)
    ckpt = make(active=True, grad_checkpointing=True)
    ckpt.load_state_dict(ref.state_dict())
    z, tau, step = inputs(2, 5)
    iso = torch.tensor([True, False])
    grads = []
    for m in (ref, ckpt):
        m.train()
        m.zero_grad()
        m(z, tau, step, isolated=iso).pow(2).mean().backward()
        grads.append({n: p.grad.clone() for n, p in m.named_parameters()})
    for name in grads[0]:
        assert torch.allclose(grads[0][name], grads[1][name], atol=1e-6, rtol=1e-5), name


def test_grad_checkpointing_really_recomputes():
    """The flag must do something: with it on, blocks run twice per training step (forward + recompute).
    (A pre-hook: the recompute stops early, after the last saved tensor, so post-hooks would not fire.)"""
    model = make(grad_checkpointing=True).train()
    calls = []
    for blk in model.blocks:
        blk.register_forward_pre_hook(lambda *a: calls.append(1))
    z, tau, step = inputs(1, 3)
    model(z, tau, step).sum().backward()
    assert len(calls) == 2 * len(model.blocks)
    calls.clear()
    model.set_grad_checkpointing(False)
    model(z, tau, step).sum().backward()
    assert len(calls) == len(model.blocks)


# ---------------------------------------------------------------------------------------------- configs
def test_presets_build_and_sizes():
    counts = {p: param_count(p, tokens=16, channels=32) for p in DYNAMICS_PRESETS}
    assert counts["tiny"] < counts["cpu"] < counts["small"] < counts["medium"] < counts["large"]
    assert 50e6 < counts["small"] < 70e6  # the ~60M model the small preset is sized as
    assert counts["cpu"] < 5e6
    small = dynamics_config("small", tokens=16, channels=32)
    assert (small.dim, small.depth, small.heads) == (512, 12, 8)
    assert small.layer_kinds() == ["S", "S", "S", "T"] * 3
    # param_count on a config (meta device) equals counting a real model
    cpu = build_dynamics("cpu", tokens=16, channels=32)
    assert param_count(cpu) == counts["cpu"]


def test_config_validation_errors():
    with pytest.raises(ConfigError, match="preset"):
        build_dynamics("huge", tokens=4, channels=4)
    with pytest.raises(ConfigError, match="heads"):
        dynamics_config("tiny", tokens=4, channels=4, heads=3)
    with pytest.raises(ConfigError, match="action_count"):
        dynamics_config("tiny", tokens=4, channels=4, action_kind="discrete")
    with pytest.raises(ConfigError, match="k_max"):
        dynamics_config("tiny", tokens=4, channels=4, k_max=48)
    with pytest.raises(ConfigError, match="unknown_field"):
        dynamics_config("tiny", tokens=4, channels=4, unknown_field=1)
    with pytest.raises(ConfigError, match="tokens"):
        dynamics_config("tiny")


def test_config_is_json_serialisable():
    cfg = dynamics_config("tiny", tokens=N, channels=C, action_kind="continuous", action_dim=2, softcap=50.0)
    back = DynamicsConfig(**json.loads(json.dumps(cfg.model_dump(mode="json"))))
    assert back == cfg
    assert build_dynamics(back).config == cfg


def test_checkpoint_round_trip_and_refusals(tmp_path):
    model = make(action_kind="discrete", action_count=4)
    path = save_dynamics(tmp_path / "dyn.safetensors", model, extra={"step": 7})
    z, tau, step = inputs(2, 4)
    acts = torch.randint(-1, 4, (2, 4))
    expected = model(z, tau, step, acts)
    loaded = load_dynamics(path).eval()
    assert loaded.config == model.config
    assert torch.allclose(loaded(z, tau, step, acts), expected, atol=0)
    # the lead's API works too: the stored config rebuilds the model
    cfg = model.config.model_dump(mode="json")
    other = build_dynamics(DynamicsConfig(**cfg))
    assert load_weights(path, other, kind="dynamics", config=cfg) == cfg
    # runtime-only fields may differ
    assert load_dynamics(path, expect=model.config.model_copy(update={"grad_checkpointing": True}))
    # a mismatched config is refused, naming the field
    wider = dynamics_config(model.config, dim=64)
    with pytest.raises(CheckpointError, match="dim"):
        load_dynamics(path, expect=wider)
    with pytest.raises(CheckpointError, match="dim"):
        load_weights(path, build_dynamics(wider), kind="dynamics", config=wider.model_dump(mode="json"))
    with pytest.raises(CheckpointError):
        load_weights(path, build_dynamics(wider), kind="dynamics")  # shapes differ even without a config
    save_weights(tmp_path / "tok.safetensors", model, kind="tokenizer", config=cfg)
    with pytest.raises(CheckpointError, match="tokenizer"):
        load_dynamics(tmp_path / "tok.safetensors")


# ---------------------------------------------------------------------------------------------- packing
def test_presets_pack_many_latent_tokens_into_their_token_budget():
    cpu = dynamics_config("cpu", tokens=64, channels=12)
    assert (cpu.pack, cpu.model_tokens) == (4, 16)
    assert dynamics_config("cpu", tokens=16, channels=32).pack == 1
    assert dynamics_config("cpu", tokens=48, channels=8).model_tokens == 16  # smallest divisor that fits: 3
    assert dynamics_config("cpu", tokens=64, channels=12, pack=1).pack == 1  # an explicit choice wins
    assert dynamics_config("small", tokens=64, channels=12).pack == 1
    with pytest.raises(ConfigError, match="pack"):
        dynamics_config("cpu", tokens=10, channels=4, pack=4)
    # a packed model costs what the unpacked 16-token model costs, apart from its input and output maps
    assert param_count(dynamics_config("cpu", tokens=64, channels=12)) < 1.05 * param_count(
        dynamics_config("cpu", tokens=16, channels=12)
    )


@pytest.mark.parametrize("grid", [(6, 10), (10, 6), (7, 9), (9, 7), (8, 8), (5, 12), (3, 20), (4, 4), (6, 11),
                                  (19, 13), (18, 14), (14, 18)])
def test_packing_makes_each_model_token_a_block_of_the_token_grid(grid):
    """Every model token is a rectangle of the grid, never a whole row or a whole column; a grid the blocks do not
    tile is padded with zero cells that come back out of unpack, so they are never scored."""
    from ahri_core.models.dynamics_config import auto_pack

    rows, cols = grid
    tokens = rows * cols
    for budget in sorted(set(DYNAMICS_MAX_TOKENS.values())):
        p, a = auto_pack(tokens, budget, grid)
        model = build_dynamics("tiny", tokens=tokens, channels=1, pack=p, pack_rows=a, latent_grid=grid)
        n = model.config.model_tokens
        assert n <= budget and (tokens <= budget) == (p == 1)
        z = torch.arange(1, tokens + 1, dtype=torch.float32).view(1, 1, tokens, 1)
        packed = model.pack(z)
        assert packed.shape == (1, 1, n, p)
        assert torch.equal(model.unpack(packed), z)
        if p == 1:
            continue
        cells = set()
        for j in range(n):  # the latent tokens of model token j fill a rectangle of the grid (0: padding)
            idx = [i - 1 for i in packed[0, 0, j].long().tolist() if i > 0]
            rs, cs = sorted({i // cols for i in idx}), sorted({i % cols for i in idx})
            assert len(rs) * len(cs) == len(idx) and rs == list(range(rs[0], rs[-1] + 1)) \
                and cs == list(range(cs[0], cs[-1] + 1)), (grid, budget, p, a, j, idx)
            assert not (rows > 1 and len(rs) == rows) and not (cols > 1 and len(cs) == cols), (grid, budget, j)
            cells |= set(idx)
        assert cells == set(range(tokens))
        padded = n * p - tokens
        assert padded < tokens / 2, (grid, budget, padded)  # padding stays a small share


@pytest.mark.parametrize("grid,budget,expect", [
    ((6, 10), 16, (4, 2, 15)),  # 16:9 at the cpu budget: 2 x 2 blocks, no padding
    ((7, 9), 16, (5, 1, 14)),  # 4:3: pieces of 1 x 5, the 9 columns padded to 10 (was whole columns of 7)
    ((9, 7), 16, (5, 5, 14)),  # Atari's 0.76:1: pieces of 5 x 1, the 9 rows padded to 10 (was whole rows of 7)
    ((8, 8), 16, (4, 1, 16)),  # square: runs of 4 along a row, as before
])
def test_common_aspects_pack_into_blocks_not_strips(grid, budget, expect):
    cfg = dynamics_config("cpu", tokens=grid[0] * grid[1], channels=12, latent_grid=grid)
    assert (cfg.pack, cfg.pack_rows, cfg.model_tokens) == expect
    z = torch.randn(2, 3, grid[0] * grid[1], 12)
    model = build_dynamics(cfg)
    assert torch.equal(model.unpack(model.pack(z)), z)


def test_a_wide_grid_packs_square_blocks_not_across_the_row_end():
    from ahri_core.models.dynamics_config import auto_pack, describe

    assert auto_pack(60, 16) == (4, 1)  # without the grid: runs of 4, which straddle rows of 10
    assert auto_pack(60, 16, (6, 10)) == (4, 2)  # 16:9 at the cpu budget: 2 x 2 blocks, still 15 model tokens
    assert auto_pack(64, 16, (8, 8)) == (4, 1)  # the square demo: runs of 4 as before
    cfg = dynamics_config("cpu", tokens=60, channels=12, latent_grid=(6, 10))
    assert (cfg.pack, cfg.pack_rows, cfg.token_grid, cfg.model_tokens) == (4, 2, (6, 10), 15)
    square = dynamics_config("cpu", tokens=64, channels=12, latent_grid=(8, 8))
    assert (square.pack, square.pack_rows, square.token_grid) == (4, 1, None)  # the same config as before grids
    explicit = dynamics_config("cpu", tokens=60, channels=12, latent_grid=(6, 10), pack=4)
    assert (explicit.pack, explicit.pack_rows) == (4, 1)  # an explicit pack wins (consecutive tokens)
    with pytest.raises(ConfigError, match="tile"):
        dynamics_config("cpu", tokens=60, channels=12, pack=28, pack_rows=7, token_grid=(6, 10))
    with pytest.raises(ConfigError, match="token_grid"):
        dynamics_config("cpu", tokens=60, channels=12, pack=4, pack_rows=2)
    line = describe(cfg, 1_686_868)
    assert "60 latent tokens x 12 channels, packed as 15 model tokens of 2 x 2" in line and "1.69M params" in line
    assert "2 temporal" in line and "packed" not in describe(dynamics_config("cpu", tokens=16, channels=12))
    assert "packed as 16 model tokens of 4," in describe(dynamics_config("cpu", tokens=64, channels=12))


@pytest.mark.parametrize("grid,pack,rows,model_tokens", [
    ((4, 6), 4, 2, 6),  # 2 x 2 blocks that tile the grid
    ((7, 9), 5, 1, 14),  # 4:3's 7 x 9 padded to 7 x 10 for 1 x 5 pieces: the padding never reaches the output
])
def test_a_block_packed_model_keeps_block_causality_and_its_config(tmp_path, grid, pack, rows, model_tokens):
    """Frame t's output does not change when a later frame does, the KV cache gives the full pass, and the
    weights file rebuilds the same packing."""
    n = grid[0] * grid[1]
    model = build_dynamics("tiny", tokens=n, channels=3, pack=pack, pack_rows=rows, latent_grid=grid, k_max=4).eval()
    assert (model.config.pack, model.config.pack_rows, model.config.model_tokens) == (pack, rows, model_tokens)
    B, T = 1, 3
    z = torch.randn(B, T, n, 3)
    tau, step = torch.full((B, T), 0.5), torch.full((B, T), 0.25)
    with torch.no_grad():
        out = model(z, tau, step)
        z2 = z.clone()
        z2[:, 2] = torch.randn(n, 3)
        out2 = model(z2, tau, step)
    assert out.shape == z.shape
    assert torch.allclose(out[:, :2], out2[:, :2], atol=1e-6) and not torch.allclose(out[:, 2], out2[:, 2])
    cache = model.new_cache(B, 8)
    with torch.no_grad():
        for t in range(T):  # the KV cache gives what the full pass gives
            got = model.step(z[:, t : t + 1], tau[:, t : t + 1], step[:, t : t + 1], None, cache, commit=True)
            assert torch.allclose(got[:, 0], out[:, t], atol=1e-5)
    again = load_dynamics(save_dynamics(tmp_path / "dyn.safetensors", model))
    assert (again.config.pack_rows, again.config.token_grid, again.config.model_tokens) == (rows, grid, model_tokens)
    with torch.no_grad():
        assert torch.equal(again.eval()(z, tau, step), out)


def test_packed_model_keeps_latent_layout_and_cache():
    model = make(pack=5, active=True)  # N = 5 latent tokens -> 1 model token of 5 * C
    assert model.config.model_tokens == 1 and model.latent_in.in_features == N * C
    z, tau, step = inputs(2, 5)
    full = model(z, tau, step)
    assert full.shape == (2, 5, N, C)
    # each latent token has its own output (not one value broadcast over the packed group)
    assert (full[:, :, 0] - full[:, :, 1]).abs().amax() > 1e-4
    # the output for token i moves when only token j of the same frame moves: they are one model token
    z2 = z.clone()
    z2[:, 2, 4] += 1.0
    assert (model(z2, tau, step)[:, 2, 0] - full[:, 2, 0]).abs().amax() > 1e-5
    # and frame t's output is unaffected by a later frame (block causality survives packing)
    assert torch.allclose(model(z2, tau, step)[:, :2], full[:, :2], atol=1e-6)
    cache = model.new_cache(2, 8)
    for t in range(5):
        got = model.step(z[:, t : t + 1], tau[:, t : t + 1], step[:, t : t + 1], None, cache, commit=True)
        assert torch.allclose(got[:, 0], full[:, t], atol=1e-5)


# ---------------------------------------------------------------------------------------------- removed options
def test_configs_with_the_removed_previous_frame_options(tmp_path):
    """A stored config with ``prev_frame`` / ``prev_skip`` off (older checkpoints) still loads; one with an option
    on is refused in one line, as a config and as a checkpoint."""
    model = make()
    path = save_dynamics(tmp_path / "m.safetensors", model)
    fields = model.config.model_dump(mode="json")
    assert DynamicsConfig(**fields, prev_frame=False, prev_skip=False) == model.config
    for option in ("prev_frame", "prev_skip", "keep_gate"):
        with pytest.raises(ConfigError, match=f"{option} was removed") as err:
            dynamics_config({**fields, option: True})
        assert "\n" not in str(err.value)
    old = tmp_path / "old.safetensors"
    _, _, extra = read_metadata(path)
    save_weights(old, model, kind="dynamics", config={**fields, "prev_frame": False, "prev_skip": False,
                                                      "keep_gate": False}, extra=extra)
    assert load_dynamics(old).config == model.config
    on = tmp_path / "on.safetensors"
    save_weights(on, model, kind="dynamics", config={**fields, "prev_skip": True}, extra=extra)
    with pytest.raises(CheckpointError, match="prev_skip was removed") as err:
        load_dynamics(on)
    assert "\n" not in str(err.value)

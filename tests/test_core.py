"""Shared infrastructure: atomic files, checkpoints, training helpers, transformer layers."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from ahri_core.checkpoint import load_state, load_weights, read_metadata, save_state, save_weights
from ahri_core.errors import CheckpointError, ConfigError
from ahri_core.fileio import append_jsonl, atomic_path, read_jsonl, sha256_file, write_json_atomic
from ahri_core.models.layers import Attention, Block, Rotary, sdpa
from ahri_core.train.common import (
    EMA,
    Budget,
    RunDir,
    RunningRMS,
    lr_factor,
    make_adamw,
    rng_state,
    set_rng_state,
)


def test_atomic_path_leaves_nothing_on_error(tmp_path: Path):
    target = tmp_path / "out.json"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("boom")
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []
    write_json_atomic(target, {"a": 1})
    assert target.read_text().strip().startswith("{")
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_jsonl_and_sha(tmp_path: Path):
    p = tmp_path / "m.jsonl"
    append_jsonl(p, {"step": 1})
    with open(p, "a") as f:
        f.write('{"step": 2')  # a torn last line, as after a crash
    assert read_jsonl(p) == [{"step": 1}]
    (tmp_path / "x").write_bytes(b"abc")
    assert sha256_file(tmp_path / "x") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


class _Net(torch.nn.Module):
    def __init__(self, width: int = 4):
        super().__init__()
        self.a = torch.nn.Linear(3, width)
        self.b = torch.nn.Linear(width, 2)


def test_weights_round_trip_and_strictness(tmp_path: Path):
    net = _Net()
    path = save_weights(tmp_path / "w.safetensors", net, "toy", {"width": 4}, extra={"note": [1, 2]})
    kind, cfg, extra = read_metadata(path)
    assert (kind, cfg, extra["note"]) == ("toy", {"width": 4}, [1, 2])
    other = _Net()
    assert load_weights(path, other, kind="toy", config={"width": 4}) == {"width": 4}
    for k, v in net.state_dict().items():
        assert torch.equal(v, other.state_dict()[k])
    with pytest.raises(CheckpointError, match="another model config"):
        load_weights(path, _Net(), kind="toy", config={"width": 5})
    with pytest.raises(CheckpointError, match="not a dynamics model"):
        load_weights(path, _Net(), kind="dynamics")
    with pytest.raises(CheckpointError, match="shape"):
        load_weights(path, _Net(width=5), kind="toy")
    extra_net = _Net()
    extra_net.c = torch.nn.Linear(2, 2)
    with pytest.raises(CheckpointError, match="lacks 2 tensor"):
        load_weights(path, extra_net)
    small = torch.nn.Module()
    small.a = torch.nn.Linear(3, 4)
    with pytest.raises(CheckpointError, match="has 2 tensor"):
        load_weights(path, small)
    (tmp_path / "junk.safetensors").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.safetensors"):
        load_weights(tmp_path / "junk.safetensors", _Net())


def test_state_round_trip_is_weights_only(tmp_path: Path):
    net = _Net()
    opt = make_adamw(net, 1e-3, 0.1)
    loss = net.b(net.a(torch.randn(5, 3))).pow(2).mean()
    loss.backward()
    opt.step()
    save_state(tmp_path / "s.pt", {"opt": opt.state_dict(), "step": 7, "rng": rng_state()})
    st = load_state(tmp_path / "s.pt")
    assert st["step"] == 7
    opt2 = make_adamw(_Net(), 1e-3, 0.1)
    opt2.load_state_dict(st["opt"])

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"x": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="cannot be loaded safely"):
        load_state(tmp_path / "evil.pt")


def test_rng_state_restores_every_generator():
    st = rng_state()
    a = (random.random(), float(np.random.rand()), torch.rand(3))
    set_rng_state(st)
    b = (random.random(), float(np.random.rand()), torch.rand(3))
    assert a[0] == b[0] and a[1] == b[1] and torch.equal(a[2], b[2])


def test_adamw_decays_matrices_only():
    opt = make_adamw(_Net(), 1e-3, 0.1)
    decay = {id(p) for p in opt.param_groups[0]["params"]}
    assert all(p.dim() >= 2 for p in opt.param_groups[0]["params"])
    assert all(p.dim() < 2 for p in opt.param_groups[1]["params"]) and opt.param_groups[1]["weight_decay"] == 0
    assert len(decay) == 2


def test_lr_schedule_warmup_then_cosine():
    assert lr_factor(0, 10, 0.0) == pytest.approx(0.1)
    assert lr_factor(9, 10, 0.0) == pytest.approx(1.0)
    assert lr_factor(10, 10, 0.0) == pytest.approx(1.0)
    assert lr_factor(50, 10, 0.5, min_ratio=0.1) == pytest.approx(0.55)
    assert lr_factor(99, 10, 1.0, min_ratio=0.1) == pytest.approx(0.1)
    vals = [lr_factor(s, 0, s / 100) for s in range(101)]
    assert all(x >= y for x, y in zip(vals, vals[1:]))


def test_ema_tracks_and_applies():
    net = _Net()
    ema = EMA(net, decay=0.5)
    before = net.a.weight.detach().clone()
    with torch.no_grad():
        net.a.weight.add_(2.0)
    ema.update(net)
    assert torch.allclose(ema.shadow["a.weight"], before + 1.0)
    with ema.applied(net):
        assert torch.allclose(net.a.weight, before + 1.0)
    assert torch.allclose(net.a.weight, before + 2.0)


def test_running_rms_normalises_scale():
    rms = RunningRMS(decay=0.9)
    for _ in range(200):
        out = rms(torch.tensor(100.0))
    assert out.item() == pytest.approx(1.0, rel=1e-3)
    rms.eval()
    count = rms.count.item()
    rms(torch.tensor(5.0))
    assert rms.count.item() == count  # no update outside training


def test_budget_requires_a_limit_and_stops():
    with pytest.raises(ConfigError, match="budget"):
        Budget()
    b = Budget(max_steps=10)
    assert not b.done(9) and b.done(10) and b.progress(5) == 0.5
    e = Budget(epochs=2, steps_per_epoch=3)
    assert e.total_steps == 6


def test_run_dir_refuses_overwrite(tmp_path: Path):
    RunDir(tmp_path / "r").create("dynamics", {"a": 1}, resume=False)
    with pytest.raises(ConfigError, match="--resume"):
        RunDir(tmp_path / "r").create("dynamics", {"a": 1}, resume=False)
    RunDir(tmp_path / "r").create("dynamics", {"a": 1}, resume=True)


@pytest.mark.parametrize("kv_heads,softcap", [(4, None), (2, None), (1, 30.0)])
def test_attention_cache_matches_causal_full(kv_heads, softcap):
    torch.manual_seed(0)
    attn = Attention(32, 4, kv_heads, softcap=softcap)
    rot = Rotary(8)
    x = torch.randn(2, 7, 32)
    full, _ = attn(x, rope_q=rot(torch.arange(7)), is_causal=True)
    past, outs = None, []
    for t in range(7):
        o, (k, v) = attn(x[:, t : t + 1], rope_q=rot(torch.arange(t, t + 1)), past=past)
        past = (k, v) if past is None else (torch.cat([past[0], k], 2), torch.cat([past[1], v], 2))
        outs.append(o)
    torch.testing.assert_close(torch.cat(outs, 1), full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("causal", [False, True])
def test_attention_runs_in_float32_on_the_cpu(causal):
    """bf16 attention is 3-4x slower than fp32 in PyTorch's CPU kernel: ``sdpa`` computes it in fp32 whatever the
    inputs' dtype, and under bf16 autocast too (which would otherwise cast the inputs back to bf16)."""
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(3, 4, 6, 8, generator=g) for _ in range(3))
    qb, kb, vb = (t.bfloat16() for t in (q, k, v))
    ref = F.scaled_dot_product_attention(qb.float(), kb.float(), vb.float(), is_causal=causal)
    # bf16 inputs: the fp32 result, rounded once to bf16 at the end (bf16 arithmetic would differ)
    out = sdpa(qb, kb, vb, None, causal)
    assert out.dtype == torch.bfloat16 and torch.equal(out, ref.bfloat16())
    ref32 = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert F.scaled_dot_product_attention(q, k, v, is_causal=causal).dtype == torch.bfloat16  # what autocast does
        # fp32 inputs under autocast stay fp32, exactly the fp32 result
        out32 = sdpa(q, k, v, None, causal)
        assert out32.dtype == torch.float32 and torch.equal(out32, ref32)
        assert torch.equal(sdpa(qb, kb, vb, None, causal), ref.bfloat16())
    # the gradients reach bf16 inputs through the fp32 computation
    qg = qb.clone().requires_grad_()
    sdpa(qg, kb, vb, None, causal).float().sum().backward()
    assert qg.grad is not None and qg.grad.dtype == torch.bfloat16 and bool(qg.grad.abs().sum() > 0)


def test_bf16_attention_on_the_cpu_rounds_q_and_k_only_where_the_projections_do():
    """Under bf16 autocast on the CPU the attention computes in float32 (``sdpa``), so q, k and v are cast up once
    after their projections and stay float32 through the QK-norm and RoPE: the result equals that computation done
    by hand, with no rounding to bf16 between the norm, the rotation and the kernel (the cache keeps float32 too)."""
    import torch.nn.functional as F

    from ahri_core.models.layers import apply_rotary

    torch.manual_seed(0)
    attn = Attention(32, 4)
    rot = Rotary(8)
    x = torch.randn(2, 5, 32)
    cos, sin = rot(torch.arange(5))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, (k_cached, _) = attn(x, rope_q=(cos, sin))
        q = attn.q(x).float().view(2, 5, 4, 8).transpose(1, 2)
        k, v = attn.kv(x).float().view(2, 5, 2, 4, 8).permute(2, 0, 3, 1, 4)
    q = apply_rotary(F.rms_norm(q, (8,), attn.q_norm.weight, attn.q_norm.eps), cos, sin)
    k = apply_rotary(F.rms_norm(k, (8,), attn.k_norm.weight, attn.k_norm.eps), cos, sin)
    o = F.scaled_dot_product_attention(q, k, v).bfloat16().transpose(1, 2).reshape(2, 5, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        want = attn.out(o)
    assert out.dtype == torch.bfloat16 and torch.equal(out, want)
    assert k_cached.dtype == torch.float32 and torch.equal(k_cached, k)


def test_rotary_is_relative():
    """Scores depend only on the distance between positions (what lets windows slide)."""
    rot = Rotary(8)
    q, k = torch.randn(1, 1, 1, 8), torch.randn(1, 1, 1, 8)
    from ahri_core.models.layers import apply_rotary

    def score(i, j):
        cq, sq = rot(torch.tensor([float(i)]))
        ck, sk = rot(torch.tensor([float(j)]))
        return (apply_rotary(q, cq, sq) * apply_rotary(k, ck, sk)).sum().item()

    assert score(3, 1) == pytest.approx(score(103, 101), abs=1e-4)


def test_block_runs_in_bf16_autocast():
    blk = Block(32, 4, 2)
    x = torch.randn(2, 5, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, _ = blk(x)
    assert y.shape == x.shape and torch.isfinite(y).all()

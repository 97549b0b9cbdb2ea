"""The Muon option: which parameters it takes, its state through a checkpoint, exact resume."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch
from dynamics_fixtures import lset, tiny_settings

from ahri_core.errors import ConfigError
from ahri_core.models.dynamics import DynamicsModel, dynamics_config
from ahri_core.train.common import ChainedOptimizer, make_optimizer, muon_names
from ahri_core.train.dynamics import train_dynamics


def _model() -> DynamicsModel:
    torch.manual_seed(0)
    return DynamicsModel(dynamics_config("tiny", 4, 4, action_kind="discrete", action_count=3))


def test_muon_takes_the_blocks_matrices_and_adamw_the_rest():
    m = _model()
    names = muon_names(m)
    params = dict(m.named_parameters())
    assert names and all(params[n].dim() == 2 and n.startswith("blocks.") for n in names)
    assert len(names) == 5 * len(m.blocks)  # q, kv, out, w13, w2 of every block
    assert any(".attn." in n for n in names) and any(".mlp." in n for n in names)
    # never the maps in and out, the embeddings or the modulation
    assert not any(n.startswith(("latent_in", "head", "tau_mlp", "step_embed", "action_embed")) for n in names)
    assert not any(".mod." in n for n in names)
    opt = make_optimizer(m, "muon", 1e-3, 0.01)
    assert isinstance(opt, ChainedOptimizer)
    muon, adamw = opt.parts
    assert isinstance(muon, torch.optim.Muon) and isinstance(adamw, torch.optim.AdamW)
    owned = [id(p) for g in opt.param_groups for p in g["params"]]
    assert sorted(owned) == sorted(id(p) for p in m.parameters())  # every parameter exactly once
    assert isinstance(make_optimizer(m, "adamw", 1e-3, 0.01), torch.optim.AdamW)
    # the tokenizer's encoder and decoder blocks the same way
    from ahri_core.models.tokenizer import Tokenizer, tokenizer_config

    tok = Tokenizer(tokenizer_config("tiny"))
    tnames = muon_names(tok)
    assert tnames and all(".attn." in n or ".mlp." in n for n in tnames)
    assert not any(n.startswith(("patch_in", "to_latent", "from_latent", "to_pixels")) for n in tnames)


def test_chained_state_survives_a_weights_only_round_trip():
    def step(model, opt, seed):
        g = torch.Generator().manual_seed(seed)
        z = torch.randn(2, 3, 4, 4, generator=g)
        tau = torch.rand(2, 3, generator=g)
        x = model(z, tau, torch.full((2, 3), 1 / 64), actions=torch.zeros(2, 3, dtype=torch.long))
        opt.zero_grad(set_to_none=True)
        x.pow(2).mean().backward()
        opt.step()

    a = _model()
    oa = make_optimizer(a, "muon", 1e-2, 0.01)
    for s in range(3):
        step(a, oa, s)
    buf = io.BytesIO()
    torch.save({"model": a.state_dict(), "opt": oa.state_dict()}, buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)
    b = _model()
    b.load_state_dict(saved["model"])
    ob = make_optimizer(b, "muon", 1e-2, 0.01)
    ob.load_state_dict(saved["opt"])
    step(a, oa, 3)
    step(b, ob, 3)
    for (n, p), q in zip(a.named_parameters(), b.parameters(), strict=True):
        assert torch.equal(p, q), n
    # the momentum moved the update: a fresh optimizer from the same weights steps elsewhere
    c = _model()
    c.load_state_dict(saved["model"])
    step(c, make_optimizer(c, "muon", 1e-2, 0.01), 3)
    assert any(not torch.equal(p, q) for p, q in zip(a.parameters(), c.parameters(), strict=True))


def test_a_muon_run_resumes_exactly_and_differs_from_adamw(tmp_path: Path):
    from safetensors.torch import load_file

    data = lset(n_train=3, frames=40)
    train, dset, diff = tiny_settings(max_steps=4, checkpoint_every=2, optimizer="muon")
    straight = train_dynamics(data, tmp_path / "straight", train, dset, diff)
    half, _, _ = tiny_settings(max_steps=2, checkpoint_every=2, optimizer="muon")
    train_dynamics(data, tmp_path / "resumed", half, dset, diff)
    # resumed without naming the optimizer: the run's own (its state only fits Muon)
    more, _, _ = tiny_settings(max_steps=4, checkpoint_every=2, resume=True)
    train_dynamics(data, tmp_path / "resumed", more, dset, diff)
    assert json.loads((tmp_path / "resumed" / "run.json").read_text())["settings"]["train"]["optimizer"] == "muon"
    a, b = load_file(straight.weights), load_file(tmp_path / "resumed" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    adamw, _, _ = tiny_settings(max_steps=4, checkpoint_every=2)
    c = load_file(train_dynamics(data, tmp_path / "adamw", adamw, dset, diff).weights)
    assert any(not torch.equal(a[k], c[k]) for k in a)
    # another optimizer named on resume is refused in one line, the run untouched
    other, _, _ = tiny_settings(max_steps=6, checkpoint_every=2, resume=True, optimizer="muon")
    with pytest.raises(ConfigError, match="optimizer"):
        train_dynamics(data, tmp_path / "adamw", other, dset, diff)
    assert load_file(tmp_path / "adamw" / "model.safetensors").keys() == c.keys()


def test_a_tokenizer_run_resumes_with_its_own_optimizer(tmp_path: Path, monkeypatch):
    from tokenizer_fixtures import make_store, tiny_train

    from ahri_core.config import presets
    from ahri_core.train.tokenizer import train_tokenizer

    store = make_store(tmp_path / "store")
    run = tmp_path / "tok"
    train_tokenizer(run, store, tiny_train(max_steps=2, checkpoint_every=2, optimizer="adamw"))
    # a preset whose default is Muon does not swap the optimizer of a run made with AdamW
    monkeypatch.setitem(presets.TRAINING_PRESETS["tokenizer"]["tiny"], "optimizer", "muon")
    res = train_tokenizer(run, store, tiny_train(max_steps=3, checkpoint_every=2, resume=True))
    assert res["step"] == 3
    assert json.loads((run / "run.json").read_text())["settings"]["train"]["optimizer"] == "adamw"


def test_the_cpu_tokenizer_defaults_to_muon_and_fsdp_to_adamw():
    from ahri_core.config.settings import TrainSettings
    from ahri_core.train.common import with_preset_defaults

    assert with_preset_defaults(TrainSettings(stage="tokenizer", preset="cpu")).optimizer == "muon"
    assert with_preset_defaults(TrainSettings(stage="dynamics", preset="cpu")).optimizer == "adamw"
    assert with_preset_defaults(TrainSettings(stage="tokenizer", preset="small")).optimizer == "adamw"
    assert with_preset_defaults(TrainSettings(stage="tokenizer", preset="cpu", optimizer="adamw")).optimizer == "adamw"
    assert with_preset_defaults(TrainSettings(stage="tokenizer", preset="cpu", fsdp=True)).optimizer == "adamw"


def _muon_steps(opt_cls, params0, grads, **kw):
    params = [torch.nn.Parameter(p.clone()) for p in params0]
    opt = opt_cls(params, lr=0.02, weight_decay=0.1, adjust_lr_fn="match_rms_adamw", **kw)
    for gs in grads:
        for p, g in zip(params, gs, strict=True):
            p.grad = g.clone()
        opt.step()
    return params, opt


def test_muon_is_torchs_in_bf16_and_computes_in_float32_without_native_bf16(monkeypatch):
    """ahri's Muon is torch's update, step for step, where the Newton-Schulz products run in bf16 (torch's fixed
    choice); on a CPU without native bf16 they run in float32 (an emulated bf16 product is ~190x slower there)."""
    from ahri_core import runtime
    from ahri_core.train import common
    from ahri_core.train.common import Muon, orthogonalize

    g = torch.Generator().manual_seed(0)
    shapes = [(24, 8), (8, 24), (12, 12), (24, 8), (12, 12), (12, 12)]  # tall, wide, square; shapes repeat (stacked)
    params0 = [torch.randn(s, generator=g) for s in shapes]
    grads = [[torch.randn(s, generator=g) for s in shapes] for _ in range(3)]
    monkeypatch.setattr(runtime, "native_bf16", lambda: (True, "native"))
    seen = []  # matrices of one shape go through the Newton-Schulz iteration as one stack
    real = common.orthogonalize
    monkeypatch.setattr(common, "orthogonalize", lambda g, *a: seen.append(tuple(g.shape)) or real(g, *a))
    ours, opt = _muon_steps(Muon, params0, grads)
    assert sorted(set(seen)) == [(2, 24, 8), (3, 12, 12), (8, 24)]
    monkeypatch.setattr(common, "orthogonalize", real)
    assert opt.ns_dtype == torch.bfloat16
    ref, ref_opt = _muon_steps(torch.optim.Muon, params0, grads)
    for a, b in zip(ours, ref, strict=True):
        assert torch.equal(a, b)
    # the same state: a checkpoint of one optimizer loads into the other
    opt.load_state_dict(ref_opt.state_dict())

    monkeypatch.setattr(runtime, "native_bf16", lambda: (False, "CPU capability AVX2 has no native bf16"))
    f32, opt32 = _muon_steps(Muon, params0, grads)
    assert opt32.ns_dtype == torch.float32 and "AVX2" in opt32.ns_why
    # float32 Newton-Schulz: the same iteration as a float64 one, to float32 rounding
    x = grads[0][0]
    want = x.double().T / x.double().norm()
    a, b, c = opt32.param_groups[0]["ns_coefficients"]
    for _ in range(opt32.param_groups[0]["ns_steps"]):
        gram = want @ want.T
        want = a * want + (b * gram + c * gram @ gram) @ want
    got = orthogonalize(x, (a, b, c), opt32.param_groups[0]["ns_steps"], 1e-7, torch.float32)
    assert got.dtype == torch.float32 and got.shape == x.shape
    torch.testing.assert_close(got.double(), want.T, atol=1e-5, rtol=1e-5)
    # and a float32 step lands where the bf16 one does, up to bf16's rounding of the update
    for a32, a16 in zip(f32, ours, strict=True):
        assert not torch.equal(a32, a16)
        torch.testing.assert_close(a32, a16, atol=0.02, rtol=0)
    assert common.muon_dtype(torch.device("cpu"))[0] == torch.float32

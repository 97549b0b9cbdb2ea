"""``--compile auto|on|off``: the choice made in the run (train/compiling.py), fed step times by hand, and one real
compile whose step must give the eager step's loss and gradients."""

from __future__ import annotations

import json
import time

import pytest
import torch
from dynamics_fixtures import lset, tiny_settings

from ahri_core.config.settings import TrainSettings
from ahri_core.train import compiling
from ahri_core.train.compiling import EAGER_WARMUP, TIMED, Compiling


class Switch:
    """Records the ``apply`` calls a choice makes."""

    def __init__(self) -> None:
        self.calls: list[bool] = []

    def __call__(self, on: bool) -> None:
        self.calls.append(on)


def _make(tmp_path, requested="auto", left=3600.0, processes=1, key="model A"):
    sw = Switch()
    c = Compiling(requested, torch.device("cpu"), key=key, cache_dir=tmp_path, apply=sw,
                  seconds_left=lambda step_s: left, processes=processes)
    return c, sw


def _feed(c: Compiling, eager_s: float, startup_s: float, compiled_s: float) -> list[str]:
    """Eager steps until the trial compiles, then one start-up step and compiled steps until it decides."""
    lines = []
    for _ in range(EAGER_WARMUP + TIMED):
        lines.append(c.after_step(eager_s))
    if c.phase != "compiled":
        return [x for x in lines if x]
    lines.append(c.after_step(startup_s))
    while c.phase == "compiled":
        lines.append(c.after_step(compiled_s))
    return [x for x in lines if x]


def test_settings_take_auto_on_off_and_the_older_booleans():
    assert TrainSettings().compile == "auto"
    assert [TrainSettings(compile=v).compile for v in (True, False, "ON", "no", "off")] == ["on", "off", "on", "off", "off"]
    with pytest.raises(ValueError, match="give auto, on or off"):
        TrainSettings(compile="sometimes")


def test_on_and_off_decide_at_once(tmp_path):
    c, sw = _make(tmp_path, "on")
    assert c.start() == "compile on (--compile on)" and sw.calls == [True]
    assert c.after_step(1.0) is None and sw.calls == [True]
    c, sw = _make(tmp_path, "off")
    assert c.start() == "compile off (--compile off)" and sw.calls == []
    c, sw = _make(tmp_path, processes=2)
    assert "several processes" in c.start() and sw.calls == []


def test_short_budgets_are_not_tried(tmp_path):
    c, sw = _make(tmp_path)
    assert "too few" in c.start(steps_left=EAGER_WARMUP + 2 * TIMED - 1) and c.phase == "done"
    c, sw = _make(tmp_path)
    assert "too short" in c.start(minutes_left=5.0) and c.phase == "done"
    # a budget that looked long but has little time left once the eager step is known: no compile, no cache
    c, sw = _make(tmp_path, left=120.0)
    c.start(steps_left=1000)
    lines = _feed(c, 0.2, 30.0, 0.1)
    assert sw.calls == [] and c.choice.compiled is False and "too little budget" in lines[-1]
    assert not (tmp_path / compiling.CACHE_FILE).exists()


def test_a_faster_compile_is_kept_and_cached_then_reused(tmp_path):
    c, sw = _make(tmp_path)
    assert "timing eager steps" in c.start()
    lines = _feed(c, eager_s=0.2, startup_s=30.0, compiled_s=0.15)
    assert sw.calls == [True] and c.choice.compiled is True and c.choice.decided is True
    t = c.choice.timings
    assert t["eager_s"] == pytest.approx(0.2) and t["compiled_s"] == pytest.approx(0.15)
    # the start-up is what the compiled steps took beyond their steady time: 30 + 59 x 0.15 - 60 x 0.15
    assert t["startup_s"] == pytest.approx(30.0 - 0.15)
    assert "1.33x faster" in lines[-1]
    cached = json.loads((tmp_path / compiling.CACHE_FILE).read_text())
    assert len(cached) == 1 and next(iter(cached.values()))["compiled_s"] == pytest.approx(0.15)

    # the same model later: compiled from the first step when the budget repays the start-up twice ...
    c2, sw2 = _make(tmp_path, left=3600.0)
    assert "(cached)" in c2.start() and sw2.calls == [True] and c2.choice.cached and c2.phase == "done"
    # ... (a quarter of 120 s saved is less than two 30 s start-ups) ...
    c3, sw3 = _make(tmp_path, left=120.0)
    assert c3.start().startswith("compile off") and sw3.calls == []
    # ... and another model shape is measured anew
    c4, _ = _make(tmp_path, key="model B")
    c4.start()
    assert c4.phase == "eager"


def test_a_compile_that_does_not_pay_is_dropped(tmp_path):
    c, sw = _make(tmp_path)
    c.start()
    lines = _feed(c, eager_s=0.2, startup_s=30.0, compiled_s=0.19)
    assert sw.calls == [True, False] and c.choice.compiled is False
    assert "eager from here on" in lines[-1]
    # cached as measured, so the next run does not try again
    c2, sw2 = _make(tmp_path)
    assert c2.start().startswith("compile off") and sw2.calls == [] and c2.phase == "done"


def test_no_cxx_compiler_means_no_compile_on_the_cpu(tmp_path, monkeypatch):
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setattr(compiling.shutil, "which", lambda name: None)
    c, sw = _make(tmp_path)
    assert "no C++ compiler" in c.start() and sw.calls == []


def test_a_resumed_run_keeps_its_decided_choice(tmp_path):
    kept = {"requested": "auto", "decided": True, "compiled": True, "reason": "measured 1.20x faster",
            "timings": {"eager_s": 0.2, "compiled_s": 0.16, "startup_s": 40.0}}
    c, sw = _make(tmp_path, left=10.0)  # whatever the budget left: the run goes on as it trained
    assert c.start(kept=kept).endswith("kept on resume)") and sw.calls == [True] and c.phase == "done"
    c, sw = _make(tmp_path)
    c.start(kept={**kept, "decided": False})  # stopped during its trial: tried again
    assert c.phase == "eager" and sw.calls == []


def test_a_failed_compile_is_cached_and_not_tried_again(tmp_path):
    c, sw = _make(tmp_path)
    c.start()
    for _ in range(EAGER_WARMUP + TIMED):
        c.after_step(0.2)
    assert sw.calls == [True] and c.may_fail
    line = c.failed(RuntimeError("no  Python.h\nfound"))
    assert sw.calls == [True, False] and line == "compile off (compiling failed (RuntimeError: no Python.h found); eager from here on)"
    c2, sw2 = _make(tmp_path)
    assert "failed here before (RuntimeError: no Python.h found)" in c2.start() and sw2.calls == []


class _Slow:
    """A training forward made slower (or failing), standing in for a compiled one."""

    def __init__(self, inner, fail: bool) -> None:
        self.inner, self.fail = inner, fail

    def __call__(self, *args, **kwargs):
        if self.fail:
            raise RuntimeError("the backend compiler failed")
        time.sleep(0.6)  # far slower than a tiny eager step, even on a loaded machine
        return self.inner(*args, **kwargs)


@pytest.mark.parametrize("fail", [False, True])
def test_the_loop_runs_the_trial_and_falls_back(tmp_path, monkeypatch, fail):
    """The loop's wiring, with a stand-in for torch.compile whose steps are slower (dropped after the trial)
    or raise (eager from then on); the run trains its whole budget either way."""
    from ahri_core.train.dynamics import train_dynamics
    from ahri_core.train.objectives.dynamics import DynamicsObjective

    for name, value in (("TRIAL_MIN_S", 0.0), ("EAGER_WARMUP", 2), ("TIMED", 3), ("COMPILED_SPAN", 3)):
        monkeypatch.setattr(compiling, name, value)
    calls: list[bool] = []

    def fake(self, on: bool) -> None:
        calls.append(on)
        if on:
            self._eager_net = self.net
            self.net = _Slow(self.model if self.net is None else self.net, fail)
        else:
            self.net = self.__dict__.pop("_eager_net")

    monkeypatch.setattr(DynamicsObjective, "set_compiled", fake)
    train, dset, diff = tiny_settings(max_steps=14)
    res = train_dynamics(lset(), tmp_path / "run", train, dset, diff)
    meta = json.loads((tmp_path / "run" / "run.json").read_text())
    assert res.step == 14 and calls == [True, False], meta["compile"]
    c = meta["compile"]
    assert c["decided"] is True and c["compiled"] is False
    if fail:
        assert "compiling failed (RuntimeError: the backend compiler failed)" in c["reason"]
    else:
        assert "eager from here on" in c["reason"] and c["timings"]["compiled_s"] > c["timings"]["eager_s"]


def test_a_short_training_run_records_its_compile_choice(tmp_path):
    from ahri_core.train.dynamics import train_dynamics

    train, dset, diff = tiny_settings(max_steps=2)
    train_dynamics(lset(), tmp_path / "run", train, dset, diff)
    meta = json.loads((tmp_path / "run" / "run.json").read_text())
    assert meta["compile"]["compiled"] is False and meta["compile"]["requested"] == "auto"
    assert "too few" in meta["compile"]["reason"]


@pytest.mark.skipif(compiling.unsupported(torch.device("cpu")) is not None, reason="torch.compile cannot run here")
def test_a_compiled_training_step_gives_the_eager_loss_and_gradients(tmp_path):
    """One batch through the dynamics objective's step (student, shortcut teacher, loss) eager, then compiled
    by inductor: the same loss and gradients within float tolerance."""
    from ahri_core.data.windows import Batch
    from ahri_core.train.common import EMA
    from ahri_core.train.dynamics import model_config_for
    from ahri_core.train.objectives.dynamics import DynamicsObjective

    train, dset, diff = tiny_settings(max_steps=2)
    latents = lset()
    cfg = model_config_for(latents, train, dset, diff, depth=2, temporal_every=2)  # one S and one T block: a shorter compile
    torch.manual_seed(0)
    obj = DynamicsObjective(cfg, latents, train, dset, diff, {}, torch.device("cpu"))
    obj.ema = EMA(obj.model, 0.9)
    g = torch.Generator().manual_seed(0)
    batch = Batch(torch.tanh(torch.randn(2, 8, cfg.tokens, cfg.channels, generator=g)),
                  torch.randint(-1, 3, (2, 8), generator=g), "S", [])
    norm = {k: v.clone() for k, v in obj.normalizer.state_dict().items()}

    def step() -> tuple[float, list[torch.Tensor]]:
        obj.gen.manual_seed(5)
        obj.noise_gen.manual_seed(6)
        obj.normalizer.load_state_dict(norm)
        obj.model.zero_grad(set_to_none=True)
        out = obj.compute(batch, 10_000, "fp32")  # a quarter of the items take the teacher's targets
        out.loss.backward()
        return float(out.loss.detach()), [p.grad.clone() for p in obj.model.parameters() if p.grad is not None]

    loss_e, grads_e = step()
    obj.set_compiled(True)
    # each block compiled in place (the teacher, the model itself without gradient, runs the same blocks)
    blocks = [m for m in obj.model.modules() if getattr(type(m), "compile_region", False)]
    assert len(blocks) == 2 and all(b._compiled_call_impl is not None for b in blocks)
    assert obj.train_net is obj.model and obj._teacher(True) is obj.model
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    loss_c, grads_c = step()
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    assert graphs >= 2  # the blocks did run compiled
    obj.model.eval()  # validation, previews and sampling run the blocks eager: no graphs of their own
    with torch.no_grad():
        obj.model(batch.latents[:, :3], torch.rand(2, 3), torch.full((2, 3), 1 / 64))
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == graphs
    obj.model.train()
    obj.set_compiled(False)
    assert all(b._compiled_call_impl is None for b in blocks)
    loss_e2, _ = step()
    assert loss_e2 == loss_e  # eager again: bit for bit
    assert loss_c == pytest.approx(loss_e, rel=1e-4, abs=1e-6)
    assert len(grads_c) == len(grads_e)
    for a, b in zip(grads_e, grads_c):
        torch.testing.assert_close(b, a, rtol=1e-3, atol=1e-5)

"""The engine: automatic precision, threads, the one training loop's divergence guard, run status, weight integrity."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from dynamics_fixtures import lset, tiny_settings
from tokenizer_fixtures import make_store, tiny_train

from ahri_core import runtime
from ahri_core.checkpoint import CheckpointError, load_weights, save_weights
from ahri_core.config.settings import DataSettings, DiffusionSettings, TokenizerSettings, TrainSettings
from ahri_core.data.windows import LatentVideo, make_latent_set
from ahri_core.errors import ConfigError, DataError
from ahri_core.train.loop import DivergedError
from ahri_core.train.tokenizer import train_tokenizer


# ---------------------------------------------------------------------------------------------- precision
def _no_timing(step):
    raise AssertionError("timed although the choice needed no timing")


def test_auto_picks_fp32_at_once_without_native_bf16(monkeypatch, tmp_path):
    monkeypatch.setattr(runtime, "native_bf16", lambda: (False, "CPU capability AVX2 has no native bf16"))
    monkeypatch.setattr(runtime, "time_step", _no_timing)
    c = runtime.choose_precision("auto", torch.device("cpu"), step=lambda p: None, key="m", cache_dir=tmp_path)
    assert c.precision == "fp32" and "AVX2" in c.reason
    assert not (tmp_path / runtime.CACHE_FILE).exists()


def test_forced_precision_is_kept(monkeypatch):
    monkeypatch.setattr(runtime, "time_step", _no_timing)
    for p in ("bf16", "fp32"):
        assert runtime.choose_precision(p, torch.device("cpu")).precision == p
    with pytest.raises(ConfigError, match="fp16"):
        runtime.choose_precision("fp16", torch.device("cpu"))


@pytest.mark.parametrize("fp32_s, bf16_s, expected", [(1.0, 0.4, "bf16"), (1.0, 0.95, "fp32"), (1.0, 3.0, "fp32")])
def test_auto_measures_with_native_bf16(monkeypatch, tmp_path, fp32_s, bf16_s, expected):
    monkeypatch.setattr(runtime, "native_bf16", lambda: (True, "CPU capability AVX512 with avx512_bf16"))
    calls = []
    monkeypatch.setattr(runtime, "time_step", lambda step, **kw: calls.append(1) or {"fp32": fp32_s, "bf16": bf16_s})
    c = runtime.choose_precision("auto", torch.device("cpu"), step=lambda p: None, key="model A", cache_dir=tmp_path)
    assert c.precision == expected and c.timings == {"fp32": fp32_s, "bf16": bf16_s} and not c.cached
    # the second choice for the same machine and model comes from the cache, without timing
    again = runtime.choose_precision("auto", torch.device("cpu"), step=lambda p: None, key="model A", cache_dir=tmp_path)
    assert again.precision == expected and again.cached and len(calls) == 1
    # another model shape is measured anew
    runtime.choose_precision("auto", torch.device("cpu"), step=lambda p: None, key="model B", cache_dir=tmp_path)
    assert len(calls) == 2


def test_cache_is_refreshed_when_torch_or_cpu_change(monkeypatch, tmp_path):
    monkeypatch.setattr(runtime, "native_bf16", lambda: (True, "native"))
    timings = {"fp32": 1.0, "bf16": 0.5}
    calls = []
    monkeypatch.setattr(runtime, "time_step", lambda step, **kw: calls.append(1) or dict(timings))
    choose = lambda: runtime.choose_precision("auto", torch.device("cpu"), step=lambda p: None, key="m",  # noqa: E731
                                              cache_dir=tmp_path)
    assert choose().precision == "bf16" and len(calls) == 1
    assert choose().cached and len(calls) == 1
    monkeypatch.setattr(runtime, "cpu_name", lambda: "Another CPU 9000")
    timings.update(bf16=2.0)
    c = choose()
    assert not c.cached and c.precision == "fp32" and len(calls) == 2
    monkeypatch.setattr(runtime.torch, "__version__", "9.9.9")
    assert not choose().cached and len(calls) == 3
    # code that changed which precision is faster raises the revision: older measurements are taken again
    monkeypatch.setattr(runtime, "MEASURE_REVISION", runtime.MEASURE_REVISION + "-next")
    assert not choose().cached and len(calls) == 4
    data = json.loads((tmp_path / runtime.CACHE_FILE).read_text())
    assert len(data) == 4  # one entry per (machine, code revision, model)


def test_time_step_times_the_given_step_in_both_precisions():
    seen = []
    t = runtime.time_step(lambda p: seen.append(p), budget_s=0.0)
    assert set(t) == {"fp32", "bf16"} and all(v >= 0 for v in t.values())
    assert seen.count("fp32") >= 4 and seen.count("bf16") >= 4  # one untimed call each, then at least 3


def test_native_bf16_uses_the_capability_as_a_first_filter(monkeypatch):
    monkeypatch.setattr(runtime, "cpu_capability", lambda: "AVX2")
    monkeypatch.setattr(runtime, "cpu_flags", lambda: {"avx2", "avx512_bf16"})
    assert runtime.native_bf16()[0] is False
    monkeypatch.setattr(runtime, "cpu_capability", lambda: "AVX512")
    monkeypatch.setattr(runtime, "cpu_flags", lambda: {"avx2", "avx512f"})
    assert runtime.native_bf16()[0] is False


def test_threads_default_to_the_affinity_and_are_applied(monkeypatch):
    before = torch.get_num_threads()
    try:
        assert runtime.apply_threads(1) == 1 and torch.get_num_threads() == 1
        n = runtime.apply_threads(None)
        assert 1 <= n <= runtime.available_cores() and torch.get_num_threads() == n
        with pytest.raises(ConfigError, match="threads"):
            runtime.apply_threads(0)
    finally:
        torch.set_num_threads(before)
    # the policy: every core this process may use, less those other work keeps busy at start
    monkeypatch.setattr(runtime, "available_cores", lambda: 4)
    for busy, expected in ((0.0, 4), (0.4, 4), (1.0, 3), (2.6, 1), (3.9, 1), (7.0, 1)):
        monkeypatch.setattr(runtime, "busy_cores", lambda busy=busy: busy)
        assert runtime.default_threads() == expected, busy


def test_busy_cores_sees_another_process():
    import subprocess
    import sys

    if runtime.available_cores() < 2 or runtime._cpu_times({0}) is None:
        pytest.skip("needs /proc/stat and two cores")
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        import time

        time.sleep(0.3)
        assert runtime.busy_cores(0.5) > 0.6
    finally:
        hog.kill()
        hog.wait()


def test_training_records_its_precision_choice(tmp_path, monkeypatch):
    monkeypatch.setattr(runtime, "native_bf16", lambda: (False, "no bf16 here"))
    train, dset, diff = tiny_settings(max_steps=2)
    res = _dyn(tmp_path / "run", train.model_copy(update={"precision": "auto"}))
    meta = json.loads((tmp_path / "run" / "run.json").read_text())
    assert res.precision["precision"] == "fp32" == meta["precision"]["precision"]
    assert meta["precision"]["reason"] == "no bf16 here" and meta["threads"] == torch.get_num_threads()


# ---------------------------------------------------------------------------------------------- divergence
def _dyn(run: Path, train: TrainSettings, **kw):
    from ahri_core.train.dynamics import train_dynamics

    _, dset, diff = tiny_settings()
    return train_dynamics(lset(), run, train, dset, diff, **kw)


def _nan_from(first_bad: int):
    def hook(step: int, model: torch.nn.Module) -> None:
        if step >= first_bad:
            next(model.parameters()).grad.fill_(float("nan"))

    return hook


def _files(run: Path) -> dict[str, bytes]:
    return {n: (run / n).read_bytes() for n in ("model.safetensors", "model.state.pt") if (run / n).exists()}


def test_nan_gradients_stop_a_dynamics_run_and_keep_the_last_good_checkpoint(tmp_path):
    train, _, _ = tiny_settings(max_steps=12, checkpoint_every=4, max_bad_steps=3, ema=0.9)
    run = tmp_path / "run"
    snap: dict[str, bytes] = {}

    def snapshot(step, rec):  # runs after step 5, so after the step-4 checkpoint was written
        if step == 5:
            snap.update(_files(run))

    with pytest.raises(DivergedError, match="3 steps in a row.*non-finite gradient.*step 4"):
        _dyn(run, train, after_backward=_nan_from(6), on_step=snapshot)
    meta = json.loads((run / "run.json").read_text())
    assert meta["status"] == "diverged" and "non-finite" in meta["reason"]
    # the step-4 checkpoint is bit-identical afterwards (the failing steps wrote nothing)
    assert snap and _files(run) == snap
    assert torch.load(run / "model.state.pt", weights_only=True)["step"] == 4
    # a single bad step is skipped and counted (the step is then redone on the next batch), and the run finishes
    calls = []

    def once(step, model):
        calls.append(step)
        if len(calls) == 6:
            next(model.parameters()).grad.fill_(float("inf"))

    r = _dyn(tmp_path / "one", train, after_backward=once)
    assert calls.count(5) == 2
    assert r.step == 12
    recs = [json.loads(x) for x in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()]
    assert sum(x.get("skipped_steps", 0) for x in recs if x["kind"] == "train") == 1
    # the diverged run resumes from its last good checkpoint (no injection now) and finishes
    res = _dyn(run, train.model_copy(update={"resume": True}))
    assert res.step == 12 and json.loads((run / "run.json").read_text())["status"] == "finished"


def load_weights_file(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("engine")
    return root, make_store(root / "videos", n=3, frames=16)


def test_nan_gradients_stop_a_tokenizer_run_and_keep_the_last_good_checkpoint(videos, tmp_path):
    root, recs = videos
    train = tiny_train(max_steps=12, checkpoint_every=4, val_every=100, max_bad_steps=2)
    run = tmp_path / "tok"
    snap: dict[str, bytes] = {}

    def snapshot(step, rec):
        if step == 5:
            snap.update(_files(run))

    with pytest.raises(DivergedError, match="2 steps in a row"):
        train_tokenizer(run, recs, train, cache_dir=root / "cache", after_backward=_nan_from(5), on_step=snapshot)
    good = (run / "model.safetensors").read_bytes()
    assert snap and _files(run) == snap
    assert json.loads((run / "run.json").read_text())["status"] == "diverged"
    out = train_tokenizer(run, recs, train.model_copy(update={"resume": True}), cache_dir=root / "cache")
    assert out["step"] == 12 and out["status"] == "finished" and (run / "model.safetensors").read_bytes() != good


def test_a_non_finite_loss_is_not_backpropagated(tmp_path):
    """A NaN loss (not only a NaN gradient) is caught before backward and before the optimizer step."""
    from ahri_core.train.objectives import dynamics as dyn

    orig = dyn.forcing_loss
    calls = {"n": 0}

    def bad_loss(*a, **kw):
        parts = orig(*a, **kw)
        calls["n"] += 1
        if calls["n"] >= 3:
            parts.loss = parts.loss * float("nan")
        return parts

    train, _, _ = tiny_settings(max_steps=10, checkpoint_every=2, max_bad_steps=2)
    dyn.forcing_loss = bad_loss
    try:
        with pytest.raises(DivergedError, match="non-finite loss"):
            _dyn(tmp_path / "run", train)
    finally:
        dyn.forcing_loss = orig
    state = torch.load(tmp_path / "run" / "model.state.pt", weights_only=True)
    assert state["step"] == 2 and all(torch.isfinite(v).all() for v in state["model"].values())


# ---------------------------------------------------------------------------------------------- status, best
def test_status_finished_and_interrupted_and_best_checkpoint(tmp_path):
    from ahri_core.train.common import StopRequest

    train, _, _ = tiny_settings(max_steps=8, val_every=2, checkpoint_every=100)
    r = _dyn(tmp_path / "done", train)
    meta = json.loads((tmp_path / "done" / "run.json").read_text())
    assert meta["status"] == "finished" and meta["reason"] is None and meta["step"] == 8
    assert meta["budget"] == {"max_steps": 8, "minutes": None, "epochs": None}
    best = meta["best"]
    vals = [json.loads(x) for x in (tmp_path / "done" / "metrics.jsonl").read_text().splitlines()]
    nexts = {x["step"]: x["val_next"] for x in vals if x["kind"] == "val" and x["step"] > 0}
    assert best["metric"] == "val_next" and best["value"] == min(nexts.values()) and nexts[best["step"]] == best["value"]
    assert (tmp_path / "done" / "best.safetensors").is_file() and r.best == best

    stop = StopRequest()

    def request(step, rec):
        if step == 3:
            stop.requested, stop.reason = True, "SIGINT"

    r = _dyn(tmp_path / "stopped", train, on_step=request, stop=stop)
    meta = json.loads((tmp_path / "stopped" / "run.json").read_text())
    assert r.stopped == "SIGINT" and meta["status"] == "interrupted" and meta["reason"] == "SIGINT" and meta["step"] == 3
    assert torch.load(tmp_path / "stopped" / "model.state.pt", weights_only=True)["step"] == 3
    r = _dyn(tmp_path / "stopped", train.model_copy(update={"resume": True}))
    assert r.step == 8 and json.loads((tmp_path / "stopped" / "run.json").read_text())["status"] == "finished"


def test_a_failure_is_recorded_as_failed(tmp_path):
    train, _, _ = tiny_settings(max_steps=6)

    def boom(step, rec):
        if step == 2:
            raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError):
        _dyn(tmp_path / "run", train, on_step=boom)
    meta = json.loads((tmp_path / "run" / "run.json").read_text())
    assert meta["status"] == "failed" and "disk on fire" in meta["reason"]


def test_old_state_formats_are_refused_clearly(tmp_path):
    train, _, _ = tiny_settings(max_steps=2)
    _dyn(tmp_path / "run", train)
    state = torch.load(tmp_path / "run" / "model.state.pt", weights_only=True)
    del state["version"]
    torch.save(state, tmp_path / "run" / "model.state.pt")
    with pytest.raises(CheckpointError, match="older ahri"):
        _dyn(tmp_path / "run", train.model_copy(update={"resume": True, "max_steps": 4}))


# ---------------------------------------------------------------------------------------------- integrity
def _damage(path: Path) -> None:
    """Flip bytes in the tensor data, leaving the safetensors header intact."""
    raw = bytearray(path.read_bytes())
    header = 8 + int.from_bytes(raw[:8], "little")
    for i in range(header + 16, len(raw), 97):
        raw[i] ^= 0x5A
    path.write_bytes(bytes(raw))


def test_damaged_weights_are_refused_for_both_models(tmp_path, videos):
    from ahri_core.models.dynamics_io import load_dynamics_run
    from ahri_core.models.tokenizer import load_tokenizer

    train, _, _ = tiny_settings(max_steps=2)
    _dyn(tmp_path / "dyn", train)
    meta = json.loads((tmp_path / "dyn" / "run.json").read_text())
    assert set(meta["weights_sha256"]) >= {"model.safetensors"}
    load_dynamics_run(tmp_path / "dyn")  # sound
    _damage(tmp_path / "dyn" / "model.safetensors")
    with pytest.raises(CheckpointError, match="model.safetensors is damaged"):
        load_dynamics_run(tmp_path / "dyn")

    root, recs = videos
    train_tokenizer(tmp_path / "tok", recs, tiny_train(max_steps=2), cache_dir=root / "cache")
    load_tokenizer(tmp_path / "tok" / "model.safetensors")
    _damage(tmp_path / "tok" / "model.safetensors")
    with pytest.raises(CheckpointError, match="damaged"):
        load_tokenizer(tmp_path / "tok" / "model.safetensors")


def test_non_finite_weights_are_refused_without_a_run(tmp_path):
    m = torch.nn.Linear(2, 2)
    with torch.no_grad():
        m.weight[0, 0] = float("nan")
    save_weights(tmp_path / "w.safetensors", m, "test", {})
    with pytest.raises(CheckpointError, match="weight holds non-finite"):
        load_weights(tmp_path / "w.safetensors", torch.nn.Linear(2, 2))


def test_a_tokenizer_with_non_finite_output_is_refused_at_the_first_batch(tmp_path, videos):
    """Weights that load (finite) but make NaN latents: tokenize stops at once, naming the file, writes nothing."""
    from ahri_core.data.tokenize import tokenize_videos
    from ahri_core.models.tokenizer import load_tokenizer

    root, recs = videos
    train_tokenizer(tmp_path / "runs" / "tok", recs, tiny_train(max_steps=2), cache_dir=root / "cache")
    model, extra = load_tokenizer(tmp_path / "runs" / "tok" / "model.safetensors")
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1e30)  # overflows to inf inside the encoder
    loose = tmp_path / "huge.safetensors"
    save_weights(loose, model, "tokenizer", model.cfg.to_dict(), extra)
    with pytest.raises(CheckpointError, match="huge.safetensors produced non-finite latents"):
        tokenize_videos(loose, recs, tmp_path / "latents", precision="fp32")
    assert not list((tmp_path / "latents").rglob("*.safetensors"))


def test_dynamics_training_refuses_non_finite_latents(tmp_path):
    bad = LatentVideo("broken", torch.full((20, 4, 4), float("nan")).half())
    ls = make_latent_set([bad], [bad])
    from ahri_core.train.dynamics import train_dynamics

    train, dset, diff = tiny_settings(max_steps=2)
    with pytest.raises(DataError, match="broken.*non-finite"):
        train_dynamics(ls, tmp_path / "run", train, dset, diff)


# ---------------------------------------------------------------------------------------------- defaults
def test_default_dynamics_training_uses_shortcut_forcing():
    assert DiffusionSettings().shortcut is True
    assert TrainSettings().precision == "auto"
    assert TrainSettings().compile == "auto" and TrainSettings().fsdp is False and TrainSettings().grad_accum == 1
    assert DataSettings().val_fraction == 0.1
    assert TokenizerSettings().val_fraction == 0.1


# ---------------------------------------------------------------------------------------------- review fixes
def test_one_non_finite_loss_does_not_poison_the_loss_normaliser(tmp_path):
    """A single NaN or inf loss is skipped; the running RMS keeps its value and the run finishes."""
    from ahri_core.train.common import RunningRMS
    from ahri_core.train.objectives import dynamics as dyn

    rms = RunningRMS().train()
    rms(torch.tensor(2.0))
    for bad in (float("nan"), float("inf")):
        rms(torch.tensor(bad))
        assert float(rms.mean_sq) == 4.0 and int(rms.count) == 1
    orig = dyn.forcing_loss
    calls = {"n": 0}

    def once_bad(model, x, levels, noise, actions=None, normalizer=None, teacher=None, **kw):
        calls["n"] += 1
        if calls["n"] == 3:
            x = x * float("nan")  # the raw loss (and the normaliser's input) is NaN for this one step
        return orig(model, x, levels, noise, actions, normalizer, teacher=teacher, **kw)

    train, _, _ = tiny_settings(max_steps=6, checkpoint_every=100, max_bad_steps=2)
    dyn.forcing_loss = once_bad
    try:
        r = _dyn(tmp_path / "run", train)
    finally:
        dyn.forcing_loss = orig
    state = torch.load(tmp_path / "run" / "model.state.pt", weights_only=True)
    assert r.step == 6 and torch.isfinite(state["objective"]["normalizer"]["mean_sq"])
    assert json.loads((tmp_path / "run" / "run.json").read_text())["status"] == "finished"


def test_resume_refuses_a_changed_split(tmp_path):
    from dynamics_fixtures import clip

    from ahri_core.train.dynamics import train_dynamics

    train, dset, diff = tiny_settings(max_steps=2)
    train_dynamics(lset(), tmp_path / "run", train, dset, diff)
    other = make_latent_set([clip(0, 40), clip(100, 40)], [clip(1, 40)], action_count=3)
    with pytest.raises(ConfigError, match="train/val videos differ"):
        train_dynamics(other, tmp_path / "run", train.model_copy(update={"resume": True, "max_steps": 4}), dset, diff)


def test_a_failure_before_the_loop_is_recorded(tmp_path):
    from ahri_core.train.dynamics import train_dynamics

    train, _, diff = tiny_settings(max_steps=2)
    with pytest.raises(DataError):
        train_dynamics(lset(), tmp_path / "run", train, DataSettings(seq_len=64, stride=4), diff)  # clips have 40 frames
    meta = json.loads((tmp_path / "run" / "run.json").read_text())
    assert meta["status"] == "failed" and "DataError" in meta["reason"]


def test_resume_without_a_budget_uses_the_runs_latest_budget(tmp_path, monkeypatch):
    from ahri_cli import train_cmd

    run = tmp_path / "r"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"status": "interrupted", "settings": {"train": {"max_steps": 1000, "lr": 0.5}},
                                             "budget": {"max_steps": 3000, "minutes": None, "epochs": None}}))
    stored = json.loads((run / "run.json").read_text())["settings"]
    flags = {"max_steps": None, "minutes": None, "epochs": None, "lr": None}
    got = train_cmd._resume_budget(flags, stored, run)
    assert got["max_steps"] == 3000 and got["lr"] == 0.5
    got = train_cmd._resume_budget({**flags, "minutes": 5.0}, stored, run)
    assert got["max_steps"] is None and got["minutes"] == 5.0  # a budget given now replaces the run's

"""The dynamics training loop, its checkpoints and resume, and ``ahri train``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from dynamics_fixtures import clip, lset, tiny_settings
from safetensors.torch import load_file, save_file

from ahri_core.config.settings import DataSettings, DiffusionSettings, TrainSettings
from ahri_core.data.windows import make_latent_set
from ahri_core.errors import CheckpointError, ConfigError
from ahri_core.fileio import read_jsonl
from ahri_core.models.dynamics_io import load_dynamics_run as load_dynamics
from ahri_core.progress import RecordingProgress
from ahri_core.train.dynamics import train_dynamics


def test_tiny_model_overfits_a_short_clip(tmp_path: Path):
    c = clip(0, 24, speed=0.6)
    data = make_latent_set([c], [c], action_count=3)  # validate on the very clip
    train, dset, diff = tiny_settings(max_steps=120, batch_size=4, val_every=120, lr=1e-2, warmup_steps=10)
    diff = DiffusionSettings(single_image_fraction=0.0, context_fraction=0.5)
    r = train_dynamics(data, tmp_path / "run", train, dset, diff)
    assert r.step == 120
    first, last = r.first_val, r.val
    assert last["val_tau=0.1"] < 0.1 * first["val_tau=0.1"], (first, last)
    # one-step next-frame prediction from context beats copying the last frame on the clip it memorised
    assert last["val_next"] < 0.5 * last["val_copy_last"], last
    # held-out and training windows are the same clip here: the same windows and noise, no memorising gap
    assert last["val_train_next"] == pytest.approx(last["val_next"], rel=1e-6)
    assert last["val_memorising"] == pytest.approx(1.0, rel=1e-6)


def test_validation_reports_memorising_of_the_training_clip(tmp_path: Path):
    seen, new = clip(0, 24, speed=0.6), clip(7, 24, speed=0.6)  # another phase: video the model never saw
    data = make_latent_set([seen], [new], action_count=3)
    train, dset, _ = tiny_settings(max_steps=120, batch_size=4, val_every=120, lr=1e-2, warmup_steps=10)
    diff = DiffusionSettings(single_image_fraction=0.0, context_fraction=0.5)
    r = train_dynamics(data, tmp_path / "run", train, dset, diff)
    v = r.val
    assert v["val_memorising"] == pytest.approx(
        (v["val_next"] / v["val_copy_last"]) / (v["val_train_next"] / v["val_train_copy_last"]))
    assert v["val_memorising"] > 1.5, v  # one clip learnt by heart predicts itself far better than new video


def test_memorising_gap_arithmetic():
    from ahri_core.eval.metrics import memorising_gap

    assert memorising_gap(0.5, 1.0, 0.1, 1.0) == pytest.approx(5.0)
    assert memorising_gap(0.2, 0.4, 0.1, 0.2) == pytest.approx(1.0)  # both halve copy-last's error
    assert memorising_gap(0.5, 1.0, 0.0, 1.0) is None and memorising_gap(0.5, 0.0, 0.1, 1.0) is None


def test_metrics_run_info_and_load(tmp_path: Path):
    train, dset, diff = tiny_settings(max_steps=12, val_every=6, log_every=4, checkpoint_every=6)
    dset = DataSettings(alternating=True, seq_len_short=8, seq_len_long=16, batch_size_short=2,
                        batch_size_long=1, long_ratio=0.3, stride=4)
    diff = DiffusionSettings(shortcut=True, k_max=16)
    prog = RecordingProgress()
    train_dynamics(lset(), tmp_path / "run", train, dset, diff, progress=prog)
    recs = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    tr = [x for x in recs if x["kind"] == "train"]
    va = [x for x in recs if x["kind"] == "val"]
    assert [x["step"] for x in tr] == [4, 8, 12] and [x["step"] for x in va] == [0, 6, 12]
    for x in tr:
        for key in ("epoch", "step", "batch", "T", "B", "loss", "tau_min", "tau_max", "batches_per_s", "flow_loss",
                    "bootstrap_loss", "tokens_per_s", "lr"):
            assert key in x
        assert x["batch"] in ("S", "L") and x["T"] in (8, 16) and 0 <= x["tau_min"] <= x["tau_max"] <= 1
    assert {"val_tau=0.1", "val_tau=0.5", "val_tau=0.9", "val_next", "val_copy_last", "val_train_next",
            "val_train_copy_last", "val_memorising"} <= set(va[0])
    # the progress display carries the training log line (epoch, batch, loss, tau range, batches/s)
    shown = [e[2] for e in prog.events if e[0] == "advance" and "loss" in e[2]]
    assert shown and {"epoch", "batch", "loss", "tau", "batch/s"} <= set(shown[-1])
    meta = json.loads((tmp_path / "run" / "run.json").read_text())
    assert meta["stage"] == "dynamics" and meta["status"] == "finished" and meta["step"] == 12
    assert meta["settings"]["diffusion"]["shortcut"] is True and meta["max_frames"] == 16
    model, info = load_dynamics(tmp_path / "run")
    assert (info["k_max"], info["shortcut"], info["max_frames"]) == (16, True, 16)
    assert info["latents"]["tokens"] == 4 and not model.training
    assert model.config.action_kind == "discrete" and model.config.action_count == 3
    # the weights file alone rebuilds the model, and the sampler reads its traits from info
    from ahri_core.inference.sampler import traits_of

    t = traits_of(model, info)
    assert t.shortcut and t.k_max == 16 and t.max_frames == 16


def test_checkpoints_refuse_mismatched_configs(tmp_path: Path):
    train, dset, diff = tiny_settings(max_steps=3)
    train_dynamics(lset(), tmp_path / "run", train, dset, diff)
    # resuming with another model or objective is refused before any step
    with pytest.raises(ConfigError, match="preset"):
        train_dynamics(lset(), tmp_path / "run", train.model_copy(update={"preset": "cpu", "resume": True}), dset, diff)
    with pytest.raises(ConfigError, match="k_max"):
        train_dynamics(lset(), tmp_path / "run", train.model_copy(update={"resume": True}), dset,
                       DiffusionSettings(k_max=16))
    # a run that exists is not overwritten without --resume
    with pytest.raises(ConfigError, match="already exists"):
        train_dynamics(lset(), tmp_path / "run", train, dset, diff)
    # a weights file whose config does not match its tensors is refused
    w = tmp_path / "run" / "model.safetensors"
    from safetensors import safe_open

    with safe_open(str(w), framework="pt") as f:
        meta = f.metadata()
    cfg = json.loads(meta["config"])
    cfg["dim"] = 64
    bad = tmp_path / "bad.safetensors"
    save_file(load_file(str(w)), str(bad), metadata={**meta, "config": json.dumps(cfg)})
    with pytest.raises(CheckpointError):
        load_dynamics(bad)
    # and a file with a tensor missing
    tensors = load_file(str(w))
    tensors.pop(next(iter(tensors)))
    save_file(tensors, str(bad), metadata=meta)
    with pytest.raises(CheckpointError, match="lacks"):
        load_dynamics(bad)


KILL_SCRIPT = textwrap.dedent(
    """
    import os, signal, sys, torch
    sys.path.insert(0, {tests!r})
    torch.set_num_threads({threads})
    from dynamics_fixtures import lset, tiny_settings
    from ahri_core.config.settings import DiffusionSettings
    from ahri_core.train.dynamics import train_dynamics
    train, dset, _ = tiny_settings(max_steps=14, checkpoint_every=4, val_every=5, ema=0.9)
    diff = DiffusionSettings(shortcut=True, k_max=8)
    def on_step(step, rec):
        if step == 10:  # after the checkpoint at step 8: the steps 9-10 are lost and must be redone
            os.kill(os.getpid(), signal.SIGKILL)
    train_dynamics(lset(), {run!r}, train, dset, diff, on_step=on_step)
    """
)


def test_sigkill_and_resume_equals_uninterrupted(tmp_path: Path):
    train, dset, _ = tiny_settings(max_steps=14, checkpoint_every=4, val_every=5, ema=0.9)
    diff = DiffusionSettings(shortcut=True, k_max=8)
    ref = train_dynamics(lset(), tmp_path / "ref", train, dset, diff)
    script = KILL_SCRIPT.format(tests=str(Path(__file__).parent), threads=torch.get_num_threads(),
                                run=str(tmp_path / "killed"))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, timeout=300)
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]
    state = torch.load(tmp_path / "killed" / "model.state.pt", weights_only=True)
    assert state["step"] == 8
    resumed = train_dynamics(lset(), tmp_path / "killed", train.model_copy(update={"resume": True}), dset, diff)
    assert resumed.step == 14
    a, b = load_file(str(ref.weights)), load_file(str(resumed.weights))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"tensor {k} differs after kill-and-resume"
    ra = torch.load(ref.run_dir / "model.state.pt", weights_only=True)["model"]
    rb = torch.load(resumed.run_dir / "model.state.pt", weights_only=True)["model"]
    assert all(torch.equal(ra[k], rb[k]) for k in ra)
    # the records written after the step-8 checkpoint by the killed process are replaced, not repeated
    steps = [r["step"] for r in read_jsonl(resumed.run_dir / "metrics.jsonl") if r["kind"] == "train"]
    assert steps == sorted(set(steps)) and steps[-1] == 14


def _write_store(root: Path) -> Path:
    d = root / "latents" / "tok-test"
    d.mkdir(parents=True)
    vids = []
    for i, split in enumerate(["train", "train", "val"]):
        c = clip(i, 40)
        meta = {"fps": "20", "video_id": c.id, "tokenizer_id": "tok-test", "action_kind": "discrete",
                "action_count": "3"}
        save_file({"latents": c.latents, "actions": c.actions}, str(d / f"{c.id}.safetensors"), metadata=meta)
        vids.append({"id": c.id, "file": f"{c.id}.safetensors", "frames": 40, "split": split, "has_actions": True})
    (d / "index.json").write_text(json.dumps({"tokenizer_id": "tok-test", "tokens": 4, "channels": 4, "fps": 20,
                                              "frame_size": 64, "videos": vids}))
    return d


def _cli(args: list[str], ws: Path) -> int:
    from ahri_cli.main import main

    return main(["--workspace", str(ws), *args])


def test_cli_trains_on_the_newest_latent_set(tmp_path: Path, capsys):
    _write_store(tmp_path)
    rc = _cli(["train", "--preset", "tiny", "--run", "r1", "--max-steps", "6", "--shortcut", "--k-max", "8",
               "--alternating", "--seq-len-short", "8", "--seq-len-long", "16", "--batch-size-short", "2",
               "--batch-size-long", "1", "--long-ratio", "0.25", "--device", "cpu", "--log-every", "2"], tmp_path)
    assert rc == 0, capsys.readouterr().err
    run = tmp_path / "runs" / "r1"
    meta = json.loads((run / "run.json").read_text())
    assert meta["latents"]["path"].endswith("tok-test") and meta["tokenizer_id"] == "tok-test"
    assert meta["settings"]["data"]["long_ratio"] == 0.25
    # resume continues the run with its own settings, only the budget changes
    rc = _cli(["train", "--run", "r1", "--resume", "--max-steps", "8"], tmp_path)
    assert rc == 0, capsys.readouterr().err
    assert json.loads((run / "run.json").read_text())["step"] == 8


@pytest.mark.parametrize(
    "args, needle",
    [
        (["train", "--long-ratio", "0.5", "--max-steps", "2"], "--alternating"),
        (["train", "--alternating", "--long-ratio", "1.5", "--max-steps", "2"], "long_ratio"),
        (["train", "--k-max", "48", "--max-steps", "2"], "k_max"),
        (["train", "--step-sampling", "inverse", "--lr", "0", "--max-steps", "2"], "lr"),
        (["train", "--preset", "tiny"], "budget"),
        (["train", "--max-steps", "2", "--latents", "/nonexistent/latents"], "latent set"),
        (["train", "--alternating", "--batch-size", "4", "--max-steps", "2"], "--batch-size-short"),
        (["train", "--run", "nope", "--resume", "--max-steps", "2"], "resume"),
    ],
)
def test_cli_validation_errors_exit_2_with_one_line(tmp_path: Path, capsys, args, needle):
    rc = _cli(args, tmp_path)
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert len(err.splitlines()) == 1 and err.startswith("error:"), err
    assert needle in err


def test_cli_preset_unknown_is_a_config_error(tmp_path: Path, capsys):
    _write_store(tmp_path)
    rc = _cli(["train", "--preset", "huge", "--max-steps", "2"], tmp_path)
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "huge" in err and "preset" in err and "Traceback" not in err  # a usage error, choices listed


def test_preset_training_defaults_fill_only_what_was_not_given():
    from ahri_core.config.presets import TRAINING_PRESETS
    from ahri_core.train.common import with_preset_defaults

    rec = TRAINING_PRESETS["dynamics"]["cpu"]
    t = with_preset_defaults(TrainSettings(preset="cpu", max_steps=5))
    assert (t.lr, t.batch_size, t.ema) == (rec["lr"], rec["batch_size"], rec["ema"])
    tok = with_preset_defaults(TrainSettings(stage="tokenizer", preset="cpu", max_steps=5))
    assert tok.lr == TRAINING_PRESETS["tokenizer"]["cpu"]["lr"] != t.lr
    t = with_preset_defaults(TrainSettings(preset="cpu", max_steps=5, lr=5e-4, ema=0.0))
    assert t.lr == 5e-4 and t.ema == 0.0


def test_resume_keeps_the_runs_packing(tmp_path: Path):
    """A run keeps its packing on --resume, also when the preset would now pack differently."""
    many = make_latent_set([clip(i, 24, tokens=32, channels=2) for i in range(2)], [clip(9, 24, tokens=32, channels=2)],
                           action_count=3)
    train, dset, diff = tiny_settings(max_steps=2)
    first = train_dynamics(many, tmp_path / "run", train, dset, diff, model_overrides={"pack": 1})
    assert load_dynamics(first.weights)[0].config.pack == 1
    resumed = train_dynamics(many, tmp_path / "run", train.model_copy(update={"resume": True, "max_steps": 4}), dset, diff)
    assert resumed.step == 4 and load_dynamics(resumed.weights)[0].config.pack == 1
    # a new run of the same preset packs the 32 tokens into its budget of 16
    fresh = train_dynamics(many, tmp_path / "fresh", train, dset, diff)
    assert load_dynamics(fresh.weights)[0].config.pack == 2


def test_gradient_accumulation_takes_k_batches_per_step_and_resumes_exactly(tmp_path: Path):
    from safetensors.torch import load_file

    data = lset(n_train=3, frames=40)
    train, dset, diff = tiny_settings(max_steps=4, grad_accum=2, checkpoint_every=2)
    seen: list[int] = []
    res = train_dynamics(data, tmp_path / "straight", train, dset, diff, on_step=lambda s, r: seen.append(s))
    assert res.step == 4 and seen == [1, 2, 3, 4]
    state = torch.load(tmp_path / "straight" / "model.state.pt", weights_only=True)
    w = state["objective"]["windows"]
    from ahri_core.data.windows import WindowBatchSampler

    batches = len(WindowBatchSampler(data.train, (8, 4), None, 0.0, 4, seed=0))
    assert w["epoch"] * batches + w["position"] == 8  # 4 steps x 2 batches
    one, _, _ = tiny_settings(max_steps=4, grad_accum=1)
    plain = train_dynamics(data, tmp_path / "plain", one, dset, diff)
    a = load_file(tmp_path / "straight" / "model.safetensors")
    b = load_file(plain.weights)
    assert any(not torch.equal(a[k], b[k]) for k in a)  # accumulation changes the update
    # stopped after 2 steps and resumed: the same weights as straight through
    half, _, _ = tiny_settings(max_steps=2, grad_accum=2, checkpoint_every=2)
    train_dynamics(data, tmp_path / "resumed", half, dset, diff)
    more, _, _ = tiny_settings(max_steps=4, grad_accum=2, checkpoint_every=2, resume=True)
    train_dynamics(data, tmp_path / "resumed", more, dset, diff)
    c = load_file(tmp_path / "resumed" / "model.safetensors")
    assert all(torch.equal(a[k], c[k]) for k in a)


def test_cpu_preset_windows_are_the_demos_recipe():
    from ahri_core.config.settings import DemoSettings
    from ahri_core.train.common import with_preset_data, with_preset_defaults

    demo = DemoSettings()
    data = with_preset_data(DataSettings(alternating=True), "cpu")
    assert (data.seq_len_short, data.seq_len_long, data.batch_size_short, data.batch_size_long, data.stride,
            data.long_ratio) == (demo.seq_len_short, demo.seq_len_long, demo.batch_size_short, demo.batch_size_long,
                                 demo.stride, demo.long_ratio)
    train = with_preset_defaults(TrainSettings(preset="cpu"), "dynamics")
    assert (train.lr, train.ema) == (demo.dynamics_lr, demo.dynamics_ema)
    assert DiffusionSettings().single_image_fraction == demo.single_image_fraction
    # given values win; larger presets keep the 16 GB card's lengths
    assert with_preset_data(DataSettings(seq_len_short=24), "cpu").seq_len_short == 24
    small = with_preset_data(DataSettings(), "small")
    assert (small.seq_len_short, small.seq_len_long, small.batch_size_short, small.batch_size_long) == (32, 64, 2, 1)
    longer = with_preset_data(DataSettings(alternating=True, seq_len_short=40), "cpu")
    assert (longer.seq_len_short, longer.seq_len_long) == (40, 40)  # never a long batch shorter than the short

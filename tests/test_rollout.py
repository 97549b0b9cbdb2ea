"""ahri rollout: frames, size and fps of the written video, truth beside predictions, clear errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sampling_fakes import held_out, make_world

from ahri_cli.main import main
from ahri_core.errors import ConfigError, DataError
from ahri_core.inference.rollout import rollout_clip
from ahri_core.inference.world import latest_dynamics_run, load_world_model
from ahri_core.video import probe, read_frames, write_video
from ahri_core.visual import HEADER, Column, grid_video
from ahri_core.workspace import Workspace


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_world(tmp_path_factory.mktemp("rolloutws"), videos=2)


def test_rollout_writes_context_plus_horizon_frames_at_model_fps(world, tmp_path):
    ws, _, run = world
    wm = load_world_model(run, ws)
    clip = ws.videos / "game" / f"{held_out(world[1])[0]}.mp4"  # 40 frames: truth for the whole predicted span
    rep = rollout_clip(clip, wm, steps=2, context=5, horizon=7, out=tmp_path / "r.mp4", scale=2, precision="fp32")
    info = probe(tmp_path / "r.mp4")
    assert rep.frames_written == info.frames == 5 + 7
    assert info.fps == 20
    assert (info.height, info.width) == (HEADER + 2 * 32, 2 * 2 * 32)  # truth | prediction
    assert rep.compared == 7 and len(rep.psnr) == 7 and len(rep.copy_last_psnr) == 7
    assert rep.frames_per_s > 0


def test_rollout_without_truth_is_one_column_and_predicted_frames_are_marked(world, tmp_path):
    ws, _, run = world
    wm = load_world_model(run, ws)
    frames = read_frames(next((ws.videos / "game").glob("*.mp4")), fps=20, size=32)[:6]
    clip = tmp_path / "short.mp4"
    write_video(clip, frames, 20)
    rep = rollout_clip(clip, wm, steps=8, context=6, horizon=4, out=tmp_path / "o.mp4", scale=2, precision="fp32")
    out = read_frames(tmp_path / "o.mp4")
    assert out.shape == (10, HEADER + 64, 64, 3) and rep.compared == 0
    # the red border: strong red on the left edge of predicted frames only
    edge = out[:, HEADER + 10 : HEADER + 50, 0].astype(int)
    red = (edge[..., 0] > 180) & (edge[..., 1] < 100)
    assert red[6:].mean() > 0.9 and red[:6].mean() < 0.1


def test_clip_shorter_than_context_is_a_clear_error(world, tmp_path):
    ws, _, run = world
    wm = load_world_model(run, ws)
    clip = tmp_path / "tiny.mp4"
    write_video(clip, np.zeros((4, 32, 32, 3), np.uint8), 20)
    with pytest.raises(DataError, match=r"has 4 frames at 20 fps, fewer than --context 16"):
        rollout_clip(clip, wm, steps=2, context=16, horizon=4, out=tmp_path / "x.mp4")
    assert not (tmp_path / "x.mp4").exists()
    with pytest.raises(ConfigError, match="power of two"):
        rollout_clip(clip, wm, steps=3, context=2, horizon=4)


def test_latest_finished_dynamics_run_is_the_default(world, tmp_path):
    ws, _, run = world
    assert latest_dynamics_run(ws) == run
    meta = json.loads((run / "run.json").read_text())
    assert meta["stage"] == "dynamics" and (meta.get("status") == "finished" or meta.get("finished") is True)
    # a run that did not finish is never the default
    other = ws.run_dir("dyn-stopped")
    other.mkdir()
    (other / "model.safetensors").write_bytes((run / "model.safetensors").read_bytes())
    (other / "run.json").write_text(json.dumps({"stage": "dynamics", "status": "interrupted"}))
    try:
        assert latest_dynamics_run(ws) == run
    finally:
        import shutil

        shutil.rmtree(other)


def test_rollout_cli(world, tmp_path, capsys):
    ws, _, run = world
    out = tmp_path / "cli.mp4"
    clip = next((ws.videos / "game").glob("*.mp4"))
    rc = main(["-w", str(ws.root), "rollout", str(clip), "--steps", "4", "--context", "4", "--horizon", "3",
               "--out", str(out), "--scale", "1"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "frames/s" in text and str(out) in text.replace("\n", "")
    assert probe(out).frames == 7
    rc = main(["-w", str(ws.root), "rollout", str(clip), "--steps", "4", "--context", "400"])
    assert rc == 1
    assert "fewer than --context 400" in capsys.readouterr().err.replace("\n", " ")
    rc = main(["-w", str(tmp_path / "empty"), "rollout", str(clip)])
    assert rc == 2
    assert "no finished dynamics run" in capsys.readouterr().err.replace("\n", " ")


def test_grid_video_layout():
    a = np.zeros((3, 8, 8, 3), np.uint8)
    v = grid_video([Column("a", a, np.array([0, 1, 1], bool)), Column("b", a, None, marked=False)], scale=3)
    assert v.shape == (3, HEADER + 24, 48, 3)
    assert tuple(v[1, HEADER + 12, 0]) == (235, 45, 45)  # predicted: red border
    assert tuple(v[0, HEADER + 12, 0]) == (60, 190, 90)  # real: green border
    assert tuple(v[1, HEADER + 12, 24]) == (0, 0, 0)  # unmarked column


# ---------------------------------------------------------------------------------------------- precision
def _no_timing(*a, **k):
    raise AssertionError("precision must not be measured here")


def test_auto_precision_without_native_bf16_is_fp32_at_once(world, tmp_path, monkeypatch):
    import ahri_core.runtime as runtime

    ws, _, run = world
    wm = load_world_model(run, ws)
    monkeypatch.setattr(runtime, "native_bf16", lambda: (False, "test CPU without bf16"))
    monkeypatch.setattr(runtime, "time_step", _no_timing)
    clip = ws.videos / "game" / f"{held_out(world[1])[0]}.mp4"
    rep = rollout_clip(clip, wm, steps=2, context=4, horizon=2, out=tmp_path / "a.mp4", scale=1,
                       workspace=Workspace(tmp_path / "ws"))
    assert (rep.precision, rep.precision_reason) == ("fp32", "test CPU without bf16")
    assert rep.to_dict()["precision"] == "fp32"
    assert not (tmp_path / "ws" / "cache" / "precision.json").exists()  # nothing measured, nothing cached


def test_auto_precision_measures_the_model_step_caches_and_reuses_it(world, tmp_path, monkeypatch):
    import torch

    import ahri_core.runtime as runtime

    ws, _, run = world
    wm = load_world_model(run, ws)
    seen = []
    hook = wm.dynamics.register_forward_hook(
        lambda mod, args, out: seen.append((tuple(args[0].shape), torch.is_inference_mode_enabled(),
                                            torch.is_autocast_enabled("cpu")))
    )

    def fake_time_step(step, precisions=("fp32", "bf16"), budget_s=2.0):
        for p in precisions:
            step(p)  # the real step: one forward of the dynamics model
        return {"fp32": 0.010, "bf16": 0.004}

    monkeypatch.setattr(runtime, "native_bf16", lambda: (True, "test CPU with bf16"))
    monkeypatch.setattr(runtime, "time_step", fake_time_step)
    clip = ws.videos / "game" / f"{held_out(world[1])[0]}.mp4"
    other = Workspace(tmp_path / "ws")
    try:
        rep = rollout_clip(clip, wm, steps=2, context=4, horizon=2, out=tmp_path / "a.mp4", scale=1, workspace=other)
    finally:
        hook.remove()
    assert rep.precision == "bf16" and "2.50x faster" in rep.precision_reason
    dcfg = wm.dynamics.config
    # one forward per precision at the shape of a cached sampler call (batch 1; a new frame and the one it commits,
    # not the 5-frame window: a whole window favours bf16 where one-frame calls are slower in it), fp32 then bf16
    assert seen[:2] == [((1, 2, dcfg.tokens, dcfg.channels), True, False), ((1, 2, dcfg.tokens, dcfg.channels), True, True)]
    cache = json.loads((other.cache / "precision.json").read_text())
    (key, entry), = cache.items()
    assert entry["precision"] == "bf16" and entry["timings"] == {"fp32": 0.010, "bf16": 0.004}
    assert "batch 1x2" in json.loads(key)["model"]

    # the cached answer is used on the next call: no measurement
    monkeypatch.setattr(runtime, "time_step", _no_timing)
    again = rollout_clip(clip, wm, steps=2, context=4, horizon=2, out=tmp_path / "b.mp4", scale=1, workspace=other)
    assert again.precision == "bf16" and again.precision_reason == rep.precision_reason
    # a longer context is the same call shape (the cached answer); another batch is another measurement (here:
    # slower bf16, so fp32)
    longer = rollout_clip(clip, wm, steps=2, context=6, horizon=2, out=tmp_path / "c.mp4", scale=1, workspace=other)
    assert longer.precision == "bf16" and longer.precision_reason == rep.precision_reason
    monkeypatch.setattr(runtime, "time_step", lambda step, **k: {"fp32": 0.010, "bf16": 0.0095})
    eval_like = wm.choose_precision("auto", batch=8, frames=17, cache_dir=other.cache)
    assert eval_like.precision == "fp32" and "1.05x the fp32 speed" in eval_like.reason
    assert len(json.loads((other.cache / "precision.json").read_text())) == 2
    # a forced precision is taken as given
    forced = rollout_clip(clip, wm, steps=2, context=4, horizon=2, out=tmp_path / "d.mp4", scale=1, precision="fp32",
                          workspace=other)
    assert (forced.precision, forced.precision_reason) == ("fp32", "forced by --precision")


def test_world_model_sampler_refuses_unresolved_auto(world):
    ws, _, run = world
    wm = load_world_model(run, ws)
    assert wm.workspace == ws
    with pytest.raises(ConfigError, match="auto"):
        wm.sampler(2, 0.1, precision="auto")
    assert wm.sampler(2, 0.1, precision="bf16").precision == "bf16"


def test_a_dynamics_model_with_non_finite_output_is_refused_naming_its_file(world, tmp_path):
    """Weights that load (all finite) but overflow to inf/NaN: rollout and eval stop with the file's name,
    before anything is decoded or written."""
    import torch

    from ahri_core.config.settings import SamplingSettings
    from ahri_core.errors import CheckpointError
    from ahri_core.eval.evaluate import evaluate

    ws, lat_dir, run = world
    wm = load_world_model(run, ws)
    with torch.no_grad():
        for p in wm.dynamics.parameters():
            p.mul_(1e30)
    clip = ws.videos / "game" / f"{held_out(world[1])[0]}.mp4"
    with pytest.raises(CheckpointError, match="produced non-finite latents"):
        rollout_clip(clip, wm, steps=2, context=5, horizon=3, out=tmp_path / "r.mp4", precision="fp32")
    assert not (tmp_path / "r.mp4").exists()
    with pytest.raises(CheckpointError, match=str(wm.info.get("path") or run)):
        evaluate(wm, lat_dir, SamplingSettings(steps=[2], context=4, horizon=2, clips=2), out_dir=tmp_path / "ev",
                 workspace=ws, samples=0, precision="fp32", probes=False)

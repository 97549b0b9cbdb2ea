"""ahri rollout: frames, size and fps of the written video, truth beside predictions, clear errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sampling_fakes import held_out, make_world

from ahri_cli.main import main
from ahri_core.errors import ConfigError, DataError
from ahri_core.rollout import (
    HEADER,
    Column,
    grid_video,
    latest_dynamics_run,
    load_world_model,
    rollout_clip,
)
from ahri_core.video import probe, read_frames, write_video


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
    assert meta["stage"] == "dynamics" and meta["finished"] is True


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

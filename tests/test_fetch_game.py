"""``ahri fetch --source game``: the built-in game written through the store."""

from __future__ import annotations

import json

import numpy as np

from ahri_cli.main import main
from ahri_core import video
from ahri_core.sources import GAME_SEED_STRIDE, list_videos, record_game
from ahri_core.sources import game as game_mod


def test_record_game_stores_clips_with_actions(tmp_path):
    res = record_game(tmp_path, count=2, frames=12, size=64, seed=3)
    assert res.ok and [r.id for r in res.stored] == ["game-s3-0000", "game-s3-0001"]
    recs = list_videos(tmp_path)
    assert [r.id for r in recs] == ["game-s3-0000", "game-s3-0001"]
    for i, rec in enumerate(recs):
        clip = game_mod.render_clip(3 * GAME_SEED_STRIDE + i, 12, size=64)
        assert rec.meta["fps"] == game_mod.GAME_FPS and rec.meta["frames"] == 12
        assert (rec.meta["width"], rec.meta["height"]) == (64, 64)
        assert np.array_equal(rec.actions, clip.actions) and rec.actions[0] == -1
        assert rec.meta["action_meanings"] == list(game_mod.ACTION_MEANINGS)
        assert rec.meta["action_count"] == len(game_mod.ACTION_MEANINGS)
        decoded = video.read_frames(rec.path).astype(np.float64)
        mse = ((decoded - clip.frames.astype(np.float64)) ** 2).mean()
        assert 10 * np.log10(255**2 / mse) > 24  # the stored video is the rendered clip (yuv420p-limited)
    again = record_game(tmp_path, count=2, frames=12, size=64, seed=3)
    assert again.stored == [] and again.skipped == ["game-s3-0000", "game-s3-0001"]


def test_cli_game(tmp_path, capsys):
    ws = tmp_path / "ws"
    rc = main(
        ["--workspace", str(ws), "fetch", "--source", "game", "--clips", "2", "--frames", "8", "--seed", "1"]
    )
    err = capsys.readouterr().err
    assert rc == 0, err
    d = ws / "videos" / "game"
    assert sorted(p.name for p in d.glob("*.mp4")) == ["game-s1-0000.mp4", "game-s1-0001.mp4"]
    manifest = json.loads((d / "manifest.json").read_text())
    assert manifest["count"] == 2 and manifest["total_frames"] == 16
    assert all(v["actions_file"] for v in manifest["videos"])

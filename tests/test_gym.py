"""``ahri fetch --source gym``: Gymnasium/ALE recording with the project's action convention."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("gymnasium")
pytest.importorskip("ale_py")

from ahri_core import video  # noqa: E402
from ahri_core.sources.gym import StickyRandomPolicy, make_env, record_episode, record_gym  # noqa: E402
from ahri_core.sources.store import list_videos  # noqa: E402


def test_actions_align_with_frames():
    """actions[t] produced frame t: replaying actions[1:] from the same reset reproduces every frame."""
    env, fps, meanings = make_env("ALE/Pong-v5", 0)
    try:
        assert fps == 15.0 and meanings[:2] == ["NOOP", "FIRE"]
        policy = StickyRandomPolicy(env.action_space, np.random.default_rng(7))
        frames, actions = record_episode(env, policy, 40, seed=11)
        assert frames.shape == (40, 210, 160, 3) and actions.dtype == np.int64 and actions[0] == -1
        assert ((actions[1:] >= 0) & (actions[1:] < 6)).all()
        assert len(set(actions[1:].tolist())) > 1  # the policy does change its mind
        env.reset(seed=11)
        replay = [env.render()]
        for a in actions[1:]:
            env.step(int(a))
            replay.append(env.render())
        assert np.array_equal(np.stack(replay), frames)
    finally:
        env.close()


def test_record_gym_writes_clips(tmp_path):
    res = record_gym(tmp_path, "ALE/Pong-v5", count=2, frames=10, seed=0)
    assert res.ok and [r.id for r in res.stored] == ["ALE-Pong-v5-s0-0000", "ALE-Pong-v5-s0-0001"]
    recs = list_videos(tmp_path)
    for rec in recs:
        assert rec.meta["frames"] == 10 and rec.meta["fps"] == 15.0
        assert (rec.meta["width"], rec.meta["height"]) == (160, 210)
        assert rec.actions.shape == (10,) and rec.actions[0] == -1
        assert rec.meta["action_meanings"][0] == "NOOP" and rec.meta["action_count"] == 6
        assert video.read_frames(rec.path).shape == (10, 210, 160, 3)
    assert not np.array_equal(recs[0].actions, recs[1].actions)  # different seeds, different play
    small = record_gym(tmp_path / "s", "ALE/Pong-v5", count=1, frames=5, seed=2, size=64)
    assert small.stored[0].meta["width"] == 64 and small.stored[0].meta["height"] == 64
    again = record_gym(tmp_path, "ALE/Pong-v5", count=2, frames=10, seed=0)
    assert again.stored == [] and len(again.skipped) == 2  # deterministic per seed


def test_unknown_env_is_a_clear_error(tmp_path):
    from ahri_core.errors import FetchError

    with pytest.raises(FetchError, match="--env ALE/NoSuchGame-v5"):
        record_gym(tmp_path, "ALE/NoSuchGame-v5", count=1, frames=3)


def test_atari_keeps_its_rate_actions_and_whole_frame_through_tokenize(tmp_path):
    """A 15 fps, 210x160 Atari clip: the tokenizer's frame follows its aspect, the latents keep 15 fps (no
    repeated frames) and every recorded action, and the picture box is the whole game screen."""
    import json

    from ahri_cli.main import main

    ws = tmp_path / "ws"
    W = ["-w", str(ws)]
    assert main([*W, "fetch", "--source", "gym", "--env", "ALE/Pong-v5", "--clips", "2", "--frames", "12"]) == 0
    assert main([*W, "train", "--stage", "tokenizer", "--preset", "cpu", "--run", "tok", "--max-steps", "1",
                 "--precision", "fp32"]) == 0
    assert main([*W, "tokenize", "--tokenizer", "tok", "--precision", "fp32"]) == 0
    idx = json.loads((ws / "latents" / "tok" / "index.json").read_text())
    assert idx["frame_size"] == "72x56" and idx["fps"] == 15 and idx["tokenizer_fps"] == 20
    assert idx["action_meanings"][:2] == ["NOOP", "FIRE"]
    from ahri_core.data.latents import LatentStore

    store = LatentStore(ws / "latents" / "tok")
    for rec in list_videos(ws / "videos"):
        lat, act = store.load(rec.id)
        assert lat.shape == (12, 63, 12) and np.array_equal(act.numpy(), rec.actions)
        assert store.entry(rec.id)["content_box"] == list(video.content_box((160, 210), (72, 56), "pad"))

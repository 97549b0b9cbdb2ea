"""Frame rates of real footage: never above the source, actions carried over by rule, one rate per latent set."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ahri_cli.main import main
from ahri_core.checkpoint import save_weights
from ahri_core.data.frame_cache import default_decoder
from ahri_core.data.frames import load_frame_data
from ahri_core.data.latents import LatentStore, read_latent_file
from ahri_core.data.tokenize import tokenize_videos
from ahri_core.data.videos import VideoRef, resample_actions
from ahri_core.data.windows import load_latent_set
from ahri_core.errors import DataError
from ahri_core.models.tokenizer import build_tokenizer
from ahri_core.sources.game import ACTION_MEANINGS, render_clip
from ahri_core.sources.store import list_videos, store_frames
from ahri_core.video import capped_fps, read_frames, resampled_count, same_rate, source_indices
from tests.video_fixtures import decode_index, encode, index_frame


def _tokenizer_run(root, name="tok", **overrides):
    torch.manual_seed(0)
    m = build_tokenizer("tiny", **overrides)
    run = root / "runs" / name
    run.mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({"stage": "tokenizer"}))
    save_weights(run / "model.safetensors", m, "tokenizer", m.cfg.to_dict(), {"val_fraction": 0.0})
    return name


def _game_clip(dest, vid, fps, frames=16, seed=0):
    c = render_clip(seed, frames, 32)
    return store_frames(dest, vid, c.frames, fps, {"source": "game", "origin": f"test:{vid}"}, actions=c.actions,
                        action_meanings=ACTION_MEANINGS)


# ---------------------------------------------------------------------------------------------- the rule
def test_rate_is_never_above_the_source():
    assert capped_fps(20, 15) == 15 and capped_fps(20, 30) == 20 and capped_fps(20, 60) == 20
    assert capped_fps(30, 29.97003) == pytest.approx(29.97003)  # no frame repeated every 1000
    assert capped_fps(20, None) == 20 and capped_fps(20, 0) == 20  # unknown source rate
    assert same_rate(29.97003, 30) and same_rate(59.94006, 60) and not same_rate(25, 30)


@pytest.mark.parametrize("fps", [15, 20, 7.5, 24, 30])
def test_source_indices_are_the_frames_iter_frames_keeps(tmp_path, fps):
    clip = encode(tmp_path / "i.mp4", [index_frame(i, 64, 64, 8) for i in range(45)], 30)
    frames = read_frames(clip, fps=fps)
    assert len(frames) == resampled_count(45, 30, fps)
    assert [decode_index(f) for f in frames] == source_indices(len(frames), 30, fps).tolist()


def test_resample_actions_discrete_and_continuous_rules():
    disc = np.array([-1, 3, 1, 4, 1, 5, 9, 2, 6], np.int64)
    # equal rates: unchanged
    assert np.array_equal(resample_actions(disc, 30, 30, 9), disc)
    # 30 -> 20 keeps source frames 0, 1, 3, 4, 6, 7: the action that produced each kept frame
    assert source_indices(6, 30, 20).tolist() == [0, 1, 3, 4, 6, 7]
    assert resample_actions(disc, 30, 20, 6).tolist() == [-1, 3, 4, 1, 9, 2]
    # more frames than actions: "no action"; a repeated frame (no source frame since): "no action"
    assert resample_actions(disc, 30, 15, 6).tolist() == [-1, 1, 1, 9, 6, -1]
    assert resample_actions(disc[:3], 10, 20, 4).tolist() == [-1, -1, 3, -1]

    cont = np.array([[np.nan, np.nan], [1, 10], [3, 30], [np.nan, np.nan], [5, 50], [7, 70], [8, 80]], np.float32)
    got = resample_actions(cont, 30, 20, 5)  # kept source frames 0, 1, 3, 4, 6
    want = np.array([[np.nan, np.nan], [1, 10], [3, 30], [5, 50], [7.5, 75]], np.float32)
    assert got.dtype == np.float32 and np.allclose(got, want, equal_nan=True)  # frame 3: mean of 2 and 3 (NaN left out)
    got = resample_actions(cont, 30, 15, 4)  # kept 0, 2, 4, 6: means of (1, 2), (3, 4), (5, 6)
    want = np.array([[np.nan, np.nan], [2, 20], [5, 50], [7.5, 75]], np.float32)
    assert np.allclose(got, want, equal_nan=True)
    only_none = np.full((4, 1), np.nan, np.float32)
    assert np.isnan(resample_actions(only_none, 30, 15, 2)).all()


# ---------------------------------------------------------------------------------------------- tokenize
def test_slow_clip_keeps_its_rate_and_all_its_actions(tmp_path):
    """A 15 fps clip with discrete actions, tokenized by a 20 fps tokenizer: 15 fps, every frame, every action."""
    rec = _game_clip(tmp_path / "videos" / "atari", "pong15", 15, frames=16)
    tid = _tokenizer_run(tmp_path)
    res = tokenize_videos(tid, [rec], tmp_path / "latents", runs_dir=tmp_path / "runs")
    assert res.ok and res.written == ["pong15"] and res.frames == 16  # 16 frames, none repeated (20 fps: 21)
    assert res.slow == {"pong15": 15.0}
    assert [n for n in res.notes if "own rate" in n] == [
        "1 video(s) slower than 20 fps are read at their own rate: pong15 (15 fps)"]
    lat, act, meta = read_latent_file(tmp_path / "latents" / tid / "pong15.safetensors")
    assert meta["fps"] == "15" and lat.shape[0] == 16
    assert meta["action_kind"] == "discrete" and torch.equal(act, torch.from_numpy(rec.actions))
    index = json.loads((tmp_path / "latents" / tid / "index.json").read_text())
    assert index["fps"] == 15 and index["tokenizer_fps"] == 20 and index["videos"][0]["fps"] == 15
    ls = load_latent_set(tmp_path / "latents" / tid)
    assert ls.fps == 15 and ls.action_kind == "discrete" and torch.equal(ls.train[0].actions, act)
    again = tokenize_videos(tid, [rec], tmp_path / "latents", runs_dir=tmp_path / "runs")
    assert again.skipped == ["pong15"]
    # a file written at another rate (an older ahri upsampled to 20 fps) is stale and written again
    path = tmp_path / "latents" / tid / "pong15.safetensors"
    from ahri_core.data.latents import write_latent_file

    write_latent_file(path, lat, act, {**meta, "fps": "20"})
    assert tokenize_videos(tid, [rec], tmp_path / "latents", runs_dir=tmp_path / "runs").written == ["pong15"]


def test_downsampled_clip_keeps_frames_by_timestamp_and_actions_by_rule(tmp_path):
    """30 fps clips read by a 15 fps tokenizer keep source frames 0, 2, 4, ...; discrete actions: the one that
    produced each kept frame; continuous: the mean since the previous kept frame."""
    store = tmp_path / "videos" / "rec"
    frames = np.stack([index_frame(i, 64, 64, 8) for i in range(24)])
    disc = np.array([-1] + [(i * 7) % 5 for i in range(1, 24)], np.int64)
    cont = np.stack([np.full(2, np.nan)] + [np.array([i, -2.0 * i]) for i in range(1, 24)]).astype(np.float32)
    store_frames(store, "disc", frames, 30, {"source": "gym", "origin": "t:d"}, actions=disc,
                 action_meanings=[f"a{i}" for i in range(5)])
    store_frames(store, "cont", frames, 30, {"source": "gym", "origin": "t:c"}, actions=cont)
    recs = {r.id: r for r in list_videos(store)}
    tid = _tokenizer_run(tmp_path, fps=15)
    seen: dict[str, list[int]] = {}

    def watching(path, fps, size):
        for f in default_decoder(path, fps, size):
            seen.setdefault(path.stem, []).append(decode_index(f))
            yield f

    res = tokenize_videos(tid, list(recs.values()), tmp_path / "latents", runs_dir=tmp_path / "runs",
                          decoder=watching)
    assert res.ok
    assert seen == {"disc": list(range(0, 24, 2)), "cont": list(range(0, 24, 2))}  # by timestamp: k / 15 s
    _, a, meta = read_latent_file(tmp_path / "latents" / tid / "disc.safetensors")
    assert meta["fps"] == "15" and a.tolist() == disc[0::2].tolist()
    _, c, meta = read_latent_file(tmp_path / "latents" / tid / "cont.safetensors")
    want = np.concatenate([cont[:1], (cont[1:-1:2] + cont[2::2]) / 2])  # frame 2k: mean of 2k-1 and 2k
    assert meta["action_kind"] == "continuous" and np.allclose(c.numpy(), want, equal_nan=True)
    assert torch.isnan(c[0]).all() and not torch.isnan(c[1:]).any()


def test_a_set_of_two_rates_is_refused_naming_them(tmp_path):
    _game_clip(tmp_path / "videos" / "game", "fast", 20, frames=16, seed=1)
    _game_clip(tmp_path / "videos" / "atari", "slow", 15, frames=16, seed=2)
    tid = _tokenizer_run(tmp_path)
    res = tokenize_videos(tid, list_videos(tmp_path / "videos"), tmp_path / "latents", runs_dir=tmp_path / "runs")
    assert res.ok
    index = json.loads((tmp_path / "latents" / tid / "index.json").read_text())
    assert index["fps"] is None and {v["id"]: v["fps"] for v in index["videos"]} == {"fast": 20, "slow": 15}
    with pytest.raises(DataError) as e:
        load_latent_set(tmp_path / "latents" / tid)
    msg = str(e.value)
    assert "20 fps: fast" in msg and "15 fps: slow" in msg and "--fps 15" in msg and "\n" not in msg
    with pytest.raises(DataError, match="15 fps: slow"):
        _ = LatentStore(tmp_path / "latents" / tid).fps
    code = main(["-w", str(tmp_path), "train", "--latents", str(tmp_path / "latents" / tid), "--preset", "tiny",
                 "--max-steps", "1", "--device", "cpu"])
    assert code == 1


# ---------------------------------------------------------------------------------------------- tokenizer training
def test_tokenizer_training_reads_each_video_at_most_at_its_own_rate(tmp_path):
    slow = _game_clip(tmp_path / "v", "slow", 10, frames=12, seed=3)
    fast = _game_clip(tmp_path / "v", "fast", 20, frames=12, seed=4)
    data = load_frame_data([slow, fast], 15, 32, tmp_path / "cache", val_fraction=0.0)
    assert data.rates == {"slow": 10, "fast": 15}
    assert dict(zip(data.train.ids, data.train.counts, strict=True)) == {"slow": 12, "fast": 9}
    assert sorted(p.name.split("-", 1)[1] for p in (tmp_path / "cache" / "frames").iterdir()) == [
        "10fps-32x32-pad.npy", "15fps-32x32-pad.npy"]
    # a bare file (no sidecar) is probed for its rate
    bare = VideoRef(path=slow.path, id="bare")
    assert bare.source_fps == pytest.approx(10)


def test_rollout_reads_clip_actions_at_the_models_rate(tmp_path):
    """A 20 fps clip with actions, rolled out by a model trained at 10 fps: its actions are carried over by the
    discrete rule (the action in force at each kept frame), not dropped."""
    from ahri_core.inference.rollout import load_clip_actions

    rec = _game_clip(tmp_path / "videos", "fast", 20, frames=16)
    path = next((tmp_path / "videos").glob("fast*.mp4"))
    same = load_clip_actions(path, 20)
    assert np.array_equal(same, rec.actions)
    half = load_clip_actions(path, 10, count=8)
    assert half.tolist() == resample_actions(rec.actions, 20, 10, 8).tolist()
    assert half[1:].tolist() == np.asarray(rec.actions)[2::2][:7].tolist()

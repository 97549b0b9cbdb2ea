"""Windows of latents and the alternating-length batch sampler."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from ahri_core.data.windows import (
    LONG,
    SHORT,
    LatentVideo,
    WindowBatchSampler,
    load_latent_set,
    make_latent_set,
    make_loader,
    resolve_latents,
    validation_windows,
    window_starts,
    windows,
)
from ahri_core.errors import ConfigError, DataError


def video(i: int, frames: int, tokens: int = 2, channels: int = 3, actions: bool = True) -> LatentVideo:
    # frame f of video i holds the value 1000 * i + f everywhere: the source of every frame is readable
    lat = (1000.0 * i + torch.arange(frames, dtype=torch.float32))[:, None, None].expand(frames, tokens, channels)
    act = (torch.arange(frames) % 5).long() if actions else None
    if act is not None:
        act[0] = -1
    return LatentVideo(f"v{i}", lat.clone().to(torch.float32), act)


def test_window_starts_stride_and_overlap():
    assert window_starts(40, 16, 8) == [0, 8, 16, 24]
    assert window_starts(15, 16, 8) == []
    assert window_starts(16, 16, 8) == [0]
    ws = windows([video(0, 40), video(1, 33)], 16, 8)
    assert [(v, s) for v, s, _ in ws] == [(0, 0), (0, 8), (0, 16), (0, 24), (1, 0), (1, 8), (1, 16)]
    # consecutive windows of one video overlap by length - stride frames
    assert all(b[1] - a[1] == 8 for a, b in zip(ws, ws[1:]) if a[0] == b[0])


def test_windows_never_cross_videos():
    vids = [video(0, 37), video(1, 20), video(2, 64)]
    loader, _ = make_loader(vids, (16, 3), (32, 1), 0.3, stride=5, seed=0)
    seen = 0
    for batch in loader:
        for item in batch.latents:
            vals = item[:, 0, 0]
            src = (vals // 1000).long()
            assert (src == src[0]).all(), "a window mixes frames of two videos"
            assert torch.equal(vals - vals[0], torch.arange(len(vals), dtype=vals.dtype)), "frames are consecutive"
            seen += 1
    assert seen > 0


def test_actions_travel_with_their_frames():
    vids = [video(0, 40), video(1, 40, actions=False)]
    ls = make_latent_set(vids, action_count=5)
    assert ls.action_kind == "discrete" and ls.action_count == 5
    loader, _ = make_loader(vids, (8, 4), stride=4, seed=1, action_kind="discrete")
    for batch in loader:
        assert batch.actions.shape == batch.latents.shape[:2] and batch.actions.dtype == torch.long
        for lat, act, (vi, _start) in zip(batch.latents, batch.actions, batch.keys):
            frames = (lat[:, 0, 0] % 1000).long()
            if vi == 0:
                expected = frames % 5
                expected[frames == 0] = -1
                assert torch.equal(act, expected)
            else:
                assert (act == -1).all(), "a video without actions reads as 'no action'"


@pytest.mark.parametrize("ratio", [0.1, 0.5])
def test_alternating_sampler_lengths_sizes_and_ratio(ratio):
    vids = [video(i, 200) for i in range(6)]
    loader, sampler = make_loader(vids, (32, 2), (64, 1), ratio, stride=8, seed=3)
    kinds = []
    for epoch in range(4):
        sampler.set_position(epoch)
        for batch in loader:  # one loader for both lengths
            if batch.kind == SHORT:
                assert batch.latents.shape[:2] == (2, 32)
            else:
                assert batch.kind == LONG and batch.latents.shape[:2] == (1, 64)
            kinds.append(batch.kind)
    frac = kinds.count(LONG) / len(kinds)
    n = len(kinds)
    assert abs(frac - ratio) < 3 * (ratio * (1 - ratio) / n) ** 0.5 + 0.01
    # long and short batches are interleaved, not grouped at the end
    first_half = kinds[: n // 2]
    assert 0 < first_half.count(LONG) < len(first_half)


def test_sampler_is_deterministic_and_resumes_at_a_position():
    vids = [video(i, 120) for i in range(3)]
    a = WindowBatchSampler(vids, (16, 2), (32, 1), 0.2, stride=8, seed=7)
    b = WindowBatchSampler(vids, (16, 2), (32, 1), 0.2, stride=8, seed=7)
    assert a.plan(0) == b.plan(0)
    assert a.plan(0) != a.plan(1), "each epoch is reshuffled"
    assert WindowBatchSampler(vids, (16, 2), (32, 1), 0.2, stride=8, seed=8).plan(0) != a.plan(0)
    full = list(a)
    b.set_position(0, 5)
    assert list(b) == full[5:]
    assert len(full) == len(a)
    # every short window appears once per epoch
    shorts = [k for batch in full for k in batch if k[2] == 16]
    assert len(shorts) == len(set(shorts)) == (len(a.short_windows) // 2) * 2


def test_sampler_only_long_and_errors():
    vids = [video(0, 100)]
    s = WindowBatchSampler(vids, (16, 2), (64, 1), 1.0, stride=8)
    assert all(len(b) == 1 and b[0][2] == 64 for b in s)
    with pytest.raises(DataError, match="long"):
        WindowBatchSampler([video(0, 40)], (16, 2), (64, 1), 0.1, stride=8)
    with pytest.raises(DataError, match="seq-len"):
        WindowBatchSampler([video(0, 10)], (16, 2), None, 0.0, stride=8)


def test_validation_windows_fixed_and_spread():
    vids = [video(i, 100) for i in range(4)]
    v1 = validation_windows(vids, 16, 8, max_windows=10)
    assert v1 == validation_windows(vids, 16, 8, max_windows=10) and len(v1) == 10
    assert {k[0] for k in v1} == {0, 1, 2, 3}


def _write_store(root: Path, name: str = "tok-a", n: int = 3) -> Path:
    d = root / name
    d.mkdir(parents=True)
    vids = []
    for i in range(n):
        lat = torch.randn(30 + i, 4, 2).half()
        act = torch.randint(-1, 6, (30 + i,))
        meta = {"fps": "20", "video_id": f"g{i}", "source": "game", "tokenizer_id": name, "action_kind": "discrete",
                "action_count": "6", "action_meanings": json.dumps(list("abcdef"))}
        save_file({"latents": lat, "actions": act}, str(d / f"g{i}.safetensors"), metadata=meta)
        vids.append({"id": f"g{i}", "file": f"g{i}.safetensors", "frames": 30 + i,
                     "split": "val" if i == n - 1 else "train", "has_actions": True})
    index = {"tokenizer_id": name, "tokens": 4, "channels": 2, "fps": 20, "frame_size": 64, "videos": vids}
    (d / "index.json").write_text(json.dumps(index))
    return d


def test_load_latent_set_from_store_split_by_video(tmp_path: Path):
    d = _write_store(tmp_path / "latents")
    ls = load_latent_set(d)
    assert [v.id for v in ls.train] == ["g0", "g1"] and [v.id for v in ls.val] == ["g2"]
    assert (ls.tokens, ls.channels) == (4, 2)
    assert ls.action_kind == "discrete" and ls.action_count == 6
    assert ls.train[1].latents.shape == (31, 4, 2)
    assert resolve_latents(None, tmp_path / "latents") == d
    with pytest.raises(ConfigError, match="tokenize"):
        resolve_latents(None, tmp_path / "nothing")


def test_load_latent_set_val_fraction_resplits_with_the_tokenize_rule(tmp_path: Path):
    from ahri_core.data.split import split_videos

    d = _write_store(tmp_path / "latents", n=6)
    ids = [f"g{i}" for i in range(6)]
    index_before = (d / "index.json").read_text()
    # None keeps the index's split (g5 held out there)
    kept = load_latent_set(d, val_fraction=None)
    assert [v.id for v in kept.val] == ["g5"]
    for frac in (0.3, 0.5, 0.9):
        want = split_videos(ids, frac)
        ls = load_latent_set(d, val_fraction=frac)
        assert [v.id for v in ls.val] == [i for i in ids if want[i] == "val"]
        assert [v.id for v in ls.train] == [i for i in ids if want[i] == "train"]
        assert ls.train and ls.val  # two or more videos: both splits hold one
    # the re-split differs from the index's for some fraction (otherwise this test shows nothing)
    assert any([v.id for v in load_latent_set(d, val_fraction=f).val] != ["g5"] for f in (0.3, 0.5, 0.9))
    # 0 holds nothing out; the latents and actions travel with their video whatever its split
    zero = load_latent_set(d, val_fraction=0.0)
    assert [v.id for v in zero.train] == ids and zero.val == []
    assert zero.train[5].latents.shape == (35, 4, 2) and zero.train[5].actions.shape == (35,)
    assert (d / "index.json").read_text() == index_before  # the index is not rewritten
    with pytest.raises(ConfigError, match="val_fraction"):
        load_latent_set(d, val_fraction=1.0)


def test_load_latent_set_resplit_of_a_lone_video_trains_on_it(tmp_path: Path):
    from ahri_core.data.split import _unit_hash

    d = _write_store(tmp_path / "latents", n=1)
    index = json.loads((d / "index.json").read_text())
    assert index["videos"][0]["split"] == "val"  # the helper holds out its last (here only) video
    with pytest.raises(DataError, match="no training videos"):
        load_latent_set(d)
    assert _unit_hash("g0") < 0.99  # by its hash alone g0 would be held out at this fraction
    ls = load_latent_set(d, val_fraction=0.99)
    assert [v.id for v in ls.train] == ["g0"] and ls.val == []

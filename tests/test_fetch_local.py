"""``ahri fetch --source local``, the store's sidecars/manifest/actions, and ``list_videos``."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ahri_cli.main import main
from ahri_core.errors import DataError
from ahri_core.fileio import sha256_file
from ahri_core.sources import list_videos
from ahri_core.sources.local import import_local
from ahri_core.sources.store import store_frames, validate_actions
from tests.video_fixtures import encode, index_frame, noise_clip, small_clip


@pytest.fixture
def folder(tmp_path):
    src = tmp_path / "incoming"
    (src / "sub").mkdir(parents=True)
    small_clip(src / "one.mp4", frames=12)
    encode(src / "sub" / "two.mkv", (index_frame(i, 64, 96, 8) for i in range(20)), 25, fmt="matroska")
    acts = np.array([-1, 1, 1, 0, 2, 2, 2, 1, 0, 0, 1, 2], np.int64)
    np.save(src / "one.actions.npy", acts)
    (src / "one.json").write_text(json.dumps({"title": "First clip", "action_meanings": ["a", "b", "c"]}))
    (src / "notes.txt").write_text("not a video, not even looked at")
    (src / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 500)
    big = noise_clip(tmp_path / "big.mp4", frames=60, options={"movflags": "+faststart"})
    (src / "cut.mp4").write_bytes(big.read_bytes()[: big.stat().st_size // 2])
    (src / ".hidden.mp4").write_bytes(b"ignored")
    return src, acts


def test_import_local(folder, tmp_path):
    src, acts = folder
    dest = tmp_path / "store"
    res = import_local(src, dest)
    assert sorted(r.id for r in res.stored) == ["one", "two"]
    failed = {what.rsplit("/", 1)[-1]: why for what, why in res.failed}
    assert sorted(failed) == ["broken.mp4", "cut.mp4"]
    assert "frame" in failed["cut.mp4"]  # the damage is located
    assert sorted(p.name for p in dest.iterdir()) == [
        "manifest.json",
        "one.actions.npy",
        "one.json",
        "one.mp4",
        "two.json",
        "two.mp4",
    ]
    recs = {r.id: r for r in list_videos(dest)}
    one, two = recs["one"], recs["two"]
    assert one.meta["title"] == "First clip" and one.meta["source"] == "local"
    assert one.meta["source_url"].startswith("file://") and one.meta["frames"] == 12
    assert np.array_equal(one.actions, acts) and one.actions.dtype == np.int64
    assert one.meta["action_meanings"] == ["a", "b", "c"] and one.meta["action_kind"] == "discrete"
    assert two.actions is None and two.meta["frames"] == 20 and two.meta["fps"] == 25.0
    assert two.path.suffix == ".mp4" and two.meta["sha256"] == sha256_file(two.path)
    # second run: everything already there
    again = import_local(src, dest)
    assert again.stored == [] and sorted(again.skipped) == ["one", "two"]


def test_same_name_other_content_gets_its_own_id(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    small_clip(a / "clip.mp4", seed=1)
    small_clip(b / "clip.mp4", seed=2)
    dest = tmp_path / "store"
    import_local(a, dest)
    res = import_local(b, dest)
    assert len(res.stored) == 1 and res.stored[0].id.startswith("clip-")
    assert len(list_videos(dest)) == 2


def test_cli_local(folder, tmp_path, capsys):
    src, _ = folder
    ws = tmp_path / "ws"
    rc = main(["--workspace", str(ws), "fetch", "--source", "local", "--path", str(src)])
    captured = capsys.readouterr()
    assert rc == 1  # two files were refused
    assert "broken.mp4" in captured.err and "2 stored" in captured.err
    assert sorted(p.name for p in (ws / "videos" / "local").glob("*.mp4")) == ["one.mp4", "two.mp4"]
    rc = main(["--workspace", str(ws), "fetch", "--source", "local", "--path", str(src / "one.mp4")])
    assert rc == 0 and "1 already stored" in capsys.readouterr().err
    rc = main(["--workspace", str(ws), "fetch", "--source", "local"])
    assert rc == 2 and "--path" in capsys.readouterr().err


def test_list_videos_whole_tree_and_bare_files(tmp_path):
    frames = np.stack([index_frame(i, 32, 32, 4) for i in range(6)])
    acts = np.array([-1, 0, 1, 1, 0, 1])
    store_frames(
        tmp_path / "videos" / "game",
        "g1",
        frames,
        20,
        {"title": "g"},
        actions=acts,
        action_meanings=["x", "y"],
    )
    small_clip(tmp_path / "videos" / "loose" / "plain.mp4")
    recs = list_videos(tmp_path / "videos")
    assert [r.id for r in recs] == ["g1", "plain"]
    assert recs[0].actions.tolist() == acts.tolist() and recs[0].fps == 20.0 and recs[0].frames == 6
    assert recs[1].meta == {"id": "plain", "file": "plain.mp4"} and recs[1].actions is None
    # a damaged actions file is an error, not a silent None
    (tmp_path / "videos" / "game" / "g1.actions.npy").write_bytes(b"junk")
    with pytest.raises(DataError, match="g1.actions.npy"):
        list_videos(tmp_path / "videos")


def test_actions_convention_is_enforced(tmp_path):
    frames = np.zeros((4, 16, 16, 3), np.uint8)
    with pytest.raises(DataError, match=r"actions\[0\] must be -1"):
        validate_actions(np.array([0, 1, 1, 1]), 4, 2, "x")
    with pytest.raises(DataError, match="3 actions for 4 frames"):
        validate_actions(np.array([-1, 1, 1]), 4, 2, "x")
    with pytest.raises(DataError, match="outside"):
        validate_actions(np.array([-1, 1, 5, 1]), 4, 2, "x")
    cont = np.zeros((4, 2), np.float32)
    with pytest.raises(DataError, match="NaN"):
        validate_actions(cont, 4, None, "x")
    cont[0] = np.nan
    arr, kind = validate_actions(cont, 4, None, "x")
    assert kind == "continuous" and arr.dtype == np.float32
    rec = store_frames(tmp_path, "c", frames, 10, {}, actions=cont)
    assert rec.meta["action_kind"] == "continuous" and rec.meta["action_count"] == 2
    assert np.isnan(list_videos(tmp_path)[0].actions[0]).all()
    with pytest.raises(DataError):  # a bad actions array leaves nothing behind
        store_frames(tmp_path, "bad", frames, 10, {}, actions=np.array([3, 1, 1, 1]))
    assert not any(p.name.startswith("bad") for p in tmp_path.iterdir())

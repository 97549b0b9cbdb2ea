"""Held-out videos chosen by the user (--val-videos, --split FILE) and the record of how a split was made."""

from __future__ import annotations

import json

import pytest

from ahri_cli.main import main
from ahri_core.checkpoint import read_metadata
from ahri_core.data.split import SplitRule, split_videos
from ahri_core.data.tokenize import tokenize_videos
from ahri_core.errors import ConfigError
from ahri_core.sources.store import list_videos
from tests.tokenizer_fixtures import make_store, tokenizer_workspace

IDS = ["match-0412", "match-0419", "match-0501", "scrim-01"]


# ---------------------------------------------------------------------------------------------- the rule
def test_chosen_split_holds_out_exactly_the_named_videos():
    s = SplitRule.chosen(["match-0419", "scrim-01"]).assign(IDS)
    assert s == {"match-0412": "train", "match-0419": "val", "match-0501": "train", "scrim-01": "val"}
    rec = SplitRule.chosen(["match-0419"]).record()
    assert rec == {"split_rule": "chosen", "val_fraction": None, "split_file": None, "val_videos": ["match-0419"]}
    assert SplitRule.by_hash(0.25).record() == {"split_rule": "hash", "val_fraction": 0.25}
    assert SplitRule.by_hash(0.25).assign(IDS) == split_videos(IDS, 0.25)  # the default stays the hash rule


def test_an_unknown_id_is_named_with_close_matches():
    with pytest.raises(ConfigError) as e:
        SplitRule.chosen(["match-412"]).assign(IDS)
    msg = str(e.value)
    assert msg.startswith("--val-videos: no video with the id 'match-412'") and "match-0412" in msg
    assert "scrim-01" not in msg  # only the close ones
    with pytest.raises(ConfigError, match=r"'zzz' \(the 4 videos include match-0412"):
        SplitRule.chosen(["zzz"]).assign(IDS)


def test_a_split_that_leaves_no_training_video_is_refused():
    with pytest.raises(ConfigError, match="holds out all 2 videos; leave at least one for training"):
        SplitRule.chosen(["a", "b"]).assign(["a", "b"])
    with pytest.raises(ConfigError, match="both for training and for validation"):
        SplitRule.chosen(["a"], ["a"])
    # inherited from a tokenizer (not strict): a subset of its videos is split without complaint
    assert SplitRule.chosen(["a", "x"], strict=False).assign(["a"]) == {"a": "val"}


def test_split_files_json_and_text(tmp_path):
    j = tmp_path / "split.json"
    j.write_text(json.dumps({"val": ["match-0501"], "train": ["match-0412"]}))
    rule = SplitRule.from_file(j)
    assert rule.assign(IDS)["match-0501"] == "val" and list(rule.assign(IDS).values()).count("val") == 1
    assert rule.record()["split_file"] == str(j) and rule.record()["train_videos"] == ["match-0412"]
    t = tmp_path / "split.txt"
    t.write_text("# held-out matches\nval: match-0412 match-0419\n\ntrain scrim-01  # a scrim\n")
    assert SplitRule.from_file(t).assign(IDS) == {
        "match-0412": "val", "match-0419": "val", "match-0501": "train", "scrim-01": "train"}
    t.write_text("val match-0412\ntest match-0501\n")
    with pytest.raises(ConfigError, match=r"split.txt, line 2: starts with 'test'"):
        SplitRule.from_file(t)
    j.write_text(json.dumps({"validation": ["match-0412"]}))
    with pytest.raises(ConfigError, match=r"split.json: expected a JSON object"):
        SplitRule.from_file(j)
    j.write_text(json.dumps({"train": ["match-0412"]}))
    with pytest.raises(ConfigError, match="names no validation video"):
        SplitRule.from_file(j)
    with pytest.raises(ConfigError, match="cannot read the split file"):
        SplitRule.from_file(tmp_path / "missing.txt")


# ---------------------------------------------------------------------------------------------- ahri tokenize
@pytest.fixture()
def ws(tmp_path):
    return tokenizer_workspace(tmp_path, n=4, frames=8)


def _index(ws):
    return json.loads((ws / "latents" / "tok1" / "index.json").read_text())


def _splits(index):
    return {v["id"]: v["split"] for v in index["videos"]}


def test_tokenize_records_the_hash_split_by_default(ws):
    assert main(["-w", str(ws), "tokenize", "-t", "tok1"]) == 0
    idx = _index(ws)
    assert idx["split_rule"] == "hash" and idx["val_fraction"] == 0.2
    assert _splits(idx) == split_videos([f"clip{i:02d}" for i in range(4)], 0.2)


def test_tokenize_val_videos_and_split_file(ws, tmp_path, capsys):
    base = ["-w", str(ws), "tokenize", "-t", "tok1"]
    assert main([*base, "--val-videos", "clip01", "--val-videos", "clip03"]) == 0
    idx = _index(ws)
    assert _splits(idx) == {"clip00": "train", "clip01": "val", "clip02": "train", "clip03": "val"}
    assert idx["split_rule"] == "chosen" and idx["val_videos"] == ["clip01", "clip03"] and idx["split_file"] is None
    f = tmp_path / "held.txt"
    f.write_text("val clip02\n")
    assert main([*base, "--split", str(f)]) == 0  # files are up to date: only the index changes
    idx = _index(ws)
    assert _splits(idx) == {"clip00": "train", "clip01": "train", "clip02": "val", "clip03": "train"}
    assert idx["split_file"] == str(f.resolve()) and idx["val_videos"] == ["clip02"]
    capsys.readouterr()
    # an unknown id: exit 2, named with the close match; the index is left as it was
    assert main([*base, "--val-videos", "clip2"]) == 2
    err = capsys.readouterr().err
    assert "clip2" in err and "clip02" in err
    assert _splits(_index(ws))["clip02"] == "val"
    assert main([*base, "--val-videos", "clip00,clip01,clip02,clip03"]) == 2
    assert "leave at least one for training" in capsys.readouterr().err
    assert main([*base, "--val-videos", "clip01", "--val-fraction", "0.5"]) == 2
    assert main([*base, "--val-videos", "clip01", "--split", str(f)]) == 2


def test_unknown_id_is_refused_before_anything_is_written(ws):
    with pytest.raises(ConfigError, match="clip9"):
        tokenize_videos("tok1", list_videos(ws / "videos"), ws / "latents", runs_dir=ws / "runs",
                        split=SplitRule.chosen(["clip9"]))
    assert not (ws / "latents" / "tok1").exists()


# ---------------------------------------------------------------------------------------------- tokenizer training
def test_tokenizer_training_with_chosen_videos_and_tokenize_inherits_them(tmp_path, capsys):
    make_store(tmp_path / "videos" / "game", n=3, frames=8)
    base = ["-w", str(tmp_path), "train", "--stage", "tokenizer", "--preset", "tiny", "--max-steps", "1",
            "--device", "cpu"]
    assert main([*base, "--run", "t", "--val-videos", "clip02", "--fps", "10"]) == 0
    run = tmp_path / "runs" / "t"
    meta = json.loads((run / "run.json").read_text())
    assert meta["settings"]["split"] == {"split_rule": "chosen", "val_fraction": None, "split_file": None,
                                         "val_videos": ["clip02"]}
    _, cfg, extra = read_metadata(run / "model.safetensors")
    assert cfg["fps"] == 10 and extra["split_rule"] == "chosen" and extra["val_videos"] == ["clip02"]
    assert sorted(extra["train_videos"]) == ["clip00", "clip01"] and extra["video_fps"]["clip00"] == 10
    # tokenize follows the tokenizer's own split (and its fps)
    assert main(["-w", str(tmp_path), "tokenize", "-t", "t"]) == 0
    idx = json.loads((tmp_path / "latents" / "t" / "index.json").read_text())
    assert _splits(idx) == {"clip00": "train", "clip01": "train", "clip02": "val"}
    assert idx["split_rule"] == "chosen" and idx["fps"] == 10 and idx["videos"][0]["frames"] == 4
    # a different split on resume is refused; an unknown id or no training video never creates a run
    capsys.readouterr()
    assert main([*base[:-4], "--max-steps", "2", "--device", "cpu", "--run", "t", "--resume",
                 "--val-videos", "clip01"]) == 2
    assert "cannot change on resume" in capsys.readouterr().err
    assert main([*base, "--run", "u", "--val-videos", "clip7"]) == 2
    err = capsys.readouterr().err
    assert "no video with the id 'clip7'" in err and "clip00" in err
    assert not (tmp_path / "runs" / "u" / "run.json").exists()
    assert main([*base, "--run", "v", "--val-videos", "clip00,clip01,clip02"]) == 2
    assert not (tmp_path / "runs" / "v" / "run.json").exists()
    assert main(["-w", str(tmp_path), "train", "--max-steps", "1", "--val-videos", "clip00"]) == 2  # tokenizer only

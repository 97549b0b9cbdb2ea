"""One name per concept across commands: the old spellings still work, hidden from --help, with a one-line note."""

from __future__ import annotations

import re

import pytest
from typer.testing import CliRunner

from ahri_cli.main import app, main
from ahri_cli.options import check_square_size, either, run_argument
from ahri_core.errors import ConfigError

RENAMED = [  # (command, old spelling, new spelling)
    ("eval", "--data", "--latents"),
    ("rollout", "--model", "--run"),
    ("tokenize", "--data", "--videos"),
    ("tokenize", "--output", "--out"),
    ("train", "--data", "--videos"),
    ("fetch", "--count", "--clips"),
]


def _flag(text: str, flag: str) -> bool:
    return re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", text) is not None


@pytest.mark.parametrize("cmd, old, new", RENAMED)
def test_help_shows_the_new_name_only(cmd, old, new):
    res = CliRunner().invoke(app, [cmd, "--help"], env={"COLUMNS": "200"})
    assert res.exit_code == 0
    assert _flag(res.output, new) and not _flag(res.output, old), res.output


def test_eval_and_play_take_the_run_as_an_option_too():
    for cmd in ("eval", "play"):
        res = CliRunner().invoke(app, [cmd, "--help"], env={"COLUMNS": "200"})
        assert _flag(res.output, "--run") and "RUN" in res.output


def _note(err: str, old: str, new: str) -> None:
    notes = [line for line in err.splitlines() if line.startswith("note:")]
    assert notes == [f"note: {old} is now {new}"], err


def test_fetch_count_is_now_clips(tmp_path, capsys):
    assert main(["-w", str(tmp_path), "fetch", "--source", "game", "--count", "1", "--frames", "8", "--size", "32"]) == 0
    _note(capsys.readouterr().err, "--count", "--clips")
    assert len(list((tmp_path / "videos" / "game").glob("*.mp4"))) == 1
    assert main(["-w", str(tmp_path), "fetch", "--source", "game", "--clips", "2", "--frames", "8", "--size", "32x32"]) == 0
    assert "note:" not in capsys.readouterr().err
    assert len(list((tmp_path / "videos" / "game").glob("*.mp4"))) == 2


def test_eval_data_is_now_latents(tmp_path, capsys):
    assert main(["-w", str(tmp_path), "eval", "--data", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    _note(err, "--data", "--latents")
    assert "error: --data" in err and "nope" in err
    assert main(["-w", str(tmp_path), "eval", "--latents", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert "note:" not in err and "error: --latents" in err


def test_eval_run_positional_and_option_must_agree(tmp_path, capsys):
    assert main(["-w", str(tmp_path), "eval", "a", "--run", "b"]) == 2
    assert "two runs" in capsys.readouterr().err


def test_rollout_model_is_now_run(tmp_path, capsys):
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(b"")
    assert main(["-w", str(tmp_path), "rollout", str(clip), "--model", "no-such-run"]) == 2
    err = capsys.readouterr().err
    _note(err, "--model", "--run")
    assert "no-such-run" in err
    assert main(["-w", str(tmp_path), "rollout", str(clip), "--run", "no-such-run"]) == 2
    err = capsys.readouterr().err
    assert "note:" not in err and "no-such-run" in err


def test_tokenize_data_is_now_videos_and_output_is_now_out(tmp_path, capsys):
    assert main(["-w", str(tmp_path), "tokenize", "-t", "x", "--data", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    _note(err, "--data", "--videos")
    assert "error: --data" in err
    assert main(["-w", str(tmp_path), "tokenize", "-t", "x", "--videos", str(tmp_path / "nope")]) == 2
    assert "error: --videos" in capsys.readouterr().err
    for old in ("--output", "-o"):
        assert main(["-w", str(tmp_path), "tokenize", "-t", "x", "--decode", str(tmp_path / "no.safetensors"),
                     old, str(tmp_path / "a.mp4")]) == 2
        err = capsys.readouterr().err
        _note(err, "--output", "--out")
        assert "--decode" in err


def test_train_data_is_now_videos(tmp_path, capsys):
    base = ["-w", str(tmp_path), "train", "--stage", "tokenizer", "--preset", "tiny", "--max-steps", "1"]
    assert main([*base, "--data", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    _note(err, "--data", "--videos")
    assert "video folder" in err and "nope" in err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main([*base, "--videos", str(empty)]) == 2  # a folder given to --videos is read as --data read it
    err = capsys.readouterr().err
    assert "note:" not in err and "no videos under" in err and "empty" in err


def test_the_renamed_values_merge():
    assert either(1, None, "--new", "--old") == 1
    assert either(None, 2, "--new", "--old") == 2
    assert either(3, 3, "--new", "--old") == 3
    with pytest.raises(ConfigError, match="--old is the old name of --new"):
        either(1, 2, "--new", "--old")
    assert run_argument("a", None) == run_argument(None, "a") == run_argument("a", "a") == "a"
    with pytest.raises(ConfigError):
        run_argument("a", "b")


def test_size_of_square_clips_takes_train_spelling():
    assert check_square_size("64") == check_square_size("64x64") == 64
    assert check_square_size(None) is None
    for bad in ("64x48", "big", "x64"):
        with pytest.raises(Exception, match="size|square"):
            check_square_size(bad)

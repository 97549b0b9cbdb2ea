"""Settings: precedence (defaults < TOML < env < flags) and one-line validation errors with exit code 2."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from ahri_cli.main import main
from ahri_core.config.base import load
from ahri_core.config.settings import DiffusionSettings, FetchSettings, SamplingSettings, TrainSettings
from ahri_core.errors import ConfigError


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for k in list(os.environ):
        if k.startswith("AHRI_") and k != "AHRI_HOME":
            monkeypatch.delenv(k)


def test_precedence_defaults_toml_env_flags(tmp_path, monkeypatch):
    cfg = tmp_path / "ahri.toml"
    cfg.write_text("[fetch]\nmax_height = 480\nretries = 7\nmatch_title = 'Garen'\n")
    assert load(FetchSettings).max_height == 720  # default
    s = load(FetchSettings, config=cfg)
    assert (s.max_height, s.retries, s.match_title) == (480, 7, "Garen")  # TOML over defaults
    monkeypatch.setenv("AHRI_FETCH_MAX_HEIGHT", "360")
    s = load(FetchSettings, config=cfg)
    assert (s.max_height, s.retries) == (360, 7)  # env over TOML, TOML still fills the rest
    s = load(FetchSettings, {"max_height": 240, "retries": None}, cfg)
    assert (s.max_height, s.retries) == (240, 7)  # flags over env; a None flag means "not given"


def test_env_lists_and_sections(monkeypatch):
    monkeypatch.setenv("AHRI_SAMPLING_STEPS", "[1, 4]")
    monkeypatch.setenv("AHRI_TRAIN_LR", "0.003")
    assert load(SamplingSettings).steps == [1, 4]
    assert load(TrainSettings).lr == 0.003
    assert load(FetchSettings).max_height == 720  # another section's variables do not leak


@pytest.mark.parametrize(
    "cls, flags, needle",
    [
        (FetchSettings, {"max_height": 10}, "fetch.max_height=10"),
        (FetchSettings, {"match_title": "(unclosed"}, "fetch.match_title='(unclosed'"),
        (
            FetchSettings,
            {"sleep_interval": 5, "max_sleep_interval": 1},
            "max_sleep_interval must be >= sleep_interval",
        ),
        (FetchSettings, {"size": 63}, "fetch.size=63"),
        (DiffusionSettings, {"k_max": 48}, "diffusion.k_max=48"),
        (SamplingSettings, {"steps": [3]}, "not a power of two"),
    ],
)
def test_validation_messages_name_field_and_value(cls, flags, needle):
    with pytest.raises(ConfigError) as e:
        load(cls, flags)
    msg = str(e.value)
    assert needle in msg and "\n" not in msg


def test_unknown_toml_key_is_an_error(tmp_path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text("[fetch]\nmax_heigth = 480\n")
    with pytest.raises(ConfigError, match="unknown setting fetch.max_heigth"):
        load(FetchSettings, config=cfg)


def _cli(capsys, *args):
    rc = main(list(args))
    return rc, capsys.readouterr().err.strip()


def test_cli_flag_toml_and_env_errors_exit_2_before_any_work(tmp_path, capsys, monkeypatch):
    ws = tmp_path / "ws"
    rc, err = _cli(capsys, "--workspace", str(ws), "fetch", "--source", "game", "--max-height", "10")
    assert rc == 2 and err.count("\n") == 0
    assert "fetch.max_height=10" in err and "greater than or equal to 64" in err

    cfg = tmp_path / "c.toml"
    cfg.write_text("[fetch]\ncount = 0\n")
    rc, err = _cli(capsys, "--workspace", str(ws), "--config", str(cfg), "fetch", "--source", "game")
    assert rc == 2 and "fetch.count=0" in err and err.count("\n") == 0

    monkeypatch.setenv("AHRI_FETCH_VERIFY", "sometimes")
    rc, err = _cli(capsys, "--workspace", str(ws), "fetch", "--source", "game")
    assert rc == 2 and "fetch.verify='sometimes'" in err and "'full' or 'quick'" in err
    monkeypatch.delenv("AHRI_FETCH_VERIFY")

    rc, err = _cli(capsys, "--workspace", str(ws), "fetch", "--source", "game", "--match-title", "([")
    assert rc == 2 and "fetch.match_title" in err and "regular expression" in err

    rc, err = _cli(capsys, "--workspace", str(ws), "--config", str(tmp_path / "missing.toml"), "fetch")
    assert rc == 2 and "missing.toml does not exist" in err

    rc, err = _cli(capsys, "--workspace", str(ws), "fetch")
    assert rc == 2 and "nothing to fetch" in err
    assert not ws.exists()  # nothing was written by any of the refused commands


def test_flag_beats_env_in_the_cli(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("AHRI_FETCH_COUNT", "0")  # invalid, but the flag overrides it
    monkeypatch.setenv("AHRI_FETCH_FRAMES", "6")
    rc, err = _cli(capsys, "--workspace", str(tmp_path), "fetch", "--source", "game", "--clips", "1")
    assert rc == 0, err
    assert "1 stored (6 frames)" in err  # count from the flag, frames from the environment


def test_real_process_exit_code_and_single_line(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "ahri_cli.main",
            "--workspace",
            str(tmp_path),
            "fetch",
            "--source",
            "game",
            "--size",
            "63",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "COLUMNS": "300"},
    )
    assert proc.returncode == 2
    lines = [x for x in proc.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and "fetch.size=63" in lines[0] and "even" in lines[0]
    assert "Traceback" not in proc.stderr


def test_help_shows_the_declared_defaults():
    """Option help ends in "[default: ...]"; rich markup must not swallow it as a tag."""
    from typer.testing import CliRunner

    from ahri_cli.main import app

    runner = CliRunner()
    for cmd, shown in (("train", "[default: 0.9]"), ("fetch", "[default: 16]"), ("demo", "[default: 96]")):
        res = runner.invoke(app, [cmd, "--help"], env={"COLUMNS": "250"})
        assert res.exit_code == 0 and shown in res.output, (cmd, res.output[-600:])

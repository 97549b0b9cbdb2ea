"""--config files: the whole file is checked when the CLI starts; unknown tables and keys are refused."""

from __future__ import annotations

import os

import pytest

from ahri_cli.main import main
from ahri_core.config.base import load
from ahri_core.config.check import check_config_file, config_problems, known_sections
from ahri_core.config.settings import FetchSettings
from ahri_core.errors import ConfigError


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for k in list(os.environ):
        if k.startswith("AHRI_") and k != "AHRI_HOME":
            monkeypatch.delenv(k)


def _cli(capsys, *args):
    rc = main(list(args))
    cap = capsys.readouterr()
    return rc, " ".join(cap.err.split())


def test_known_sections_include_those_defined_outside_settings():
    sections = known_sections()
    assert {"train", "data", "diffusion", "sampling", "fetch", "tokenizer", "demo"} <= set(sections)
    assert "mask_max" in sections["tokenizer"] and "clips" in sections["demo"] and "lr" in sections["train"]


def test_misspelt_table_is_refused_with_file_line_and_suggestion(tmp_path, capsys):
    cfg = tmp_path / "run.toml"
    cfg.write_text("# budget\n\n[trian]\nmax_steps = 10\n")
    rc, err = _cli(capsys, "-w", str(tmp_path / "ws"), "-c", str(cfg), "fetch", "--source", "game")
    assert rc == 2
    assert f"config file {cfg}, line 3: unknown table [trian]; did you mean [train]?" in err
    assert "[sampling]" in err and "[tokenizer]" in err  # the known tables, brackets intact
    assert err.count("error:") == 1
    assert not (tmp_path / "ws").exists()  # refused before any work


def test_misspelt_key_is_refused_with_file_line_and_suggestion(tmp_path, capsys):
    cfg = tmp_path / "run.toml"
    cfg.write_text("[train]\nlr = 0.001\n\n[data]\nseq_lenght = 8\n")
    rc, err = _cli(capsys, "-w", str(tmp_path / "ws"), "-c", str(cfg), "info")
    assert rc == 2
    assert f"config file {cfg}, line 5: unknown setting data.seq_lenght; did you mean seq_len" in err
    assert "(settings of [data]: alternating," in err


def test_bad_value_names_file_and_line_unless_a_flag_gave_it(tmp_path, capsys):
    cfg = tmp_path / "run.toml"
    cfg.write_text("[fetch]\n# how often\nretries = \"many\"\n")
    rc, err = _cli(capsys, "-w", str(tmp_path / "ws"), "-c", str(cfg), "fetch", "--source", "game")
    assert rc == 2 and err.count("error:") == 1
    assert f"invalid setting fetch.retries='many' (config file {cfg}, line 3):" in err
    with pytest.raises(ConfigError) as e:  # the same value from a flag: no file to name
        load(FetchSettings, {"retries": "many"}, config=cfg)
    assert "config file" not in str(e.value)


def test_unknown_preset_in_a_config_file_names_its_line(tmp_path, capsys):
    cfg = tmp_path / "run.toml"
    cfg.write_text("[train]\npreset = \"huge\"\nmax_steps = 1\n")
    rc, err = _cli(capsys, "-w", str(tmp_path / "ws"), "-c", str(cfg), "train")
    assert rc == 2 and f"unknown dynamics preset 'huge' (config file {cfg}, line 2)" in err


def test_top_level_key_is_refused_and_placed(tmp_path, capsys):
    cfg = tmp_path / "run.toml"
    cfg.write_text("minutes = 10\n[train]\nseed = 1\n")
    rc, err = _cli(capsys, "-w", str(tmp_path / "ws"), "-c", str(cfg), "info")
    assert rc == 2
    assert "line 1: setting minutes is outside any table; put it under [demo] or [train]" in err


def test_every_problem_is_found(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        'x = 1\n[trian]\na = 1\n[train]\nlr_rate = 2\n"batch-size" = 3\n[fetch.sub]\nk = 1\n'
        "[tokenizer]\nsize = 64\n[sampling]\nsteps = [4]\n"
    )
    problems = config_problems(cfg)
    assert len(problems) == 5, problems
    assert "line 5: unknown setting train.lr_rate; did you mean lr or min_lr_ratio?" in problems[2]
    assert "line 6: unknown setting train.batch-size; did you mean batch_size?" in problems[3]
    assert "line 7: unknown setting fetch.sub" in problems[4]
    with pytest.raises(ConfigError, match=r"\(and 4 more\)"):
        check_config_file(cfg)


def test_a_valid_file_passes_and_is_used(tmp_path, capsys):
    cfg = tmp_path / "ok.toml"
    cfg.write_text("[fetch]\ncount = 1\nframes = 6\n[train]\npreset = 'tiny'\n[tokenizer]\nmask_max = 0.0\n")
    assert config_problems(cfg) == []
    rc, err = _cli(capsys, "-w", str(tmp_path / "ws"), "-c", str(cfg), "fetch", "--source", "game")
    assert rc == 0 and "1 stored (6 frames)" in err


def test_table_that_is_not_a_table(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text("train = 3\n")
    assert config_problems(cfg) == [f"config file {cfg}, line 1: train must be a table ([train] followed by its settings)"]


def test_load_names_the_line_of_an_unknown_key(tmp_path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text("[fetch]\nretries = 2\nmax_heigth = 480\n")
    with pytest.raises(ConfigError) as e:
        load(FetchSettings, config=cfg)
    msg = str(e.value)
    assert msg.startswith(f"unknown setting fetch.max_heigth (config file {cfg}, line 3); did you mean max_height?")
    assert "\n" not in msg


def test_invalid_toml_and_missing_file(tmp_path, capsys):
    cfg = tmp_path / "broken.toml"
    cfg.write_text("[train\n")
    rc, err = _cli(capsys, "-w", str(tmp_path), "-c", str(cfg), "info")
    assert rc == 2 and "is not valid TOML" in err and str(cfg) in err
    rc, err = _cli(capsys, "-w", str(tmp_path), "-c", str(tmp_path / "none.toml"), "info")
    assert rc == 2 and "none.toml does not exist" in err

"""README's commands, .ci/run and the config examples of docs/cli.md stay true."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from ahri_core.config.base import load, read_toml
from ahri_core.config.check import config_problems
from ahri_core.config.settings import DataSettings, DiffusionSettings, SamplingSettings, TrainSettings

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
CLI_DOC = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")


def _bash_blocks(text: str) -> list[str]:
    return re.findall(r"```bash\n(.*?)```", text, re.S)


def test_readme_commands_in_the_order_a_new_user_types_them():
    first = README.index("## On a fresh machine")
    blocks = [b.strip() for b in _bash_blocks(README[first:])]
    torch_cpu, install_demo, install_tests = blocks[:3]
    assert torch_cpu == "pip install torch --index-url https://download.pytorch.org/whl/cpu"
    assert install_demo == "pip install -e . && ahri demo"
    # the test command installs what the tests need before running them
    assert install_tests == 'pip install -e ".[dev,gym]" && python -m pytest -x -q'
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert re.search(r'^dev = \[.*"pytest', pyproject, re.M) and re.search(r"^gym = \[", pyproject, re.M)


def test_ci_runs_the_readme_test_command_exactly():
    r = subprocess.run(["bash", str(ROOT / ".ci" / "run"), "--print-test-command"], capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 0, r.stderr
    readme_block = _bash_blocks(README[README.index("<!-- ci: test command"):])[0].strip()
    assert r.stdout.strip() == readme_block
    script = (ROOT / ".ci" / "run").read_text()
    # a fresh venv made by the script, then the CPU torch wheel, then README's command as the last line, verbatim
    last = script.rstrip().splitlines()[-1]
    assert last == readme_block
    assert script.index("-m venv") < script.index("pip install -q torch==2.13.0") < script.rindex(readme_block)


def test_exit_codes_are_the_same_in_readme_docs_and_help():
    from ahri_cli.main import EXIT_CODES

    for code in ("| 0 |", "| 1 |", "| 2 |", "| 130 |"):
        assert code in README and code in CLI_DOC
    assert "0 done; 1 failed" in EXIT_CODES and "2 usage or settings" in EXIT_CODES and "130 interrupted" in EXIT_CODES


def test_cli_doc_covers_every_command():
    from typer.main import get_command

    from ahri_cli.main import app

    group = get_command(app)
    for name in group.list_commands(None):  # type: ignore[attr-defined]
        if name != "help":
            assert f"### `ahri {name}`" in CLI_DOC, name
    for f in ("run.json", "metrics.jsonl", "log.txt", "model.safetensors", "best.safetensors", "model.state.pt",
              "ema.safetensors"):
        assert f"`{f}`" in CLI_DOC


def _examples() -> dict[str, str]:
    out = {}
    for m in re.finditer(r"^### (\w+)\n(.*?)```toml\n(.*?)```", CLI_DOC, re.S | re.M):
        out[m.group(1)] = m.group(3)
    return out


def test_cli_doc_has_one_config_example_per_preset_size():
    assert set(_examples()) == {"tiny", "cpu", "small", "medium"}


@pytest.mark.parametrize("preset", ["tiny", "cpu", "small", "medium"])
def test_cli_doc_config_examples_load(tmp_path, preset, monkeypatch):
    from ahri_core.config.presets import DYNAMICS_PRESETS
    from ahri_core.config.settings import TokenizerSettings

    for k in ("AHRI_TRAIN_PRESET", "AHRI_DATA_SEQ_LEN"):
        monkeypatch.delenv(k, raising=False)
    cfg = tmp_path / f"{preset}.toml"
    cfg.write_text(_examples()[preset])
    data = read_toml(cfg)
    assert set(data) == {"train", "data", "diffusion", "tokenizer", "sampling"}
    assert config_problems(cfg) == []
    train = load(TrainSettings, config=cfg)
    dset = load(DataSettings, config=cfg)
    diff = load(DiffusionSettings, config=cfg)
    samp = load(SamplingSettings, config=cfg)
    tok = load(TokenizerSettings, config=cfg)
    assert train.preset == preset
    assert tok.size is None and tok.fit == "pad"  # the frame shape follows the videos' aspect
    longest = max(dset.seq_len_short, dset.seq_len_long) if dset.alternating else dset.seq_len
    assert longest <= DYNAMICS_PRESETS[preset]["max_frames"]
    assert all(k <= diff.k_max for k in samp.steps)

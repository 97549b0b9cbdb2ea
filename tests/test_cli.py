"""The command line a newcomer meets: usage errors, exit codes, help, version, choices, hints, quiet mode.

The first tests run the installed ``ahri`` executable in a subprocess, as a user would.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

import ahri_core
from ahri_cli import options, output
from ahri_cli.main import main

AHRI = Path(sys.executable).parent / "ahri"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for k in list(os.environ):
        if k.startswith("AHRI_"):
            monkeypatch.delenv(k)


def _run(*args: str, tmp_path: Path, timeout: float = 60, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "AHRI_HOME": str(tmp_path / "home"), "COLUMNS": "80", **kw.pop("env", {})}
    return subprocess.run([str(AHRI), *args], capture_output=True, text=True, timeout=timeout, env=env, **kw)


# ---------------------------------------------------------------------------------------------- the executable


def test_the_executable_is_installed():
    assert AHRI.is_file(), f"no ahri next to {sys.executable}; install with pip install -e ."


@pytest.mark.parametrize(
    "args, needles",
    [
        (["--bogus"], ["No such option", "--bogus"]),
        (["fetch", "--sourse", "game"], ["No such option", "--sourse"]),
        (["trian"], ["No such command", "trian"]),
        (["tokenize"], ["Missing option", "--tokenizer"]),
        (["tokenize", "-t", "x", "--precision", "fp16"], ["--precision", "fp16"]),
        (["tokenize", "-t", "x", "--device", "gpu"], ["'gpu' is not a device"]),
        (["help", "nope"], ["no command 'nope'"]),
    ],
)
def test_usage_errors_exit_2_with_usage_and_no_traceback(tmp_path, args, needles):
    r = _run(*args, tmp_path=tmp_path)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr + r.stdout
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert 1 <= len(lines) <= 6, r.stderr
    assert "Usage: ahri" in r.stderr
    flat = " ".join(r.stderr.split())
    assert all(n in flat for n in needles), r.stderr
    assert not (tmp_path / "home").exists()  # nothing written


def test_bare_ahri_shows_help_and_exits_2(tmp_path):
    r = _run(tmp_path=tmp_path)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr + r.stdout
    assert "Usage: ahri" in r.stdout and "Commands" in r.stdout


@pytest.mark.parametrize("args", [["-h"], ["--help"], ["help"], ["help", "tokenize"], ["tokenize", "-h"], ["runs", "-h"]])
def test_help_exits_0(tmp_path, args):
    r = _run(*args, tmp_path=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr + r.stdout
    assert "Usage: ahri" in r.stdout


def test_top_help_lists_exit_codes_and_commands(tmp_path):
    r = _run("-h", tmp_path=tmp_path, env={"COLUMNS": "200"})
    text = " ".join(r.stdout.split())
    assert "Exit codes: 0 done; 1 failed" in text and "2 usage or settings" in text and "130 interrupted" in text
    for cmd in ("fetch", "train", "tokenize", "eval", "rollout", "demo", "runs", "info", "help"):
        assert f" {cmd} " in text
    assert "--install-completion" in text and "--version" in text and "--quiet" in text


@pytest.mark.parametrize("flag", ["--version", "-V"])
def test_version(tmp_path, flag):
    r = _run(flag, tmp_path=tmp_path)
    assert r.returncode == 0
    assert r.stdout.strip() == f"ahri {ahri_core.__version__}"
    assert r.stderr == ""


def test_no_source_file_imports_click():
    """click is not a declared dependency (typer >= 0.29 bundles its own); only typer's API is used."""
    import ast

    for f in sorted((Path(__file__).resolve().parents[1] / "ahri_cli").glob("*.py")):
        for node in ast.walk(ast.parse(f.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            assert not any(n == "click" or n.startswith("click.") for n in names), f.name


@pytest.mark.skipif(importlib.util.find_spec("typer._click") is None, reason="this typer still uses the click package")
def test_runs_without_the_click_package(tmp_path):
    """With a typer that bundles click, the CLI works where the separate ``click`` package is absent."""
    code = (
        "import sys; sys.modules['click'] = None\n"
        "from ahri_cli.main import main\n"
        "sys.exit(main(['--bogus']))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                       env={**os.environ, "AHRI_HOME": str(tmp_path)})
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr and "No such option" in r.stderr


def test_closed_stderr_pipe_does_not_stop_the_work(tmp_path):
    ws = tmp_path / "ws"
    proc = subprocess.Popen(
        [str(AHRI), "--workspace", str(ws), "fetch", "--source", "game", "--clips", "2", "--frames", "20"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "COLUMNS": "80"},
    )
    proc.stderr.close()  # the reader goes away before the first message
    stdout = proc.stdout.read().decode()
    assert proc.wait(timeout=120) == 0
    assert "game-s0-0001" in stdout  # the summary table still reached stdout
    assert sorted(p.name for p in (ws / "videos" / "game").glob("*.mp4")) == ["game-s0-0000.mp4", "game-s0-0001.mp4"]


# ---------------------------------------------------------------------------------------------- in process


def test_guarded_stream_stops_writing_after_a_broken_pipe(monkeypatch):
    class Gone:
        writes = 0

        def write(self, s):
            Gone.writes += 1
            raise BrokenPipeError(32, "Broken pipe")

        def flush(self):
            raise BrokenPipeError(32, "Broken pipe")

        def isatty(self):
            return False

        def fileno(self):
            raise OSError("no descriptor")

    monkeypatch.setattr(sys, "stderr", Gone())
    g = output.GuardedStream("stderr")
    assert g.write("one\n") == 4  # swallowed, reported as written
    g.flush()
    assert g.broken and g.write("two\n") == 4
    assert Gone.writes == 1  # nothing was tried after the pipe broke


def test_exit_codes_follow_one_table(tmp_path, capsys, monkeypatch):
    ws = tmp_path / "ws"
    # a missing path is a settings error (2) in every command
    assert main(["-w", str(ws), "tokenize", "-t", "x", "--data", str(tmp_path / "nope")]) == 2
    assert "--data" in capsys.readouterr().err
    assert main(["-w", str(ws), "rollout", str(tmp_path / "nope.mp4")]) == 2
    assert "nope.mp4: no such video file" in capsys.readouterr().err
    assert main(["-w", str(ws), "fetch", "--source", "local", "--path", str(tmp_path / "nope")]) == 2
    assert "--path" in capsys.readouterr().err
    # eval without a run names the argument form, not a flag
    assert main(["-w", str(ws), "eval"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "ahri eval RUN" in err and "--model" not in err
    # a runtime failure of the operating system: 1 and the system's own words (the workspace itself is writable)
    (tmp_path / "os-fails").mkdir()
    (tmp_path / "os-fails" / "videos").write_text("x")
    assert main(["-w", str(tmp_path / "os-fails"), "fetch", "--source", "game", "--clips", "1", "--frames", "4"]) == 1
    err = capsys.readouterr().err
    assert err.splitlines()[-1].startswith("error: Not a directory") and "Traceback" not in err
    # a workspace that cannot be written: a usage error, before any work
    (tmp_path / "file").write_text("x")
    assert main(["-w", str(tmp_path / "file" / "ws"), "fetch", "--source", "game", "--clips", "1", "--frames", "4"]) == 2
    assert capsys.readouterr().err.startswith(f"error: --workspace {tmp_path / 'file' / 'ws'}: cannot write there")
    # Ctrl-C during a command: 130 and one line
    from ahri_core import sources

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(sources, "record_game", interrupted)
    assert main(["-w", str(ws), "fetch", "--source", "game", "--clips", "1"]) == 130
    assert capsys.readouterr().err.strip() == "interrupted"


def test_error_text_keeps_brackets(tmp_path, capsys):
    """A user's text with [brackets] must not be eaten as rich markup."""
    assert main(["-w", str(tmp_path), "rollout", "[bold]clip[/].mp4"]) == 2
    assert "CLIP [bold]clip[/].mp4: no such video file" in capsys.readouterr().err


def test_device_values():
    assert options.check_device("cuda:1") == "cuda:1"
    assert options.check_device("CPU") == "cpu"
    assert options.check_device(None) is None
    import typer

    for bad in ("gpu", "cuda:", "cuda:x", ""):
        with pytest.raises(typer.BadParameter):
            options.check_device(bad)


def test_choices_are_listed_in_help():
    from typer.testing import CliRunner

    from ahri_cli.main import app

    for cmd in ("tokenize", "eval", "rollout"):
        res = CliRunner().invoke(app, [cmd, "--help"], env={"COLUMNS": "200"})
        assert res.exit_code == 0
        assert "auto|bf16|fp32" in res.output and "cuda:N" in res.output and "--threads" in res.output
    res = CliRunner().invoke(app, ["demo", "--help"], env={"COLUMNS": "200"})
    assert "auto|bf16|fp32" in res.output and "--threads" in res.output


def test_preset_enums_come_from_the_model_tables():
    from ahri_core.config.presets import DYNAMICS_PRESETS, PRESET_NAMES, TOKENIZER_PRESETS

    assert [p.value for p in options.TokenizerPreset] == list(TOKENIZER_PRESETS)
    assert [p.value for p in options.DynamicsPreset] == list(DYNAMICS_PRESETS)
    assert list(PRESET_NAMES) == list(TOKENIZER_PRESETS)


def test_setup_threads_applies_the_count():
    import torch

    before = torch.get_num_threads()
    try:
        assert options.setup_threads(1) == 1 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_fetch_ends_with_the_next_command_and_quiet_keeps_only_results(tmp_path, capsys):
    ws = tmp_path / "my ws"
    assert main(["-w", str(ws), "fetch", "--source", "game", "--clips", "1", "--frames", "6"]) == 0
    err = capsys.readouterr().err
    assert f"next: ahri -w '{ws}' train --stage tokenizer --minutes 10" in " ".join(err.split())
    assert main(["-w", str(ws), "-q", "fetch", "--source", "game", "--clips", "2", "--frames", "6"]) == 0
    cap = capsys.readouterr()
    assert "next:" not in cap.err and "render" not in cap.err  # no hint, no progress display
    assert "done: 1 stored" in cap.err and "game-s0-0001" in cap.out  # the results remain


def test_sigterm_stops_with_130_and_leaves_only_whole_files(tmp_path):
    import signal
    import time

    ws = tmp_path / "ws"
    proc = subprocess.Popen(
        [str(AHRI), "-w", str(ws), "fetch", "--source", "game", "--clips", "400", "--frames", "100"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    store = ws / "videos" / "game"
    deadline = time.monotonic() + 240  # a busy machine starts the command slowly

    def committed() -> list[Path]:
        # a clip is whole once its sidecar is written (last, after the mp4): an mp4 without one is still being
        # stored, and a signal then removes it
        return [p for p in store.glob("*.json") if not p.name.startswith(".") and p.name != "manifest.json"
                and p.with_suffix(".mp4").exists()]

    while not committed():
        assert proc.poll() is None and time.monotonic() < deadline, "no clip was stored"
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    err = proc.communicate(timeout=60)[1]
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1] == "interrupted" and "Traceback" not in err
    stored = [p for p in store.glob("*.mp4") if not p.name.startswith(".")]
    assert 1 <= len(stored) < 400
    assert all(p.with_suffix(".json").exists() for p in stored)  # every clip left is whole, with its sidecar
    assert not [p for p in store.iterdir() if p.name.startswith(".")]  # no temporary file left behind

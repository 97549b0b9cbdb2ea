"""The CLI at 80 columns and in pipes: whole option names in help, ``ahri runs`` that fits and tells a killed
run, usage errors before any work, and the memory estimate that warns before a run that cannot fit.

The paths printed by demo, eval, rollout and train are checked in tests/test_demo.py, on the demo's workspace.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import typer.main

from ahri_cli import memcheck
from ahri_cli.main import app, main
from ahri_core.config.base import load
from ahri_core.config.settings import DataSettings, TrainSettings
from ahri_core.train import memory
from ahri_core.train.common import RunDir
from ahri_core.train.memory import estimate_training_memory, memory_warning

AHRI = Path(sys.executable).parent / "ahri"


def test_train_help_keeps_every_option_name_whole_at_80_columns():
    env = {**os.environ, "COLUMNS": "80"}
    r = subprocess.run([str(AHRI), "train", "--help"], capture_output=True, text=True, timeout=60, env=env)
    assert r.returncode == 0, r.stderr
    rows = [line for line in r.stdout.splitlines() if re.match(r"│\s+-", line)]
    train = typer.main.get_command(app).commands["train"]  # type: ignore[attr-defined]
    names = [n for p in train.params if not getattr(p, "hidden", False) for n in (*p.opts, *p.secondary_opts)]
    assert len(names) > 50
    for name in names:
        assert any(re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", row) for row in rows), name
    assert max(len(line) for line in r.stdout.splitlines()) <= 80
    assert "…" not in "".join(row.split("  ")[0] for row in rows)  # no option name is cut
    assert "<bool>" not in r.stdout


def test_no_help_text_is_cut_at_80_columns():
    """Rich cuts a word longer than its column with an ellipsis: every command's help must fit whole."""
    from typer.testing import CliRunner

    runner = CliRunner()
    commands = typer.main.get_command(app).commands  # type: ignore[attr-defined]
    assert len(commands) >= 8
    for name in commands:
        r = runner.invoke(app, [name, "--help"], env={"COLUMNS": "80", "TERM": "dumb"})
        assert r.exit_code == 0, (name, r.output)
        assert "…" not in r.output, f"ahri {name} --help cuts: " + next(x for x in r.output.splitlines() if "…" in x)


def test_choice_errors_have_no_pydantic_prefix(tmp_path, capsys):
    assert main(["-w", str(tmp_path), "train", "--preset", "huge"]) == 2
    err = capsys.readouterr().err
    assert "'huge' is not one of" in err and "Value error" not in err


# ---------------------------------------------------------------------------------------------- ahri runs

def _run_json(ws: Path, name: str, meta: dict) -> Path:
    d = ws / "runs" / name
    d.mkdir(parents=True)
    (d / "run.json").write_text(json.dumps(meta))
    return d


def _gone_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid  # reaped: no process has it (pids are not reused this soon)


def test_runs_shows_a_killed_run_as_stopped_and_a_live_one_as_running(tmp_path, capsys):
    host = socket.gethostname()
    base = {"stage": "dynamics", "status": "running", "step": 3, "host": host}
    _run_json(tmp_path, "killed", {**base, "pid": _gone_pid()})
    _run_json(tmp_path, "alive", {**base, "pid": os.getpid()})
    _run_json(tmp_path, "elsewhere", {**base, "pid": _gone_pid(), "host": host + "-other"})
    resuming = _run_json(tmp_path, "resuming", {**base, "pid": _gone_pid()})  # a resume holds the lock already
    (resuming / ".writer.lock").write_text(f"{os.getpid()}\n")
    old = _run_json(tmp_path, "older-killed", {"stage": "dynamics", "status": "running"})  # no pid recorded
    (old / ".writer.lock").write_text(f"{_gone_pid()}\n")
    assert main(["-w", str(tmp_path), "runs", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["killed"]["status"] == "stopped" and "--resume" in rows["killed"]["reason"]
    assert rows["alive"]["status"] == "running"
    assert rows["resuming"]["status"] == "running" and rows["older-killed"]["status"] == "stopped"
    assert rows["elsewhere"]["status"] == "running"  # another machine's process: not ours to judge


def test_a_run_records_the_process_that_trains_it(tmp_path):
    run = RunDir(tmp_path / "r").create("dynamics", {}, resume=False)
    meta = run.meta()
    assert (meta["pid"], meta["host"]) == (os.getpid(), socket.gethostname())


def test_runs_at_80_columns_shows_eval_gain_rounded_budget_and_whole_values(tmp_path, capsys, monkeypatch):
    d = _run_json(tmp_path, "demo-dynamics-20261207-024512", {
        "stage": "dynamics", "status": "finished", "step": 1234, "budget": {"minutes": 4.74407},
        "best": {"metric": "val_next", "value": 0.012345, "step": 1200}})
    for stamp, gains in (("a", {"4": 0.5, "8": 0.7}), ("b", {"4": 2.345, "16": 2.5})):
        (d / "eval" / stamp).mkdir(parents=True)
        (d / "eval" / stamp / "metrics.json").write_text(json.dumps({
            "created": f"2026-12-07T0{1 + (stamp == 'b')}:00:00",
            "summary": {"gain_over_copy_last_db_h1_8": gains}}))
    monkeypatch.setenv("COLUMNS", "80")
    assert main(["-w", str(tmp_path), "runs"]) == 0
    text = capsys.readouterr().out
    assert max(len(line) for line in text.splitlines()) <= 80
    assert "…" not in text
    assert "4.7 min" in text and "4.74407" not in text
    assert "+2.35 dB" in text and "4 steps" in text  # the newest eval, its fewest steps
    assert re.search(r"\d\d-\d\d \d\d:\d\d", text)  # the time of the last change, whole
    assert "@1200" in text


# ---------------------------------------------------------------------------------------------- usage errors

def test_an_unwritable_workspace_is_a_usage_error_before_any_work(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    for cmd in (["fetch", "--source", "game", "--clips", "1"], ["demo", "--minutes", "1"]):
        assert main(["-w", str(blocker / "ws"), *cmd]) == 2
        err = capsys.readouterr().err
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: --workspace") and str(blocker / "ws") in lines[0]
        assert "Traceback" not in err
    assert main(["-w", str(tmp_path / "new" / "ws"), "train", "--help"]) == 0
    assert not (tmp_path / "new").exists()  # the check makes nothing


# ---------------------------------------------------------------------------------------------- memory

SHAPE = dict(dim=256, depth=8, heads=4, mlp_ratio=4.0, tokens=64, frames=16)


def test_memory_estimate_grows_with_batch_model_and_frames_and_checkpointing_saves():
    small = estimate_training_memory(**SHAPE, batch=2)
    assert estimate_training_memory(**SHAPE, batch=8).activations_bytes > 3 * small.activations_bytes
    assert estimate_training_memory(**{**SHAPE, "dim": 512}, batch=2).params == 4 * small.params
    assert estimate_training_memory(**{**SHAPE, "frames": 32}, batch=2).total_bytes > small.total_bytes
    ckpt = estimate_training_memory(**SHAPE, batch=2, grad_checkpointing=True)
    assert ckpt.activations_bytes < small.activations_bytes and ckpt.params == small.params
    # the scale: the cpu preset fits in a few hundred MB, the medium preset at its windows needs tens of GB
    cpu = estimate_training_memory(dim=128, depth=6, heads=4, mlp_ratio=3.0, tokens=20, frames=16, batch=8)
    medium = estimate_training_memory(dim=768, depth=16, heads=12, mlp_ratio=4.0, tokens=264, frames=64, batch=1)
    assert cpu.total_bytes < 2**30 < 10 * 2**30 < medium.total_bytes < 200 * 2**30
    assert memory_warning(cpu, available=16 * 2**30) is None
    assert "available" in memory_warning(medium, available=16 * 2**30)


@pytest.mark.parametrize("preset, warned", [("cpu", False), ("medium", True)])
def test_training_warns_before_a_run_when_memory_is_short(preset, warned, monkeypatch, capsys):
    monkeypatch.setattr(memory, "machine_memory", lambda: {"total": 8 * 2**30, "available": 6 * 2**30})
    tset = load(TrainSettings, {"preset": preset, "device": "cpu"})
    memcheck.check_dynamics(tset, load(DataSettings, {"alternating": True}), {}, None)
    memcheck.check_tokenizer(tset)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("warning:")]
    assert bool(lines) == warned, err
    if warned:
        assert "6.0 GB" in lines[0] and "--grad-checkpointing" in err

"""``ahri train`` as a user meets it: the installed executable, Ctrl-C, the printed resume command, run status."""

from __future__ import annotations

import json
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

AHRI = Path(sys.executable).parent / "ahri"
pytestmark = pytest.mark.skipif(not AHRI.is_file(), reason="the ahri executable is not installed in this environment")


def _run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([str(AHRI), *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ws")
    p = _run("-w", str(root), "fetch", "--source", "game", "--clips", "3", "--frames", "24", "--size", "32")
    assert p.returncode == 0, p.stderr
    return root


def _train_records(run: Path) -> list[dict]:
    path = run / "metrics.jsonl"
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            continue
        if r.get("kind") == "train":
            out.append(r)
    return out


def test_ctrl_c_exits_130_and_the_printed_resume_command_finishes_the_budget(ws):
    run = ws / "runs" / "t"
    steps = "300"
    proc = subprocess.Popen(
        [str(AHRI), "-w", str(ws), "train", "--stage", "tokenizer", "--preset", "tiny", "--run", "t", "--max-steps", steps,
         "--log-every", "1", "--checkpoint-every", "100000", "--val-every", "100000", "--precision", "fp32"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    deadline = time.monotonic() + 120
    while not _train_records(run) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.1)
    assert proc.poll() is None, "the run ended before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err
    meta = json.loads((run / "run.json").read_text())
    assert meta["status"] == "interrupted" and meta["reason"] == "SIGINT" and 0 < meta["step"] < int(steps)
    assert (run / "log.txt").is_file() and "interrupted" in (run / "log.txt").read_text().lower() or "stopped" in (
        run / "log.txt").read_text()
    line = next(x for x in err.splitlines() if "continue with:" in x)
    cmd = shlex.split(line.split("continue with:", 1)[1].strip())
    assert cmd[0] == "ahri" and "--resume" in cmd and "--max-steps" not in cmd  # no budget: the run's own
    done = _run(*cmd[1:])
    assert done.returncode == 0, done.stderr[-2000:]
    meta = json.loads((run / "run.json").read_text())
    assert meta["status"] == "finished" and meta["step"] == int(steps)
    steps_logged = [r["step"] for r in _train_records(run)]
    assert steps_logged == sorted(set(steps_logged)) and steps_logged[-1] == int(steps)
    # resuming a finished run without a larger budget is a settings error that says what to do
    again = _run(*cmd[1:])
    assert again.returncode == 2 and "already finished" in again.stderr and "Traceback" not in again.stderr


def test_resume_of_a_missing_run_names_the_runs_that_exist(ws):
    p = _run("-w", str(ws), "train", "--stage", "tokenizer", "--run", "no-such-run", "--resume")
    assert p.returncode == 2 and "no-such-run" in p.stderr and "Traceback" not in p.stderr
    p = _run("-w", str(ws), "train", "--run", "no-such-run", "--resume", "--max-steps", "3")
    assert p.returncode == 2 and "no-such-run" in p.stderr


def test_default_train_then_eval_works_on_the_built_in_game(tmp_path):
    """The defaults fit together: a default dynamics run (shortcut forcing) evaluates with eval's defaults."""
    ws = tmp_path / "ws"
    p = _run("-w", str(ws), "fetch", "--source", "game", "--clips", "4", "--frames", "48", "--size", "32")
    assert p.returncode == 0, p.stderr
    p = _run("-w", str(ws), "train", "--stage", "tokenizer", "--preset", "tiny", "--run", "tok", "--max-steps", "20",
             "--precision", "fp32")
    assert p.returncode == 0, p.stderr
    assert "next:" in p.stderr and "tokenize" in p.stderr
    p = _run("-w", str(ws), "tokenize", "--tokenizer", "tok", "--precision", "fp32")
    assert p.returncode == 0, p.stderr
    p = _run("-w", str(ws), "train", "--preset", "tiny", "--run", "dyn", "--max-steps", "10", "--seq-len", "8",
             "--stride", "4", "--precision", "fp32")
    assert p.returncode == 0, p.stderr
    meta = json.loads((ws / "runs" / "dyn" / "run.json").read_text())
    assert meta["settings"]["diffusion"]["shortcut"] is True and meta["status"] == "finished"
    assert (ws / "runs" / "dyn" / "log.txt").is_file()
    p = _run("-w", str(ws), "eval", "dyn", "--context", "4", "--horizon", "2", "--clips", "2")
    assert p.returncode == 0, p.stderr
    assert "copy" in p.stdout.lower()


def test_optimizer_flag_trains_with_muon_and_refuses_an_unknown_one(ws):
    p = _run("-w", str(ws), "train", "--stage", "tokenizer", "--preset", "tiny", "--run", "m", "--max-steps", "4",
             "--optimizer", "muon", "--precision", "fp32", "--compile", "off")
    assert p.returncode == 0, p.stderr[-2000:]
    meta = json.loads((ws / "runs" / "m" / "run.json").read_text())
    assert meta["settings"]["train"]["optimizer"] == "muon" and meta["step"] == 4
    assert "optimizer Muon" in p.stderr  # the run says which optimizer it trains with
    bad = _run("-w", str(ws), "train", "--stage", "tokenizer", "--preset", "tiny", "--run", "m2", "--max-steps", "4",
               "--optimizer", "sgd")
    assert bad.returncode == 2 and "sgd" in bad.stderr and "Traceback" not in bad.stderr
    assert not (ws / "runs" / "m2").exists()

"""ahri demo --videos: one command from a folder of one's own videos (no actions) to a model to evaluate and play,
through the installed command, interrupted once by Ctrl-C and continued by the same command."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from video_fixtures import encode

from ahri_cli.main import main

EXE = Path(sys.executable).parent / "ahri"

# The demo test's tiny flow, with step caps so that a minute's budget ends early on any machine, and fp32 (no
# precision timing).
TINY = """
[demo]
tokenizer_preset = "tiny"
dynamics_preset = "tiny"
seq_len_short = 8
seq_len_long = 16
batch_size_short = 4
batch_size_long = 2
k_max = 4
steps = [2, 4]
context = 4
horizon = 4
eval_clips = 2
rollout_horizon = 4
samples = 1
val_fraction = 0.3
tokenizer_max_steps = 12
dynamics_max_steps = 24
precision = "fp32"
"""


def _videos(folder: Path, n: int = 4, frames: int = 40) -> list[str]:
    """``n`` short 4:3 clips of a moving block, with no actions (as screen recordings have none)."""
    for i in range(n):
        clip = []
        for t in range(frames):
            f = np.full((48, 64, 3), 30, np.uint8)
            x, y = (3 * t + 7 * i) % 52, (2 * t + 5 * i) % 36
            f[y:y + 12, x:x + 12] = (200, 80 + 40 * i, 60)
            clip.append(f)
        encode(folder / f"match-{i}.mp4", clip, 20)
    return [f"match-{i}" for i in range(n)]


def _env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "COLUMNS": "80", "AHRI_HOME": str(tmp_path / "home")}


def _ctrl_c_default() -> None:
    # Ctrl-C as in a terminal: a suite started in the background passes SIGINT on ignored
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _interrupt_in_dynamics(cmd: list[str], env: dict[str, str]) -> tuple[int, str]:
    """Run ``cmd`` and send SIGINT once the dynamics stage's training loop has started."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            preexec_fn=_ctrl_c_default)
    seen = []
    try:
        for line in proc.stderr:
            seen.append(line)
            if line.startswith("val @ step 0: tau"):  # the dynamics validation: the loop and its stop handler run
                # at once: its 24 steps take half a second on a fast CPU (AVX-512), so a wait could miss them
                proc.send_signal(signal.SIGINT)
                break
        _, rest = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc.returncode, "".join(seen) + rest


def _command(stdout: str, label: str) -> list[str]:
    line = next(x for x in stdout.splitlines() if x.startswith(f"{label}:"))
    args = shlex.split(line.split(":", 1)[1])
    assert args[0] == "ahri"
    return [str(EXE), *args[1:]]


def _play_serves(cmd: list[str], env: dict[str, str]) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([*cmd, "--port", str(port), "--threads", "1"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, preexec_fn=_ctrl_c_default)
    try:
        line = proc.stdout.readline()
        url = re.match(r"open (http://\S+) in a browser", line)
        assert url, (line, proc.stderr.read() if proc.poll() is not None else "")
        with urllib.request.urlopen(url[1], timeout=30) as r:
            assert r.status == 200 and b"<html" in r.read().lower()
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130 and "Traceback" not in err, err


@pytest.mark.slow
def test_own_videos_one_command_interrupted_and_continued_then_eval_and_play(tmp_path, capsys, one_thread):
    pytest.importorskip("aiohttp")
    ids = _videos(tmp_path / "my videos")
    cfg = tmp_path / "tiny.toml"
    cfg.write_text(TINY)
    ws = tmp_path / "ws"
    env = _env(tmp_path)
    cmd = [str(EXE), "-w", str(ws), "-c", str(cfg), "demo", "--videos", str(tmp_path / "my videos"),
           "--minutes", "1", "--threads", "1"]

    rc, err = _interrupt_in_dynamics(cmd, env)
    assert rc == 130, err
    assert "Traceback" not in err and "continue with the same command: ahri" in err
    dyn_name = re.search(r"dynamics: run (demo-dynamics-\S+),", err)[1]
    tok_name = re.search(r"tokenizer: run (demo-tokenizer-\S+),", err)[1]
    assert "latent actions" in err and not list(ws.glob("runs/*/demo-summary.json"))

    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=180)
    assert r.returncode == 0, r.stderr
    # the stages done were skipped, the dynamics run continued from its checkpoint, under the same names
    assert "done: import videos, tokenizer, tokenize)" in r.stderr
    assert re.search(rf"resumed {dyn_name} at step \d+ ", r.stderr), r.stderr
    assert "tokenizer: run" not in r.stderr
    sm = json.loads((ws / "runs" / dyn_name / "demo-summary.json").read_text())
    assert sm["sessions"] == 2 and sm["latent_actions"] and sm["dynamics"]["steps"] == 24
    assert sm["tokenizer"]["name"] == tok_name and sm["dynamics"]["name"] == dyn_name
    assert set(sm["stage_seconds"]) == {"import videos", "tokenizer", "tokenize", "dynamics", "evaluate", "rollout"}
    assert sm["stage_outputs"]["tokenizer"] == tok_name and sm["stage_outputs"]["dynamics"] == dyn_name
    held = sm["held_out_videos"]
    assert held and set(held) < set(ids) and sm["videos"] == len(ids)
    assert sm["minutes_used"] <= 1.0 and sm["acceptance"]["within_budget"]
    assert f"held out: {len(held)} of {len(ids)} videos: {', '.join(held)}" in r.stdout
    assert "copy last frame" in r.stdout
    log = (ws / "runs" / dyn_name / "log.txt").read_text()  # both sessions' messages
    assert "continue with the same command" in log and "continuing the flow started" in log
    meta = json.loads((ws / "runs" / dyn_name / "run.json").read_text())
    assert meta["split_videos"]["val"] == held and meta["settings"]["latent_actions"]["enabled"]

    # the printed commands work: eval as printed (in this process: the installed command ran above), play served
    assert main(_command(r.stdout, "evaluate")[1:]) == 0
    assert "copy last frame" in capsys.readouterr().out
    assert len(list((ws / "runs" / dyn_name / "eval").iterdir())) == 2
    _play_serves(_command(r.stdout, "play"), env)


def test_own_videos_bad_input(tmp_path, capsys):
    ws = tmp_path / "ws"
    assert main(["-w", str(ws), "demo", "--videos", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --videos ") and "no such folder or file" in err
    assert main(["-w", str(ws), "demo", "--videos", str(tmp_path), "--clips", "4"]) == 2
    assert "--clips" in capsys.readouterr().err
    assert main(["-w", str(ws), "demo", "--max-videos", "3"]) == 2
    assert "only used with --videos" in capsys.readouterr().err
    one = tmp_path / "one"
    _videos(one, n=1)
    assert main(["-w", str(ws), "demo", "--videos", str(one), "--minutes", "1"]) == 1
    err = capsys.readouterr().err
    assert "1 usable video" in err and "at least 2" in err and "Traceback" not in err
    short = tmp_path / "short"
    _videos(short, n=3, frames=6)
    assert main(["-w", str(ws), "demo", "--videos", str(short), "--minutes", "1"]) == 1
    err = capsys.readouterr().err
    assert "the evaluation needs 32 (context + horizon)" in err and "Traceback" not in err
    assert not (ws / "runs").exists()


def test_a_flow_record_is_found_again_only_by_the_same_command(tmp_path):
    from ahri_core.demo_state import FlowState
    from ahri_core.demo_videos import is_url

    a = FlowState.open(tmp_path, "/videos/a", {"minutes": 1})
    assert not a.resumed
    a.mark("import videos", {"videos": ["x"]})
    a.plan("tokenizer_minutes", 0.3)
    a.save(12.0)
    again = FlowState.open(tmp_path, "/videos/a", {"minutes": 1})
    assert again.resumed and again.stamp == a.stamp and again.elapsed_before == 12.0
    assert again.done("import videos") == {"videos": ["x"]} and again.planned("tokenizer_minutes") == 0.3
    assert again.done("tokenizer") is None and again.data["sessions"] == 2
    assert not FlowState.open(tmp_path, "/videos/b", {"minutes": 1}).resumed  # other videos
    assert not FlowState.open(tmp_path, "/videos/a", {"minutes": 2}).resumed  # other settings
    again.save(30.0, finished=True)
    assert not FlowState.open(tmp_path, "/videos/a", {"minutes": 1}).resumed  # a finished flow is not repeated
    again.path.write_text("{not json")
    assert not FlowState.open(tmp_path, "/videos/a", {"minutes": 1}).resumed
    assert is_url("https://www.youtube.com/@someone/videos") and is_url("ytsearch5:garen")
    assert not is_url("videos/https://x") and not is_url("C:/videos") and not is_url("~/Videos")

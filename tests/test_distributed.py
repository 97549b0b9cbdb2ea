"""Several processes: torchrun (gloo on CPU) with DDP and FSDP2, ``--nproc``, tokenize sharding, the sampler's
sharding, and the launcher's own argument parser reading the documented command lines."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from ahri_core.data.tokenize import assign_videos
from ahri_core.data.windows import LatentVideo, WindowBatchSampler
from ahri_core.errors import ConfigError
from ahri_core.train import distributed

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
TORCHRUN = shutil.which("torchrun", path=str(BIN)) or shutil.which("torchrun")
AHRI = shutil.which("ahri", path=str(BIN)) or shutil.which("ahri")
needs_launcher = pytest.mark.skipif(not (TORCHRUN and AHRI and torch.distributed.is_available()),
                                    reason="torchrun or the installed ahri command is missing")

COMMON = ["--preset", "tiny", "--log-every", "2", "--val-every", "3", "--checkpoint-every", "3", "--precision", "fp32",
          "--device", "cpu", "--seed", "0"]
PLAIN = ["--batch-size", "4", "--seq-len", "8", "--stride", "4"]
ALTERNATING = ["--alternating", "--seq-len-short", "8", "--seq-len-long", "16", "--batch-size-short", "4",
               "--batch-size-long", "2", "--long-ratio", "0.3", "--stride", "4", "--ema", "0.9"]


def _latent_set(ws: Path) -> Path:
    d = ws / "latents" / "tok-test"
    d.mkdir(parents=True)
    vids = []
    for i, split in enumerate(["train"] * 4 + ["val"]):
        g = torch.Generator().manual_seed(i)
        phase = torch.rand(4, 4, generator=g) * 6.28
        t = torch.arange(48, dtype=torch.float32)[:, None, None]
        lat = (0.8 * torch.sin(0.25 * t + phase)).half()
        act = torch.randint(0, 3, (48,), generator=g)
        meta = {"fps": "20", "video_id": f"c{i}", "tokenizer_id": "tok-test", "action_kind": "discrete",
                "action_count": "3"}
        save_file({"latents": lat, "actions": act}, str(d / f"c{i}.safetensors"), metadata=meta)
        vids.append({"id": f"c{i}", "file": f"c{i}.safetensors", "frames": 48, "split": split, "has_actions": True})
    (d / "index.json").write_text(json.dumps({"tokenizer_id": "tok-test", "tokens": 4, "channels": 4, "fps": 20,
                                              "frame_size": 64, "videos": vids}))
    return d


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in distributed.ENV_VARS}
    env.update(COLUMNS="100", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return env


def _run(cmd: list[str], timeout: int = 240) -> subprocess.CompletedProcess:
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=_env(), cwd=ROOT)
    assert res.returncode == 0, f"{shlex.join(cmd)}\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return res


def _torchrun(ws: Path, *args: str) -> subprocess.CompletedProcess:
    """The documented form: torchrun --standalone --nproc-per-node 2 $(which ahri) -- <command>."""
    return _run([TORCHRUN, "--standalone", "--nproc-per-node", "2", AHRI, "--", "--workspace", str(ws), *args])


def _single(ws: Path, *args: str) -> subprocess.CompletedProcess:
    return _run([AHRI, "--workspace", str(ws), *args])


def _records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _losses(run: Path) -> list[tuple[str, int, float]]:
    return [(r["kind"], r["step"], r["loss"] if r["kind"] == "train" else r["val_next"]) for r in _records(run)]


def _max_diff(a: Path, b: Path) -> float:
    x, y = load_file(str(a)), load_file(str(b))
    assert x.keys() == y.keys()
    return max(float((x[k].float() - y[k].float()).abs().max()) for k in x)


def _assert_same_run(one: Path, two: Path, files=("model.safetensors",)) -> None:
    la, lb = _losses(one), _losses(two)
    assert [(k, s) for k, s, _ in la] == [(k, s) for k, s, _ in lb]  # every record once: rank 1 wrote none
    for (_, _, a), (_, _, b) in zip(la, lb):
        assert a == pytest.approx(b, rel=1e-4, abs=1e-6)
    for f in files:
        assert _max_diff(one / f, two / f) < 1e-5


# ---------------------------------------------------------------------------------------------- torchrun
@needs_launcher
def test_ddp_matches_one_process_rank0_writes_and_one_process_resumes(tmp_path: Path):
    ws = tmp_path / "ws"
    _latent_set(ws)
    two = _torchrun(ws, "train", "--run", "two", *COMMON, *PLAIN, "--max-steps", "6")
    _single(ws, "train", "--run", "one", *COMMON, *PLAIN, "--max-steps", "6")
    runs = ws / "runs"
    _assert_same_run(runs / "one", runs / "two")
    meta = json.loads((runs / "two" / "run.json").read_text())
    assert meta["processes"] == 2 and meta["sharding"] == "ddp" and meta["status"] == "finished"
    assert meta["ranks_in_sync"] is True  # both ranks held the same parameters at every checkpoint
    assert two.stdout.count("dynamics run two") == 1  # one summary table: rank 1 prints nothing
    assert sorted(p.name for p in (runs / "two").iterdir()) == sorted(p.name for p in (runs / "one").iterdir())
    if (runs / "one" / "tensorboard").is_dir():  # with the tensorboard package: one event file, rank 0's
        assert len(list((runs / "two" / "tensorboard").iterdir())) == 1
    # one process continues the two-process run, as if it had never stopped
    _single(ws, "train", "--run", "two", "--resume", "--max-steps", "9")
    _single(ws, "train", "--run", "one9", *COMMON, *PLAIN, "--max-steps", "9")
    _assert_same_run(runs / "one9", runs / "two")


@needs_launcher
def test_fsdp_alternating_matches_one_process_and_loads_in_one(tmp_path: Path):
    ws = tmp_path / "ws"
    _latent_set(ws)
    _torchrun(ws, "train", "--run", "fsdp", "--fsdp", *COMMON, *ALTERNATING, "--max-steps", "8")
    _single(ws, "train", "--run", "one", *COMMON, *ALTERNATING, "--max-steps", "8")
    runs = ws / "runs"
    longs = [r["long_batches"] for r in _records(runs / "fsdp") if r["kind"] == "train"]
    assert any(v > 0 for v in longs) and any(v == 0 for v in longs)  # both lengths were trained
    _assert_same_run(runs / "one", runs / "fsdp", files=("model.safetensors", "ema.safetensors"))
    assert json.loads((runs / "fsdp" / "run.json").read_text())["sharding"] == "fsdp"

    from ahri_core.models.dynamics_io import load_dynamics_run

    loaded = load_dynamics_run(runs / "fsdp")  # whole tensors: a single process loads the sharded run's files
    model = loaded[0] if isinstance(loaded, tuple) else loaded
    assert sum(p.numel() for p in model.parameters()) > 0
    _single(ws, "train", "--run", "fsdp", "--resume", "--max-steps", "10")  # and resumes it
    assert json.loads((runs / "fsdp" / "run.json").read_text())["step"] == 10


@needs_launcher
def test_nproc_shortcut_runs_the_same_command_under_torchrun(tmp_path: Path):
    ws = tmp_path / "ws"
    _latent_set(ws)
    res = _single(ws, "train", "--nproc", "2", "--run", "np", *COMMON, *PLAIN, "--max-steps", "4")
    assert "launching 2 processes" in res.stderr
    meta = json.loads((ws / "runs" / "np" / "run.json").read_text())
    assert meta["processes"] == 2 and meta["step"] == 4


@needs_launcher
def test_tokenizer_training_and_tokenize_share_the_work(tmp_path: Path):
    from tokenizer_fixtures import make_store

    ws = tmp_path / "ws"
    make_store(ws / "videos" / "game", n=5, frames=16)
    tok = ["train", "--stage", "tokenizer", "--preset", "tiny", "--max-steps", "4", "--batch-size", "4",
           "--val-every", "2", "--checkpoint-every", "2", "--log-every", "2", "--device", "cpu", "--precision", "fp32"]
    _torchrun(ws, *tok, "--run", "tok2")
    _single(ws, *tok, "--run", "tok1")
    runs = ws / "runs"
    assert _max_diff(runs / "tok1" / "model.safetensors", runs / "tok2" / "model.safetensors") < 1e-5
    res = _torchrun(ws, "tokenize", "--tokenizer", "tok2", "--precision", "fp32", "--device", "cpu")
    assert res.stdout.count("tokenized now") == 1
    sets = [p for p in (ws / "latents").iterdir() if (p / "index.json").is_file()]
    index = json.loads((sets[0] / "index.json").read_text())
    assert sorted(v["id"] for v in index["videos"]) == sorted(f"clip{i:02d}" for i in range(5))
    for v in index["videos"]:
        assert (sets[0] / v["file"]).is_file()


# ---------------------------------------------------------------------------------------------- faults
# Each process of a run reads its own clock, and a process can die. These runs put a `sitecustomize` module on
# rank 1's path (Python imports it at start): it makes that rank's clock run fast, or kills the rank once the
# run has a checkpoint.
SITE = """
import os, signal, threading, time
if os.environ.get("RANK") == "1":
    rate = float(os.environ.get("AHRI_TEST_CLOCK_RATE", "1"))
    if rate != 1:
        real, t0 = time.monotonic, time.monotonic()
        time.monotonic = lambda: t0 + (real() - t0) * rate
    if os.environ.get("AHRI_TEST_DIE_WHEN"):  # killed once this file exists (a checkpoint of the run)
        def watch(path=os.environ["AHRI_TEST_DIE_WHEN"]):
            while not os.path.exists(path):
                time.sleep(0.05)
            time.sleep(0.5)
            os.kill(os.getpid(), signal.SIGKILL)
        threading.Thread(target=watch, daemon=True).start()
"""
FAST = ["--preset", "tiny", "--log-every", "2", "--val-every", "10", "--precision", "fp32", "--device", "cpu",
        "--seed", "0", *PLAIN]


def _with_site(tmp_path: Path, **env: str) -> dict[str, str]:
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(SITE)
    return {**_env(), "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]), **env}


def _procs_mentioning(text: str) -> list[int]:
    """Live processes whose command line names ``text`` (Linux's /proc)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if text in cmdline.read_bytes().decode(errors="replace"):
                found.append(int(cmdline.parent.name))
        except OSError:
            continue
    return [p for p in found if p != os.getpid()]


@needs_launcher
def test_processes_follow_rank_0s_clock_and_end_together(tmp_path: Path):
    """Rank 1's clock runs 10x fast: the minutes budget and the LR schedule follow rank 0's, so the run lasts
    its budget by rank 0's clock, ends with one final checkpoint, and the ranks hold the same weights."""
    ws = tmp_path / "ws"
    _latent_set(ws)
    cmd = [AHRI, "--workspace", str(ws), "train", "--nproc", "2", "--run", "skew", *FAST, "--checkpoint-every",
           "1000", "--minutes", "0.1"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=240, cwd=ROOT,
                         env=_with_site(tmp_path, AHRI_TEST_CLOCK_RATE="10"))
    assert res.returncode == 0, res.stderr[-3000:]
    meta = json.loads((ws / "runs" / "skew" / "run.json").read_text())
    assert meta["status"] == "finished" and meta["ranks_in_sync"] is True
    assert meta["seconds"] >= 6.0  # rank 1 alone would have stopped after 0.6 s
    assert meta["checkpoint_step"] == meta["step"] > 0
    train = [r for r in _records(ws / "runs" / "skew") if r["kind"] == "train"]
    assert train[-1]["step"] == meta["step"]  # the last, shortened interval is logged too
    assert len({r["step"] for r in train}) == len(train)


@needs_launcher
def test_sigterm_to_nproc_parent_stops_every_worker_after_a_checkpoint(tmp_path: Path):
    ws = tmp_path / "ws"
    _latent_set(ws)
    run = ws / "runs" / "term"
    cmd = [AHRI, "--workspace", str(ws), "train", "--nproc", "2", "--run", "term", *FAST, "--checkpoint-every",
           "1000", "--minutes", "5"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=_env())
    try:
        deadline = time.monotonic() + 180
        while not ((run / "metrics.jsonl").is_file() and '"train"' in (run / "metrics.jsonl").read_text()):
            assert proc.poll() is None and time.monotonic() < deadline, "training never started"
            time.sleep(0.5)
        workers = _procs_mentioning(str(ws))
        assert len(workers) >= 4  # this command, the launcher, two workers
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err[-3000:]
    assert "stopping the 2 processes" in err
    time.sleep(0.5)
    assert not [p for p in workers if Path(f"/proc/{p}").exists()], "a worker outlived the command"
    assert not _procs_mentioning(str(ws))
    meta = json.loads((run / "run.json").read_text())
    assert meta["status"] == "interrupted" and meta["checkpoint_step"] == meta["step"] > 0


@needs_launcher
def test_a_worker_that_dies_stops_the_run_in_one_line_and_the_checkpoint_stays(tmp_path: Path):
    from ahri_core.models.dynamics_io import load_dynamics_run

    ws = tmp_path / "ws"
    _latent_set(ws)
    cmd = [AHRI, "--workspace", str(ws), "train", "--nproc", "2", "--run", "dies", *FAST, "--checkpoint-every", "5",
           "--minutes", "5"]
    t0 = time.monotonic()
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=240, cwd=ROOT,
                         env=_with_site(tmp_path, AHRI_TEST_DIE_WHEN=str(ws / "runs" / "dies" / "model.safetensors")))
    assert time.monotonic() - t0 < 150  # not the 5 minutes of the budget, nor a collective's timeout
    assert res.returncode == 1
    assert "error: process 1 of the run was killed by SIGKILL" in res.stderr
    assert "Traceback" not in res.stderr, res.stderr[-6000:]
    meta = json.loads((ws / "runs" / "dies" / "run.json").read_text())
    # rank 0 either sees the connection close (failed) or is stopped by the launcher first (interrupted)
    assert meta["status"] in ("failed", "interrupted") and meta["checkpoint_step"] > 0, meta
    load_dynamics_run(ws / "runs" / "dies")  # the last checkpoint is whole (its sha256 is checked on load)
    assert not _procs_mentioning(str(ws))


# ---------------------------------------------------------------------------------------------- pieces
def _videos(n: int = 3, frames: int = 40) -> list[LatentVideo]:
    return [LatentVideo(f"v{i}", torch.zeros(frames + 4 * i, 2, 2)) for i in range(n)]


@pytest.mark.parametrize("world", [2, 3])
def test_sampler_ranks_share_each_batch_and_agree_on_its_length(world: int):
    vids = _videos()
    one = WindowBatchSampler(vids, (8, 6), (16, 3), 0.3, 4, seed=5)
    ranks = [WindowBatchSampler(vids, (8, 6), (16, 3), 0.3, 4, seed=5, rank=r, world=world) for r in range(world)]
    for epoch in (0, 1):
        for s in (one, *ranks):
            s.set_position(epoch, 2)
        whole = list(one)
        parts = [list(s) for s in ranks]
        assert all(len(p) == len(whole) for p in parts)
        for j, batch in enumerate(whole):
            lengths = {k[2] for p in parts for k in p[j]}
            assert lengths == {batch[0][2]}  # every rank trains the same length at step j
            assert sorted(k for p in parts for k in p[j]) == sorted(batch)  # together: the whole batch, once


def test_sampler_refuses_a_batch_smaller_than_the_ranks():
    with pytest.raises(ConfigError, match="smaller than the 2 processes"):
        WindowBatchSampler(_videos(), (8, 4), (16, 1), 0.3, 4, rank=0, world=2)


def test_environment_is_read_and_checked():
    assert distributed.from_env({}) == distributed.Dist()
    d = distributed.from_env({"RANK": "1", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"})
    assert (d.rank, d.world, d.local_world, d.main, d.enabled) == (1, 4, 2, False, True)
    with pytest.raises(ConfigError, match="RANK 4 is not within WORLD_SIZE 2"):
        distributed.from_env({"RANK": "4", "WORLD_SIZE": "2"})
    with pytest.raises(ConfigError, match="not whole numbers"):
        distributed.from_env({"RANK": "x", "WORLD_SIZE": "2"})
    assert distributed.shard(list(range(7)), distributed.Dist(1, 3)) == [1, 4]


def test_videos_are_assigned_longest_first_to_the_least_loaded_rank():
    # 100 -> rank 0; 60, 30, 10 -> rank 1 (100 frames each then); 5 -> the tie goes to rank 0
    assert assign_videos([10, 100, 30, 60, 5], 2) == [1, 0, 1, 1, 0]
    assert assign_videos([1, 1, 1], 1) == [0, 0, 0]
    assert sorted(assign_videos([3] * 4, 4)) == [0, 1, 2, 3]


# ---------------------------------------------------------------------------------------------- the launcher's parser
def _documented_torchrun_lines() -> list[str]:
    lines = []
    for doc in (ROOT / "docs" / "scaling.md", ROOT / "README.md"):
        for line in doc.read_text().splitlines():
            line = line.strip().removeprefix("$ ")
            if line.startswith("torchrun "):
                lines.append(line.split("  #")[0])
    return lines


def test_documented_torchrun_lines_reach_ahri_whole():
    from torch.distributed.run import get_args_parser

    lines = _documented_torchrun_lines()
    assert len(lines) >= 3
    parser = get_args_parser()
    for line in lines:
        argv = shlex.split(line.replace("$(which ahri)", "/usr/bin/ahri"))[1:]
        args = parser.parse_args(argv)
        assert args.training_script == "/usr/bin/ahri", line
        rest = [a for a in args.training_script_args if a != "--"]
        after = argv[argv.index("/usr/bin/ahri") + 1 :]
        assert rest == [a for a in after if a != "--"], line  # the launcher kept none of ahri's options


def test_ahri_options_that_need_the_double_dash_are_named_in_the_docs():
    """torchrun reads abbreviations of its own options even after the script: the options of ``ahri train``
    and ``ahri tokenize`` it would take are listed in docs/scaling.md, which is why the documented form puts
    ``--`` after ``$(which ahri)``."""
    import typer
    from torch.distributed.run import get_args_parser

    from ahri_cli.main import app

    cmd = typer.main.get_command(app)
    parser = get_args_parser()
    clashing = set()
    for name in ("train", "tokenize"):
        for param in cmd.commands[name].params:
            for opt in [*param.opts, *param.secondary_opts]:
                if not opt.startswith("--"):
                    continue
                try:
                    args = parser.parse_args(["script.py", opt, "1"])
                    taken = args.training_script_args != [opt, "1"]
                except SystemExit:
                    taken = True
                if taken:
                    clashing.add(opt)
    assert "--run" in clashing
    text = (ROOT / "docs" / "scaling.md").read_text()
    for opt in clashing:
        assert re.search(rf"`{re.escape(opt)}`", text), f"{opt} clashes with torchrun's options but docs/scaling.md does not say so"


def test_a_launched_process_ends_at_once_with_its_code_and_its_output_flushed(tmp_path: Path):
    """Under torchrun the command line ends its process with os._exit once the command returned (a normal exit ran
    C++ destructors after gloo's threads and now and then aborted a finished rank): the exit code and everything
    printed come through, and nothing registered to run at exit runs."""
    code = ("import atexit, sys; atexit.register(lambda: print('ATEXIT-RAN', flush=True)); "
            "from ahri_cli.main import entry; sys.argv = ['ahri', *sys.argv[1:]]; entry()")
    env = {k: v for k, v in os.environ.items() if k not in distributed.ENV_VARS}
    for world, ran in (("2", False), ("1", True)):
        for args, rc in ((["--version"], 0), (["train", "--no-such-flag"], 2)):
            res = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120,
                                 env={**env, "WORLD_SIZE": world, "RANK": "0"}, cwd=tmp_path)
            assert res.returncode == rc, res.stderr
            assert ("ATEXIT-RAN" in res.stdout) is ran
            assert (ahri_version() in res.stdout) if rc == 0 else ("no-such-flag" in res.stderr + res.stdout)


def ahri_version() -> str:
    import ahri_core

    return ahri_core.__version__


def test_the_process_a_signal_killed_is_named_even_when_another_was_seen_failing_first():
    from types import SimpleNamespace

    from ahri_cli.workers import _outcome

    def failure(code: int, t: float, sig: str = "") -> SimpleNamespace:
        return SimpleNamespace(exitcode=code, timestamp=t, signal_name=lambda: sig)

    # rank 0 ended (code 1, the connection lost) a moment before the launcher noticed rank 1's SIGKILL
    code, line = _outcome({0: failure(1, 10.0), 1: failure(-9, 10.5, "SIGKILL")})
    assert code == 1 and line.startswith("process 1 of the run was killed by SIGKILL")
    # the launcher's own stop of the others (SIGTERM) is not a cause: the first failure is named
    code, line = _outcome({0: failure(3, 10.0), 1: failure(-15, 10.2, "SIGTERM")})
    assert line.startswith("process 0 of the run ended with exit code 3")

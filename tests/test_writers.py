"""One writer per run and per latent set, durable atomic writes, a full disk, and leftover temporary files."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import SafetensorError

from ahri_cli.main import main
from ahri_core.errors import BusyError, WriteError
from ahri_core.fileio import remove_leftovers, write_json_atomic
from ahri_core.locking import LOCK_NAME, WriterLock, holder_pid
from tests.test_train_dynamics import _write_store
from tests.tokenizer_fixtures import tokenizer_workspace

TRAIN_ARGS = ["--preset", "tiny", "--shortcut", "--k-max", "8", "--alternating", "--seq-len-short", "8",
              "--seq-len-long", "16", "--batch-size-short", "2", "--batch-size-long", "1", "--long-ratio", "0.25",
              "--device", "cpu", "--log-every", "2", "--threads", "1"]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}


def _wait_for(cond, proc: subprocess.Popen, what: str, timeout: float = 240) -> None:
    t0 = time.monotonic()
    while not cond():
        if proc.poll() is not None:
            raise AssertionError(f"the first writer ended before {what}: {proc.stderr.read()[-2000:]}")
        if time.monotonic() - t0 > timeout:
            proc.kill()
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def _error_lines(err: str) -> list[str]:
    assert "Traceback" not in err, err
    return [line for line in err.splitlines() if line.startswith("error:")]


# ---------------------------------------------------------------------------------------------- the lock
def test_a_second_lock_is_refused_with_the_holders_pid_and_released_at_the_end(tmp_path: Path):
    first = WriterLock(tmp_path / "run", "run").acquire()
    assert holder_pid(tmp_path / "run") == os.getpid()
    with pytest.raises(BusyError, match=rf"run {tmp_path / 'run'} .*pid {os.getpid()}"):
        WriterLock(tmp_path / "run", "run").acquire()
    first.release()
    assert not (tmp_path / "run" / LOCK_NAME).exists()  # a writer that ends leaves nothing behind
    with WriterLock(tmp_path / "run", "run") as again:
        assert again.held


def test_leftover_temporary_files_are_removed_when_the_lock_is_taken(tmp_path: Path):
    keep = ["model.safetensors", "run.json", ".notes", "index.json", "a.part"]
    gone = [".model.k2j1x.part.safetensors", ".model.state.ab12.part.pt", ".run.q.part.json", ".clip00.z9.raw"]
    for name in keep + gone:
        (tmp_path / name).write_bytes(b"x")
    lock = WriterLock(tmp_path, "latent set").acquire()
    assert sorted(p.name for p in lock.removed) == sorted(gone)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(keep + [LOCK_NAME])
    lock.release()


def test_only_rank_0_takes_the_run_lock(tmp_path: Path, monkeypatch):
    from ahri_core.train import common, distributed

    (tmp_path / "run").mkdir()
    monkeypatch.setattr(common.distributed, "current", lambda: distributed.Dist(rank=1, world=2))
    run = common.RunDir(tmp_path / "run").claim()
    assert not run.writer.held and not (tmp_path / "run" / LOCK_NAME).exists()
    monkeypatch.setattr(common.distributed, "current", lambda: distributed.Dist(rank=0, world=2))
    assert common.RunDir(tmp_path / "run").claim().writer.held


# ---------------------------------------------------------------------------------------------- fsync
def test_atomic_writes_fsync_the_file_before_the_rename_and_the_folder_after(tmp_path: Path, monkeypatch):
    events: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace
    folder = os.stat(tmp_path)

    def fsync(fd: int) -> None:
        st = os.fstat(fd)
        events.append(("fsync", "folder" if os.path.samestat(st, folder) else "file"))
        real_fsync(fd)

    def replace(a, b) -> None:  # noqa: ANN001
        events.append(("rename", Path(b).name))
        real_replace(a, b)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    write_json_atomic(tmp_path / "index.json", {"a": 1})
    assert events == [("fsync", "file"), ("rename", "index.json"), ("fsync", "folder")]
    assert json.loads((tmp_path / "index.json").read_text()) == {"a": 1}


def test_remove_leftovers_takes_the_temporaries_of_killed_writers_and_nothing_else(tmp_path: Path):
    gone = [".model.k2j4.part.safetensors", ".run.ab12.part.json", ".clip00.x9.raw", ".tmpQUpd71"]
    kept = ["model.safetensors", "tmpQUpd71", ".tmpQUpd71x", ".tmp12345", ".hidden", "run.json", LOCK_NAME]
    for name in gone + kept:
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / ".tmpAbCdEf").mkdir()  # a folder of that name is not a writer's file
    removed = remove_leftovers(tmp_path)
    assert sorted(p.name for p in removed) == sorted(gone)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*kept, ".tmpAbCdEf"])


# ---------------------------------------------------------------------------------------------- two writers
def test_an_action_map_is_not_fitted_while_the_run_is_being_written(tmp_path: Path, capsys):
    run = tmp_path / "ws" / "runs" / "lam"
    run.mkdir(parents=True)
    write_json_atomic(run / "run.json", {"kind": "dynamics", "status": "running"})
    with WriterLock(run, "run"):
        rc = main(["-w", str(tmp_path / "ws"), "train", "--stage", "action-map", "--run", "lam"])
    assert rc == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: run ") and f"(pid {os.getpid()})" in err[-1]
    assert not (run / "action_map.json").exists()


def test_two_training_runs_on_one_run_the_second_is_refused_until_the_first_dies(tmp_path: Path, capsys):
    _write_store(tmp_path)
    run = tmp_path / "runs" / "r1"
    first = subprocess.Popen(
        [sys.executable, "-m", "ahri_cli.main", "--workspace", str(tmp_path), "-q", "train", "--run", "r1",
         "--max-steps", "100000", "--checkpoint-every", "2", *TRAIN_ARGS],
        env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    try:
        _wait_for(lambda: (run / "model.state.pt").is_file(), first, "its first checkpoint")
        rc = main(["--workspace", str(tmp_path), "train", "--run", "r1", "--resume", "--max-steps", "100000",
                   "--device", "cpu"])
        err = capsys.readouterr().err
        assert rc == 1, err
        lines = _error_lines(err)
        assert len(lines) == 1 and f"pid {first.pid}" in lines[0] and "r1" in lines[0], err
        assert first.poll() is None  # the first writer goes on
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(60)
    assert first.returncode == -signal.SIGKILL
    assert holder_pid(run) == first.pid  # killed: its lock file stays, unlocked
    (run / ".model.x1y2.part.safetensors").write_bytes(b"half a checkpoint")  # as a kill mid-write leaves it
    (run / ".tmpQUpd71").write_bytes(b"half a tensor")  # safetensors' own temporary, killed inside save_file
    step = json.loads((run / "run.json").read_text())["checkpoint_step"]
    rc = main(["--workspace", str(tmp_path), "train", "--run", "r1", "--resume", "--max-steps", str(step + 2),
               "--device", "cpu", "--threads", "1"])
    assert rc == 0, capsys.readouterr().err
    assert json.loads((run / "run.json").read_text())["checkpoint_step"] == step + 2
    assert not [p.name for p in run.iterdir() if p.name.startswith(".")]  # leftovers and lock file gone


SLOW_TOKENIZE = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from ahri_core.data.tokenize import tokenize_videos
    from ahri_core.sources.store import list_videos
    from ahri_core.video import iter_frames
    ws = Path({ws!r})

    def slow(path, fps, size):
        for i, f in enumerate(iter_frames(path, fps=fps, size=size)):
            if i == 3:
                (ws / "started").write_text("1")
                time.sleep(600)  # in the middle of a latent file, until killed
            yield f

    tokenize_videos("tok1", list_videos(ws / "videos"), ws / "latents", runs_dir=ws / "runs", batch_size=2,
                    decoder=slow, device="cpu")
    """
)


def test_two_tokenize_into_one_set_the_second_is_refused_until_the_first_dies(tmp_path: Path, capsys):
    ws = tokenizer_workspace(tmp_path, n=3, frames=12)
    out = ws / "latents" / "tok1"
    first = subprocess.Popen([sys.executable, "-c", SLOW_TOKENIZE.format(ws=str(ws))], env=_env(),
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(lambda: (ws / "started").is_file(), first, "it started a latent file")
        rc = main(["-w", str(ws), "tokenize", "--tokenizer", "tok1", "--device", "cpu"])
        err = capsys.readouterr().err
        assert rc == 1, err
        lines = _error_lines(err)
        assert len(lines) == 1 and f"pid {first.pid}" in lines[0] and str(out) in lines[0], err
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(60)
    assert first.returncode == -signal.SIGKILL
    assert [p for p in out.iterdir() if p.name.endswith(".raw")]  # the killed writer's temporary file
    assert main(["-w", str(ws), "tokenize", "--tokenizer", "tok1", "--device", "cpu"]) == 0
    index = json.loads((out / "index.json").read_text())
    assert sorted(v["id"] for v in index["videos"]) == ["clip00", "clip01", "clip02"]
    assert sorted(p.name for p in out.iterdir()) == ["clip00.safetensors", "clip01.safetensors",
                                                     "clip02.safetensors", "index.json"]


# ---------------------------------------------------------------------------------------------- a full disk
@pytest.mark.parametrize("where", ["weights", "state"])
def test_a_full_disk_during_a_checkpoint_is_one_line_and_keeps_the_previous_one(tmp_path: Path, capsys,
                                                                                 monkeypatch, where):
    import ahri_core.checkpoint as ck
    from ahri_core.models.dynamics_io import load_dynamics_run

    _write_store(tmp_path)
    real_save_file, real_torch_save = ck.save_file, torch.save

    def save_file(tensors, filename, metadata=None):  # noqa: ANN001
        if where == "weights" and json.loads((metadata or {}).get("step", "0")) >= 4:
            Path(filename).write_bytes(b"the first bytes")  # a part was written before the disk filled
            raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
        return real_save_file(tensors, filename, metadata=metadata)

    def torch_save(obj, f, *a, **k):  # noqa: ANN001
        if where == "state" and isinstance(obj, dict) and obj.get("step", 0) >= 4:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")
        return real_torch_save(obj, f, *a, **k)

    monkeypatch.setattr(ck, "save_file", save_file)
    monkeypatch.setattr(ck.torch, "save", torch_save)
    rc = main(["--workspace", str(tmp_path), "train", "--run", "r1", "--max-steps", "6", "--checkpoint-every", "2",
               *TRAIN_ARGS])
    err = capsys.readouterr().err
    assert rc == 1, err
    lines = _error_lines(err)
    assert len(lines) == 1 and "cannot write" in lines[0] and "is kept" in lines[0], err
    run = tmp_path / "runs" / "r1"
    assert json.loads((run / "run.json").read_text())["status"] == "failed"
    assert torch.load(run / "model.state.pt", weights_only=True)["step"] == 2
    monkeypatch.undo()
    load_dynamics_run(run / "model.safetensors")  # whole, and its recorded sha256 still matches
    assert not [p.name for p in run.iterdir() if p.name.startswith(".")]


def test_a_full_disk_during_a_latent_file_stops_tokenize_in_one_line(tmp_path: Path, capsys, monkeypatch):
    from ahri_core.data import latents

    ws = tokenizer_workspace(tmp_path, n=2, frames=12)
    real_append = latents.LatentFileWriter.append

    class FullDisk:
        closed = False

        def write(self, data: bytes) -> int:
            raise OSError(errno.ENOSPC, "No space left on device")

        def close(self) -> None:
            self.closed = True

    def append(self, lat):  # noqa: ANN001
        self._f.close()
        self._f = FullDisk()
        return real_append(self, lat)

    monkeypatch.setattr(latents.LatentFileWriter, "append", append)
    rc = main(["-w", str(ws), "tokenize", "--tokenizer", "tok1", "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 1, err
    lines = _error_lines(err)
    assert len(lines) == 1 and "No space left on device" in lines[0] and "clip00.safetensors" in lines[0], err
    out = ws / "latents" / "tok1"
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # no temporary file left


def test_a_full_disk_during_a_recording_stops_fetch_in_one_line(tmp_path: Path, capsys, monkeypatch):
    import av.error

    from ahri_core.video import write as write_mod

    real_open = write_mod.av.open

    class FullDisk:
        def __init__(self, container) -> None:  # noqa: ANN001
            self.c = container

        def __getattr__(self, name: str):  # noqa: ANN204
            return getattr(self.c, name)

        def mux(self, packet) -> None:  # noqa: ANN001
            raise av.error.OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(write_mod.av, "open", lambda *a, **k: FullDisk(real_open(*a, **k)))
    rc = main(["-w", str(tmp_path), "fetch", "--source", "game", "--clips", "2", "--frames", "24"])
    err = capsys.readouterr().err
    assert rc == 1, err
    lines = _error_lines(err)
    assert len(lines) == 1 and "No space left on device" in lines[0], err
    dest = tmp_path / "videos" / "game"
    assert not [p for p in dest.rglob("*") if p.suffix == ".mp4" or ".part" in p.name] if dest.exists() else True


# ---------------------------------------------------------------------------------------------- a real small disk
@pytest.fixture
def small_disk(tmp_path: Path):
    """A 256 KiB tmpfs (needs the right to mount: root in a container, else skipped)."""
    d = tmp_path / "small"
    d.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(d)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"mounting a tmpfs is not permitted here ({r.stderr.strip() or r.returncode})")
    yield d
    subprocess.run(["umount", str(d)], capture_output=True)


def test_a_really_full_disk_keeps_the_previous_checkpoint(small_disk: Path):
    from safetensors.torch import load_file

    from ahri_core.checkpoint import load_state, save_state, save_weights

    small = {"w": torch.arange(1000, dtype=torch.float32)}
    save_weights(small_disk / "model.safetensors", small, "test", {"n": 1})
    save_state(small_disk / "model.state.pt", {"step": 1, "w": small["w"]})
    big = {"w": torch.zeros(200_000)}
    with pytest.raises(WriteError, match="model.safetensors.*previous checkpoint is kept"):
        save_weights(small_disk / "model.safetensors", big, "test", {"n": 1})
    with pytest.raises(WriteError, match="model.state.pt.*previous training state is kept"):
        save_state(small_disk / "model.state.pt", {"step": 2, "w": big["w"]})
    assert torch.equal(load_file(str(small_disk / "model.safetensors"))["w"], small["w"])
    assert load_state(small_disk / "model.state.pt")["step"] == 1
    assert sorted(p.name for p in small_disk.iterdir()) == ["model.safetensors", "model.state.pt"]


def test_a_really_full_disk_during_a_latent_file_and_a_video(small_disk: Path):
    from ahri_core.data.latents import LatentFileWriter
    from ahri_core.video import write_video

    with pytest.raises(WriteError, match="No space left on device"):
        with LatentFileWriter(small_disk / "clip.safetensors", 16, 8) as w:
            for _ in range(200):
                w.append(torch.randn(8, 16, 8))
            w.finish(None, {"fps": "20"})
    rng = np.random.default_rng(0)
    with pytest.raises(WriteError, match="No space left on device"):
        write_video(small_disk / "clip.mp4", (rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(400)),
                    20, crf=0)
    assert list(small_disk.iterdir()) == []


def test_a_video_whose_sidecar_is_written_survives_an_interrupt_in_the_manifest_update(tmp_path, monkeypatch):
    """The sidecar is the commit point: Ctrl-C or SIGTERM while the manifest is updated leaves the clip whole
    (the manifest is rebuilt from the sidecars), instead of removing a clip that was already complete."""
    from ahri_core.sources import store

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(store, "manifest_add", interrupted)
    frames = np.zeros((6, 16, 16, 3), dtype=np.uint8)
    with pytest.raises(KeyboardInterrupt):
        store.store_frames(tmp_path, "clip", frames, 10.0, {}, actions=np.array([-1, 0, 0, 0, 0, 0]), action_meanings=["a"])
    assert (tmp_path / "clip.mp4").is_file() and (tmp_path / "clip.json").is_file()
    (rec,) = store.list_videos(tmp_path, recursive=False, bare=False)
    assert rec.id == "clip" and rec.meta["frames"] == 6
    monkeypatch.undo()
    assert "clip" in json.dumps(store.rebuild_manifest(tmp_path))

    # interrupted before the sidecar: nothing of the clip is left
    monkeypatch.setattr(store, "write_json_atomic", interrupted)
    with pytest.raises(KeyboardInterrupt):
        store.store_frames(tmp_path, "other", frames, 10.0, {})
    assert not list(tmp_path.glob("other*"))

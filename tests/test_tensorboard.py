"""TensorBoard events of training runs: every number of metrics.jsonl as a scalar at its step, the preview
pictures at each validation (tokenizer reconstructions, the dynamics dream), resume without repeated steps,
and a run without the tensorboard package."""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from dynamics_fixtures import clip, tiny_settings

from ahri_core.data.windows import make_latent_set
from ahri_core.fileio import read_jsonl
from ahri_core.progress import RecordingProgress
from ahri_core.train.dynamics import train_dynamics
from ahri_core.train.tensorboard import MISSING_NOTE, scalar_items

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import (  # noqa: E402
    IMAGES,
    SCALARS,
    EventAccumulator,
)


def events(run: Path) -> EventAccumulator:
    acc = EventAccumulator(str(run / "tensorboard"), size_guidance={SCALARS: 0, IMAGES: 0})
    acc.Reload()
    return acc


def check_scalars(run: Path, acc: EventAccumulator) -> None:
    """Every number of every metrics.jsonl record is a scalar at the record's step, once, with its value."""
    expected: dict[str, dict[int, float]] = {}
    for rec in read_jsonl(run / "metrics.jsonl"):
        for name, value in scalar_items(rec).items():
            assert int(rec["step"]) not in expected.setdefault(name, {}), (name, rec["step"])
            expected[name][int(rec["step"])] = value
    assert {"train/loss", "train/lr", "train/grad_norm", "train/skipped_steps", "train/frames_per_s"} <= set(expected)
    assert set(acc.Tags()["scalars"]) == set(expected)
    for name, by_step in expected.items():
        got = acc.Scalars(name)
        assert [e.step for e in got] == sorted(by_step), name  # each step once, in order
        assert [e.value for e in got] == pytest.approx([by_step[s] for s in sorted(by_step)], rel=1e-5, nan_ok=True)


def image_steps(acc: EventAccumulator, tag: str) -> list[int]:
    return [e.step for e in acc.Images(tag)]


def test_tokenizer_run_logs_scalars_and_reconstructions(tmp_path: Path, one_thread):
    from tokenizer_fixtures import make_store, tiny_train

    from ahri_core.train.tokenizer import train_tokenizer

    recs = make_store(tmp_path / "videos", n=3, frames=12)
    run = tmp_path / "runs" / "tok"
    train_tokenizer(run, recs, tiny_train(max_steps=4, log_every=2, val_every=2), cache_dir=tmp_path / "cache")
    acc = events(run)
    check_scalars(run, acc)
    assert {"val/psnr", "val/mse", "train/psnr", "train/frames_seen"} <= set(acc.Tags()["scalars"])
    assert image_steps(acc, "preview/reconstructions") == [0, 2, 4]
    img = acc.Images("preview/reconstructions")[-1]
    assert (img.height, img.width) == (2 * 2 * 32, 8 * 2 * 32)  # 8 held-out frames over their reconstructions, 2x


def decode_png(encoded: bytes) -> np.ndarray:
    import io

    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(encoded)))


def tokenizer_run(runs: Path, name: str = "tok1") -> None:
    """An untrained tiny tokenizer run (4 tokens x 16 channels) for the dream to decode with."""
    from ahri_core.checkpoint import save_weights
    from ahri_core.models.tokenizer import build_tokenizer

    torch.manual_seed(0)
    m = build_tokenizer("tiny")
    (runs / name).mkdir(parents=True)
    save_weights(runs / name / "model.safetensors", m, "tokenizer", m.cfg.to_dict(), {})


class Stop(Exception):
    pass


def test_dynamics_run_logs_the_dream_and_resumes_without_repeating_steps(tmp_path: Path, one_thread):
    runs = tmp_path / "runs"
    tokenizer_run(runs)
    data = make_latent_set([clip(i, 24, channels=16) for i in range(2)], [clip(100, 24, channels=16)],
                           action_count=3, tokenizer_id="tok1")
    train, dset, diff = tiny_settings(max_steps=8, log_every=1, val_every=3, checkpoint_every=4)

    def crash(step: int, rec: dict) -> None:  # a process killed at step 6: steps 5 and 6 are past the checkpoint
        if step == 6:
            raise Stop

    with pytest.raises(Stop):
        train_dynamics(data, runs / "dyn", train, dset, diff, on_step=crash)
    assert image_steps(events(runs / "dyn"), "preview/dream") == [0, 3]
    assert [e.step for e in events(runs / "dyn").Scalars("train/loss")] == [1, 2, 3, 4, 5]
    prog = RecordingProgress()
    train_dynamics(data, runs / "dyn", train.model_copy(update={"resume": True}), dset, diff, progress=prog)
    acc = events(runs / "dyn")
    check_scalars(runs / "dyn", acc)  # steps 5.. again, once each
    assert [e.step for e in acc.Scalars("train/loss")] == list(range(1, 9))
    assert {"val/next", "val/copy_last", "val/tau=0.5", "val/memorising", "train/tokens_per_s"} <= set(acc.Tags()["scalars"])
    assert image_steps(acc, "preview/dream") == [0, 3, 6, 8]
    # 2 context frames | predictions at horizons 1, 2, 4, 8 over the truth; 32x32 frames, 2-pixel gaps, shown 3x
    dream = acc.Images("preview/dream")[-1]
    assert dream.height == 3 * (2 + 2 * 34)
    assert dream.width == 3 * (2 + 6 * 34 + 6)
    px = decode_png(dream.encoded_image_string)
    assert px.shape == (dream.height, dream.width, 3)
    row = lambda i, x0, x1: px[3 * (2 + 34 * i) : 3 * (34 + 34 * i), 3 * x0 : 3 * x1]  # noqa: E731
    assert np.array_equal(row(0, 2, 68), row(1, 2, 68))  # the same context above and below
    assert row(1, 76, 210).std() > 0  # decoded truth, not an empty place
    assert not any("preview" in m or "TensorBoard" in m for m in prog.messages), prog.messages


def test_without_the_package_or_a_tokenizer(tmp_path: Path, one_thread, monkeypatch):
    data = make_latent_set([clip(0, 24)], [clip(100, 24)], action_count=3)  # no tokenizer to decode with
    train, dset, diff = tiny_settings(max_steps=2, log_every=1, val_every=2)
    prog = RecordingProgress()
    train_dynamics(data, tmp_path / "runs" / "a", train, dset, diff, progress=prog)
    notes = [m for m in prog.messages if "preview" in m]
    assert len(notes) == 1 and "tokenizer was not found" in notes[0], prog.messages
    acc = events(tmp_path / "runs" / "a")
    assert acc.Tags()["images"] == [] and "val/next" in acc.Tags()["scalars"]

    train_dynamics(data, tmp_path / "runs" / "b", train.model_copy(update={"tensorboard": False}), dset, diff,
                   progress=(prog := RecordingProgress()))
    assert not (tmp_path / "runs" / "b" / "tensorboard").exists() and MISSING_NOTE not in prog.messages

    for name in ("tensorboard", "torch.utils.tensorboard"):  # as if the package were not installed
        monkeypatch.setitem(sys.modules, name, None)
    r = train_dynamics(data, tmp_path / "runs" / "c", train, dset, diff, progress=(prog := RecordingProgress()))
    assert r.step == 2 and MISSING_NOTE in prog.messages
    assert not (tmp_path / "runs" / "c" / "tensorboard").exists()
    assert len(read_jsonl(tmp_path / "runs" / "c" / "metrics.jsonl")) == 4  # 2 train + 2 val records
    assert Counter(m == MISSING_NOTE for m in prog.messages)[True] == 1

"""Training on a latent set much larger than the process's memory: peak RSS stays flat as the set grows.

The sets are sparse files (their latents read as zeros, without taking disk space), so a 2 GiB set costs
nothing to make; the training process maps them as it would any latent set."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest

TOKENS, CHANNELS = 16, 16  # 512 bytes of fp16 per frame
FRAME_BYTES = TOKENS * CHANNELS * 2

TRAIN = r"""
import json, sys
from ahri_core.runtime import process_memory
from ahri_core.config.settings import DataSettings, DiffusionSettings, TrainSettings
from ahri_core.train.dynamics import train_dynamics

before = process_memory().get("VmHWM", 0)
train = TrainSettings(preset="tiny", batch_size=4, max_steps=12, log_every=4, val_every=1000, checkpoint_every=1000,
                      device="cpu", precision="fp32", threads=1, warmup_steps=2)
train_dynamics(sys.argv[1], sys.argv[2], train, DataSettings(seq_len=8, stride=4), DiffusionSettings())
print(json.dumps({"peak": process_memory().get("VmHWM", 0), "before": before}))
"""


def _sparse_set(root: Path, videos: int, frames: int) -> int:
    """A latent set of ``videos`` sparse files of ``frames`` zero frames each; returns its size in bytes."""
    root.mkdir(parents=True)
    entries, total = [], 0
    for i in range(videos):
        n = frames * FRAME_BYTES
        header = {"latents": {"dtype": "F16", "shape": [frames, TOKENS, CHANNELS], "data_offsets": [0, n]},
                  "__metadata__": {"fps": "20", "video_id": f"v{i}", "tokenizer_id": "tok-sparse",
                                   "action_kind": "none", "action_count": "0"}}
        head = json.dumps(header).encode()
        head += b" " * (-len(head) % 8)
        path = root / f"v{i}.safetensors"
        with open(path, "wb") as f:
            f.write(struct.pack("<Q", len(head)) + head)
            f.truncate(8 + len(head) + n)  # the data: a hole, read as zeros
        total += n
        entries.append({"id": f"v{i}", "file": path.name, "frames": frames, "split": "val" if i == 0 else "train",
                        "has_actions": False})
    (root / "index.json").write_text(json.dumps({"tokenizer_id": "tok-sparse", "tokens": TOKENS, "channels": CHANNELS,
                                                 "fps": 20, "frame_size": "64x64", "videos": entries}))
    return total


def _peak(latents: Path, run: Path) -> int:
    res = subprocess.run([sys.executable, "-c", TRAIN, str(latents), str(run)], capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout.strip().splitlines()[-1])["peak"]


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="peak RSS is read from /proc")
def test_peak_memory_does_not_grow_with_the_latent_set(tmp_path: Path):
    small = _sparse_set(tmp_path / "small", 4, 2**15)  # 4 x 16 MiB
    large = _sparse_set(tmp_path / "large", 4, 2**19)  # 4 x 256 MiB = 1 GiB, 16 times the small set
    p_small = _peak(tmp_path / "small", tmp_path / "run-small")
    p_large = _peak(tmp_path / "large", tmp_path / "run-large")
    mib = 2**20
    # 960 MiB more latents, at most 64 MiB more resident memory, and the large set is bigger than the process
    assert p_large - p_small < 64 * mib, (p_small / mib, p_large / mib, small / mib, large / mib)
    assert large > 2 * p_large, (p_large / mib, large / mib)

"""Memory-mapped latent sets: the same windows and training as in-memory sets, damaged files named."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from ahri_core.data.index import INDEX_FORMAT, write_index
from ahri_core.data.latents import MappedLatents, map_tensor, read_latent_file, write_latent_file
from ahri_core.data.windows import (
    WindowDataset,
    all_finite,
    load_latent_set,
    make_loader,
    validation_windows,
    windows,
)
from ahri_core.errors import DataError

TOKENS, CHANNELS = 4, 3


def write_set(root: Path, frames: list[int], actions: str = "discrete", seed: int = 0) -> Path:
    """A latent set as ``ahri tokenize`` writes it: one file per video plus index.json (last video held out)."""
    g = torch.Generator().manual_seed(seed)
    d = root / "tok"
    d.mkdir(parents=True)
    vids = []
    for i, n in enumerate(frames):
        lat = torch.rand(n, TOKENS, CHANNELS, generator=g) * 2 - 1
        if actions == "discrete":
            act = torch.randint(-1, 5, (n,), generator=g)
        elif actions == "continuous":
            act = torch.randn(n, 2, generator=g)
        else:
            act = None
        write_latent_file(d / f"v{i}.safetensors", lat, act, {"fps": "20", "video_id": f"v{i}", "frames": str(n)})
        vids.append({"id": f"v{i}", "file": f"v{i}.safetensors", "frames": n, "fps": 20.0,
                     "split": "val" if i == len(frames) - 1 else "train", "has_actions": act is not None,
                     "action_kind": actions if act is not None else "none",
                     "action_count": 5 if act is not None else 0})
    write_index(d, {"format": INDEX_FORMAT, "tokenizer_id": "tok", "tokens": TOKENS, "channels": CHANNELS,
                    "fps": 20.0, "frame_size": 64, "videos": vids})
    return d


@pytest.mark.parametrize(
    "shape,dtype",
    [((7, 4, 3), torch.float16), ((1, 64, 12), torch.float16), ((33, 2, 5), torch.float32),
     ((0, 4, 3), torch.float16)],
)
def test_map_tensor_equals_the_loaded_tensor(tmp_path: Path, shape, dtype):
    lat = (torch.rand(shape) * 2 - 1).to(dtype)
    acts = {"I": torch.randint(-1, 9, shape[:1]), "F": torch.randn(shape[0], 3)}
    for kind, act in acts.items():
        path = tmp_path / f"{kind}.safetensors"
        save_file({"latents": lat, "actions": act}, str(path), metadata={"fps": "20"})
        mm = map_tensor(path, "latents")
        assert mm.shape == shape and not mm.flags.writeable
        assert torch.equal(torch.from_numpy(np.array(mm)), load_file(str(path))["latents"])
        assert torch.equal(torch.from_numpy(np.array(map_tensor(path, "actions"))), act)
    # a window of a mapped video is a float16 copy of its frames only
    write_latent_file(tmp_path / "w.safetensors", lat, None, {})
    stored, _, _ = read_latent_file(tmp_path / "w.safetensors")
    m = MappedLatents(tmp_path / "w.safetensors")
    assert m.shape == shape and m.dim() == 3 and len(m) == shape[0] and m.dtype == torch.float16
    w = m[2:5]
    assert w.dtype == torch.float16 and torch.equal(w, stored[2:5]) and torch.equal(m[::3], stored[::3])
    f32 = MappedLatents(tmp_path / "F.safetensors")  # float32 storage rounds as the in-memory path rounds
    assert torch.equal(f32[:], lat.float().to(torch.float16))


def test_mapped_and_in_memory_sets_give_identical_windows(tmp_path: Path):
    for kind in ("discrete", "continuous", "none"):
        d = write_set(tmp_path / kind, [40, 23, 17, 30], actions=kind)
        mem, mapped = load_latent_set(d, mmap=False), load_latent_set(d)
        assert all(v.mapped for v in mapped.train + mapped.val) and not any(v.mapped for v in mem.train)
        assert mem.describe() == mapped.describe() and mapped.action_kind == kind
        for a_vids, b_vids in ((mem.train, mapped.train), (mem.val, mapped.val)):
            a = WindowDataset(a_vids, mem.action_kind, mem.action_dim)
            b = WindowDataset(b_vids, mapped.action_kind, mapped.action_dim)
            for key in windows(a_vids, 8, 3) + windows(a_vids, 16, 5):
                x, y = a[key], b[key]
                assert y["latents"].dtype == torch.float16 and y["latents"].is_contiguous()
                assert torch.equal(x["latents"], y["latents"])
                if kind != "none":
                    assert torch.equal(x["actions"], y["actions"])
        assert validation_windows(mem.val, 8, 4) == validation_windows(mapped.val, 8, 4)
        for v, w in zip(mem.train, mapped.train):
            assert torch.equal(v.latents, w.latents[:]) and all_finite(w.latents, chunk=7)


def test_make_loader_iterates_a_mapped_set(tmp_path: Path):
    d = write_set(tmp_path, [50, 37, 29, 20])
    mem, mapped = load_latent_set(d, mmap=False), load_latent_set(d)
    kw = dict(short=(8, 3), long=(16, 2), long_ratio=0.3, stride=4, seed=3, action_kind="discrete")
    a, _ = make_loader(mem.train, **kw)
    b, _ = make_loader(mapped.train, **kw)
    n = 0
    for x, y in zip(a, b, strict=True):
        assert x.keys == y.keys and x.kind == y.kind and x.latents.dtype == torch.float32
        assert torch.equal(x.latents, y.latents) and torch.equal(x.actions, y.actions)
        n += 1
    assert n > 3
    # a worker process maps the file itself: pickling carries the path, not the frames
    blob = pickle.dumps(mapped.train[0].latents)
    assert len(blob) < 1000 and torch.equal(pickle.loads(blob)[:], mapped.train[0].latents[:])
    w, _ = make_loader(mapped.train, **kw, num_workers=1)
    assert [bt.keys for bt in w] == [bt.keys for bt in b]


def test_training_is_bit_identical_mapped_or_in_memory(tmp_path: Path):
    from ahri_core.config.settings import DataSettings, DiffusionSettings, TrainSettings
    from ahri_core.train.dynamics import train_dynamics

    d = write_set(tmp_path / "set", [24, 20, 16])
    train = TrainSettings(preset="tiny", batch_size=2, max_steps=3, lr=3e-3, warmup_steps=1, log_every=1,
                          val_every=3, checkpoint_every=1000, seed=0, device="cpu", precision="fp32")
    data, diff = DataSettings(seq_len=8, stride=4), DiffusionSettings()
    runs = {m: train_dynamics(load_latent_set(d, mmap=m), tmp_path / f"run-{m}", train, data, diff)
            for m in (False, True)}
    val = [{k: v for k, v in runs[m].val.items() if k != "elapsed"} for m in (False, True)]
    assert val[0] == val[1] and any(k.startswith("val_") for k in val[0])
    a, b = load_file(str(runs[False].weights)), load_file(str(runs[True].weights))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _damage(path: Path, how: str) -> None:
    raw = bytearray(path.read_bytes())
    n = int.from_bytes(raw[:8], "little")
    if how == "truncated":
        path.write_bytes(bytes(raw[: len(raw) - 100]))
    elif how == "header-cut":
        path.write_bytes(bytes(raw[: 8 + n // 2]))
    elif how == "tiny":
        path.write_bytes(bytes(raw[:5]))
    elif how == "garbage-header":
        raw[8:20] = b"\xff" * 12
        path.write_bytes(bytes(raw))
    elif how == "huge-length":
        raw[:8] = (1 << 40).to_bytes(8, "little")
        path.write_bytes(bytes(raw))
    elif how == "bad-offsets":
        header = raw[8 : 8 + n].decode()
        header = header.replace('"shape":[40,', '"shape":[41,')  # same offsets: they no longer match the shape
        path.write_bytes(bytes(raw[:8]) + header.encode() + bytes(raw[8 + n :]))


@pytest.mark.parametrize("how", ["truncated", "header-cut", "tiny", "garbage-header", "huge-length", "bad-offsets"])
def test_a_damaged_file_is_a_data_error_naming_it(tmp_path: Path, how):
    d = write_set(tmp_path, [40, 30, 20])
    _damage(d / "v0.safetensors", how)
    with pytest.raises(DataError, match=r"v0\.safetensors"):
        load_latent_set(d)
    with pytest.raises(DataError, match=r"v0\.safetensors"):
        map_tensor(d / "v0.safetensors", "latents")


def test_missing_tensor_and_non_finite_latents(tmp_path: Path):
    d = write_set(tmp_path, [40, 30, 20])
    with pytest.raises(DataError, match=r"v1\.safetensors.*'nothing'"):
        map_tensor(d / "v1.safetensors", "nothing")
    lat = torch.zeros(30, TOKENS, CHANNELS)
    lat[25, 1, 2] = float("nan")
    write_latent_file(d / "v1.safetensors", lat, None, {})
    v = load_latent_set(d).train[1]
    assert v.mapped and not all_finite(v.latents, chunk=8) and all_finite(v.latents[:25])
    assert not bool(torch.isfinite(v.latents).all())  # a torch function reads the whole video


def test_bf16_latents_are_read_into_memory(tmp_path: Path):
    d = write_set(tmp_path, [40, 20])
    lat = torch.rand(40, TOKENS, CHANNELS).to(torch.bfloat16)
    save_file({"latents": lat, "actions": torch.zeros(40, dtype=torch.int64)}, str(d / "v0.safetensors"))
    mem, mapped = load_latent_set(d, mmap=False), load_latent_set(d)
    assert not mapped.train[0].mapped and torch.equal(mapped.train[0].latents, mem.train[0].latents)


def _rss_file() -> int | None:
    try:
        with open("/proc/self/status") as f:
            return next((int(line.split()[1]) * 1024 for line in f if line.startswith("RssFile:")), None)
    except OSError:
        return None


def test_reading_windows_leaves_no_mapped_pages_behind(tmp_path: Path):
    path = write_latent_file(tmp_path / "long.safetensors", torch.rand(6000, 64, 12), None, {})
    m = MappedLatents(path)
    before = _rss_file()
    if before is None:
        pytest.skip("no /proc/self/status here")
    total = sum(float(m[s : s + 16].float().sum()) for s in range(0, 6000 - 16, 8))
    assert total > 0 and all_finite(m, chunk=512)
    # the file is 9 MB; what was read is page cache, not this process's resident set
    assert _rss_file() - before < 2 * 1024 * 1024


def test_streamed_latent_file_equals_the_one_written_at_once(tmp_path):
    """LatentFileWriter (tokenize's streaming path) writes the same tensors and metadata as write_latent_file,
    readable by safetensors itself, and leaves nothing behind when aborted."""
    from ahri_core.data.latents import LatentFileWriter, read_latent_file, write_latent_file

    g = torch.Generator().manual_seed(0)
    lat = torch.rand(37, 6, 5, generator=g) * 2 - 1
    meta = {"fps": "15", "video_id": "v", "frames": "37"}
    for actions in (None, np.arange(37) % 4 - 1, np.random.default_rng(0).random((37, 3)).astype(np.float32)):
        whole = write_latent_file(tmp_path / "whole.safetensors", lat, actions, meta)
        with LatentFileWriter(tmp_path / "streamed.safetensors", 6, 5) as w:
            for s in range(0, 37, 8):
                w.append(lat[s : s + 8])
            w.finish(actions, meta)
        a, b = read_latent_file(whole), read_latent_file(tmp_path / "streamed.safetensors")
        assert torch.equal(a[0], b[0]) and a[2] == b[2]
        assert (a[1] is None and b[1] is None) or torch.equal(a[1], b[1])
    with pytest.raises(DataError, match="actions for 3 frames"), LatentFileWriter(tmp_path / "bad.safetensors", 6, 5) as w:
        w.append(lat[:3])
        w.finish(np.zeros(5, np.int64), meta)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["streamed.safetensors", "whole.safetensors"]

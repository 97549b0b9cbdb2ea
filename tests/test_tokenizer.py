"""The tokenizer model, its frame data, training, checkpoints and exact resume (CPU, tiny configs)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from ahri_core.checkpoint import load_weights, save_weights
from ahri_core.config.presets import TOKENIZER_PRESETS
from ahri_core.config.settings import TokenizerSettings
from ahri_core.data.frame_cache import cache_path, cached_frames
from ahri_core.data.frames import FrameSampler, FrameSet, load_frame_data, to_tensor
from ahri_core.data.split import split_videos
from ahri_core.data.videos import VideoRef
from ahri_core.errors import CheckpointError, ConfigError, DataError
from ahri_core.eval.metrics import psnr_per_image as psnr
from ahri_core.models.tokenizer import (
    Tokenizer,
    build_tokenizer,
    describe,
    load_tokenizer,
    tokenizer_config,
)
from ahri_core.train.tokenizer import train_tokenizer
from tests.tokenizer_fixtures import make_store, tiny_train


# ---------------------------------------------------------------------------------------------- model
def test_shapes_and_latent_range():
    m = build_tokenizer("tiny").eval()
    x = torch.rand(3, 3, 32, 32)
    z = m.encode(x)
    assert z.shape == (3, m.cfg.tokens, m.cfg.channels)
    assert z.abs().max() < 1.0
    # even for extreme inputs the tanh keeps latents strictly inside (-1, 1)
    with torch.no_grad():
        m.to_latent.weight.mul_(1e3)
    z = m.encode(torch.ones(2, 3, 32, 32))
    assert z.abs().max() <= 1.0 and torch.isfinite(z).all()
    y = m.decode(torch.rand(2, m.cfg.tokens, m.cfg.channels) * 2 - 1)
    assert y.shape == (2, 3, 32, 32)
    with pytest.raises(ValueError, match="expects frames"):
        m.encode(torch.rand(1, 3, 64, 64))
    with pytest.raises(ValueError, match="expects latents"):
        m.decode(torch.rand(1, m.cfg.tokens + 1, m.cfg.channels))


def test_presets_compress_at_least_16x_and_describe():
    for name in TOKENIZER_PRESETS:
        cfg = tokenizer_config(name)
        assert cfg.compression >= 16, name
        assert f"{cfg.compression:.1f}x compression" in describe(cfg)
    cpu = tokenizer_config("cpu")
    assert cpu.size == (64, 64) and cpu.compression >= 16
    assert max(tokenizer_config(n).width for n in TOKENIZER_PRESETS) == 256
    with pytest.raises(ConfigError, match="unknown tokenizer preset"):
        tokenizer_config("huge")
    with pytest.raises(ConfigError, match="patch_size"):
        tokenizer_config("tiny", patch_size=5)
    with pytest.raises(ConfigError, match="tile the 8x8 patch grid"):
        tokenizer_config("cpu", tokens=12, regions=True)
    assert tokenizer_config("cpu", tokens=12).regions is False  # a preset at another shape falls back
    # another square size keeps the preset's tokens per patch; a size the token squares do not tile falls back
    assert (tokenizer_config("cpu", image_size=48).tokens, tokenizer_config("cpu", image_size=48).regions) == (36, True)
    assert (tokenizer_config("tiny", image_size=24).tokens, tokenizer_config("tiny", image_size=24).regions) == (4, False)
    assert tokenizer_config("cpu").regions is True
    # with the region shortcut the parameter count still does not depend on the square of the token count
    counts = [build_tokenizer("cpu", tokens=n).num_params() for n in (4, 16, 64)]
    assert cpu.tokens == 64 and max(counts) < 2 * min(counts)


def test_bottleneck_is_per_token():
    """Parameters grow linearly with the token count (no Linear over all tokens flattened)."""
    counts = {n: build_tokenizer("tiny", tokens=n, regions=False).num_params() for n in (4, 8, 16, 32)}
    step = counts[8] - counts[4]
    assert counts[16] - counts[8] == 2 * step
    assert counts[32] - counts[16] == 4 * step
    # the bottleneck itself does not depend on the token count at all
    a, b = build_tokenizer("tiny", tokens=4, regions=False), build_tokenizer("tiny", tokens=32, regions=False)
    assert a.to_latent.weight.shape == b.to_latent.weight.shape == (a.cfg.channels, a.cfg.dim)
    # and each token's latent depends only on that token's features
    feats = torch.randn(2, 32, b.cfg.dim)
    feats2 = feats.clone()
    feats2[:, 5] += 1.0
    out1, out2 = b.to_latent(feats), b.to_latent(feats2)
    changed = (out1 - out2).abs().sum(-1) > 0
    assert changed[:, 5].all() and not changed[:, :5].any() and not changed[:, 6:].any()


def test_masking_drops_patches_in_training_only():
    torch.manual_seed(0)
    m = build_tokenizer("tiny", mask_max=0.9)
    x = torch.rand(4, 3, 32, 32)
    g = torch.Generator().manual_seed(123)
    mask = m.sample_mask(4, g)
    assert mask.any() and not mask.all()
    rates = m.sample_mask(4000, torch.Generator().manual_seed(1)).float().mean(1)
    assert 0.4 < float(rates.mean()) < 0.5 and float(rates.max()) <= 1.0  # U(0, 0.9): mean 0.45
    # training: pixels of dropped patches cannot influence the output, kept ones do
    m.train()
    patches = m.patchify(x)
    noisy = patches.clone()
    noisy[mask] = torch.rand_like(noisy[mask])
    x_noisy = m.unpatchify(noisy)
    r1, z1 = m(x, generator=torch.Generator().manual_seed(123))
    r2, z2 = m(x_noisy, generator=torch.Generator().manual_seed(123))
    assert torch.allclose(z1, z2) and torch.allclose(r1, r2)
    kept = patches.clone()
    kept[~mask] = torch.rand_like(kept[~mask])
    _, z3 = m(m.unpatchify(kept), generator=torch.Generator().manual_seed(123))
    assert not torch.allclose(z1, z3)
    # two draws in training differ (random masks); eval never masks and is deterministic
    _, za = m(x)
    _, zb = m(x)
    assert not torch.allclose(za, zb)
    m.eval()
    _, ze1 = m(x)
    _, ze2 = m(x)
    assert torch.equal(ze1, ze2) and torch.allclose(ze1, m.encode(x))
    # at inference every patch counts: changing any single patch changes the latents
    for k in (0, m.cfg.patches - 1):
        y = patches.clone()
        y[:, k] = torch.rand_like(y[:, k])
        assert not torch.allclose(m.encode(m.unpatchify(y)), ze1)


def test_tiny_model_overfits_one_clip():
    from ahri_core.sources.game import render_clip

    torch.manual_seed(0)
    frames = torch.from_numpy(render_clip(3, 4, 32).frames).permute(0, 3, 1, 2).float() / 255
    m = build_tokenizer("tiny", mask_max=0.0)
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    m.eval()
    start = float(psnr(m.reconstruct(frames), frames).mean())
    m.train()
    for _ in range(150):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            r, _ = m(frames)
        loss = torch.nn.functional.mse_loss(r.float(), frames)
        opt.zero_grad()
        loss.backward()
        opt.step()
    m.eval()
    end = float(psnr(m.reconstruct(frames), frames).mean())
    assert end > start + 10 and end > 22, (start, end)


# ---------------------------------------------------------------------------------------------- checkpoints
def test_checkpoint_round_trip_is_strict(tmp_path):
    m = build_tokenizer("tiny")
    path = save_weights(tmp_path / "t.safetensors", m, "tokenizer", m.cfg.to_dict(), {"val_fraction": 0.2})
    m2, extra = load_tokenizer(path)
    assert extra["val_fraction"] == 0.2
    for k, v in m.state_dict().items():
        assert torch.equal(v, m2.state_dict()[k])
    sd = {k: v.clone() for k, v in m.state_dict().items()}
    missing = dict(sd)
    missing.pop("to_latent.weight")
    save_weights(tmp_path / "missing.safetensors", missing, "tokenizer", m.cfg.to_dict())
    with pytest.raises(CheckpointError, match="lacks 1 tensor.*to_latent.weight"):
        load_tokenizer(tmp_path / "missing.safetensors")
    save_weights(tmp_path / "extra.safetensors", {**sd, "stray.weight": torch.zeros(2)}, "tokenizer", m.cfg.to_dict())
    with pytest.raises(CheckpointError, match="stray.weight"):
        load_tokenizer(tmp_path / "extra.safetensors")
    # a config that differs from the model being loaded into is refused, naming the field
    other = Tokenizer(tokenizer_config("tiny", mask_max=0.5))
    with pytest.raises(CheckpointError, match="mask_max"):
        load_weights(path, other, kind="tokenizer", config=other.cfg.to_dict())
    # the stored config rebuilds the right shapes; a tampered config with other shapes is refused
    bad_cfg = {**m.cfg.to_dict(), "channels": m.cfg.channels * 2}
    save_weights(tmp_path / "shape.safetensors", sd, "tokenizer", bad_cfg)
    with pytest.raises(CheckpointError, match="shape"):
        load_tokenizer(tmp_path / "shape.safetensors")
    save_weights(tmp_path / "dyn.safetensors", sd, "dynamics", m.cfg.to_dict())
    with pytest.raises(CheckpointError, match="not a tokenizer"):
        load_tokenizer(tmp_path / "dyn.safetensors")
    save_weights(tmp_path / "unknown.safetensors", sd, "tokenizer", {**m.cfg.to_dict(), "new_field": 1})
    with pytest.raises(CheckpointError, match="new_field"):  # the file is bad, not the settings: exit 1
        load_tokenizer(tmp_path / "unknown.safetensors")


# ---------------------------------------------------------------------------------------------- frame data
def test_split_is_by_video_deterministic_and_stable():
    ids = [f"v{i:03d}" for i in range(200)]
    s = split_videos(ids, 0.1)
    assert s == split_videos(list(reversed(ids)), 0.1)
    n_val = sum(v == "val" for v in s.values())
    assert 8 <= n_val <= 35
    # adding videos never moves an existing one (for sets large enough to hold one out by hash)
    s2 = split_videos(ids + [f"w{i}" for i in range(50)], 0.1)
    assert all(s2[i] == s[i] for i in ids)
    # small sets still hold out one video, and keep one for training
    for n in (2, 3, 5):
        small = split_videos(ids[:n], 0.1)
        assert list(small.values()).count("val") >= 1 and list(small.values()).count("train") >= 1
    assert split_videos(["only"], 0.1) == {"only": "train"}
    assert set(split_videos(ids[:5], 0.0).values()) == {"train"}


def test_frame_cache_decodes_once_and_memory_maps(tmp_path):
    calls = []

    def decoder(path, fps, size):
        calls.append(path)
        rng = np.random.default_rng(0)
        for _ in range(7):
            yield rng.integers(0, 256, (size.height, size.width, 3), dtype=np.uint8)

    src = tmp_path / "a.mp4"
    src.write_bytes(b"not decoded here")
    ref = VideoRef(path=src, id="a")
    arr = cached_frames(ref, 20, 16, tmp_path / "cache", decoder)
    assert arr.shape == (7, 16, 16, 3) and arr.dtype == np.uint8
    assert isinstance(arr, np.memmap)
    arr2 = cached_frames(VideoRef(path=src, id="a"), 20, 16, tmp_path / "cache", decoder)
    assert len(calls) == 1 and np.array_equal(arr, arr2)
    assert cache_path(tmp_path / "cache", ref, 20, 16).name.endswith("-20fps-16x16-pad.npy")
    # another fps or size is another cache entry; a failed decode leaves no file behind
    cached_frames(ref, 10, 16, tmp_path / "cache", decoder)
    assert len(calls) == 2

    def broken(path, fps, size):
        yield np.zeros((size.height, size.width, 3), np.uint8)
        raise DataError("boom")

    with pytest.raises(DataError):
        cached_frames(ref, 5, 16, tmp_path / "cache", broken)
    leftovers = [p.name for p in (tmp_path / "cache" / "frames").iterdir()]
    assert len(leftovers) == 2 and all(not n.startswith(".") for n in leftovers)


def test_sampler_state_restores_exactly():
    a = FrameSampler(10, 4, seed=3)
    first = [a.next() for _ in range(3)]  # crosses the epoch boundary (10 frames, 12 drawn)
    assert sorted(np.concatenate(first)[:10].tolist()) == list(range(10))
    state = a.state_dict()
    rest = [a.next() for _ in range(5)]
    b = FrameSampler(10, 4, seed=99)
    b.load_state_dict(state)
    assert all(np.array_equal(x, y) for x, y in zip(rest, [b.next() for _ in range(5)], strict=True))
    with pytest.raises(DataError, match="changed"):
        FrameSampler(11, 4).load_state_dict(state)


def test_frame_data_holds_out_whole_videos(tmp_path):
    recs = make_store(tmp_path / "videos", n=5, frames=12)
    bad = tmp_path / "videos" / "broken.mp4"
    bad.write_bytes(b"\x00" * 300)
    data = load_frame_data(list(recs) + [bad], 20, 32, tmp_path / "cache", val_fraction=0.2)
    assert "broken" in data.failed
    assert data.val_is_heldout and not set(data.train.ids) & set(data.val.ids)
    assert set(data.train.ids) | set(data.val.ids) == {r.id for r in recs}
    assert len(data.train) == 12 * len(data.train.ids)
    batch = to_tensor(data.train.get([0, 13, len(data.train) - 1]))
    assert batch.shape == (3, 3, 32, 32) and 0 <= float(batch.min()) and float(batch.max()) <= 1
    fs = FrameSet([np.zeros((3, 2, 2, 3), np.uint8), np.ones((2, 2, 2, 3), np.uint8)], ["a", "b"])
    assert fs.get([3, 0, 4])[:, 0, 0, 0].tolist() == [1, 0, 1]


# ---------------------------------------------------------------------------------------------- training
@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("tok")
    recs = make_store(root / "videos", n=4, frames=24)
    return root, recs


def test_train_writes_run_and_reaches_its_val_psnr(store, tmp_path):
    root, recs = store
    summary = train_tokenizer(tmp_path / "runs" / "a", recs, tiny_train(max_steps=30, val_every=10),
                              TokenizerSettings(val_fraction=0.25), cache_dir=root / "cache")
    run = tmp_path / "runs" / "a"
    for name in ("model.safetensors", "model.state.pt", "metrics.jsonl", "reconstructions.png", "run.json"):
        assert (run / name).is_file(), name
    recs_log = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    kinds = {r["kind"] for r in recs_log}
    assert kinds == {"train", "val"}
    assert all("frames_per_s" in r and "psnr" in r for r in recs_log if r["kind"] == "train")
    assert summary["step"] == 30 and summary["val_heldout"] and summary["val_videos"] == 1
    assert summary["val_psnr"] > summary["first_val_psnr"] + 3
    assert json.loads((run / "run.json").read_text())["status"] == "finished"
    # decode(encode(x)) of the held-out video reproduces its frames to the validation PSNR
    model, extra = load_tokenizer(run / "model.safetensors")
    assert extra["val_videos"] and extra["step"] == 30
    val_id = extra["val_videos"][0]
    arr = cached_frames(next(r for r in recs if r.id == val_id), 20, 32, root / "cache")
    x = to_tensor(np.asarray(arr))
    with torch.no_grad():
        r = model.decode(model.encode(x).half().float()).clamp(0, 1)  # through fp16 storage, like tokenize
    assert float(psnr(r, x).mean()) > summary["val_psnr"] - 0.5


def test_resume_refuses_model_changes(store, tmp_path):
    root, recs = store
    run = tmp_path / "r"
    train_tokenizer(run, recs, tiny_train(max_steps=2), cache_dir=root / "cache")
    with pytest.raises(ConfigError, match="already exists"):
        train_tokenizer(run, recs, tiny_train(max_steps=4), cache_dir=root / "cache")
    with pytest.raises(ConfigError, match="channels"):
        train_tokenizer(run, recs, tiny_train(max_steps=4, resume=True), TokenizerSettings(channels=4), cache_dir=root / "cache")


KILLER = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    sys.path.insert(0, {tests!r})
    from tokenizer_fixtures import tiny_train
    from ahri_core.sources.store import list_videos
    from ahri_core.train.tokenizer import train_tokenizer

    def on_step(step, rec):
        if step == {kill_at}:
            os.kill(os.getpid(), signal.SIGKILL)

    train_tokenizer(Path({run!r}), list_videos(Path({videos!r})), tiny_train(max_steps={steps}, ema=0.9),
                    cache_dir=Path({cache!r}), on_step=on_step)
    """
)


def test_sigkill_and_resume_matches_uninterrupted_run(store, tmp_path):
    """Killed with SIGKILL after its step-8 checkpoint (at step 10), resumed: same weights as never stopped."""
    root, recs = store
    steps = 14
    ref = train_tokenizer(tmp_path / "straight", recs, tiny_train(max_steps=steps, ema=0.9), cache_dir=root / "cache")
    script = KILLER.format(tests=str(Path(__file__).parent), run=str(tmp_path / "killed"), videos=str(root / "videos"),
                           cache=str(root / "cache"), steps=steps, kill_at=10)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)}
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, timeout=300)
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]
    state = torch.load(tmp_path / "killed" / "model.state.pt", weights_only=True)
    assert state["step"] == 8
    resumed = train_tokenizer(tmp_path / "killed", recs, tiny_train(max_steps=steps, ema=0.9, resume=True),
                              cache_dir=root / "cache")
    assert resumed["step"] == ref["step"] == steps
    for name in ("model.safetensors", "ema.safetensors"):
        a = load_file(tmp_path / "straight" / name)
        b = load_file(tmp_path / "killed" / name)
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), (name, k)
    # the log holds each step once: records written after the checkpoint were dropped on resume
    steps_logged = [json.loads(x)["step"] for x in (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()
                    if json.loads(x)["kind"] == "train"]
    assert steps_logged == sorted(set(steps_logged)) and steps_logged[-1] == steps


def test_perceptual_term_hook(store, tmp_path):
    root, recs = store
    with pytest.raises(ConfigError, match="perceptual_model"):
        train_tokenizer(tmp_path / "p0", recs, tiny_train(max_steps=2), TokenizerSettings(perceptual_weight=0.5),
                        cache_dir=root / "cache")

    class L1(torch.nn.Module):
        def forward(self, a, b):
            return (a - b).abs().flatten(1).mean(1)

    b = torch.export.Dim("b")
    x = torch.rand(2, 3, 32, 32)
    torch.export.save(torch.export.export(L1(), (x, x), dynamic_shapes=({0: b}, {0: b})), tmp_path / "l1.pt2")
    tok = TokenizerSettings(perceptual_weight=0.5, perceptual_model=tmp_path / "l1.pt2")
    out = train_tokenizer(tmp_path / "p1", recs, tiny_train(max_steps=2), tok, cache_dir=root / "cache")
    state = torch.load(tmp_path / "p1" / "model.state.pt", weights_only=True)
    assert out["step"] == 2 and int(state["objective"]["rms"]["perceptual"]["count"]) == 2
    calls = []
    train_tokenizer(tmp_path / "p2", recs, tiny_train(max_steps=2), TokenizerSettings(perceptual_weight=0.5),
                    cache_dir=root / "cache", perceptual=lambda r, t: calls.append(1) or (r - t).abs().mean())
    assert len(calls) == 2

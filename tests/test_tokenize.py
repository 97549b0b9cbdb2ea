"""``ahri tokenize``: the latent store format, index and split, resume, corrupt input, decode, the CLI."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from ahri_cli.main import main
from ahri_core.checkpoint import save_weights
from ahri_core.data.latents import LatentStore
from ahri_core.data.split import split_videos
from ahri_core.data.tokenize import resolve_tokenizer, tokenize_videos
from ahri_core.errors import ConfigError, DataError
from ahri_core.models.tokenizer import build_tokenizer, decode_latents, load_tokenizer
from ahri_core.sources.store import list_videos
from tests.tokenizer_fixtures import frames_of, make_store, tokenizer_workspace


@pytest.fixture()
def ws(tmp_path):
    """A workspace with 5 game clips (with actions) and an (untrained) tiny tokenizer run."""
    return tokenizer_workspace(tmp_path, n=5, frames=16)


def test_tokenize_writes_the_documented_format(ws):
    recs = list_videos(ws / "videos")
    res = tokenize_videos("tok1", recs, ws / "latents", runs_dir=ws / "runs", batch_size=7)
    assert res.ok and sorted(res.written) == sorted(r.id for r in recs) and res.frames == 5 * 16
    out = ws / "latents" / "tok1"
    model, _ = load_tokenizer(ws / "runs" / "tok1" / "model.safetensors")
    for r in recs:
        with safe_open(str(out / f"{r.id}.safetensors"), framework="pt") as f:
            lat, act, meta = f.get_tensor("latents"), f.get_tensor("actions"), f.metadata()
        assert lat.dtype == torch.float16 and lat.shape == (16, model.cfg.tokens, model.cfg.channels)
        assert act.dtype == torch.int64 and torch.equal(act, torch.from_numpy(r.actions)) and int(act[0]) == -1
        assert meta["fps"] == "20" and meta["video_id"] == r.id and meta["tokenizer_id"] == "tok1"
        assert meta["sha256"] == r.meta["sha256"] and meta["source"] == "game"
        assert meta["action_kind"] == "discrete" and meta["action_count"] == "10"
        assert json.loads(meta["action_meanings"])[0] == "idle"
        # latents equal encoding the decoded frames directly (batching does not matter)
        x = torch.from_numpy(frames_of(r.path)).permute(0, 3, 1, 2).float() / 255
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            direct = model.encode(x).float()
        assert torch.allclose(lat.float(), direct, atol=2e-2)
    # the index: counts, split by video with the tokenizer's own val_fraction, readable by LatentStore
    index = json.loads((out / "index.json").read_text())
    assert index["tokens"] == model.cfg.tokens and index["channels"] == model.cfg.channels
    assert index["fps"] == 20 and index["frame_size"] == "32x32" and index["fit"] == "pad" and index["val_fraction"] == 0.2
    assert index["frames"] == 80 and index["action_kind"] == "discrete" and index["action_count"] == 10
    expected = split_videos([r.id for r in recs], 0.2)
    assert {v["id"]: v["split"] for v in index["videos"]} == expected
    assert "val" in expected.values() and "train" in expected.values()
    store = LatentStore(out)
    assert store.tokenizer_id == "tok1" and store.fps == 20.0 and len(store) == 5
    assert {v["id"] for v in store.videos("val")} == {k for k, s in expected.items() if s == "val"}
    lat, act = store.load(recs[0].id)
    assert lat.dtype == torch.float32 and lat.shape[0] == act.shape[0] == 16
    assert lat.abs().max() < 1
    assert json.loads(store.metadata()["action_meanings"])[-1] == "attack"
    with pytest.raises(DataError, match="not in the latent set"):
        store.load("nope")


def test_tokenize_resumes_and_never_leaves_partial_files(ws):
    recs = list_videos(ws / "videos")
    out = ws / "latents" / "tok1"
    calls = []

    def crashing(path, fps, size):
        from ahri_core.video import iter_frames

        calls.append(Path(path).stem)
        for i, f in enumerate(iter_frames(path, fps=fps, size=size)):
            if len(calls) == 3 and i == 5:
                raise KeyboardInterrupt  # the user hits Ctrl-C in the middle of the third video
            yield f

    with pytest.raises(KeyboardInterrupt):
        tokenize_videos("tok1", recs, ws / "latents", runs_dir=ws / "runs", batch_size=4, decoder=crashing)
    done = sorted(p.name for p in out.iterdir())
    assert done == ["clip00.safetensors", "clip01.safetensors", "index.json"]  # nothing half-written, no temp file
    assert {v["id"] for v in json.loads((out / "index.json").read_text())["videos"]} == {"clip00", "clip01"}
    res = tokenize_videos("tok1", recs, ws / "latents", runs_dir=ws / "runs")
    assert sorted(res.skipped) == ["clip00", "clip01"] and sorted(res.written) == ["clip02", "clip03", "clip04"]
    again = tokenize_videos("tok1", recs, ws / "latents", runs_dir=ws / "runs")
    assert again.written == [] and len(again.skipped) == 5 and again.frames == 0
    # new tokenizer weights make every file stale
    m = build_tokenizer("tiny")
    save_weights(ws / "runs" / "tok1" / "model.safetensors", m, "tokenizer", m.cfg.to_dict())
    redo = tokenize_videos("tok1", recs, ws / "latents", runs_dir=ws / "runs")
    assert len(redo.written) == 5


def test_corrupt_video_is_reported_and_skipped(ws):
    bad = ws / "videos" / "game" / "broken.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(500))
    recs = list_videos(ws / "videos")
    res = tokenize_videos("tok1", recs, ws / "latents", runs_dir=ws / "runs")
    assert not res.ok and [vid for vid, _ in res.failed] == ["broken"]
    assert len(res.written) == 5
    index = json.loads((ws / "latents" / "tok1" / "index.json").read_text())
    assert "broken" not in {v["id"] for v in index["videos"]} and len(index["videos"]) == 5


def test_cli_tokenize_exit_codes_and_decode(ws, tmp_path, capsys):
    assert main(["-w", str(ws), "tokenize", "--tokenizer", "tok1", "--batch-size", "8"]) == 0
    files = sorted((ws / "latents" / "tok1").glob("*.safetensors"))
    assert len(files) == 5
    # --decode turns a latent file back into an mp4 with one frame per latent frame
    dest = tmp_path / "back.mp4"
    assert main(["-w", str(ws), "tokenize", "--tokenizer", "tok1", "--decode", str(files[0]), "--out", str(dest)]) == 0
    from ahri_core.video import probe

    info = probe(dest)
    assert info.frames == 16 and info.width == 32
    # a corrupt video: summary, then exit code 1
    (ws / "videos" / "game" / "broken.mp4").write_bytes(b"garbage" * 50)
    assert main(["-w", str(ws), "tokenize", "--tokenizer", "tok1"]) == 1
    err = capsys.readouterr().err
    assert "broken" in err
    assert main(["-w", str(ws), "tokenize", "--tokenizer", "nope"]) == 2


def test_resolve_tokenizer_and_decode_latents(ws):
    run = ws / "runs" / "tok1"
    assert resolve_tokenizer("tok1", ws / "runs") == (run / "model.safetensors", "tok1")
    assert resolve_tokenizer(run) == (run / "model.safetensors", "tok1")
    assert resolve_tokenizer(run / "model.safetensors") == (run / "model.safetensors", "tok1")
    m = build_tokenizer("tiny")
    save_weights(run / "ema.safetensors", m, "tokenizer", m.cfg.to_dict())
    assert resolve_tokenizer("tok1", ws / "runs")[0].name == "ema.safetensors"  # EMA weights preferred
    with pytest.raises(ConfigError, match="tok1"):
        resolve_tokenizer("missing", ws / "runs")
    model, _ = load_tokenizer(run / "model.safetensors")
    z = torch.rand(2, 3, model.cfg.tokens, model.cfg.channels) * 2 - 1
    frames = decode_latents(model, z, batch_size=4)
    assert frames.shape == (2, 3, 3, 32, 32) and 0 <= float(frames.min()) and float(frames.max()) <= 1
    one = decode_latents(model, z[0])
    assert one.shape == (3, 3, 32, 32) and torch.allclose(one, frames[0], atol=1e-6)
    with pytest.raises(DataError, match="no index.json"):
        LatentStore(ws)


def test_cli_train_then_tokenize_end_to_end(tmp_path):
    make_store(tmp_path / "videos" / "game", n=3, frames=12)
    args = ["-w", str(tmp_path), "train", "--stage", "tokenizer", "--preset", "tiny", "--max-steps", "3",
            "--run", "t", "--device", "cpu", "--val-every", "2", "--log-every", "1"]
    assert main(args) == 0
    run = tmp_path / "runs" / "t"
    assert (run / "model.safetensors").is_file() and (run / "model.state.pt").is_file()
    assert main(args) == 2  # the run exists: refused without --resume
    assert main([*args[:-4], "--max-steps", "5", "--resume"]) == 0
    assert torch.load(run / "model.state.pt", weights_only=True)["step"] == 5
    assert main(["-w", str(tmp_path), "tokenize", "--tokenizer", "t"]) == 0
    store = LatentStore(tmp_path / "latents" / "t")
    assert len(store) == 3 and store.tokens == 4 and store.channels == 16
    assert {v["split"] for v in store.videos()} == {"train", "val"}


def test_cli_mask_max_reaches_the_model_config_and_is_tokenizer_only(tmp_path):
    from ahri_core.checkpoint import read_metadata

    make_store(tmp_path / "videos" / "game", n=2, frames=8)
    base = ["-w", str(tmp_path), "train", "--max-steps", "1", "--device", "cpu"]
    assert main([*base, "--stage", "tokenizer", "--preset", "tiny", "--run", "m", "--mask-max", "0.25"]) == 0
    _, cfg, _ = read_metadata(tmp_path / "runs" / "m" / "model.safetensors")
    assert cfg["mask_max"] == 0.25
    assert main([*base, "--stage", "tokenizer", "--preset", "tiny", "--run", "bad", "--mask-max", "1.5"]) == 2
    assert not (tmp_path / "runs" / "bad" / "model.safetensors").exists()
    assert main([*base, "--stage", "dynamics", "--mask-max", "0.5"]) == 2  # a tokenizer-only flag

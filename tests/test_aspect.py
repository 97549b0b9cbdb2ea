"""Frames of any aspect: the frame shape a preset gives a source, the picture box, non-square tokenizers, old
square checkpoints, and 16:9 and 4:3 videos through the whole flow with the whole frame kept."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from ahri_cli.main import main
from ahri_core.checkpoint import save_weights
from ahri_core.errors import ConfigError
from ahri_core.models.tokenizer import (
    Tokenizer,
    TokenizerConfig,
    grid_for_aspect,
    load_tokenizer,
    parse_size,
    preset_shape,
    region_side,
    tokenizer_config,
)
from ahri_core.sources.store import list_videos
from ahri_core.video import content_box, probe, read_frames
from tests.video_fixtures import encode


# ---------------------------------------------------------------------------------------------- shapes
@pytest.mark.parametrize(
    ("aspect", "preset", "shape"),
    [
        (16 / 9, "cpu", (48, 80)),
        (4 / 3, "cpu", (56, 72)),
        (1.0, "cpu", (64, 64)),
        (160 / 210, "cpu", (72, 56)),  # Atari: 160 wide, 210 high
        (1.0, "small", (128, 128)),
        (16 / 9, "small", (96, 160)),
    ],
)
def test_preset_shape_keeps_most_of_the_picture_within_the_budget(aspect, preset, shape):
    assert preset_shape(preset, aspect) == shape
    cfg = tokenizer_config(preset, size=shape)
    ref = tokenizer_config(preset)
    assert cfg.height * cfg.width <= ref.height * ref.width  # never over the preset's pixel budget
    # the tokens per patch of the preset are kept, so the compression stays the preset's
    assert cfg.tokens / cfg.patches == pytest.approx(ref.tokens / ref.patches)
    assert cfg.regions and cfg.compression == pytest.approx(ref.compression)


def test_grid_choice_is_the_best_of_all_grids():
    for aspect in (16 / 9, 4 / 3, 21 / 9, 0.5, 1.0, 160 / 210):
        h, w = grid_for_aspect(aspect, 4096, 8)

        def shown(h, w, aspect=aspect):
            return min(w, h * aspect) * min(h, w / aspect)

        every = [(gh * 8, gw * 8) for gh in range(1, 65) for gw in range(1, 65) if gh * gw * 64 <= 4096]
        assert shown(h, w) == pytest.approx(max(shown(*g) for g in every))
        assert h % 8 == 0 and w % 8 == 0 and h * w <= 4096


def test_square_sources_keep_todays_shapes():
    for name in ("tiny", "cpu", "small", "medium", "large"):
        cfg = tokenizer_config(name)
        assert cfg.height == cfg.width and preset_shape(name, 1.0) == cfg.size
        assert tokenizer_config(name, size=preset_shape(name, 1.0)) == cfg


def test_content_box_is_the_picture_without_the_bars():
    assert content_box((1280, 720), (48, 80), "pad") == (1, 0, 45, 80)  # 80 x 45: 16:9
    assert content_box((640, 480), (56, 72), "pad") == (1, 0, 54, 72)
    assert content_box((160, 210), (72, 56), "pad") == (0, 0, 72, 55)
    assert content_box((1280, 720), (32, 32), "pad") == (7, 0, 18, 32)
    for fit in ("crop", "squash"):
        assert content_box((1280, 720), (32, 32), fit) == (0, 0, 32, 32)
    # the bars really are where read_frames puts black
    clip = encode(Path(__import__("tempfile").mkdtemp()) / "w.mp4", [np.full((72, 128, 3), 200, np.uint8)] * 2, 20)
    f = read_frames(clip, size=(32, 32), fit="pad")[0].astype(int)
    t, left, h, w = content_box((128, 72), (32, 32), "pad")
    assert f[t : t + h, left : left + w].min() > 150 and f[:t].max() < 20 and f[t + h :].max() < 20


def test_parse_size():
    assert parse_size("48x80") == (48, 80) and parse_size("64") == (64, 64) and parse_size((8, 16)) == (8, 16)
    assert parse_size(None) is None
    for bad in ("48x", "axb", "4x4", "1x2x3", "5000x8"):
        with pytest.raises(ConfigError, match="--size"):
            parse_size(bad)


def test_region_side_for_non_square_grids():
    assert region_side(48, 80, 8, 60) == 1 and region_side(64, 128, 8, 8) == 4 and region_side(32, 64, 8, 8) == 2
    assert region_side(48, 80, 8, 16) == 0 and region_side(50, 80, 8, 60) == 0


@pytest.mark.parametrize(("size", "tokens"), [((48, 80), 60), ((32, 64), 8), ((24, 40), 4)])
def test_non_square_tokenizer_round_trips_shapes(size, tokens):
    cfg = tokenizer_config("tiny", size=size, tokens=tokens)
    m = Tokenizer(cfg).eval()
    x = torch.rand(2, 3, *size)
    z = m.encode(x)
    assert z.shape == (2, tokens, cfg.channels)
    assert m.decode(z).shape == (2, 3, *size)
    with pytest.raises(ValueError, match=f"{size[0]}, {size[1]}"):
        m.encode(torch.rand(1, 3, size[1], size[0]))


def test_region_tokens_read_their_own_patches_on_a_wide_grid():
    """With regions, the shortcut of latent token i starts from its own square: changing one square of pixels
    moves that token's region input only."""
    cfg = tokenizer_config("tiny", size=(32, 64), tokens=8, mask_max=0.0)  # 4x8 patches, 2x4 tokens of 2x2
    m = Tokenizer(cfg).eval()
    seen = {}
    m.region_in.register_forward_hook(lambda mod, inp, out: seen.__setitem__("x", out.detach().clone()))
    x = torch.rand(1, 3, 32, 64)
    m.encode(x)
    base = seen["x"]
    y = x.clone()
    y[:, :, 16:32, 48:64] = 0  # the bottom-right square of 16 x 16 pixels = token (1, 3) = index 7
    m.encode(y)
    changed = (seen["x"] - base).abs().sum(-1)[0] > 1e-6
    assert changed.tolist() == [False] * 7 + [True]


def test_old_square_checkpoints_load_as_centre_cropped(tmp_path):
    torch.manual_seed(0)
    cfg = tokenizer_config("tiny", fit="crop")
    m = Tokenizer(cfg)
    old = {k: v for k, v in cfg.to_dict().items() if k not in ("height", "width", "fit")} | {"image_size": 32}
    save_weights(tmp_path / "model.safetensors", m, "tokenizer", old)
    loaded, _ = load_tokenizer(tmp_path / "model.safetensors")
    assert loaded.cfg.size == (32, 32) and loaded.cfg.fit == "crop"
    for a, b in zip(m.state_dict().values(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert TokenizerConfig.from_dict(old) == cfg


# ---------------------------------------------------------------------------------------------- the whole flow
def _scene(h: int, w: int, t: int, seed: int) -> np.ndarray:
    """A wide scene with a bright edge on each side (the part a centre crop would lose) and a moving square."""
    rng = np.random.default_rng(seed)
    img = np.zeros((h, w, 3), np.uint8)
    img[:] = (rng.integers(40, 90), rng.integers(60, 120), rng.integers(40, 90))
    img[:, : w // 8] = (230, 60, 60)
    img[:, -w // 8 :] = (60, 60, 230)
    x = (8 + 3 * t) % (w - 16)
    img[h // 3 : h // 3 + 12, x : x + 12] = 250
    return img


@pytest.mark.parametrize(("source", "size_flag", "frame"), [((128, 72), ["--size", "32x64"], (32, 64)),
                                                             ((96, 72), [], (32, 32))])
def test_wide_videos_go_through_the_whole_flow_with_the_whole_frame(tmp_path, capsys, source, size_flag, frame):
    w, h = source
    src = tmp_path / "src"
    for i in range(3):
        encode(src / f"clip{i}.mp4", [_scene(h, w, t, i) for t in range(30)], 20)
    ws = tmp_path / "ws"
    W = ["-w", str(ws)]
    assert main([*W, "fetch", "--source", "local", "--path", str(src)]) == 0
    held = sorted(r.id for r in list_videos(ws / "videos"))[1]
    assert main([*W, "train", "--stage", "tokenizer", "--preset", "tiny", "--run", "tok", "--max-steps", "3",
                 "--precision", "fp32", "--val-videos", held, *size_flag]) == 0
    cfg = json.loads((ws / "runs" / "tok" / "run.json").read_text())["settings"]["model"]
    assert (cfg["height"], cfg["width"], cfg["fit"]) == (*frame, "pad")
    assert main([*W, "tokenize", "--tokenizer", "tok", "--precision", "fp32"]) == 0
    index = json.loads((ws / "latents" / "tok" / "index.json").read_text())
    box = content_box(source, frame, "pad")
    assert index["frame_size"] == f"{frame[0]}x{frame[1]}"
    assert all(v["content_box"] == list(box) for v in index["videos"])
    assert [v["id"] for v in index["videos"] if v["split"] == "val"] == [held]  # the chosen video, inherited
    assert box[2] / box[3] == pytest.approx(h / w, rel=0.08)  # the picture keeps its aspect inside the frame
    assert main([*W, "train", "--preset", "tiny", "--run", "dyn", "--max-steps", "2", "--seq-len", "8", "--stride", "4",
                 "--precision", "fp32"]) == 0
    assert main([*W, "eval", "dyn", "--context", "4", "--horizon", "2", "--clips", "2", "--steps", "2",
                 "--no-probes", "--precision", "fp32"]) == 0
    metrics = json.loads(next((ws / "runs" / "dyn" / "eval").rglob("metrics.json")).read_text())
    assert metrics["settings"]["size"] == list(frame) and metrics["settings"]["scored_box"] == list(box)
    assert {c["video"] for c in metrics["clips"]} == {held}  # eval scores exactly the held-out video
    sample = next((ws / "runs" / "dyn" / "eval").rglob("sample-0.mp4"))
    info = probe(sample)
    cols = 1 + 2  # truth, prediction, error
    assert (info.width // cols) / (info.height - 14) == pytest.approx(w / h, rel=0.1)
    clip = next((ws / "videos" / "local").glob("*.mp4"))
    out = tmp_path / "dream.mp4"
    assert main([*W, "rollout", str(clip), "--run", "dyn", "--steps", "2", "--context", "4", "--horizon", "4",
                 "--out", str(out), "--precision", "fp32"]) == 0
    info = probe(out)
    # truth | model, each the source's aspect (scaled 4x, a 14-pixel label band on top, even sizes)
    assert math.isclose((info.width / 2) / (info.height - 14), w / h, rel_tol=0.1)
    capsys.readouterr()


def test_frame_cache_of_a_long_video_keeps_every_kth_frame(tmp_path):
    from ahri_core.data.frame_cache import cache_stride, cached_frames
    from ahri_core.data.videos import VideoRef
    from tests.video_fixtures import decode_index, index_frame

    clip = encode(tmp_path / "long.mp4", [index_frame(i, 64, 64, 8) for i in range(30)], 20)
    ref = VideoRef(path=clip, id="long")
    assert cache_stride(ref, 20, None) == 1 and cache_stride(ref, 20, 30) == 1 and cache_stride(ref, 20, 8) == 4
    arr = cached_frames(ref, 20, 64, tmp_path / "cache", max_frames=8)
    assert [decode_index(f) for f in arr] == [0, 4, 8, 12, 16, 20, 24, 28]  # spread over the whole video
    assert len(cached_frames(ref, 20, 64, tmp_path / "cache")) == 30  # no cap: every frame, its own cache entry


def test_latent_sets_of_square_tokenizers_keep_their_frame_size(tmp_path):
    from ahri_core.data.index import INDEX
    from ahri_core.data.latents import LatentStore

    for value, expect in ((64, (64, 64)), ("48x80", (48, 80)), (None, (0, 0))):
        d = tmp_path / str(value)
        d.mkdir()
        index = {"tokenizer_id": "t", "tokens": 4, "channels": 2, "fps": 20, "videos": []}
        if value is not None:
            index["frame_size"] = value
        (d / INDEX).write_text(json.dumps(index))
        assert LatentStore(d).frame_size == expect


def test_a_square_run_of_the_one_number_era_resumes(tmp_path, capsys):
    from ahri_core.sources.game import ACTION_MEANINGS, render_clip
    from ahri_core.sources.store import store_frames

    for i in range(2):
        c = render_clip(i, 8, 32)
        store_frames(tmp_path / "videos" / "game", f"clip{i}", c.frames, 20, {"source": "game"}, actions=c.actions,
                     action_meanings=ACTION_MEANINGS)
    base = ["-w", str(tmp_path), "train", "--stage", "tokenizer", "--preset", "tiny", "--run", "t", "--precision", "fp32"]
    assert main([*base, "--max-steps", "1", "--size", "32"]) == 0
    meta_path = tmp_path / "runs" / "t" / "run.json"
    meta = json.loads(meta_path.read_text())
    assert meta["settings"]["tokenizer"]["size"] == "32x32"
    meta["settings"]["tokenizer"]["size"] = 32  # how such a run recorded it before frames could be HxW
    meta_path.write_text(json.dumps(meta))
    assert main([*base, "--max-steps", "2", "--resume"]) == 0
    assert json.loads(meta_path.read_text())["step"] == 2
    capsys.readouterr()


def test_a_wide_latent_set_packs_blocks_of_its_token_grid(tmp_path):
    """16:9 at the cpu budget is 6 x 10 tokens: the dynamics model packs 2 x 2 blocks of them, never the end of
    one row with the start of the next (the plain runs of 4 would)."""
    from ahri_core.config.settings import DataSettings, DiffusionSettings, TrainSettings
    from ahri_core.data.index import write_index
    from ahri_core.data.latents import LatentStore, write_latent_file
    from ahri_core.data.windows import load_latent_set
    from ahri_core.models.tokenizer import tokenizer_config
    from ahri_core.train.dynamics import model_config_for

    cfg = tokenizer_config("cpu", size=(48, 80))
    assert (cfg.tokens, cfg.token_grid) == (60, (6, 10))
    assert tokenizer_config("cpu", size=(48, 80), regions=False).token_grid is None
    d = tmp_path / "tok"
    d.mkdir()
    vids = []
    for i in range(2):
        write_latent_file(d / f"v{i}.safetensors", torch.zeros(8, 60, 12), None, {"fps": "20", "video_id": f"v{i}"})
        vids.append({"id": f"v{i}", "file": f"v{i}.safetensors", "frames": 8, "fps": 20.0,
                     "split": "val" if i else "train"})
    index = {"tokenizer_id": "tok", "tokens": 60, "channels": 12, "fps": 20.0, "frame_size": "48x80", "videos": vids}
    settings = (TrainSettings(preset="cpu"), DataSettings(), DiffusionSettings())
    for tok_cfg, grid, rows in ((cfg.to_dict(), (6, 10), 2), (None, None, 1), ({"height": "wide"}, None, 1),
                                (tokenizer_config("cpu", size=(48, 80), regions=False).to_dict(), None, 1)):
        write_index(d, {**index, "tokenizer_config": tok_cfg} if tok_cfg is not None else index)
        assert LatentStore(d).token_grid == grid
        lset = load_latent_set(d)
        assert lset.token_grid == grid
        model = model_config_for(lset, *settings)
        assert (model.pack, model.pack_rows, model.model_tokens) == (4, rows, 15)
    # a run of the block-packed model trains, keeps its packing on --resume, and loads with it
    from ahri_core.models.dynamics_io import load_dynamics
    from ahri_core.train.dynamics import train_dynamics

    write_index(d, {**index, "tokenizer_config": cfg.to_dict()})
    tiny = TrainSettings(preset="tiny", max_steps=2, precision="fp32", val_every=1, batch_size=2)
    data = DataSettings(seq_len=4, stride=2)
    first = train_dynamics(d, tmp_path / "run", tiny, data, DiffusionSettings())
    again = train_dynamics(d, tmp_path / "run", tiny.model_copy(update={"resume": True, "max_steps": 3}), data,
                           DiffusionSettings())
    assert (first.step, again.step) == (2, 3)
    model = load_dynamics(again.weights)
    assert (model.config.pack, model.config.pack_rows, model.config.token_grid) == (4, 2, (6, 10))

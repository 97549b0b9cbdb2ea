"""Bad files give one line, never a traceback, never a giant allocation: damaged latent indexes, run.json files,
video sidecars and checkpoint configs, paths in them that lead out of their folder, and odd videos (no frame, one
frame, 1x1 and 4000x3000 pixels, a jump of hours in the timestamps), through the commands a user runs on them."""

from __future__ import annotations

import json
import shutil
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ahri_cli.main import main
from ahri_core.data.latents import LatentStore, write_latent_file
from ahri_core.errors import CheckpointError, DataError
from ahri_core.models import dynamics as dynamics_module
from ahri_core.models.dynamics import DynamicsModel
from ahri_core.models.dynamics_config import DynamicsConfig
from ahri_core.models.dynamics_io import load_dynamics_run, save_dynamics
from ahri_core.video import read_frames
from tests.tokenizer_fixtures import tokenizer_workspace
from tests.video_fixtures import encode, small_clip


def _one_line_error(err: str, *names: str) -> str:
    """The error line of a command's stderr: exactly one line starting ``error:``, no traceback, naming ``names``."""
    assert "Traceback" not in err
    lines = [x for x in err.splitlines() if x.startswith("error:")]
    assert len(lines) == 1, err
    for n in names:
        assert n in lines[0], lines[0]
    return lines[0]


# ---------------------------------------------------------------------------------------------- latent index
def _latent_set(root: Path, name: str = "tok-test") -> Path:
    d = root / "latents" / name
    d.mkdir(parents=True)
    g = torch.Generator().manual_seed(0)
    vids = []
    for i in range(2):
        write_latent_file(d / f"v{i}.safetensors", torch.randn(12, 4, 4, generator=g), None,
                          {"fps": "20", "video_id": f"v{i}", "tokenizer_id": name})
        vids.append({"id": f"v{i}", "file": f"v{i}.safetensors", "frames": 12, "split": ["train", "val"][i]})
    (d / "index.json").write_text(json.dumps({"tokenizer_id": name, "tokens": 4, "channels": 4, "fps": 20,
                                              "frame_size": "32x32", "videos": vids}))
    return d


BAD_INDEXES = {
    "not JSON": ("{oops", "not valid JSON"),
    "a list": ("[1, 2]", "not a JSON object"),
    "videos not a list": (lambda d: {**d, "videos": 5}, "videos"),
    "an entry without id": (lambda d: {**d, "videos": [{"file": "v0.safetensors"}]}, "videos.0.id"),
    "frames a word": (lambda d: {**d, "videos": [{**d["videos"][0], "frames": "many"}]}, "videos.0.frames"),
    "tokens negative": (lambda d: {**d, "tokens": -3}, "tokens"),
}


@pytest.mark.parametrize("fault", list(BAD_INDEXES))
def test_a_malformed_latent_index_is_one_line_naming_it(tmp_path, capsys, fault):
    d = _latent_set(tmp_path)
    change, what = BAD_INDEXES[fault]
    index = d / "index.json"
    text = change if isinstance(change, str) else json.dumps(change(json.loads(index.read_text())))
    index.write_text(text)
    rc = main(["-w", str(tmp_path), "train", "--latents", str(d), "--preset", "tiny", "--max-steps", "1",
               "--device", "cpu", "--run", "r"])
    assert rc == 1
    line = _one_line_error(capsys.readouterr().err, str(index), what)
    assert "ahri tokenize" in line  # what to do
    assert index.read_text() == text  # the file is left as it is
    assert not (tmp_path / "runs" / "r").exists()  # refused before the run's folder is made


@pytest.mark.parametrize("name", ["../outside/v9.safetensors", "ABSOLUTE"])
def test_a_latent_file_named_outside_its_set_is_refused(tmp_path, name):
    d = _latent_set(tmp_path)
    outside = tmp_path / "outside" / "v9.safetensors"
    outside.parent.mkdir()
    write_latent_file(outside, torch.zeros(12, 4, 4), None, {"fps": "20", "video_id": "v9"})
    name = str(outside) if name == "ABSOLUTE" else name
    index = json.loads((d / "index.json").read_text())
    index["videos"][0]["file"] = name
    (d / "index.json").write_text(json.dumps(index))
    with pytest.raises(DataError, match="outside|not a file name inside") as e:
        LatentStore(d).load("v0")
    assert str(d / "index.json") in str(e.value)


# ---------------------------------------------------------------------------------------------- run.json
@pytest.mark.parametrize("text,what", [('{"stage": "dynamics", "latents": "somewhere"}', "latents"),
                                       ("[1, 2]", "not a JSON object"), ("{cut", "not valid JSON"),
                                       ('{"stage": "dynamics", "step": "ten"}', "step")])
def test_a_malformed_run_json_is_one_line_naming_it(tmp_path, capsys, text, what):
    run = tmp_path / "runs" / "r"
    run.mkdir(parents=True)
    (run / "run.json").write_text(text)
    (run / "model.state.pt").write_bytes(b"")
    rc = main(["-w", str(tmp_path), "train", "--run", "r", "--resume", "--max-steps", "4", "--device", "cpu"])
    assert rc == 1
    _one_line_error(capsys.readouterr().err, str(run / "run.json"), what)
    assert (run / "run.json").read_text() == text  # never overwritten


# ---------------------------------------------------------------------------------------------- sidecars
@pytest.fixture()
def tok_ws(tmp_path):
    """A workspace with one stored game clip (8 frames, with actions) and an untrained tiny tokenizer run."""
    return tokenizer_workspace(tmp_path, n=1, frames=8)


def _sidecar(ws: Path) -> Path:
    return ws / "videos" / "game" / "clip00.json"


def _edit(path: Path, **fields) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text()), **fields}))


@pytest.mark.parametrize("fields,what", [({"frames": "many"}, "frames"), ({"fps": [20]}, "fps"),
                                         ({"action_meanings": "abc"}, "action_meanings")])
def test_a_malformed_sidecar_stops_tokenize_in_one_line(tok_ws, capsys, fields, what):
    _edit(_sidecar(tok_ws), **fields)
    rc = main(["-w", str(tok_ws), "tokenize", "--tokenizer", "tok1"])
    assert rc == 1
    _one_line_error(capsys.readouterr().err, str(_sidecar(tok_ws)), what)
    assert not (tok_ws / "latents" / "tok1" / "index.json").exists()


@pytest.mark.parametrize("field", ["file", "actions_file", "id"])
def test_a_sidecar_naming_a_file_outside_its_folder_is_refused(tok_ws, tmp_path, capsys, field):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.copy(tok_ws / "videos" / "game" / "clip00.mp4", elsewhere / "clip00.mp4")
    shutil.copy(tok_ws / "videos" / "game" / "clip00.actions.npy", elsewhere / "clip00.actions.npy")
    value = {"file": "../../elsewhere/clip00.mp4", "actions_file": str(elsewhere / "clip00.actions.npy"),
             "id": "../../../escaped"}[field]
    _edit(_sidecar(tok_ws), **{field: value})
    rc = main(["-w", str(tok_ws), "tokenize", "--tokenizer", "tok1"])
    assert rc == 1
    _one_line_error(capsys.readouterr().err, str(_sidecar(tok_ws)), field)
    assert not list(tmp_path.rglob("escaped*")) and not (tok_ws / "latents" / "tok1" / "index.json").exists()


def test_an_imported_videos_json_of_the_wrong_types_skips_that_video_in_one_line(tmp_path, capsys):
    src = tmp_path / "in"
    small_clip(src / "a.mp4", frames=4)
    small_clip(src / "b.mp4", frames=4, seed=1)
    np.save(src / "a.actions.npy", np.array([-1, 0, 1, 2]))
    (src / "a.json").write_text(json.dumps({"title": "A", "action_meanings": "abc"}))  # not a list of names
    rc = main(["-w", str(tmp_path / "ws"), "fetch", "--source", "local", "--path", str(src)])
    err = capsys.readouterr().err
    assert rc == 1 and "Traceback" not in err
    assert str(src / "a.json") in err and "action_meanings" in err
    assert sorted(p.name for p in (tmp_path / "ws" / "videos" / "local").glob("*.mp4")) == ["b.mp4"]


# ---------------------------------------------------------------------------------------------- checkpoints
def _dynamics_run(root: Path, **config) -> Path:
    """A run with a tiny dynamics checkpoint whose stored config is then changed to ``config``."""
    cfg = DynamicsConfig(tokens=4, channels=4, dim=64, depth=4, heads=4, registers=1, max_frames=8)
    run = root / "runs" / "dyn"
    run.mkdir(parents=True)
    torch.manual_seed(0)
    path = save_dynamics(run / "model.safetensors", DynamicsModel(cfg))
    with safe_open(str(path), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
        meta = f.metadata()
    meta["config"] = json.dumps({**json.loads(meta["config"]), **config})
    save_file(tensors, str(path), metadata=meta)
    (run / "run.json").write_text(json.dumps({"stage": "dynamics", "status": "finished"}))
    return run


def test_an_absurd_dynamics_config_is_refused_before_any_allocation(tmp_path, capsys):
    run = _dynamics_run(tmp_path, dim=1 << 17, heads=256)  # a 131072-wide model: terabytes
    rc = main(["-w", str(tmp_path), "eval", "dyn", "--steps", "2"])
    assert rc == 1
    _one_line_error(capsys.readouterr().err, str(run / "model.safetensors"), "dim")


def test_a_config_that_does_not_fit_the_stored_tensors_is_refused_before_the_model_is_built(tmp_path, monkeypatch):
    run = _dynamics_run(tmp_path, dim=128)
    built = []
    init = dynamics_module.DynamicsModel.__init__

    def recording(self, cfg):
        built.append((cfg.dim, str(torch.get_default_device())))
        init(self, cfg)

    monkeypatch.setattr(dynamics_module.DynamicsModel, "__init__", recording)
    with pytest.raises(CheckpointError) as e:
        load_dynamics_run(run)  # what eval, rollout and play call
    line = str(e.value)
    assert str(run / "model.safetensors") in line and "tensor token_pos has shape (4, 64)" in line and "(4, 128)" in line
    assert built and all(device == "meta" for _, device in built)  # only shapes were made, no memory


@pytest.mark.parametrize("config,what", [({"dim": 1 << 17, "heads": 4}, "dim"), ({"height": 36}, "height")])
def test_a_tokenizer_checkpoint_with_a_bad_config_is_a_data_failure(tok_ws, capsys, config, what):
    path = tok_ws / "runs" / "tok1" / "model.safetensors"
    with safe_open(str(path), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
        meta = f.metadata()
    meta["config"] = json.dumps({**json.loads(meta["config"]), **config})
    save_file(tensors, str(path), metadata=meta)
    rc = main(["-w", str(tok_ws), "tokenize", "--tokenizer", "tok1"])
    assert rc == 1  # the file is bad, not the command line
    _one_line_error(capsys.readouterr().err, str(path), what)


# ---------------------------------------------------------------------------------------------- videos
def _gap_clip(path: Path, fps: int = 20, hours: float = 3.0) -> Path:
    """10 frames at ``fps``, the last 5 ``hours`` after the first 5 (a paused recording)."""
    c = av.open(str(path), "w")
    s = c.add_stream("libx264", rate=fps)
    s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
    s.codec_context.time_base = Fraction(1, fps)
    for i in range(10):
        f = av.VideoFrame.from_ndarray(np.full((48, 64, 3), 20 * i, np.uint8), format="rgb24")
        f.pts, f.time_base = (i if i < 5 else i + int(hours * 3600 * fps)), Fraction(1, fps)
        for p in s.encode(f):
            c.mux(p)
    for p in s.encode():
        c.mux(p)
    c.close()
    return path


def test_a_jump_of_hours_in_the_timestamps_is_cut_out_not_filled(tmp_path):
    path = _gap_clip(tmp_path / "gap.mp4")
    frames = read_frames(path, fps=20, max_frames=1000)  # one frame per slot across the jump would be 216000
    assert len(frames) == 10
    assert [round(float(f.mean()) / 20) for f in frames] == list(range(10))  # every frame once, in order


def _one_by_one(path: Path) -> Path:
    c = av.open(str(path), "w")
    s = c.add_stream("rawvideo", rate=20)
    s.width, s.height, s.pix_fmt = 1, 1, "rgb24"
    for i in range(3):
        for p in s.encode(av.VideoFrame.from_ndarray(np.full((1, 1, 3), 60 * i, np.uint8), format="rgb24")):
            c.mux(p)
    for p in s.encode():
        c.mux(p)
    c.close()
    return path


def test_odd_videos_are_imported_or_skipped_in_one_line_and_tokenize(tok_ws, capsys):
    src = tok_ws / "incoming"
    src.mkdir()
    _gap_clip(src / "gap.mp4")
    encode(src / "one_frame.mp4", [np.full((48, 64, 3), 90, np.uint8)], 20)
    encode(src / "huge.mp4", [np.full((3000, 4000, 3), 30 * i, np.uint8) for i in range(2)], 20)
    _one_by_one(src / "tiny.avi")
    c = av.open(str(src / "empty.mp4"), "w")  # a header and no frame
    s = c.add_stream("libx264", rate=20)
    s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
    c.start_encoding()
    c.close()
    rc = main(["-w", str(tok_ws), "fetch", "--source", "local", "--path", str(src)])
    fetch_err = capsys.readouterr().err
    assert rc == 1 and "Traceback" not in fetch_err  # the empty one is skipped, naming it
    assert "empty.mp4" in fetch_err
    stored = {p.stem for p in (tok_ws / "videos" / "local").glob("*.mp4")}
    assert stored == {"gap", "one_frame", "huge"}
    rc = main(["-w", str(tok_ws), "tokenize", "--tokenizer", "tok1"])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    index = json.loads((tok_ws / "latents" / "tok1" / "index.json").read_text())
    got = {v["id"]: (v["frames"], v["fps"]) for v in index["videos"]}
    assert got["gap"] == (10, 20) and got["one_frame"] == (1, 20) and got["huge"] == (2, 20)
    assert "tiny" not in stored and "tiny.avi: frame size 1x1 is too small" in fetch_err  # 1x1: skipped, named

"""``[model]``: the dynamics model's width, depth and heads from flags, a config file or the environment;
bad values are refused and a resumed run keeps its shape."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from ahri_cli.main import main
from ahri_core.config.base import load
from ahri_core.config.presets import DYNAMICS_PRESETS
from ahri_core.config.settings import ModelSettings
from ahri_core.errors import ConfigError

TINY = ["--preset", "tiny", "--max-steps", "2", "--batch-size", "2", "--seq-len", "8", "--stride", "4",
        "--log-every", "1", "--val-every", "100", "--checkpoint-every", "100", "--precision", "fp32", "--device", "cpu"]


def _latent_set(ws: Path) -> Path:
    d = ws / "latents" / "tok-test"
    d.mkdir(parents=True)
    vids = []
    for i, split in enumerate(["train"] * 3 + ["val"]):
        g = torch.Generator().manual_seed(i)
        t = torch.arange(24, dtype=torch.float32)[:, None, None]
        lat = (0.8 * torch.sin(0.25 * t + torch.rand(4, 4, generator=g) * 6.28)).half()
        meta = {"fps": "20", "video_id": f"c{i}", "tokenizer_id": "tok-test"}
        save_file({"latents": lat}, str(d / f"c{i}.safetensors"), metadata=meta)
        vids.append({"id": f"c{i}", "file": f"c{i}.safetensors", "frames": 24, "split": split, "has_actions": False})
    (d / "index.json").write_text(json.dumps({"tokenizer_id": "tok-test", "tokens": 4, "channels": 4, "fps": 20,
                                              "frame_size": 64, "videos": vids}))
    return d


@pytest.fixture
def ws(tmp_path, monkeypatch) -> Path:
    for k in ("AHRI_MODEL_DIM", "AHRI_MODEL_DEPTH", "AHRI_MODEL_HEADS", "AHRI_TRAIN_PRESET"):
        monkeypatch.delenv(k, raising=False)
    _latent_set(tmp_path)
    return tmp_path


def _model(ws: Path, run: str) -> dict:
    meta = json.loads((ws / "runs" / run / "run.json").read_text())
    return meta["model"]


def test_flags_build_the_requested_shape(ws):
    assert main(["-w", str(ws), "train", *TINY, "--run", "r", "--dim", "64", "--depth", "2", "--heads", "2"]) == 0
    m = _model(ws, "r")
    assert (m["dim"], m["depth"], m["heads"]) == (64, 2, 2)
    assert m["registers"] == DYNAMICS_PRESETS["tiny"]["registers"]  # the rest stays the preset's


def test_a_config_file_model_section_builds_the_requested_shape(ws):
    cfg = ws / "model.toml"
    cfg.write_text("[model]\ndim = 48\ndepth = 6\n")
    assert main(["-w", str(ws), "-c", str(cfg), "train", *TINY, "--run", "c"]) == 0
    m = _model(ws, "c")
    assert (m["dim"], m["depth"], m["heads"]) == (48, 6, DYNAMICS_PRESETS["tiny"]["heads"])


def test_without_model_settings_the_preset_shape_is_built(ws):
    assert main(["-w", str(ws), "train", *TINY, "--run", "p"]) == 0
    m = _model(ws, "p")
    assert {k: m[k] for k in ("dim", "depth", "heads")} == {k: DYNAMICS_PRESETS["tiny"][k] for k in ("dim", "depth", "heads")}


@pytest.mark.parametrize(
    "args, words",
    [
        (["--dim", "0"], ["model.dim"]),
        (["--dim", "100000"], ["model.dim"]),
        (["--heads", "0"], ["model.heads"]),
        (["--depth", "0"], ["model.depth"]),
        (["--dim", "34", "--heads", "4"], ["model.heads", "divisible"]),
        (["--dim", "36", "--heads", "4"], ["head width"]),
        (["--dim", "32", "--heads", "3"], ["model.heads"]),
        (["--dim", "34"], ["model.dim", "divisible"]),  # the preset's 4 heads
        (["--heads", "8", "--dim", "32", "--depth", "1"], ["model.depth", ">= 2"]),  # tiny: every 2nd block temporal
    ],
)
def test_a_bad_shape_is_refused_before_any_work(ws, capsys, args, words):
    assert main(["-w", str(ws), "train", *TINY, "--run", "bad", *args]) == 2
    err = capsys.readouterr().err
    assert all(w in err for w in words), err
    assert "Traceback" not in err and not (ws / "runs" / "bad").exists()


def test_a_bad_environment_value_is_refused(ws, capsys, monkeypatch):
    monkeypatch.setenv("AHRI_MODEL_DIM", "wide")
    assert main(["-w", str(ws), "train", *TINY, "--run", "env"]) == 2
    assert "model.dim" in capsys.readouterr().err


def test_model_settings_validate_on_their_own():
    assert ModelSettings(dim=64).overrides() == {"dim": 64}
    assert ModelSettings().shape("cpu") == {k: DYNAMICS_PRESETS["cpu"][k] for k in ("dim", "depth", "heads")}
    with pytest.raises(ConfigError, match="model.heads"):
        load(ModelSettings, {"dim": 64, "heads": 5})
    with pytest.raises(ConfigError, match="key/value heads"):
        ModelSettings(heads=6).shape("medium")  # medium: 4 key/value heads


def test_the_shape_flags_belong_to_the_dynamics_stage(ws, capsys):
    assert main(["-w", str(ws), "train", "--stage", "tokenizer", "--preset", "tiny", "--max-steps", "1", "--dim", "64"]) == 2
    assert "--dim" in capsys.readouterr().err


def test_resume_keeps_the_shape_and_refuses_another(ws, capsys):
    assert main(["-w", str(ws), "train", *TINY, "--run", "r", "--dim", "64", "--checkpoint-every", "1"]) == 0
    capsys.readouterr()
    assert main(["-w", str(ws), "train", "--run", "r", "--resume", "--max-steps", "3", "--dim", "32"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--dim" in err[0] and "64" in err[0] and "32" in err[0], err
    # without --dim the run continues with its own width
    assert main(["-w", str(ws), "train", "--run", "r", "--resume", "--max-steps", "3"]) == 0
    assert _model(ws, "r")["dim"] == 64
    assert json.loads((ws / "runs" / "r" / "run.json").read_text())["step"] == 3


def test_dim_flag_builds_the_compute_curves_width_64_model(ws):
    """The compute curve's width-64 point was trained with ``model_overrides={"dim": 64}`` on the cpu preset;
    ``ahri train --preset cpu --dim 64`` now builds that same model, field for field."""
    from ahri_core.data.windows import load_latent_set
    from ahri_core.train.dynamics import model_config_for

    args = [a if a != "tiny" else "cpu" for a in TINY]
    assert main(["-w", str(ws), "train", *args, "--run", "w64", "--dim", "64"]) == 0
    built = _model(ws, "w64")
    lset = load_latent_set(ws / "latents" / "tok-test")
    from ahri_core.config.settings import DataSettings, DiffusionSettings, TrainSettings

    data = DataSettings(seq_len=8, stride=4)  # TINY's window
    old = model_config_for(lset, TrainSettings(preset="cpu"), data, DiffusionSettings(), dim=64)
    assert built["dim"] == 64 and built == json.loads(old.model_dump_json())

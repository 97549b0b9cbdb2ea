"""ahri demo end to end with tiny presets and a one-minute budget (the real demo: 15 minutes, cpu presets)."""

from __future__ import annotations

import json

import pytest

from ahri_cli.main import main
from ahri_core.config.settings import DemoSettings
from ahri_core.demo import _sampling_calls
from ahri_core.video import probe

TINY = """
[demo]
clips = 6
frames = 40
size = 32
tokenizer_preset = "tiny"
dynamics_preset = "tiny"
seq_len_short = 8
seq_len_long = 16
batch_size_short = 4
batch_size_long = 2
k_max = 8
steps = [4, 8]
context = 4
horizon = 4
eval_clips = 2
rollout_horizon = 4
samples = 1
val_fraction = 0.3
"""


def test_sampling_cost_counts_every_model_call():
    s = DemoSettings(steps=[4, 64], context=16, horizon=16, rollout_horizon=32)
    ev, ro = _sampling_calls(s)
    assert ev == (16 + 5 * 16) + (16 + 65 * 16)
    assert ro == 16 + 5 * 32


@pytest.mark.slow
def test_demo_runs_end_to_end(tmp_path, capsys):
    cfg = tmp_path / "demo.toml"
    cfg.write_text(TINY)
    ws = tmp_path / "ws"
    rc = main(["-w", str(ws), "-c", str(cfg), "demo", "--minutes", "0.6"])
    assert rc == 0, capsys.readouterr().err
    text = capsys.readouterr().out
    assert "copy last frame" in text and "tokenizer ceiling" in text
    summary_path = next((ws / "runs").glob("demo-dynamics-*/demo-summary.json"))
    sm = json.loads(summary_path.read_text())
    assert set(sm["stage_seconds"]) == {"game clips", "tokenizer", "tokenize", "dynamics", "evaluate", "rollout"}
    assert len(list((ws / "videos" / "game").glob("*.mp4"))) == 6
    ev = json.loads((next((ws / "runs").glob("demo-dynamics-*/eval/*/metrics.json"))).read_text())
    assert set(ev["steps"]) == {"4", "8"} and ev["split"] == "val"
    assert set(sm["eval"]["psnr"]) == {"4 steps", "8 steps"}
    ro = sm["rollout"]
    assert probe(ro["out"]).frames == 4 + 4
    assert set(sm["acceptance"]) == {"4_steps_beats_copy_last_by_1db", "4_within_0.5db_of_8", "within_budget"}
    from ahri_core.checkpoint import read_metadata

    d = DemoSettings()
    _, tcfg, _ = read_metadata(next((ws / "runs").glob("demo-tokenizer-*/model.safetensors")))
    assert tcfg["mask_max"] == d.tokenizer_mask_max == 0.9  # the preset's masking, as a user's own run gets
    meta = json.loads(next((ws / "runs").glob("demo-dynamics-*/run.json")).read_text())
    run = meta["settings"]
    assert run["diffusion"]["single_image_fraction"] == d.single_image_fraction and run["diffusion"]["shortcut"]
    assert run["train"]["precision"] == d.precision == "auto" and run["train"]["lr"] == d.dynamics_lr
    # auto was resolved on this machine, and the run says to what and why
    assert meta["precision"]["precision"] in ("bf16", "fp32") and meta["precision"]["reason"]

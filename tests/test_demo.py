"""ahri demo end to end with tiny presets and a one-minute budget (the real demo: 15 minutes, cpu presets)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

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


AHRI = Path(sys.executable).parent / "ahri"


def ahri_piped(*args: str) -> str:
    """Run the installed ``ahri`` with stdout piped at 80 columns, as a script would; its stdout."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AHRI_")}
    r = subprocess.run([str(AHRI), *args], capture_output=True, text=True, timeout=300, env={**env, "COLUMNS": "80"})
    assert r.returncode == 0, r.stderr
    return r.stdout


def whole_paths(stdout: str, labels: tuple[str, ...]) -> list[Path]:
    """The paths a command printed after each of ``labels`` (a line's first word); each must exist, so none
    was broken across lines or cut."""
    found = {}
    for line in stdout.splitlines():
        words = line.split()
        if words and words[0] in labels:
            assert len(words) > 1, f"nothing after {words[0]}: the path went to the next line?\n{stdout}"
            found[words[0]] = Path(words[1])
            assert Path(words[1]).exists(), f"{words[1]!r} does not exist: a broken path?\n{stdout}"
    assert set(found) == set(labels), stdout
    for word in stdout.split():  # any other path printed exists too: no piece of a broken one
        if word.startswith("/"):
            assert Path(word.rstrip(",;)")).exists(), f"{word!r}: a broken path?\n{stdout}"
    assert all(p.is_absolute() for p in found.values())
    return list(found.values())


@pytest.mark.slow
def test_demo_runs_end_to_end(tmp_path):
    cfg = tmp_path / "demo.toml"
    cfg.write_text(TINY)
    ws = tmp_path / "workspace-with-a-long-enough-name" / "ws"
    text = ahri_piped("-w", str(ws), "-c", str(cfg), "demo", "--minutes", "0.6")
    assert "copy last frame" in text and "tokenizer ceiling" in text
    whole_paths(text, ("eval:", "plot:", "sample:", "rollout:", "summary:", "log:"))
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

    # eval, rollout and train print their paths whole too, with and without -q
    dyn = next((ws / "runs").glob("demo-dynamics-*")).name
    text = ahri_piped("-w", str(ws), "-q", "eval", dyn, "--steps", "4", "--context", "3", "--horizon", "2",
                      "--clips", "1", "--samples", "1")
    whole_paths(text, ("metrics:", "plot:", "video:"))
    clip = next((ws / "videos" / "game").glob("*.mp4"))
    text = ahri_piped("-w", str(ws), "rollout", str(clip), "--run", dyn, "--steps", "4", "--context", "4", "--horizon", "2")
    whole_paths(text, ("wrote",))
    text = ahri_piped("-w", str(ws), "train", "--preset", "tiny", "--max-steps", "2", "--seq-len", "8", "--batch-size", "2",
                      "--run", "piped")
    assert whole_paths(text, ("weights",)) == [ws / "runs" / "piped" / "model.safetensors"]

"""benchmarks/gpu_check.py runs end to end on CPU in its smoke mode and writes the JSON the docs rely on."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


def test_gpu_check_smoke_writes_json(tmp_path):
    out = tmp_path / "x.json"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--smoke", "--device", "cpu", "--out", str(out)],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert not list(tmp_path.glob("*.tmp*")), "the JSON is written through a temporary file"
    r = json.loads(out.read_text())

    assert r["smoke"] is True
    assert r["device"]["type"] == "cpu" and r["device"]["name"] and r["device"]["torch"]
    assert r["matmul"]["bf16"]["flops"] > 0 and r["matmul"]["fp32"]["flops"] > 0

    tr = r["train"]
    assert tr["steps"] >= 3 and tr["tokens_per_s"] > 0 and tr["frames_per_s"] > 0
    assert tr["model_flops_per_token"] > 0 and 0 < tr["mfu"] <= tr["mfu_with_teacher"]
    assert tr["loss_finite"]

    rows = r["memory"]["rows"]
    assert sorted({row["T"] for row in rows}) == sorted(r["settings"]["lengths"]) == [8, 16]
    assert {row["grad_checkpointing"] for row in rows} == {True, False}
    assert all("error" not in row and "peak_bytes" in row for row in rows)

    ro = r["rollout"]
    assert ro["seconds_4"] > 0 and ro["ratio_64_over_4"] > 1
    assert set(ro["frame_ms"]) == {"8", "64"} and all(v > 0 for v in ro["frame_ms"].values())

    names = [p["preset"] for p in r["presets"]]
    assert {"tiny", "cpu", "small"} <= set(names)
    assert all(p["params"] > 0 for p in r["presets"])
    assert set(r["seconds"]) >= {"matmul", "train", "rollout", "memory", "presets", "total"}

"""``ahri runs``: a table of the workspace's runs, from run.json files of the current and the older format."""

from __future__ import annotations

import json
import os
import time

from ahri_cli.main import main
from ahri_cli.runs_cmd import collect_runs


def _run(ws, name, meta, age_s):
    d = ws / "runs" / name
    d.mkdir(parents=True)
    if meta is not None:
        (d / "run.json").write_text(meta if isinstance(meta, str) else json.dumps(meta))
        t = time.time() - age_s
        os.utime(d / "run.json", (t, t))
    return d


def _workspace(tmp_path):
    ws = tmp_path / "ws"
    _run(ws, "tok-new", {
        "stage": "tokenizer", "status": "finished", "reason": None, "step": 1200,
        "budget": {"max_steps": None, "minutes": 10.0, "epochs": None},
        "best": {"metric": "val_psnr", "value": 28.04, "step": 1100},
        "precision": {"precision": "fp32", "reason": "no native bf16"},
    }, age_s=500)
    _run(ws, "dyn-diverged", {
        "stage": "dynamics", "status": "diverged", "reason": "loss nan at step 40", "step": 40,
        "budget": {"max_steps": 2000, "minutes": None, "epochs": None}, "best": None,
    }, age_s=400)
    _run(ws, "tok-old", {"stage": "tokenizer", "finished": True, "step": 300, "val_psnr": 25.61,
                         "settings": {"max_steps": 300}}, age_s=300)
    _run(ws, "dyn-old-stopped", {"stage": "dynamics", "finished": False, "stopped": "SIGINT", "step": 77,
                                 "settings": {"train": {"minutes": 30.0}},
                                 "val": {"step": 50, "val_next": 0.0421, "val_copy_last": 0.05}}, age_s=200)
    _run(ws, "dyn-old-running", {"stage": "dynamics", "finished": False, "step": 5}, age_s=100)
    _run(ws, "broken", "{not json", age_s=50)
    _run(ws, "empty", None, age_s=0)
    return ws


def test_collect_runs_reads_both_schemas(tmp_path):
    rows = {r["name"]: r for r in collect_runs(_workspace(tmp_path) / "runs")}
    assert [r["name"] for r in collect_runs(tmp_path / "ws" / "runs")][:5] == [
        "tok-new", "dyn-diverged", "tok-old", "dyn-old-stopped", "dyn-old-running"]  # oldest first
    assert (rows["tok-new"]["status"], rows["tok-new"]["step"]) == ("finished", 1200)
    assert rows["tok-new"]["best"] == {"metric": "val_psnr", "value": 28.04, "step": 1100, "last": False}
    assert rows["dyn-diverged"]["status"] == "diverged" and rows["dyn-diverged"]["reason"] == "loss nan at step 40"
    assert rows["tok-old"]["status"] == "finished" and rows["tok-old"]["budget"]["max_steps"] == 300
    assert rows["tok-old"]["best"]["metric"] == "val_psnr" and rows["tok-old"]["best"]["last"]
    assert rows["dyn-old-stopped"]["status"] == "interrupted" and rows["dyn-old-stopped"]["reason"] == "SIGINT"
    assert rows["dyn-old-stopped"]["budget"]["minutes"] == 30.0
    assert rows["dyn-old-stopped"]["best"]["metric"] == "val_next" and rows["dyn-old-stopped"]["best"]["step"] == 50
    assert rows["dyn-old-running"]["status"] == "unknown"
    assert rows["broken"]["status"] == "unknown" and "bad run.json" in rows["broken"]["reason"]
    assert rows["empty"]["reason"] == "no run.json"


def test_runs_table(tmp_path, capsys, monkeypatch):
    ws = _workspace(tmp_path)
    monkeypatch.setenv("COLUMNS", "200")
    assert main(["-w", str(ws), "runs"]) == 0
    text = capsys.readouterr().out
    names = {r["name"] for r in collect_runs(ws / "runs")}
    lines = {line.split()[0]: line for line in text.splitlines() if line.strip() and line.split()[0] in names}
    assert "finished" in lines["tok-new"] and "1200" in lines["tok-new"] and "10 min" in lines["tok-new"]
    assert "val_psnr 28.04 @1100" in lines["tok-new"]
    assert "diverged" in lines["dyn-diverged"] and "2000 steps" in lines["dyn-diverged"]
    assert "loss nan at step 40" in text
    assert "val_psnr 25.61 @300 (last)" in lines["tok-old"]
    assert "interrupted" in lines["dyn-old-stopped"] and "val_next 0.0421 @50 (last)" in lines["dyn-old-stopped"]
    assert "unknown" in lines["dyn-old-running"]


def test_runs_json_and_stage_filter(tmp_path, capsys):
    ws = _workspace(tmp_path)
    assert main(["-w", str(ws), "runs", "--json", "--stage", "tokenizer"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == ["tok-new", "tok-old"]
    assert rows[0]["budget"] == {"max_steps": None, "minutes": 10.0, "epochs": None}


def test_runs_in_an_empty_workspace(tmp_path, capsys):
    assert main(["-w", str(tmp_path), "runs"]) == 0
    assert "no runs in" in capsys.readouterr().err
    assert main(["-w", str(tmp_path), "runs", "--stage", "nope"]) == 2

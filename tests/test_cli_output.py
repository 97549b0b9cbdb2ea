"""What the CLI writes: the progress display at 80 and 120 columns, run logs, file permissions."""

from __future__ import annotations

import io
import os
import stat

import pytest
from rich.console import Console
from rich.table import Table

from ahri_cli import output
from ahri_cli.progress import RichProgress, run_log
from ahri_cli.state import STATE
from ahri_core.errors import DataError
from ahri_core.fileio import write_json_atomic, write_text_atomic

FIELDS = dict(loss=0.123456, flow_loss=0.1, bootstrap_loss=0.02, tau=0.5, lr=3e-4, val_next=0.0123, epoch=1.25)


def _render(progress: RichProgress, width: int) -> list[str]:
    c = Console(file=io.StringIO(), width=width, color_system=None, record=True)
    c.print(progress._p.get_renderable())
    return c.export_text().rstrip("\n").splitlines()


@pytest.mark.parametrize("width", [80, 120])
def test_progress_keeps_count_rate_and_eta_visible(width):
    p = RichProgress(Console(file=io.StringIO(), width=width), quiet=False)
    p.start("train dynamics", total=20000)
    for _ in range(3):
        p.advance("train dynamics", 5, **FIELDS)
    lines = _render(p, width)
    assert all(len(x) <= width for x in lines), lines
    bar = lines[0]
    assert "train dynamics" in bar and "15/20000" in bar and "/s" in bar and " eta " in bar
    assert lines[1].strip().startswith("loss=0.1235  flow_loss=0.1")  # the fields: a line of their own
    assert "15/20000" not in lines[1]


def test_progress_fields_follow_the_latest_update():
    p = RichProgress(Console(file=io.StringIO(), width=120), quiet=False)
    p.start("train", total=100, tau=0.5)
    p.advance("train", 1, loss=1.5, val=2.0)
    p.advance("train", 1, loss=1.25)  # val is not passed any more: it must not stay on screen
    lines = _render(p, 120)
    assert "loss=1.25" in lines[1] and "val=" not in lines[1] and "tau" not in lines[1]
    p.advance("train", 1)  # an update without fields keeps the line
    assert "loss=1.25" in _render(p, 120)[1]
    assert "3/100" in _render(p, 120)[0]


def test_progress_without_total_and_finish():
    p = RichProgress(Console(file=io.StringIO(), width=80), quiet=False)
    p.advance("videos", 2)  # an unknown task starts on its first advance
    assert _render(p, 80)[0].split()[-3] == "2"
    p.finish("videos", stored=2)
    first = _render(p, 80)[0]
    assert "2/2" in first and "eta" not in first


def test_quiet_progress_shows_only_problems(capsys, monkeypatch):
    monkeypatch.setattr(STATE, "quiet", True)
    with RichProgress() as p:
        p.start("work", total=2)
        p.advance("work", 2, loss=1.0)
        p.log("checkpoint at step 2: model.safetensors")
        p.log("skipped video v1: cannot decode")
        p.finish("work")
    err = capsys.readouterr().err
    assert err.strip() == "skipped video v1: cannot decode"


def test_run_log_tees_messages_tables_and_errors_without_colour(tmp_path, capsys):
    log = tmp_path / "run" / "log.txt"
    t = Table(title="summary")
    t.add_column("metric")
    t.add_row("psnr \\[dB]")
    with pytest.raises(DataError), run_log(log):
        output.console.print("[bold red]loud[/] message with [brackets]", markup=False)
        output.info("[green]coloured[/] info")
        output.out.print(t)
        with RichProgress() as p:
            p.start("train", total=4)
            p.advance("train", 4, loss=0.5)
            p.log("checkpoint at step 4")
            p.finish("train")
        raise DataError("latents are damaged")
    output.console.print("after the block")  # not logged any more
    text = log.read_text()
    assert text.startswith("--- ")  # a header line with the time and the command
    assert "[bold red]loud[/] message with [brackets]" in text
    assert "coloured info" in text and "[green]" not in text
    assert "psnr [dB]" in text and "summary" in text
    assert "checkpoint at step 4" in text
    assert "train: 4/4 in" in text and "loss=0.5" in text  # the task's end, once, instead of the live bar
    assert text.rstrip().endswith("error: latents are damaged")
    assert "\x1b[" not in text and "4/4 -/s" not in text  # no colour codes, no progress bar
    assert "after the block" not in text
    assert output._ACTIVE_LOGS == [] and log.name not in str(output.console._render_hooks)
    assert "coloured info" in capsys.readouterr().err  # the console showed it too


def test_run_log_quiet_still_logs_and_refusals_leave_no_file(tmp_path, capsys, monkeypatch):
    from ahri_core.errors import ConfigError

    with pytest.raises(ConfigError), run_log(tmp_path / "a" / "log.txt"):
        raise ConfigError("bad flag")
    assert not (tmp_path / "a").exists()
    monkeypatch.setattr(STATE, "quiet", True)
    with run_log(tmp_path / "b.txt"):
        output.info("only in the log")
        output.warn("shown [everywhere]")
    assert "only in the log" in (tmp_path / "b.txt").read_text()
    err = capsys.readouterr().err
    assert "only in the log" not in err and "warning: shown [everywhere]" in err


@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_atomic_writes_follow_the_umask(tmp_path, mask, mode):
    old = os.umask(mask)
    try:
        write_json_atomic(tmp_path / "a.json", {"x": 1})
        write_text_atomic(tmp_path / "b.txt", "x")
    finally:
        os.umask(old)
    for name in ("a.json", "b.txt"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == mode, name
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary left behind


def test_demo_log_goes_to_the_workspace_and_each_run_it_made(tmp_path, capsys, monkeypatch):
    import ahri_core.demo as demo

    ws = tmp_path / "ws"
    (ws / "runs" / "older").mkdir(parents=True)

    def fake_run_demo(settings, workspace, progress, **_):
        for name in ("demo-tokenizer-x", "demo-dynamics-x"):
            (workspace.run_dir(name)).mkdir(parents=True)
        progress.start("demo", total=6)
        progress.log("tokenizer stage done")
        raise DataError("tokenizing the game clips failed: clip3: broken")

    monkeypatch.setattr(demo, "run_demo", fake_run_demo)
    import torch

    from ahri_cli.main import main

    before = torch.get_num_threads()
    try:
        assert main(["-w", str(ws), "demo", "--minutes", "1", "--threads", "1"]) == 1
    finally:
        torch.set_num_threads(before)
    logs = list((ws / "logs").glob("demo-*.txt"))
    assert len(logs) == 1
    text = logs[0].read_text()
    assert "ahri demo: 96 game clips, budget 1 min, 1 CPU threads" in text
    assert "tokenizer stage done" in text and text.rstrip().endswith("error: tokenizing the game clips failed: clip3: broken")
    for name in ("demo-tokenizer-x", "demo-dynamics-x"):
        assert (ws / "runs" / name / "log.txt").read_text() == text
    assert not (ws / "runs" / "older" / "log.txt").exists()
    assert "error: tokenizing the game clips failed" in capsys.readouterr().err

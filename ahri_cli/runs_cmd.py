"""``ahri runs``: the training runs of the workspace, one row each, from each ``runs/<name>/run.json``."""

from __future__ import annotations

import json
import math
from datetime import datetime
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from ahri_core.workspace import run_status

from .output import escape, info, out
from .state import STATE


class StageFilter(str, Enum):
    tokenizer = "tokenizer"
    dynamics = "dynamics"


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def _budget(meta: dict[str, Any]) -> dict[str, Any]:
    """The run's budget: run.json "budget" (current runs) or its stored train settings (older runs)."""
    b = meta.get("budget")
    if isinstance(b, dict):
        return {k: b.get(k) for k in ("max_steps", "minutes", "epochs")}
    settings = meta.get("settings") if isinstance(meta.get("settings"), dict) else {}
    train = settings.get("train") if isinstance(settings.get("train"), dict) else settings
    return {k: train.get(k) for k in ("max_steps", "minutes", "epochs")}


def _budget_text(b: dict[str, Any]) -> str:
    parts = []
    if _num(b.get("max_steps")) is not None:
        parts.append(f"{int(b['max_steps'])} steps")
    if _num(b.get("minutes")) is not None:
        parts.append(f"{b['minutes']:g} min")
    if _num(b.get("epochs")) is not None:
        parts.append(f"{b['epochs']:g} epochs")
    return ", ".join(parts) or "-"


def _best(meta: dict[str, Any]) -> dict[str, Any] | None:
    """{"metric", "value", "step", "last"}: the best validation (current runs) or the last one (older runs)."""
    b = meta.get("best")
    if isinstance(b, dict) and _num(b.get("value")) is not None:
        return {"metric": str(b.get("metric", "")), "value": float(b["value"]), "step": b.get("step"), "last": False}
    if _num(meta.get("val_psnr")) is not None:  # older tokenizer runs
        return {"metric": "val_psnr", "value": float(meta["val_psnr"]), "step": meta.get("step"), "last": True}
    val = meta.get("val")
    if isinstance(val, dict):  # older dynamics runs: the last validation record
        for key in ("val_next", "val_loss", *sorted(k for k in val if k.startswith("val_"))):
            if _num(val.get(key)) is not None:
                return {"metric": key, "value": float(val[key]), "step": val.get("step"), "last": True}
    return None


def _best_text(b: dict[str, Any] | None) -> str:
    if b is None:
        return "-"
    at = f" @{b['step']}" if isinstance(b.get("step"), int) else ""
    return f"{b['metric']} {b['value']:.4g}{at}" + (" (last)" if b["last"] else "")


def _modified(d: Path) -> float:
    times = [p.stat().st_mtime for p in (d / "run.json", d / "metrics.jsonl") if p.is_file()]
    return max(times) if times else d.stat().st_mtime


def collect_runs(runs_dir: Path) -> list[dict[str, Any]]:
    """One record per run directory, oldest first (by the last change to run.json or metrics.jsonl)."""
    rows: list[dict[str, Any]] = []
    if not runs_dir.is_dir():
        return rows
    for d in runs_dir.iterdir():
        if not d.is_dir() or d.name.startswith("."):
            continue
        meta_path = d / "run.json"
        meta: dict[str, Any] = {}
        problem = None
        if not meta_path.is_file():
            problem = "no run.json"
        else:
            try:
                loaded = json.loads(meta_path.read_text(encoding="utf-8"))
                meta = loaded if isinstance(loaded, dict) else {}
                if not isinstance(loaded, dict):
                    problem = "run.json is not an object"
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
                problem = f"bad run.json ({type(e).__name__})"
        status, reason = run_status(meta) if problem is None else ("unknown", problem)
        step = meta.get("step")
        rows.append({
            "name": d.name,
            "path": str(d),
            "stage": meta.get("stage") if isinstance(meta.get("stage"), str) else None,
            "status": status,
            "reason": reason,
            "step": step if isinstance(step, int) and not isinstance(step, bool) else None,
            "budget": _budget(meta),
            "best": _best(meta),
            "modified": _modified(d),
        })
    rows.sort(key=lambda r: (r["modified"], r["name"]))
    return rows


def _when(ts: float) -> str:
    t = datetime.fromtimestamp(ts)
    return t.strftime("%m-%d %H:%M" if t.year == datetime.now().year else "%Y-%m-%d %H:%M")


_STYLE = {"finished": "green", "running": "cyan", "interrupted": "yellow", "diverged": "red", "failed": "red"}


def runs(
    stage: Annotated[StageFilter | None, typer.Option("--stage", help="Only runs of this stage.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the list as JSON (for scripts).")] = False,
) -> None:
    """List the training runs in the workspace: stage, status, step, budget, best validation, last change.

    Newest last. Runs made before the current run.json format show their last validation, marked (last).

    Example:  ahri runs --stage dynamics
    """
    ws = STATE.workspace
    rows = [r for r in collect_runs(ws.runs) if stage is None or r["stage"] == stage.value]
    if as_json:
        out.print_json(json.dumps([{**r, "modified": datetime.fromtimestamp(r["modified"]).isoformat(timespec="seconds")}
                                   for r in rows]))
        return
    if not rows:
        what = f"{stage.value} runs" if stage else "runs"
        info(f"no {what} in {escape(str(ws.runs))} (start one: ahri train --stage tokenizer --minutes 10)")
        return
    t = Table(title=escape(f"runs in {ws.runs}"), box=None, pad_edge=False, collapse_padding=True, header_style="bold")
    t.add_column("name", no_wrap=True)
    t.add_column("stage", no_wrap=True)
    t.add_column("status", min_width=11)
    t.add_column("step", justify="right")
    t.add_column("budget")
    t.add_column("best")
    t.add_column("modified", no_wrap=True, min_width=11)
    for r in rows:
        status = f"[{_STYLE.get(r['status'], 'dim')}]{r['status']}[/]"
        if r["reason"] and r["status"] != "finished":
            status += f"\n[dim]{escape(r['reason'])}[/]"
        t.add_row(
            escape(r["name"]),
            r["stage"] or "?",
            status,
            str(r["step"]) if r["step"] is not None else "-",
            _budget_text(r["budget"]),
            escape(_best_text(r["best"])),
            _when(r["modified"]),
        )
    out.print(t)


def register(app: typer.Typer) -> None:
    app.command("runs")(runs)

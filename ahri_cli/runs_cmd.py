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

from ahri_core.workspace import run_liveness

from .output import escape, info, out, result
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


def _round(x: float) -> str:
    """A budget as a person writes it: 120, 15, 4.7, 0.6, 0.05."""
    return f"{x:.0f}" if abs(x) >= 10 else f"{x:.2g}"


def _budget_text(b: dict[str, Any]) -> str:
    parts = []
    if _num(b.get("max_steps")) is not None:
        parts.append(f"{int(b['max_steps'])} steps")
    if _num(b.get("minutes")) is not None:  # under a minute: in seconds
        m = b["minutes"]
        parts.append(f"{m * 60:.0f} s" if 0 < m < 1 else f"{_round(m)} min")
    if _num(b.get("epochs")) is not None:
        parts.append(f"{_round(b['epochs'])} epochs")
    return ", ".join(parts) or "-"


def latest_eval(run_dir: Path) -> dict[str, Any] | None:
    """The newest ``ahri eval`` of a run written under ``<run>/eval/`` (its default place): {"steps", "gain_db",
    "horizon", "path"}, the gain in PSNR over copy-last of its fewest sampling steps over the first predicted
    frames (up to 8). None when there is none."""
    found = []
    for m in (run_dir / "eval").glob("*/metrics.json"):
        try:
            data = json.loads(m.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            continue
        summary = data.get("summary") if isinstance(data, dict) else None
        if not isinstance(summary, dict):
            continue
        for key, gains in summary.items():
            if key.startswith("gain_over_copy_last_db_h1_") and isinstance(gains, dict):
                steps = sorted((int(k), v) for k, v in gains.items() if k.isdigit() and _num(v) is not None)
                if steps:
                    found.append((str(data.get("created", "")), m.stat().st_mtime, {
                        "steps": steps[0][0], "gain_db": float(steps[0][1]),
                        "horizon": int(key.rsplit("_", 1)[1]), "path": str(m)}))
    return max(found, key=lambda f: f[:2])[2] if found else None


def _eval_text(e: dict[str, Any] | None) -> str:
    if e is None:
        return "-"
    colour = "green" if e["gain_db"] >= 1 else "yellow" if e["gain_db"] > 0 else "red"
    return f"[{colour}]{e['gain_db']:+.2f} dB[/]\n[dim]{e['steps']} steps[/]"


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
        status, reason = run_liveness(meta, d) if problem is None else ("unknown", problem)
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
            "eval": latest_eval(d) if meta.get("stage") == "dynamics" else None,
            "modified": _modified(d),
        })
    rows.sort(key=lambda r: (r["modified"], r["name"]))
    return rows


def _when(ts: float) -> str:
    t = datetime.fromtimestamp(ts)
    return t.strftime("%m-%d %H:%M" if t.year == datetime.now().year else "%Y-%m-%d %H:%M")


_STYLE = {"finished": "green", "running": "cyan", "interrupted": "yellow", "stopped": "yellow", "diverged": "red",
          "failed": "red"}


def runs(
    stage: Annotated[StageFilter | None, typer.Option("--stage", help="Only runs of this stage.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the list as JSON (for scripts).")] = False,
) -> None:
    """List the training runs in the workspace: stage, status, step, budget, best validation, the latest eval's gain
    over copy-last (dynamics runs) and the last change.

    Newest last. A run whose process has gone without recording an end (killed) shows as stopped. Runs made
    before the current run.json format show their last validation, marked (last).

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
    # At 80 columns every column keeps its values whole: long names fold, reasons and budgets wrap at spaces.
    t = Table(box=None, pad_edge=False, collapse_padding=True, header_style="bold")
    t.add_column("name", overflow="fold", min_width=14)
    t.add_column("status", min_width=11, overflow="fold")
    t.add_column("step", justify="right", no_wrap=True)
    t.add_column("budget", min_width=6)
    t.add_column("best val", min_width=9)
    t.add_column("eval gain", justify="right", min_width=9)
    t.add_column("changed", no_wrap=True, min_width=12)
    for r in rows:
        status = f"[{_STYLE.get(r['status'], 'dim')}]{r['status']}[/]"
        if r["reason"] and r["status"] != "finished":
            status += f"\n[dim]{escape(r['reason'])}[/]"
        t.add_row(
            f"{escape(r['name'])}\n[dim]{r['stage'] or '?'}[/]",
            status,
            str(r["step"]) if r["step"] is not None else "-",
            _budget_text(r["budget"]),
            escape(_best_text(r["best"])),
            _eval_text(r["eval"]) if r["stage"] == "dynamics" else "",
            _when(r["modified"]),
        )
    result(f"runs in {ws.runs}")
    out.print(t)


def register(app: typer.Typer) -> None:
    app.command("runs")(runs)

"""``ahri info``: versions, device and what the workspace holds."""

from __future__ import annotations

import platform

import typer
from rich.table import Table

from .output import escape, out
from .state import STATE


def info() -> None:
    """Show versions, the torch device and the workspace contents.

    Example:  ahri info
    """
    import av
    import torch

    import ahri_core

    t = Table(title="ahri", show_header=False)
    t.add_row("ahri", ahri_core.__version__)
    t.add_row("python", platform.python_version())
    t.add_row("torch", torch.__version__)
    t.add_row("av (ffmpeg)", av.__version__)
    from ahri_core.runtime import describe

    facts = describe()
    if torch.cuda.is_available():
        dev = f"cuda ({torch.cuda.get_device_name(0)}, {torch.cuda.device_count()} device(s))"
    else:
        dev = f"cpu ({facts['cores_available']} cores available, {torch.get_num_threads()} threads)"
    t.add_row("device", escape(dev))
    bf16 = "native" if facts["native_bf16"] else "emulated"
    t.add_row("cpu", escape(f"{facts['cpu']}; bf16 {bf16} ({facts['native_bf16_why']})"))
    ws = STATE.workspace
    summary = ws.summary()
    t.add_row("workspace", escape(summary["root"]))
    t.add_row("videos", escape(", ".join(f"{k}: {v}" for k, v in summary["videos"].items()) or "none"))
    t.add_row("latent sets", escape(", ".join(f"{k}: {v} files" for k, v in summary["latents"].items()) or "none"))
    runs = ", ".join(f"{k} ({v})" for k, v in summary["runs"].items())
    t.add_row("runs", escape(runs) + " (details: ahri runs)" if runs else "none")
    out.print(t)


def register(app: typer.Typer) -> None:
    app.command("info")(info)

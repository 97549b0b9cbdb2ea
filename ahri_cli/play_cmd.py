"""``ahri play``: steer the dream live in a browser."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from ahri_core.config.base import load
from ahri_core.config.settings import PlaySettings, SamplingSettings
from ahri_core.errors import ConfigError

from .options import (
    DeviceOption,
    PrecisionChoice,
    PrecisionOption,
    RunOption,
    TokenizerOption,
    existing_path,
    run_argument,
    run_or_path,
    setup_threads,
)
from .output import escape, info, out, warn
from .state import STATE


def play(
    run: Annotated[
        str | None,
        typer.Argument(
            help="Dynamics run (name in the workspace or path). Default: the latest finished one.", metavar="RUN"
        ),
    ] = None,
    run_option: RunOption = None,
    clip: Annotated[
        Path | None,
        typer.Option("--clip", help="Start from this video. \\[default: a held-out video of the run's latent set]"),
    ] = None,
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="Port to listen on (0: any free one).")] = 7860,
    host: Annotated[
        str, typer.Option("--host", help="Address to listen on; anything but this machine's loopback warns.")
    ] = "127.0.0.1",
    allow_host: Annotated[
        list[str] | None,
        typer.Option("--allow-host", metavar="NAME",
                     help="Also answer to this host name (repeatable), e.g. the machine's name on the network."),
    ] = None,
    steps: Annotated[int | None, typer.Option("--steps", help="Denoising steps per frame (power of two). \\[default: 4]")] = None,
    context: Annotated[
        int | None, typer.Option("--context", help="Real frames shown before the dream starts. \\[default: 16]")
    ] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="Sampling seed (each reset starts with it). \\[default: 0]")] = None,
    record: Annotated[bool, typer.Option("--record", help="Record every page from its start (V toggles).")] = False,
    record_minutes: Annotated[
        float | None, typer.Option("--record-minutes", help="A recording stops after this many minutes. \\[default: 30]")
    ] = None,
    record_gb: Annotated[
        float | None, typer.Option("--record-gb", help="A recording stops at this file size (GB). \\[default: 2]")
    ] = None,
    tokenizer: TokenizerOption = None,
    device: DeviceOption = "auto",
    precision: PrecisionOption = PrecisionChoice.auto,
    threads: Annotated[
        int | None,
        typer.Option(
            "--threads", min=1, max=1024,
            help="CPU threads for torch. \\[default: one fewer than the free cores: the page and the server keep one]",
        ),
    ] = None,
) -> None:
    """Serve a page that shows the dream live and steers it with the keyboard (Ctrl-C stops).

    Keys: arrows/WASD, space and 0-9 choose the run's actions; R resets, P pauses, V records to RUN/play/.

    Example:  ahri play RUN --port 7860
    """
    from ahri_core.inference.world import load_world_model
    from ahri_core.play.server import PlayServer, is_local_host, play_threads, require_server_library
    from ahri_core.play.start import start_from_clip, start_from_run
    from ahri_core.runtime import resolve_device

    require_server_library()
    run = run_argument(run, run_option)
    flags = dict(steps=[steps] if steps is not None else None, context=context, seed=seed)
    s = load(SamplingSettings, flags, STATE.config)
    if len(s.steps) != 1:
        raise ConfigError(f"play takes one step count, got sampling.steps={s.steps}; pass --steps K")
    caps = load(PlaySettings, dict(record_minutes=record_minutes, record_gb=record_gb), STATE.config)
    clip = existing_path(clip, "--clip", "video file")
    if clip is not None and clip.is_dir():
        raise ConfigError(f"--clip {clip}: a folder; give one video file")
    tok = run_or_path(tokenizer, "--tokenizer")
    setup_threads(threads if threads is not None else play_threads())
    world = load_world_model(run, STATE.workspace, tokenizer=tok, device=resolve_device(device or "auto"))
    world.sampler(s.steps[0], s.tau_ctx)  # refuse impossible steps before reading anything
    start = start_from_clip(world, clip, s.context) if clip is not None else start_from_run(world, s.context)
    ws = world.workspace
    choice = world.choose_precision(precision.value, batch=1, frames=s.context + 1,
                                    cache_dir=ws.cache if ws is not None else None)
    info(escape(f"precision {choice.precision} ({choice.reason})"))

    def on_event(kind: str, data: dict[str, Any]) -> None:
        if kind == "recorded":
            out.print(f"recorded {data['path']} ({data['frames']} frames)", highlight=False, markup=False, soft_wrap=True)
        elif kind == "error":
            warn(f"page {data['session']}: {data['message']}")
        elif kind in ("opened", "closed"):
            info(escape(f"page {data['session']} {kind}"))

    server = PlayServer(
        world, start, steps=s.steps[0], tau_ctx=s.tau_ctx, precision=choice.precision, seed=s.seed,
        host=host, port=port, record=record, on_event=on_event, allow_hosts=allow_host or (),
        record_minutes=caps.record_minutes, record_bytes=int(caps.record_gb * 1e9),
        record_free_bytes=int(caps.record_keep_free_gb * 1e9),
    )
    if not is_local_host(host):
        warn(f"--host {host}: the page is reachable from other machines, and whoever reaches it can steer the "
             "model and write recordings into the run (with the token of the URL below); names it answers to "
             "other than its address: --allow-host NAME")
    url = server.start()
    info(escape(f"{world.name}: {len(start.frames)} real frames of {start.name}, then the dream at "
                f"{world.fps:g} fps, {s.steps[0]} steps per frame"))
    out.print(f"open {url} in a browser (Ctrl-C stops)", highlight=False, markup=False, soft_wrap=True)
    try:
        server.wait()
    finally:
        server.close()


def register(app: typer.Typer) -> None:
    app.command("play")(play)

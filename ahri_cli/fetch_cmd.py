"""``ahri fetch``: download or record videos into ``<workspace>/videos/<source>/``."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from ahri_core.config.base import load
from ahri_core.config.settings import FetchSettings
from ahri_core.errors import ConfigError, FetchError

from .options import check_square_size, either, existing_path, renamed
from .output import console, escape, next_step, out
from .output import result as result_line
from .progress import RichProgress
from .state import STATE


class Verify(str, Enum):
    full = "full"
    quick = "quick"


class Source(str, Enum):
    youtube = "youtube"
    local = "local"
    game = "game"
    gym = "gym"


def _choose_source(source: Source | None, channel: list[str], url: list[str], path: Path | None) -> str:
    if source is None:
        if channel or url:
            return "youtube"
        if path is not None:
            return "local"
        raise ConfigError(
            "nothing to fetch: give --channel NAME, --url URL, --source local --path DIR, "
            "--source game or --source gym (see ahri fetch --help)"
        )
    if source is not Source.youtube and (channel or url):
        raise ConfigError(f"--channel/--url belong to --source youtube, not --source {source.value}")
    if source is Source.youtube and not (channel or url):
        raise ConfigError("--source youtube needs --channel NAME or --url URL")
    if source is Source.local and path is None:
        raise ConfigError("--source local needs --path DIR (a folder of videos or one file)")
    return source.value


def _summary(result) -> Table:
    t = Table(title=escape(f"fetch: {result.source}"))
    for col, justify in (
        ("id", "left"),
        ("title", "left"),
        ("frames", "right"),
        ("fps", "right"),
        ("size", "right"),
        ("seconds", "right"),
        ("actions", "left"),
        ("status", "left"),
    ):
        t.add_column(col, justify=justify, no_wrap=col in ("id", "frames", "fps", "size", "status"))
    for r in result.stored:
        m = r.meta
        acts = f"{m.get('action_kind')} x{m.get('action_count')}" if m.get("actions_file") else "-"
        title = str(m.get("title") or "")
        t.add_row(
            escape(str(r.id)),
            escape(title[:48]),
            str(m.get("frames")),
            f"{float(m.get('fps') or 0):.4g}",
            f"{m.get('width')}x{m.get('height')}",
            f"{float(m.get('duration') or 0):.1f}",
            acts,
            "[green]stored[/]",
        )
    for vid in dict.fromkeys(result.skipped):
        t.add_row(escape(str(vid)), "", "", "", "", "", "", "[dim]already stored[/]")
    return t


def fetch(
    channel: Annotated[
        list[str],
        typer.Option(
            "--channel", help="YouTube channel handle (its videos tab), e.g. domisumReplay-Garen. Repeatable."
        ),
    ] = [],  # noqa: B006
    url: Annotated[
        list[str],
        typer.Option(
            "--url",
            help="Video, playlist, channel, RSS feed or web page URL (anything yt-dlp reads). Repeatable.",
        ),
    ] = [],  # noqa: B006
    source: Annotated[
        Source | None, typer.Option("--source", help="youtube (with --channel/--url), local, game or gym.")
    ] = None,
    path: Annotated[
        Path | None,
        typer.Option("--path", help="local: a folder of videos (searched recursively) or one file."),
    ] = None,
    out_dir: Annotated[
        Path | None, typer.Option("--out", help="Store directory (default: the source's folder in <workspace>/videos).")
    ] = None,
    clips: Annotated[
        int | None, typer.Option("--clips", help="game/gym: number of clips. \\[default: 16]")
    ] = None,
    frames: Annotated[
        int | None, typer.Option("--frames", help="game/gym: frames per clip. \\[default: 200]")
    ] = None,
    size: Annotated[
        str | None,
        typer.Option("--size", metavar="N", callback=check_square_size,
                     help="game/gym: frame size in pixels (even; N or NxN, square). \\[default: game 64, gym native]"),
    ] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="game/gym: first seed. \\[default: 0]")] = None,
    env: Annotated[
        str | None, typer.Option("--env", help="gym: Gymnasium environment id. \\[default: ALE/Pong-v5]")
    ] = None,
    max_height: Annotated[
        int | None, typer.Option("--max-height", help="Tallest video to download. \\[default: 720]")
    ] = None,
    max_videos: Annotated[
        int | None,
        typer.Option(
            "--max-videos", help="At most this many new videos per --channel/--url (or files for local)."
        ),
    ] = None,
    match_title: Annotated[
        str | None,
        typer.Option("--match-title", help="Only videos whose title matches this regex (case-insensitive)."),
    ] = None,
    sleep_interval: Annotated[
        float | None,
        typer.Option("--sleep-interval", help="Seconds to wait before each download (min). \\[default: 3]"),
    ] = None,
    max_sleep_interval: Annotated[
        float | None,
        typer.Option("--max-sleep-interval", help="Seconds to wait before each download (max). \\[default: 8]"),
    ] = None,
    sleep_requests: Annotated[
        float | None, typer.Option("--sleep-requests", help="Seconds between metadata requests. \\[default: 1]")
    ] = None,
    retries: Annotated[
        int | None, typer.Option("--retries", help="Retries per request. \\[default: 3]")
    ] = None,
    socket_timeout: Annotated[
        float | None, typer.Option("--socket-timeout", help="Network timeout in seconds. \\[default: 20]")
    ] = None,
    connect_timeout: Annotated[
        float | None,
        typer.Option("--connect-timeout", help="Seconds for the first reachability check. \\[default: 5]"),
    ] = None,
    verify: Annotated[
        Verify | None,
        typer.Option(
            "--verify", help="full: decode every frame of each new video; quick: keyframes. \\[default: full]"
        ),
    ] = None,
    count: Annotated[int | None, typer.Option("--count", hidden=True, callback=renamed("--count", "--clips"))] = None,
) -> None:
    """Fetch videos: YouTube channels and URLs, local files, the built-in game, or a Gymnasium env.

    Example:  ahri fetch --channel domisumReplay-Garen --max-videos 10
    (offline:  ahri fetch --source game --clips 16)
    """
    flags = dict(
        max_height=max_height,
        max_videos=max_videos,
        match_title=match_title,
        sleep_interval=sleep_interval,
        max_sleep_interval=max_sleep_interval,
        sleep_requests=sleep_requests,
        retries=retries,
        socket_timeout=socket_timeout,
        connect_timeout=connect_timeout,
        verify=verify.value if verify is not None else None,
        count=either(clips, count, "--clips", "--count"),
        frames=frames,
        size=size,
        seed=seed,
        env=env,
    )
    settings = load(FetchSettings, flags, STATE.config)
    kind = _choose_source(source, channel, url, path)
    path = existing_path(path, "--path", "folder or video file")
    dest = out_dir.expanduser() if out_dir is not None else STATE.workspace.source_dir(kind)

    if kind == "youtube":
        from ahri_core.sources import youtube

        urls = [youtube.channel_url(c) for c in channel] + list(url)
        labels = {youtube.channel_url(c): "youtube.com" for c in channel}
        youtube.preflight(urls, settings.connect_timeout, labels)  # fail fast, before anything is written
        with RichProgress(console) as progress:
            result = youtube.fetch_urls(urls, dest, settings, progress, check=False, labels=labels)
    elif kind == "local":
        from ahri_core.sources.local import import_local

        with RichProgress(console) as progress:
            result = import_local(path, dest, settings, progress)
    elif kind == "game":
        from ahri_core.sources import record_game

        with RichProgress(console) as progress:
            result = record_game(dest, settings=settings, progress=progress)
    else:
        from ahri_core.sources.gym import record_gym

        with RichProgress(console) as progress:
            result = record_gym(dest, settings=settings, progress=progress)

    if result.stored or result.skipped:
        out.print(_summary(result))
        result_line(f"videos: {result.dest}")
    for note in result.notes:
        console.print(f"[dim]note:[/] {escape(str(note))}", highlight=False, soft_wrap=True)
    for what, why in result.failed:
        failed = f"{what + ': ' if what else ''}{why}"
        console.print(f"[red]failed:[/] {escape(failed)}", highlight=False, soft_wrap=True)
    frames_total = sum(r.frames for r in result.stored)
    line = (
        f"{len(result.stored)} stored ({frames_total} frames), {len(set(result.skipped))} already stored, "
        f"{len(result.failed)} failed -> {dest}"
    )
    if result.failed:
        raise FetchError(line)
    console.print(f"[green]done:[/] {escape(line)}", highlight=False, soft_wrap=True)
    if result.stored or result.skipped:
        hint = ["train", "--stage", "tokenizer", "--minutes", "10"]
        if out_dir is not None:
            hint += ["--videos", str(dest)]
        next_step(*hint)


def register(app: typer.Typer) -> None:
    app.command("fetch")(fetch)

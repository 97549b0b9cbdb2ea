"""The first stage of ``ahri demo --videos``: one's own videos instead of the built-in game.

- :func:`import_videos`: a folder or a file (what ``ahri fetch --source local`` does) or a URL (a channel,
  playlist or video: what ``ahri fetch --url`` does) into the workspace's store; the flow trains on exactly
  the videos this import named.
- :func:`held_out`: the videos the flow holds out, by the hash rule of ``data/split.py`` (a video's side does not
  depend on the others), so the tokenizer, the latent set and the evaluation agree.
- :func:`check_lengths`: at least one held-out video must be long enough for the evaluation's windows, said
  before any training.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from .config.settings import FetchSettings
from .errors import ConfigError, DataError
from .progress import Progress


def is_url(text: str) -> bool:
    """Whether ``text`` is a URL (or a yt-dlp search such as ``ytsearch5:garen``) rather than a path."""
    return bool(re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", text) or re.match(r"^ytsearch\w*:", text))


def check_source(source: str) -> str:
    """``source`` as the flow records it (a path made absolute, a URL as given); a path that does not exist
    is refused (a URL is checked when the import reaches its host)."""
    if is_url(source):
        return source
    p = Path(source).expanduser()
    if not p.exists():
        raise ConfigError(f"--videos {source}: no such folder or file; give a folder of videos, a video file or a URL")
    return str(p.resolve())


def import_videos(source: str, dest_root: Path, settings: FetchSettings, progress: Progress) -> tuple[list, Path, list]:
    """Import ``source`` into ``dest_root/<local|youtube>``; returns (the records of the videos it named, the
    store folder, the (what, why) of each video that could not be imported)."""
    from .sources.store import list_videos

    if is_url(source):
        from .sources import youtube

        dest = Path(dest_root) / "youtube"
        result = youtube.fetch_urls([source], dest, settings, progress, check=True)
    else:
        from .sources.local import import_local

        dest = Path(dest_root) / "local"
        result = import_local(Path(source).expanduser(), dest, settings, progress)
    wanted = {r.id for r in result.stored} | set(result.skipped)
    videos = [v for v in list_videos(dest) if v.id in wanted] if dest.is_dir() else []
    if len(videos) < 2:
        why = f"; {result.failed[0][0]}: {result.failed[0][1]}" if result.failed else ""
        raise DataError(
            f"--videos {source}: {len(videos)} usable video(s){why}; the flow needs at least 2 (whole videos are "
            "held out for the evaluation)"
        )
    return videos, dest, list(result.failed)


def held_out(ids: list[str], val_fraction: float) -> list[str]:
    """The ids held out for validation and the evaluation (at least one of two or more)."""
    from .data.split import SplitRule

    side = SplitRule.by_hash(val_fraction).assign(ids)
    return sorted(i for i, s in side.items() if s == "val")


def frames_at(video: Any, fps: float) -> int:
    """Frames of ``video`` when read at ``fps`` or its own rate, whichever is lower (the tokenizer's rule)."""
    own = float(video.fps or 0)
    n = int(video.frames or 0)
    return n if own <= 0 or own <= fps else int(n * fps / own)


def check_lengths(videos: list, val_ids: list[str], fps: float, needed: int) -> None:
    """At least one held-out video must give ``needed`` frames at ``fps`` (the evaluation's context + horizon)."""
    held = [v for v in videos if v.id in set(val_ids)]
    longest = max((frames_at(v, fps) for v in held), default=0)
    if longest < needed:
        names = ", ".join(v.id for v in held[:4]) + (", ..." if len(held) > 4 else "")
        raise DataError(
            f"the held-out videos ({names}) have at most {longest} frames at {fps:g} fps; the evaluation needs "
            f"{needed} (context + horizon): give longer videos"
        )

"""Where videos come from: yt-dlp downloads, local folders, the built-in game, Gymnasium environments.

Every source writes into a store directory (``<workspace>/videos/<source>/``) through
:mod:`ahri_core.sources.store`; read it back with :func:`list_videos`. The heavier modules
(``youtube`` imports yt-dlp, ``gym`` imports gymnasium) are imported only when used.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..config.settings import FetchSettings
from ..errors import VideoError
from ..progress import Progress, ensure
from .store import (
    FetchResult,
    VideoRecord,
    content_hash,
    existing,
    list_videos,
    rebuild_manifest,
    store_frames,
)

GAME_SEED_STRIDE = 1_000_003  # clip i of seed K renders with seed K * GAME_SEED_STRIDE + i


def game_clip_id(seed: int, index: int) -> str:
    return f"game-s{seed}-{index:04d}"


def record_game(
    dest: str | os.PathLike,
    count: int | None = None,
    frames: int | None = None,
    size: int | None = None,
    seed: int | None = None,
    settings: FetchSettings | None = None,
    progress: Progress | None = None,
) -> FetchResult:
    """Render ``count`` clips of the built-in game into ``dest`` (ids ``game-s<seed>-<i>``, 20 fps).

    Arguments left as None come from ``settings`` (size defaults to 64). Deterministic: a clip already
    stored with the same frames and actions is skipped, so re-running costs only the rendering.
    """
    from . import game

    s = settings or FetchSettings()
    count = count if count is not None else s.count
    frames = frames if frames is not None else s.frames
    size = size if size is not None else (s.size or 64)
    seed = seed if seed is not None else s.seed
    progress = ensure(progress)
    dest = Path(dest)
    result = FetchResult(source="game", dest=dest)
    progress.start("render", total=count)
    for i in range(count):
        vid = game_clip_id(seed, i)
        clip_seed = seed * GAME_SEED_STRIDE + i
        clip = game.render_clip(clip_seed, frames, size=size)
        digest = content_hash(clip.frames, clip.actions)
        prev = existing(dest, vid)
        if prev is not None and prev.get("extra", {}).get("content_sha256") == digest:
            result.skipped.append(vid)
        else:
            meta = {
                "source": "game",
                "source_url": f"ahri:game?seed={clip_seed}&frames={frames}&size={size}",
                "origin": f"game:{clip_seed}:{frames}:{size}",
                "title": f"built-in game, seed {clip_seed}",
                "extra": {"seed": clip_seed, "size": size, "content_sha256": digest},
            }
            try:
                rec = store_frames(
                    dest,
                    vid,
                    clip.frames,
                    game.GAME_FPS,
                    meta,
                    actions=clip.actions,
                    action_meanings=list(game.ACTION_MEANINGS),
                    crf=15,
                )
                result.stored.append(rec)
            except VideoError as e:
                result.failed.append((vid, str(e)))
        progress.advance("render", 1, frames=frames)
    progress.finish("render", stored=len(result.stored))
    if result.stored:
        rebuild_manifest(dest)
    return result


__all__ = [
    "FetchResult",
    "VideoRecord",
    "list_videos",
    "record_game",
    "game_clip_id",
    "GAME_SEED_STRIDE",
]

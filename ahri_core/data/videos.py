"""The videos a reader is given: references to their files and sidecars, and their actions at a frame rate.

- :class:`VideoRef`: a video's path, id, sidecar metadata and actions, with its own rate, picture size and
  duration (from the sidecar, else probed once from the file); ``rate`` is the rate it is read at for a
  target: the target or its own, whichever is lower (never repeating frames).
- ``find_videos`` / ``as_video_refs``: the videos under a folder (via the store) and a list of unique refs.
- ``common_aspect``: the picture aspect most of the videos share.
- ``resample_actions``: a video's actions carried over to the frames kept at another rate.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import AhriError, DataError
from ..fileio import sha256_file


@dataclass
class VideoRef:
    """A video to read: the fields of ``sources.store.VideoRecord`` that the tokenizer needs."""

    path: Path
    id: str
    meta: dict[str, Any] = field(default_factory=dict)
    actions: Any = None  # np.ndarray: int64 (T,) or float32 (T, A); None when the video has none
    _sha: str | None = None
    _info: Any = None  # the probe of the file (VideoInfo), False when it cannot be probed; None: not yet

    @property
    def sha256(self) -> str:
        if self._sha is None:
            s = self.meta.get("sha256") if isinstance(self.meta, dict) else None
            self._sha = s if isinstance(s, str) and len(s) == 64 else sha256_file(self.path)
        return self._sha

    def _probed(self) -> Any:
        """The file's :class:`~ahri_core.video.VideoInfo` (one probe per video, kept), or None when unreadable."""
        if self._info is None:
            from ..video import probe

            try:
                self._info = probe(self.path, count=False)
            except (AhriError, OSError):
                self._info = False
        return self._info or None

    def _number(self, key: str) -> float:
        """A positive number from the sidecar (``fps``, ``width``, ``height``, ``duration``), else from the probe
        of the file; 0.0 when neither knows it."""
        try:
            v = float(self.meta.get(key) or 0.0) if isinstance(self.meta, dict) else 0.0
        except (TypeError, ValueError):
            v = 0.0
        if v <= 0:
            info = self._probed()
            v = float(getattr(info, key, 0) or 0.0) if info is not None else 0.0
        return max(v, 0.0)

    @property
    def source_fps(self) -> float:
        """The video's own frame rate: the sidecar's ``fps``, else probed from the file; 0.0 when unknown
        (a file that cannot be opened: decoding it will report why)."""
        return self._number("fps")

    @property
    def source_size(self) -> tuple[int, int] | None:
        """(width, height) of the video's pictures: the sidecar's, else probed; None when unknown."""
        w, h = int(self._number("width")), int(self._number("height"))
        return (w, h) if w > 0 and h > 0 else None

    @property
    def duration(self) -> float:
        """Seconds of video: the sidecar's ``duration``, else probed; 0.0 when unknown."""
        return self._number("duration")

    def rate(self, target: float) -> float:
        """The rate this video is read at for a ``target`` rate: the target, never above the video's own."""
        from ..video import capped_fps

        return capped_fps(target, self.source_fps)


def _read_sidecar(path: Path) -> dict[str, Any]:
    side = path.with_suffix(".json")
    if side.is_file():
        try:
            d = json.loads(side.read_text(encoding="utf-8"))
            return d if isinstance(d, dict) else {}
        except (json.JSONDecodeError, OSError):
            return {}
    return {}


def as_video_ref(v: Any) -> VideoRef:
    """Accept a ``VideoRecord`` (anything with path and id), a VideoRef, or a plain path."""
    if isinstance(v, VideoRef):
        return v
    if isinstance(v, (str, os.PathLike)):
        p = Path(v)
        return VideoRef(path=p, id=p.stem, meta=_read_sidecar(p))
    path = getattr(v, "path", None)
    vid = getattr(v, "id", None)
    if path is None or vid is None:
        raise TypeError(f"not a video record or path: {v!r}")
    meta = getattr(v, "meta", None) or {}
    return VideoRef(path=Path(path), id=str(vid), meta=dict(meta), actions=getattr(v, "actions", None))


def as_video_refs(videos: Iterable[Any]) -> list[VideoRef]:
    refs = [as_video_ref(v) for v in videos]
    seen: set[str] = set()
    for r in refs:
        if r.id in seen:
            raise DataError(f"two videos share the id {r.id!r} ({r.path}); video ids must be unique")
        seen.add(r.id)
    return refs


def find_videos(root: str | os.PathLike) -> list[Any]:
    """Videos under ``root`` via the store (sidecars, actions); plain *.mp4 files if the store is absent."""
    root = Path(root)
    if not root.exists():
        raise DataError(f"video directory {root} does not exist (fetch videos first, e.g. `ahri fetch --source game`)")
    try:
        from ..sources.store import list_videos
    except ImportError:  # pragma: no cover - store not installed yet
        list_videos = None
    if list_videos is not None:
        return list(list_videos(root))
    exts = {".mp4", ".mkv", ".webm", ".mov", ".avi"}
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in exts and not p.name.startswith("."))


def common_aspect(refs: Sequence[VideoRef]) -> tuple[float | None, str]:
    """(width / height shared by most of the videos, a note when they differ); (None, "") when no video's
    size is known. Aspects within 1% count as one; a tie goes to the aspect seen first."""
    groups: dict[float, list[str]] = {}
    for r in refs:
        wh = r.source_size
        if wh is None:
            continue
        a = wh[0] / wh[1]
        key = next((g for g in groups if abs(g / a - 1) < 0.01), a)
        groups.setdefault(key, []).append(r.id)
    if not groups:
        return None, ""
    best = max(groups, key=lambda g: len(groups[g]))
    if len(groups) == 1:
        return best, ""
    others = sum(len(v) for g, v in groups.items() if g != best)
    return best, (f"videos have {len(groups)} aspect ratios; the frame shape follows the {len(groups[best])} at "
                  f"{best:.3g}:1, the other {others} are fitted to it (set --size and --fit to choose)")


def resample_actions(actions: np.ndarray, source_fps: float, fps: float, count: int) -> np.ndarray:
    """A video's actions carried over to ``count`` frames read at ``fps`` (see ``video.source_indices``).

    ``actions[t]`` produced frame t. Kept frame k shows source frame j = s[k]:
    - discrete (int (T,)): ``actions[j]``, the action in force when the kept frame was produced; inputs
      on dropped frames in between are not carried over;
    - continuous (float (T, A)): the mean of ``actions[s[k-1]+1 .. j]``, every action since the previous
      kept frame (NaN rows, "no action", left out of the mean; a row of NaN when all of them are).
    Frame 0 keeps ``actions[0]`` (no action). A kept frame that repeats the previous one (no source frame
    since) gets "no action" (-1 or NaN). Equal rates leave the actions as they are; frames past the end
    of the actions get "no action".
    """
    from ..video import source_indices

    a = np.asarray(actions)
    discrete = a.ndim == 1 and np.issubdtype(a.dtype, np.integer)
    src = source_indices(count, source_fps, fps)
    prev = np.concatenate([[-1], src[:-1]]) if count else src  # the source frame of the previous kept frame
    keep = (src < len(a)) & (src > prev)
    if discrete:
        out = np.full((count,), -1, np.int64)
        out[keep] = a[src[keep]]
        return out
    rows = np.asarray(a, np.float32).reshape(len(a), -1)
    has = ~np.isnan(rows).all(axis=1)
    csum = np.concatenate([np.zeros((1, rows.shape[1])), np.cumsum(np.where(has[:, None], np.nan_to_num(rows), 0.0), 0)])
    cnt = np.concatenate([[0], np.cumsum(has)])
    end = np.minimum(src, len(a) - 1) + 1
    start = np.minimum(prev + 1, end)
    n = cnt[end] - cnt[start]
    out = np.full((count, rows.shape[1]), np.nan, np.float32)
    ok = keep & (n > 0)
    out[ok] = ((csum[end] - csum[start])[ok] / n[ok, None]).astype(np.float32)
    return out.reshape(count, *a.shape[1:])

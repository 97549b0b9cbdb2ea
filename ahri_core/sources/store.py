"""The video store: one directory per source under ``<workspace>/videos/``.

Each video is ``<id>.mp4`` plus a JSON sidecar ``<id>.json`` (written last, so a sidecar means the
video is complete) and, for recorded sources, ``<id>.actions.npy``. ``manifest.json`` lists what the
directory holds. See docs/data-formats.md for every field.

Actions follow the project convention: ``actions[t]`` produced frame t; discrete actions are int64 (T,)
with -1 = "no action" (always at t = 0), continuous ones float32 (T, A) with NaN rows = "no action".
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ..errors import DataError, VideoError
from ..filecheck import inside, validated
from ..fileio import atomic_path, sha256_file, write_json_atomic
from ..video import VIDEO_EXTENSIONS, VideoInfo, check_video, probe, to_mp4, write_video

SIDECAR_FORMAT = "ahri-video/1"
MANIFEST_FORMAT = "ahri-manifest/1"
MANIFEST = "manifest.json"
ARCHIVE = "archive.txt"  # yt-dlp's download archive (one "<extractor> <id>" per line)
STAGING = ".partial"  # downloads in progress (hidden; resumed by the next run)
_RESERVED = {"manifest", "archive"}


@dataclass
class VideoRecord:
    """One stored video: ``path`` to the mp4, its ``id``, the sidecar as ``meta``, and ``actions`` or None."""

    path: Path
    id: str
    meta: dict = field(default_factory=dict)
    actions: np.ndarray | None = None

    @property
    def sidecar(self) -> Path:
        return self.path.with_suffix(".json")

    @property
    def fps(self) -> float:
        return float(self.meta.get("fps") or 0.0)

    @property
    def frames(self) -> int:
        return int(self.meta.get("frames") or 0)

    @property
    def action_meanings(self) -> list[str] | None:
        return self.meta.get("action_meanings")


@dataclass
class FetchResult:
    """What one fetch did: ``stored`` records, ``skipped`` ids (already present), ``failed`` (what, why)."""

    source: str
    dest: Path
    stored: list[VideoRecord] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failed

    def merge(self, other: FetchResult) -> FetchResult:
        self.stored += other.stored
        self.skipped += other.skipped
        self.failed += other.failed
        self.notes += other.notes
        return self


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def safe_id(text: str, max_len: int = 96) -> str:
    """A file-name-safe video id: letters, digits, ``.``, ``_`` and ``-`` only."""
    s = re.sub(r"[^A-Za-z0-9._-]+", "_", str(text)).strip("._-")[:max_len].strip("._-")
    if not s:
        s = "video"
    if s.lower() in _RESERVED:
        s += "_"
    return s


def unique_id(dest: Path, base: str, origin: str) -> str:
    """``base`` unless a different video (another ``origin``) already holds it; then a hashed variant."""
    vid = safe_id(base)
    meta = read_sidecar(dest / f"{vid}.json")
    if meta is None or meta.get("origin") == origin:
        return vid
    return safe_id(f"{vid}-{hashlib.sha1(origin.encode()).hexdigest()[:8]}")


def existing(dest: Path, video_id: str) -> dict | None:
    """The sidecar of ``video_id`` in ``dest`` when the video is fully stored, else None (a sidecar that names
    a file outside ``dest`` does not count)."""
    meta = read_sidecar(dest / f"{video_id}.json")
    if meta is None:
        return None
    try:
        mp4 = inside(dest, meta.get("file", f"{video_id}.mp4"), dest / f"{video_id}.json", "file")
    except DataError:
        return None
    return meta if mp4.is_file() else None


# What to do about a sidecar that cannot be used.
SIDECAR_FIX = "fix that field, or delete the video with its .json and fetch it again"
# A video id as :func:`safe_id` makes it: it names files (the video's, its latents'), so no "/" and no leading ".".
ID_PATTERN = r"^[A-Za-z0-9_-][A-Za-z0-9._-]*$"


class SidecarCheck(BaseModel):
    """The types of the sidecar fields that readers use (unknown keys are kept)."""

    model_config = ConfigDict(extra="allow")

    format: str
    id: str | None = Field(None, pattern=ID_PATTERN)
    file: str | None = Field(None, min_length=1)
    frames: int | None = Field(None, ge=0)
    fps: float | None = Field(None, ge=0)
    width: int | None = Field(None, ge=0)
    height: int | None = Field(None, ge=0)
    duration: float | None = Field(None, ge=0)
    sha256: str | None = None
    actions_file: str | None = None
    action_kind: str | None = None
    action_count: int | None = Field(None, ge=0)
    action_meanings: list[str] | None = None


class ImportedSidecarCheck(BaseModel):
    """The fields an imported video's ``<name>.json`` lends to its new sidecar (unknown keys are ignored)."""

    title: str | None = None
    source_url: str | None = None
    uploader: str | None = None
    upload_date: str | None = None
    action_meanings: list[str] | None = None


def read_sidecar(path: Path) -> dict | None:
    """The JSON object at ``path``, or None when it is missing or not a JSON object."""
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


# ----------------------------------------------------------------------------------------------
# Actions
# ----------------------------------------------------------------------------------------------


def validate_actions(
    actions: np.ndarray, frames: int, action_count: int | None, where: str
) -> tuple[np.ndarray, str]:
    """Check ``actions`` against the convention; return (array in its canonical dtype, kind)."""
    a = np.asarray(actions)
    if a.shape[:1] != (frames,):
        raise DataError(
            f"{where}: {a.shape[0] if a.ndim else 0} actions for {frames} frames (need one per frame)"
        )
    if a.ndim == 1 and np.issubdtype(a.dtype, np.integer):
        a = a.astype(np.int64)
        if frames and a[0] != -1:
            raise DataError(f"{where}: actions[0] must be -1 (frame 0 has no producing action), got {a[0]}")
        hi = action_count if action_count is not None else np.iinfo(np.int64).max
        bad = (a < -1) | (a >= hi)
        if bad.any():
            raise DataError(f"{where}: action {a[bad][0]} outside [-1, {hi})")
        return a, "discrete"
    if a.ndim == 2 and np.issubdtype(a.dtype, np.floating):
        a = a.astype(np.float32)
        if frames and not np.isnan(a[0]).all():
            raise DataError(f"{where}: continuous actions[0] must be NaN (frame 0 has no producing action)")
        return a, "continuous"
    raise DataError(f"{where}: actions must be int (T,) or float (T, A), got {a.dtype} {a.shape}")


def load_actions(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: cannot read actions ({e})") from None


def _save_npy(path: Path, arr: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, arr, allow_pickle=False)


# ----------------------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------------------


def _commit(
    dest: Path,
    video_id: str,
    info: VideoInfo,
    meta: dict,
    actions: np.ndarray | None,
    action_meanings: list[str] | None,
) -> dict:
    """Write actions and the sidecar for an mp4 already at ``dest/<id>.mp4``; returns the sidecar."""
    mp4 = dest / f"{video_id}.mp4"
    side: dict[str, Any] = {
        "format": SIDECAR_FORMAT,
        "id": video_id,
        "file": mp4.name,
        "source": meta.get("source", dest.name),
        "source_url": meta.get("source_url"),
        "origin": meta.get("origin", meta.get("source_url") or video_id),
        "title": meta.get("title") or video_id,
        "uploader": meta.get("uploader"),
        "upload_date": meta.get("upload_date"),
        "duration": round(info.duration, 6),
        "fps": info.fps,
        "width": info.width,
        "height": info.height,
        "frames": info.frames,
        "codec": info.codec,
        "sha256": sha256_file(mp4),
        "actions_file": None,
        "action_kind": None,
        "action_count": None,
        "action_meanings": None,
        "fetched_at": now_iso(),
        "extra": meta.get("extra", {}),
    }
    apath = dest / f"{video_id}.actions.npy"
    if actions is not None:
        count = len(action_meanings) if action_meanings else None
        arr, kind = validate_actions(actions, info.frames, count, str(mp4))
        _save_npy(apath, arr)
        side.update(
            actions_file=apath.name,
            action_kind=kind,
            action_count=count if kind == "discrete" else int(arr.shape[1]),
            action_meanings=list(action_meanings) if action_meanings else None,
        )
    else:
        with contextlib.suppress(FileNotFoundError):
            apath.unlink()
    write_json_atomic(dest / f"{video_id}.json", side)
    return side


def _listed(dest: Path, side: dict) -> VideoRecord:
    """After the sidecar (the commit point: from there the video is whole, and an interrupt must not remove it):
    the manifest entry (rebuilt from the sidecars if this is cut short) and the record."""
    manifest_add(dest, side)
    apath = dest / side["actions_file"] if side.get("actions_file") else None
    return VideoRecord(path=dest / side["file"], id=side["id"], meta=side,
                       actions=None if apath is None else load_actions(apath))


def store_file(
    dest: str | os.PathLike,
    src: str | os.PathLike,
    video_id: str,
    meta: dict,
    actions: np.ndarray | None = None,
    action_meanings: list[str] | None = None,
    verify: str = "full",
    checked: VideoInfo | None = None,
) -> VideoRecord:
    """Check ``src`` with PyAV and store it as ``dest/<video_id>.mp4`` with its sidecar.

    Codecs mp4 can hold are copied (no re-encoding). Raises :class:`VideoError` (nothing is written)
    when ``src`` is not a decodable video. ``checked`` skips the source check when the caller did it.
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    if checked is None:
        checked = check_video(src, full=verify == "full")
    mp4 = dest / f"{video_id}.mp4"
    to_mp4(src, mp4)
    try:
        info = check_video(mp4, full=False)
        if info.frames != checked.frames:
            raise VideoError(src, f"storing as mp4 kept {info.frames} of {checked.frames} frames")
        side = _commit(dest, video_id, info, meta, actions, action_meanings)
    except BaseException:
        _remove_video(dest, video_id)
        raise
    return _listed(dest, side)


def store_frames(
    dest: str | os.PathLike,
    video_id: str,
    frames,
    fps: float,
    meta: dict,
    actions: np.ndarray | None = None,
    action_meanings: list[str] | None = None,
    crf: int = 18,
) -> VideoRecord:
    """Encode uint8 frames (T, H, W, 3) (or an iterable of (H, W, 3)) as ``dest/<video_id>.mp4`` with its sidecar."""
    dest = Path(dest)
    mp4 = dest / f"{video_id}.mp4"
    write_video(mp4, frames, fps, crf=crf)
    try:
        info = probe(mp4)
        side = _commit(dest, video_id, info, meta, actions, action_meanings)
    except BaseException:
        _remove_video(dest, video_id)
        raise
    return _listed(dest, side)


def _remove_video(dest: Path, video_id: str) -> None:
    for name in (f"{video_id}.json", f"{video_id}.mp4", f"{video_id}.actions.npy"):
        with contextlib.suppress(FileNotFoundError):
            (dest / name).unlink()


def content_hash(frames: np.ndarray, actions: np.ndarray | None = None) -> str:
    """sha256 of raw frames (and actions): tells whether a generated clip is already stored."""
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(frames).tobytes())
    h.update(str(frames.shape).encode())
    if actions is not None:
        h.update(np.ascontiguousarray(actions).tobytes())
    return h.hexdigest()


# ----------------------------------------------------------------------------------------------
# Manifest and listing
# ----------------------------------------------------------------------------------------------


def _manifest_entry(side: dict) -> dict:
    keys = (
        "id",
        "file",
        "title",
        "source_url",
        "frames",
        "fps",
        "width",
        "height",
        "duration",
        "sha256",
        "fetched_at",
    )
    entry = {k: side.get(k) for k in keys}
    entry["sidecar"] = f"{side['id']}.json"
    entry["actions_file"] = side.get("actions_file")
    return entry


def _write_manifest(dest: Path, entries: dict[str, dict]) -> dict:
    manifest = {
        "format": MANIFEST_FORMAT,
        "source": dest.name,
        "updated": now_iso(),
        "count": len(entries),
        "total_frames": int(sum(int(e.get("frames") or 0) for e in entries.values())),
        "videos": [entries[k] for k in sorted(entries)],
    }
    write_json_atomic(dest / MANIFEST, manifest)
    return manifest


def manifest_add(dest: Path, side: dict) -> None:
    """Add or replace one video in ``dest/manifest.json``."""
    current = read_sidecar(dest / MANIFEST) or {}
    entries = {e["id"]: e for e in current.get("videos", []) if isinstance(e, dict) and "id" in e}
    entries[side["id"]] = _manifest_entry(side)
    _write_manifest(dest, entries)


def rebuild_manifest(dest: str | os.PathLike) -> dict:
    """Rewrite ``dest/manifest.json`` from the sidecars present (the sidecars are the truth)."""
    dest = Path(dest)
    entries = {r.id: _manifest_entry(r.meta) for r in list_videos(dest, recursive=False, bare=False)}
    return _write_manifest(dest, entries)


def load_record(sidecar: str | os.PathLike) -> VideoRecord:
    """Read one sidecar (and its actions). Raises :class:`DataError` when it is damaged or inconsistent."""
    sidecar = Path(sidecar)
    try:
        meta = json.loads(sidecar.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise DataError(f"{sidecar}: not a readable sidecar ({e})") from None
    if not isinstance(meta, dict) or not str(meta.get("format", "")).startswith("ahri-video/"):
        raise DataError(f"{sidecar}: not an ahri video sidecar (no 'format': '{SIDECAR_FORMAT}')")
    meta = {**meta, **validated(SidecarCheck, meta, sidecar, SIDECAR_FIX).model_dump(exclude_unset=True)}
    mp4 = inside(sidecar.parent, meta.get("file") or sidecar.with_suffix(".mp4").name, sidecar, "file")
    actions = None
    if meta.get("actions_file"):
        actions = load_actions(inside(sidecar.parent, meta["actions_file"], sidecar, "actions_file"))
        if actions.shape[:1] != (int(meta.get("frames") or 0),):
            raise DataError(f"{sidecar}: {actions.shape[0] if actions.ndim else 0} actions for {meta.get('frames')} "
                            f"frames; {SIDECAR_FIX}")
    return VideoRecord(path=mp4, id=str(meta.get("id") or sidecar.stem), meta=meta, actions=actions)


def list_videos(directory: str | os.PathLike, recursive: bool = True, bare: bool = True) -> list[VideoRecord]:
    """Every video under ``directory`` (a source directory or the whole ``videos/``), sorted by path.

    Videos with a sidecar carry its fields in ``meta`` and their ``actions``; with ``bare``, video files
    without a sidecar are listed too (``meta`` then holds only ``id`` and ``file``). Hidden files and
    folders (downloads in progress) are ignored. Raises :class:`DataError` for a damaged sidecar.
    """
    root = Path(directory)
    if not root.is_dir():
        raise DataError(f"{root}: no such video directory")
    records: list[VideoRecord] = []
    seen: set[Path] = set()
    walker = root.rglob("*") if recursive else root.glob("*")
    files = sorted(
        p
        for p in walker
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )
    for p in files:
        if p.suffix == ".json" and p.name != MANIFEST and not p.name.endswith(".actions.json"):
            meta = read_sidecar(p)
            if meta is None and p.with_suffix(".mp4").exists():
                raise DataError(f"{p}: damaged sidecar (not valid JSON)")
            if meta is None or not str(meta.get("format", "")).startswith("ahri-video/"):
                continue
            rec = load_record(p)
            if rec.path.is_file():
                records.append(rec)
                seen.add(rec.path.resolve())
    if bare:
        for p in files:
            if p.suffix.lower() in VIDEO_EXTENSIONS and p.resolve() not in seen:
                records.append(VideoRecord(path=p, id=p.stem, meta={"id": p.stem, "file": p.name}))
    records.sort(key=lambda r: str(r.path))
    return records


__all__ = [
    "VideoRecord",
    "FetchResult",
    "VideoError",
    "safe_id",
    "unique_id",
    "existing",
    "store_file",
    "store_frames",
    "validate_actions",
    "load_actions",
    "content_hash",
    "manifest_add",
    "rebuild_manifest",
    "load_record",
    "read_sidecar",
    "list_videos",
    "ARCHIVE",
    "STAGING",
    "MANIFEST",
]

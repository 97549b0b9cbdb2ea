"""The index of a latent set (``<latents>/<tokenizer-id>/index.json``): one dataclass that writes and reads it.

``ahri tokenize`` makes a :class:`LatentIndex` and writes it (atomically); :class:`~ahri_core.data.latents.LatentStore`
reads it back. The JSON object holds, in this order: format, tokenizer_id, tokenizer_weights,
tokenizer_sha256, tokenizer_config, tokens, channels, fps (null when the videos' rates differ),
tokenizer_fps, frame_size ("HxW"), fit, the split record (split_rule, val_fraction, and for a chosen split
split_file, val_videos, train_videos), action_kind, action_count, action_meanings, frames, updated, and
videos: one :class:`LatentEntry` per video {id, file, frames, fps, has_actions, action_kind, action_count,
sha256, source, content_box, split}.

Reading is lenient: keys an index does not have get their defaults (sets written by hand, or by older
versions, carry fewer), and keys this version does not know are kept as they are. It checks what it knows: an
index that is not a JSON object, a known key of the wrong type, or a video whose file lies outside the set's
folder is refused with one line naming the file and the key.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ..errors import DataError
from ..filecheck import inside, read_json_object, validated
from ..fileio import write_json_atomic

INDEX = "index.json"
INDEX_FORMAT = "ahri-latents/1"
SPLITS = ("train", "val")
# The keys of a split rule's record (``SplitRule.record``), written between ``fit`` and ``action_kind``.
SPLIT_KEYS = ("split_rule", "val_fraction", "split_file", "val_videos", "train_videos")
# Keys a latent set's index must have to be read at all.
REQUIRED_KEYS = ("tokenizer_id", "tokens", "channels", "fps", "videos")
# What to do about an index that cannot be used.
FIX = "run `ahri tokenize` into a new --out folder to write the set again"


class _EntryCheck(BaseModel):
    """The types of one entry of ``videos`` as read (unknown keys are kept)."""

    model_config = ConfigDict(extra="allow")

    id: str = Field(min_length=1)
    file: str = Field(min_length=1)
    frames: int = Field(0, ge=0)
    fps: float | None = Field(None, gt=0)
    has_actions: bool = False
    action_kind: str = "none"
    action_count: int | None = Field(0, ge=0)
    sha256: str | None = None
    source: str | None = None
    content_box: list[int] | None = Field(None, min_length=4, max_length=4)
    split: Literal["train", "val"] | None = None


class _IndexCheck(BaseModel):
    """The types of an index as read (unknown keys are kept)."""

    model_config = ConfigDict(extra="allow")

    tokenizer_id: str = Field(min_length=1)
    tokens: int = Field(ge=1)
    channels: int = Field(ge=1)
    fps: float | None = Field(gt=0)
    videos: list[_EntryCheck]
    tokenizer_config: dict[str, Any] | None = None
    tokenizer_fps: float | None = Field(None, gt=0)
    frame_size: str | int | None = None
    action_kind: str = "none"
    action_count: int | None = Field(0, ge=0)
    action_meanings: list[str] | None = None
    frames: int = Field(0, ge=0)


def parse_box(text: Any) -> list[int] | None:
    """A ``content_box`` string back as [top, left, height, width]; None when absent or malformed."""
    try:
        box = [int(x) for x in str(text).split(",")]
    except (TypeError, ValueError):
        return None
    return box if len(box) == 4 and all(b >= 0 for b in box) and box[2] > 0 and box[3] > 0 else None


@dataclass
class LatentEntry:
    """One video of a latent set: its file, frame count and rate, actions, origin, picture box and split."""

    id: str
    file: str
    frames: int = 0
    fps: float | None = None  # the rate its latents were read at
    has_actions: bool = False
    action_kind: str = "none"
    action_count: int = 0
    sha256: str | None = None  # of the video file
    source: str | None = None
    content_box: list[int] | None = None  # [top, left, height, width] of the picture in each frame
    split: str | None = None  # "train" | "val"
    extra: dict[str, Any] = field(default_factory=dict)  # keys this version does not know

    @classmethod
    def from_file_meta(cls, vid: str, file: str, meta: dict[str, str], default_fps: float) -> LatentEntry:
        """The entry of a video from its latent file's metadata (strings); ``split`` is set later."""
        kind = meta.get("action_kind", "none")
        return cls(
            id=vid,
            file=file,
            frames=int(meta.get("frames", 0)),
            fps=float(meta.get("fps") or default_fps),
            has_actions=kind != "none",
            action_kind=kind,
            action_count=int(meta.get("action_count") or 0),
            sha256=meta.get("sha256"),
            source=meta.get("source"),
            content_box=parse_box(meta.get("content_box")),
        )

    @classmethod
    def from_dict(cls, d: dict[str, Any], default_fps: Any = None) -> LatentEntry:
        """An entry as written in the index; a missing ``fps`` is ``default_fps`` (an explicit null stays null)."""
        known = {f.name for f in fields(cls)} - {"extra"}
        kw = {k: v for k, v in d.items() if k in known}
        kw.setdefault("fps", default_fps)
        return cls(**{"file": "", **kw}, extra={k: v for k, v in d.items() if k not in known})

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"}
        if d["split"] is None:
            del d["split"]
        return {**d, **self.extra}


@dataclass
class LatentIndex:
    """The whole index of a latent set; see the module docstring for its JSON layout."""

    tokenizer_id: str
    tokens: int
    channels: int
    fps: float | None  # the set's one rate; None when the videos' rates differ (see each entry's fps)
    videos: list[LatentEntry] = field(default_factory=list)
    format: str = INDEX_FORMAT
    tokenizer_weights: str | None = None
    tokenizer_sha256: str | None = None
    tokenizer_config: Any = None  # the tokenizer's config as a dict
    tokenizer_fps: float | None = None
    frame_size: Any = None  # "HxW" (one number in sets of square tokenizers made before frames had a shape)
    fit: str | None = None
    split: dict[str, Any] = field(default_factory=dict)  # the split rule's record (SPLIT_KEYS)
    action_kind: str = "none"
    action_count: int = 0
    action_meanings: list[str] | None = None
    frames: int = 0
    updated: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # keys this version does not know

    def to_dict(self) -> dict[str, Any]:
        """The JSON object of ``index.json``, keys in their written order."""
        d: dict[str, Any] = {
            "format": self.format,
            "tokenizer_id": self.tokenizer_id,
            "tokenizer_weights": self.tokenizer_weights,
            "tokenizer_sha256": self.tokenizer_sha256,
            "tokenizer_config": self.tokenizer_config,
            "tokens": self.tokens,
            "channels": self.channels,
            "fps": self.fps,
            "tokenizer_fps": self.tokenizer_fps,
            "frame_size": self.frame_size,
            "fit": self.fit,
            **self.split,
            "action_kind": self.action_kind,
            "action_count": self.action_count,
            "action_meanings": self.action_meanings,
            "frames": self.frames,
            "updated": self.updated,
            "videos": [v.to_dict() for v in self.videos],
        }
        return {**d, **self.extra}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LatentIndex:
        """An index as read from JSON; missing keys get their defaults (the entries' fps: the set's)."""
        known = {f.name for f in fields(cls)} - {"extra", "split", "videos"}
        kw = {k: v for k, v in d.items() if k in known}
        for k in ("tokenizer_id", "tokens", "channels", "fps"):
            kw.setdefault(k, None)
        videos = [LatentEntry.from_dict(v, d.get("fps")) for v in d.get("videos", [])]
        rest = {k: v for k, v in d.items() if k not in known and k not in SPLIT_KEYS and k != "videos"}
        return cls(**kw, videos=videos, split={k: d[k] for k in SPLIT_KEYS if k in d}, extra=rest)

    @classmethod
    def read(cls, directory: str | os.PathLike) -> LatentIndex:
        """The index of the latent set in ``directory``; :class:`DataError` when it is missing, unreadable or
        lacks one of :data:`REQUIRED_KEYS`."""
        directory = Path(directory)
        path = directory / INDEX
        if not path.is_file():
            raise DataError(f"{directory} is not a latent set (no {INDEX}); run `ahri tokenize` first")
        d = read_json_object(path, FIX)
        for key in REQUIRED_KEYS:
            if key not in d:
                raise DataError(f"{path}: lacks '{key}'; {FIX}")
        index = cls.from_dict(_checked(d, path))
        for v in index.videos:
            inside(directory, v.file, path, f"video {v.id!r}: file")
        return index

    @classmethod
    def previous(cls, directory: str | os.PathLike, fallback_fps: float) -> LatentIndex | None:
        """The index already in ``directory`` for a run to extend, or None when there is none or it cannot be
        read. Entries that are not objects with an id are left out; an entry without a rate gets the set's, else its
        tokenizer's, else ``fallback_fps``."""
        path = Path(directory) / INDEX
        if not path.is_file():
            return None
        try:
            d = read_json_object(path, FIX)
            index = cls.from_dict(_checked({**d, "videos": []}, path))
        except DataError:
            return None
        old_fps = float(index.fps or index.tokenizer_fps or fallback_fps)
        index.videos = []
        for v in d.get("videos") or []:
            try:
                entry = LatentEntry.from_dict(_checked_entry(v, path), old_fps)
                inside(directory, entry.file, path, "file")
            except DataError:  # an entry this version cannot use is written again
                continue
            index.videos.append(entry)
        return index

    def write(self, directory: str | os.PathLike) -> Path:
        """Write ``index.json`` into ``directory``, atomically."""
        return write_index(directory, self.to_dict())


def _checked(d: dict[str, Any], path: Path) -> dict[str, Any]:
    """An index object with its known keys checked (and numbers as numbers); :class:`DataError` naming the first
    wrong field."""
    return validated(_IndexCheck, d, path, FIX).model_dump(exclude_unset=True)


def _checked_entry(v: Any, path: Path) -> dict[str, Any]:
    return validated(_EntryCheck, v, path, FIX).model_dump(exclude_unset=True)


def write_index(directory: str | os.PathLike, index: dict[str, Any] | LatentIndex) -> Path:
    """Write an index (a :class:`LatentIndex` or its JSON object) as ``<directory>/index.json``, atomically."""
    path = Path(directory) / INDEX
    write_json_atomic(path, index.to_dict() if isinstance(index, LatentIndex) else index)
    return path

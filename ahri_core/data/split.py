"""The train/validation split of videos, always by whole video.

Frames of one video are near duplicates of each other, so a split by frame would put copies of training
frames into validation; every split here assigns a whole video to one side.

- ``split_videos``: the hash rule, deterministic from the ids (a video's side does not depend on which
  other videos exist).
- :class:`SplitRule`: that hash rule or videos chosen by the user (``--val-videos``, ``--split FILE``), with
  the record of how the split was made. ``ahri tokenize`` applies the tokenizer's own rule by default, so
  the latent index agrees with the tokenizer's split.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError, DataError


def _unit_hash(video_id: str) -> float:
    h = hashlib.sha256(video_id.encode("utf-8")).digest()
    return int.from_bytes(h[:8], "big") / 2**64


def split_videos(ids: Sequence[str], val_fraction: float) -> dict[str, str]:
    """Assign each video id to "train" or "val", by whole video.

    A video is held out when a hash of its id falls below ``val_fraction``, so the split of a video does
    not depend on which other videos exist. The train split is never empty: a lone video always trains
    (there is nothing to hold out), and when every hash falls below ``val_fraction`` the highest one
    trains. With two or more videos and val_fraction > 0, at least one (the lowest hash) is held out.
    """
    ids = list(dict.fromkeys(ids))  # an id given twice is one video
    if not 0 <= val_fraction < 1:
        raise DataError(f"val_fraction must be in [0, 1), got {val_fraction}")
    out = {i: ("val" if _unit_hash(i) < val_fraction else "train") for i in ids}
    ranked = sorted(ids, key=_unit_hash)
    if ids and not any(s == "train" for s in out.values()):
        out[ranked[-1]] = "train"
    if len(ids) >= 2 and val_fraction > 0 and not any(s == "val" for s in out.values()):
        out[ranked[0]] = "val"
    return out


SPLIT_RULES = ("hash", "chosen")


@dataclass(frozen=True)
class SplitRule:
    """How videos are split into train and validation: by a hash of the id, or chosen by the user.

    ``hash``: :func:`split_videos` with ``val_fraction``. ``chosen``: the ids in ``val_videos`` are held out
    and every other video trains (``train_videos``, when a split file lists them, are checked but change
    nothing). ``source`` says where a chosen split came from (``--val-videos`` or the split file), for
    messages and the record. ``strict``: every chosen id must be one of the videos being split, and at
    least one video must train; a split inherited from a tokenizer is applied without these checks (the
    videos tokenized may be a subset of those it was trained on).
    """

    rule: str = "hash"
    val_fraction: float = 0.1
    val_videos: tuple[str, ...] = ()
    train_videos: tuple[str, ...] = ()
    source: str | None = None
    strict: bool = True

    @classmethod
    def by_hash(cls, val_fraction: float) -> SplitRule:
        if not 0 <= float(val_fraction) < 1:
            raise ConfigError(f"val_fraction {val_fraction}: must be in [0, 1)")
        return cls("hash", float(val_fraction))

    @classmethod
    def chosen(
        cls, val_videos: Iterable[str], train_videos: Iterable[str] = (), source: str = "--val-videos", strict: bool = True
    ) -> SplitRule:
        val = tuple(dict.fromkeys(str(v) for v in val_videos))
        train = tuple(dict.fromkeys(str(v) for v in train_videos))
        both = [v for v in val if v in set(train)]
        if both:
            raise ConfigError(f"{source}: video {both[0]!r} is listed both for training and for validation")
        return cls("chosen", 0.0, val, train, source, strict)

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> SplitRule:
        """A split file: JSON ``{"val": [ids], "train": [ids]}`` or text lines ``val ID [ID ...]`` /
        ``train ID [ID ...]`` (``#`` starts a comment). Videos it does not name train."""
        p = Path(path).expanduser()
        try:
            text = p.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"--split {p}: cannot read the split file ({getattr(e, 'strerror', None) or e})") from None
        lists: dict[str, list[str]] = {"train": [], "val": []}
        shape = 'a JSON object {"val": [ids], "train": [ids]} or text lines "val ID ..." / "train ID ..."'
        if p.suffix.lower() == ".json" or text.lstrip().startswith("{"):
            try:
                d = json.loads(text)
            except json.JSONDecodeError as e:
                raise ConfigError(f"--split {p}: not valid JSON (line {e.lineno}: {e.msg}); expected {shape}") from None
            if not isinstance(d, dict) or set(d) - set(lists) or not all(
                isinstance(v, list) and all(isinstance(i, str) for i in v) for v in d.values()
            ):
                raise ConfigError(f"--split {p}: expected {shape}")
            for k, v in d.items():
                lists[k] = list(v)
        else:
            for n, line in enumerate(text.splitlines(), 1):
                words = line.split("#", 1)[0].split()
                if not words:
                    continue
                key = words[0].rstrip(":").lower()
                if key not in lists:
                    raise ConfigError(f"--split {p}, line {n}: starts with {words[0]!r}; expected {shape}")
                lists[key] += words[1:]
        if not lists["val"]:
            raise ConfigError(f"--split {p}: names no validation video; expected {shape}")
        return cls.chosen(lists["val"], lists["train"], source=str(p))

    @classmethod
    def from_record(cls, record: dict[str, Any], default_fraction: float = 0.1) -> SplitRule:
        """The rule written by :meth:`record` (a tokenizer's weights metadata, a latent index), not strict."""
        if record.get("split_rule") == "chosen":
            return cls.chosen(record.get("val_videos") or (), (), record.get("split_file") or "the recorded split",
                              strict=False)
        f = record.get("val_fraction")
        return cls.by_hash(default_fraction if f is None else float(f))

    def assign(self, ids: Sequence[str]) -> dict[str, str]:
        """{id: "train" | "val"} for every id."""
        ids = list(dict.fromkeys(ids))
        if self.rule == "hash":
            return split_videos(ids, self.val_fraction)
        if self.strict:
            known = set(ids)
            for vid in (*self.val_videos, *self.train_videos):
                if vid not in known:
                    raise ConfigError(f"{self.source}: no video with the id {vid!r}{_close_matches(vid, ids)}")
        val = set(self.val_videos)
        out = {i: ("val" if i in val else "train") for i in ids}
        if self.strict and ids and "train" not in out.values():
            raise ConfigError(
                f"{self.source} holds out all {len(ids)} videos; leave at least one for training"
            )
        return out

    def record(self) -> dict[str, Any]:
        """How the split was made, for run.json, weights metadata and the latent index."""
        if self.rule == "hash":
            return {"split_rule": "hash", "val_fraction": self.val_fraction}
        rec: dict[str, Any] = {"split_rule": "chosen", "val_fraction": None,
                               "split_file": self.source if self.source and self.source != "--val-videos" else None,
                               "val_videos": list(self.val_videos)}
        if self.train_videos:
            rec["train_videos"] = list(self.train_videos)
        return rec


def _close_matches(vid: str, ids: Sequence[str]) -> str:
    import difflib

    close = difflib.get_close_matches(vid, list(ids), n=3, cutoff=0.6)
    if close:
        return f" (close: {', '.join(close)})"
    if not ids:
        return " (there are no videos)"
    shown = sorted(ids)[:5]
    return f" (the {len(ids)} videos include {', '.join(shown)}{', ...' if len(ids) > 5 else ''})"

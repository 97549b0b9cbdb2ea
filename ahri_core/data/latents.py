"""The latent store: one packed safetensors file per video plus an index (written by ``ahri tokenize``).

Layout: ``<latents>/<tokenizer-id>/<video-id>.safetensors`` holds
- ``latents``: fp16 (frames, tokens, channels), values in (-1, 1);
- ``actions``: int64 (T,) or float32 (T, A), only when the video has actions;
- metadata (strings): fps (the rate this video's latents were read at: the tokenizer's, or the video's own
  when lower), video_id, source, sha256 (of the video file), tokenizer_id, tokenizer_sha256, frames,
  frame_size, action_kind ("discrete" | "continuous" | "none"), action_count, action_meanings (JSON).

``<latents>/<tokenizer-id>/index.json``: {tokenizer_id, tokens, channels, fps (null when the videos' rates
differ), tokenizer_fps, frame_size, split_rule, videos: [{id, file, frames, fps, split: "train" | "val",
has_actions, action_kind, action_count}], ...}. The split is by whole video, made by a
:class:`ahri_core.data.frames.SplitRule` (the hash rule of tokenizer training, or videos chosen by the user).

One file per video, never one per frame (PITFALLS 17); every write is atomic.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ..errors import DataError
from ..fileio import atomic_path, write_json_atomic

INDEX = "index.json"
INDEX_FORMAT = "ahri-latents/1"
SPLITS = ("train", "val")


def write_latent_file(
    path: str | os.PathLike,
    latents: torch.Tensor | np.ndarray,
    actions: torch.Tensor | np.ndarray | None,
    metadata: dict[str, Any],
) -> Path:
    """Write one video's latents (stored fp16), its actions and string metadata, atomically."""
    lat = torch.as_tensor(latents).detach().to("cpu", torch.float16).contiguous()
    if lat.dim() != 3:
        raise DataError(f"{path}: latents must be (frames, tokens, channels), got {tuple(lat.shape)}")
    tensors = {"latents": lat}
    if actions is not None:
        a = torch.as_tensor(np.asarray(actions)).contiguous()
        if a.shape[0] != lat.shape[0]:
            raise DataError(f"{path}: {a.shape[0]} actions for {lat.shape[0]} frames")
        tensors["actions"] = a.to(torch.int64) if not a.is_floating_point() else a.to(torch.float32)
    meta = {k: v if isinstance(v, str) else json.dumps(v) for k, v in metadata.items() if v is not None}
    path = Path(path)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
    return path


def read_latent_file(path: str | os.PathLike) -> tuple[torch.Tensor, torch.Tensor | None, dict[str, str]]:
    """(latents fp16 (T, N, C), actions or None, metadata) of one file."""
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            keys = set(f.keys())
            if "latents" not in keys:
                raise DataError(f"latent file {path} has no 'latents' tensor")
            lat = f.get_tensor("latents")
            act = f.get_tensor("actions") if "actions" in keys else None
            meta = f.metadata() or {}
    except (SafetensorError, OSError) as e:
        raise DataError(f"latent file {path} cannot be read ({e})") from None
    return lat, act, dict(meta)


def read_latent_metadata(path: str | os.PathLike) -> dict[str, str] | None:
    """Metadata of a latent file, or None when it is missing or unreadable."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except (SafetensorError, OSError, FileNotFoundError):
        return None


def write_index(directory: str | os.PathLike, index: dict[str, Any]) -> Path:
    path = Path(directory) / INDEX
    write_json_atomic(path, index)
    return path


def one_rate(rates: dict[str, float], where: str) -> float:
    """The one frame rate of a latent set's videos ({id: fps}); rates within ``video.RATE_TOLERANCE`` count as
    one (the highest is returned). Several rates raise :class:`DataError` naming the videos of each rate."""
    from ..video import same_rate

    groups: dict[float, list[str]] = {}
    for vid, r in sorted(rates.items(), key=lambda kv: (-kv[1], kv[0])):
        key = next((g for g in groups if same_rate(g, r)), r)
        groups.setdefault(key, []).append(vid)
    if not groups:
        raise DataError(f"latent set {where} has no videos; run `ahri tokenize` first")
    if len(groups) == 1:
        return next(iter(groups))

    def names(ids: list[str]) -> str:
        return ", ".join(ids[:4]) + (f" and {len(ids) - 4} more" if len(ids) > 4 else "")

    desc = "; ".join(f"{r:g} fps: {names(ids)}" for r, ids in groups.items())
    low = min(groups)
    raise DataError(
        f"latent set {where} holds videos at {len(groups)} frame rates ({desc}); one dynamics model learns one "
        f"rate: tokenize the videos of one rate into their own set (ahri tokenize --data DIR --out DIR), or "
        f"train a tokenizer with --fps {low:g} so every video is read at {low:g} fps"
    )


class LatentStore:
    """Reader of one latent set (a directory with ``index.json``)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        ip = self.path / INDEX
        if not ip.is_file():
            raise DataError(f"{self.path} is not a latent set (no {INDEX}); run `ahri tokenize` first")
        try:
            self.index: dict[str, Any] = json.loads(ip.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise DataError(f"latent index {ip} cannot be read ({e})") from None
        for key in ("tokenizer_id", "tokens", "channels", "fps", "videos"):
            if key not in self.index:
                raise DataError(f"latent index {ip} lacks '{key}'")
        self._by_id = {v["id"]: v for v in self.index["videos"]}

    # ---- set-wide properties
    @property
    def tokenizer_id(self) -> str:
        return str(self.index["tokenizer_id"])

    @property
    def tokens(self) -> int:
        return int(self.index["tokens"])

    @property
    def channels(self) -> int:
        return int(self.index["channels"])

    @property
    def fps(self) -> float:
        """The set's frame rate; a set whose videos have different rates raises :class:`DataError` naming them."""
        rates = self.rates()
        if not rates and self.index.get("fps") is not None:
            return float(self.index["fps"])
        return one_rate(rates, str(self.path))

    def rates(self) -> dict[str, float]:
        """{video id: frame rate of its latents}; entries without their own rate have the set's."""
        default = self.index.get("fps")
        out = {}
        for v in self.index["videos"]:
            r = v.get("fps", default)
            if r is None:
                raise DataError(f"latent index {self.path / INDEX} gives no frame rate for video {v.get('id')!r}")
            out[str(v["id"])] = float(r)
        return out

    @property
    def frame_size(self) -> int:
        return int(self.index.get("frame_size", 0))

    def __len__(self) -> int:
        return len(self._by_id)

    def __contains__(self, video_id: object) -> bool:
        return video_id in self._by_id

    def videos(self, split: str | None = None) -> list[dict[str, Any]]:
        """Index entries {id, file, frames, split, has_actions, ...}, optionally of one split."""
        if split is not None and split not in SPLITS:
            raise DataError(f"split must be one of {SPLITS}, got {split!r}")
        return [dict(v) for v in self.index["videos"] if split is None or v.get("split") == split]

    def entry(self, video_id: str) -> dict[str, Any]:
        if video_id not in self._by_id:
            raise DataError(f"video {video_id!r} is not in the latent set {self.path}")
        return dict(self._by_id[video_id])

    def file(self, video_id: str) -> Path:
        return self.path / self.entry(video_id)["file"]

    def load(self, video_id: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(latents float32 (T, N, C), actions int64 (T,) / float32 (T, A) or None)."""
        lat, act, _ = read_latent_file(self.file(video_id))
        if tuple(lat.shape[1:]) != (self.tokens, self.channels):
            raise DataError(
                f"latent file {self.file(video_id)} holds {tuple(lat.shape)}, the index says (T, {self.tokens}, {self.channels})"
            )
        return lat.float(), act

    def metadata(self, video_id: str | None = None) -> dict[str, str]:
        """A video's file metadata; without an id, set-wide action metadata (kind, count, meanings as JSON)."""
        if video_id is not None:
            return read_latent_file(self.file(video_id))[2]
        return {
            "tokenizer_id": self.tokenizer_id,
            "fps": str(self.index.get("fps")),
            "action_kind": str(self.index.get("action_kind", "none")),
            "action_count": str(self.index.get("action_count") or 0),
            "action_meanings": json.dumps(self.index.get("action_meanings") or []),
        }

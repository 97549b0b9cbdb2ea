"""Training windows of latents for the dynamics model, and the one batch sampler for alternating lengths.

- A latent set (``<latents>/<tokenizer-id>/``, see docs/data-formats.md) is memory-mapped by default: each
  video's latents stay in their file (:class:`ahri_core.data.latents.MappedLatents`) and a window reads only
  its own frames, so a set larger than RAM trains with bounded memory, while the page cache still serves
  repeated windows from memory (latents are small: the cpu tokenizer turns a 64x64 frame into 64 x 12 fp16
  values, 1.5 KiB, and one file per video keeps them in few large reads). ``mmap=False`` reads every video
  into memory instead; both give the same windows bit for bit.
- A window is ``(video, start, length)``: ``length`` consecutive frames of ONE video (never across videos),
  starting every ``stride`` frames (``seq_len 16, stride 8``: 50% overlap). Actions travel with their frames.
- :class:`WindowBatchSampler` is the batch sampler of a single ``DataLoader``. With alternating lengths it
  picks, batch by batch, a short batch (``seq_len_short`` x ``batch_size_short``) or a long one
  (``seq_len_long`` x ``batch_size_long``) so that a fraction ``long_ratio`` of the batches are long
  (one loader, not two: two loaders would each keep their own order and workers, and the mix of lengths
  would drift from the ratio). An epoch is one pass over the short windows plus the long batches
  that the ratio adds; its plan depends only on (seed, epoch), so a position (epoch, batch) resumes exactly.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ..errors import ConfigError, DataError
from .latents import LatentStore, MappedLatents

SHORT, LONG = "S", "L"


# ---------------------------------------------------------------------------------------------- latent sets
@dataclass
class LatentVideo:
    """One video's latents, in memory (a tensor) or left in their file (:class:`MappedLatents`, whose
    slices are float16 tensors), and its actions (always in memory: they are small)."""

    id: str
    latents: torch.Tensor | MappedLatents  # (frames, tokens, channels), fp16 to keep memory small
    actions: torch.Tensor | None = None  # (frames,) int64 (-1 = none) or (frames, A) float32 (NaN = none)

    @property
    def frames(self) -> int:
        return int(self.latents.shape[0])

    @property
    def mapped(self) -> bool:
        return isinstance(self.latents, MappedLatents)


def all_finite(latents: torch.Tensor | MappedLatents, chunk: int = 4096) -> bool:
    """Whether every latent is finite, checked ``chunk`` frames at a time, so a mapped video is never read
    into memory whole."""
    n = int(latents.shape[0])
    return all(bool(torch.isfinite(latents[i : i + chunk]).all()) for i in range(0, n, chunk))


@dataclass
class LatentSet:
    """A latent set split by video, with what the dynamics model needs to know about it."""

    train: list[LatentVideo]
    val: list[LatentVideo]
    tokens: int
    channels: int
    fps: float = 20.0
    tokenizer_id: str = ""
    path: str = ""
    action_kind: str = "none"  # none, discrete, continuous
    action_count: int = 0
    action_dim: int = 0
    action_meanings: list[str] = field(default_factory=list)
    token_grid: tuple[int, int] | None = None  # (rows, columns) of the tokens on the picture, when they are a grid

    def describe(self) -> dict[str, Any]:
        """JSON-able summary for run.json and checkpoint metadata."""
        return {
            "path": self.path,
            "tokenizer_id": self.tokenizer_id,
            "tokens": self.tokens,
            "channels": self.channels,
            "fps": self.fps,
            "action_kind": self.action_kind,
            "action_count": self.action_count,
            "action_dim": self.action_dim,
            "train_videos": len(self.train),
            "val_videos": len(self.val),
            "train_frames": sum(v.frames for v in self.train),
            "val_frames": sum(v.frames for v in self.val),
        }


def _action_spec(videos: Sequence[LatentVideo], declared: dict[str, Any] | None = None) -> tuple[str, int, int]:
    """(kind, count, dim) of the actions of a set; mixing discrete and continuous is refused."""
    kinds = set()
    count = int((declared or {}).get("action_count") or 0)
    dim = 0
    for v in videos:
        a = v.actions
        if a is None:
            continue
        if a.is_floating_point():
            kinds.add("continuous")
            dim = max(dim, int(a.shape[-1]))
        else:
            kinds.add("discrete")
            if a.numel():
                count = max(count, int(a.max()) + 1)
    if len(kinds) > 1:
        raise DataError("the latent set mixes discrete and continuous actions; one dynamics model takes one kind")
    kind = kinds.pop() if kinds else "none"
    if kind == "discrete" and count < 1:
        count = 1
    return kind, count if kind == "discrete" else 0, dim


def make_latent_set(
    train: Sequence[LatentVideo],
    val: Sequence[LatentVideo] = (),
    *,
    fps: float = 20.0,
    tokenizer_id: str = "",
    path: str = "",
    action_count: int | None = None,
    action_meanings: Sequence[str] = (),
    token_grid: tuple[int, int] | None = None,
) -> LatentSet:
    """Build a :class:`LatentSet` from in-memory videos (tests, notebooks), checking shapes agree."""
    videos = list(train) + list(val)
    if not train:
        raise DataError("a latent set needs at least one training video")
    tokens, channels = (int(s) for s in videos[0].latents.shape[1:])
    for v in videos:
        if v.latents.dim() != 3 or tuple(v.latents.shape[1:]) != (tokens, channels):
            raise DataError(
                f"video {v.id}: latents {tuple(v.latents.shape)} do not match (frames, {tokens}, {channels})"
            )
        if v.actions is not None and v.actions.shape[0] != v.frames:
            raise DataError(f"video {v.id}: {v.actions.shape[0]} actions for {v.frames} frames")
    kind, count, dim = _action_spec(videos, {"action_count": action_count})
    return LatentSet(
        train=list(train),
        val=list(val),
        tokens=tokens,
        channels=channels,
        fps=fps,
        tokenizer_id=tokenizer_id,
        path=path,
        action_kind=kind,
        action_count=count,
        action_dim=dim,
        action_meanings=list(action_meanings),
        token_grid=tuple(token_grid) if token_grid is not None and token_grid[0] * token_grid[1] == tokens else None,
    )


def find_latent_sets(root: str | os.PathLike) -> list[Path]:
    """Latent set directories (holding an ``index.json``) under ``root``, newest first."""
    root = Path(root)
    if (root / "index.json").is_file():
        return [root]
    if not root.is_dir():
        return []
    sets = [p for p in root.iterdir() if p.is_dir() and (p / "index.json").is_file()]
    return sorted(sets, key=lambda p: (p / "index.json").stat().st_mtime, reverse=True)


def resolve_latents(path: str | os.PathLike | None, workspace_latents: str | os.PathLike) -> Path:
    """``--latents`` as given (a set, or a folder of sets: the newest), or the newest set in the workspace."""
    where = Path(path) if path is not None else Path(workspace_latents)
    sets = find_latent_sets(where)
    if not sets:
        hint = "run `ahri tokenize` first, or pass --latents DIR"
        if path is not None:
            raise ConfigError(f"--latents {where}: no latent set (a folder with index.json) found there; {hint}")
        raise ConfigError(f"no latent set in the workspace ({where}); {hint}")
    return sets[0]


def load_latent_set(path: str | os.PathLike, val_fraction: float | None = None, mmap: bool = True) -> LatentSet:
    """The videos of a latent set, split by whole video (frames of one video are near duplicates, so a split by
    frame would leak training frames into validation).

    ``mmap`` (default): each video's latents stay in their file as :class:`MappedLatents` (the header is
    checked now, frames are read when a window is taken); actions are read into memory. ``mmap=False``:
    every video's latents in memory (fp16). Both give the same windows, bit for bit.

    ``val_fraction``: None keeps the split written in the set's index by ``ahri tokenize``; a number
    re-splits the set's videos with :func:`ahri_core.data.split.split_videos` (the same hash of the video
    id, so a video's split does not depend on the others), which lets the held-out fraction change after
    tokenizing. Either way the index file is left as it is.

    One dynamics model learns one frame rate: a set whose videos were tokenized at different rates (a video
    slower than the tokenizer keeps its own rate) is refused with a :class:`DataError` naming the videos of
    each rate, before any latent is read.
    """
    from .split import split_videos

    store = LatentStore(path)
    fps = store.fps  # raises when the videos' rates differ
    recs = store.videos()
    if val_fraction is not None:
        if not 0 <= float(val_fraction) < 1:
            raise ConfigError(f"val_fraction {val_fraction} for latent set {store.path} is outside [0, 1)")
        split = split_videos([str(r["id"]) for r in recs], float(val_fraction))
    else:
        split = {str(r["id"]): r.get("split") for r in recs}
    train, val = [], []
    count = 0
    for rec in recs:
        if mmap:
            lat, act = store.map(rec["id"])
        else:
            lat, act = store.load(rec["id"])
            lat = lat.to(torch.float16)
        item = LatentVideo(str(rec["id"]), lat, act)
        (val if split[str(rec["id"])] == "val" else train).append(item)
        count = max(count, int(rec.get("action_count") or 0))
    meta = store.metadata()
    count = max(count, int(meta.get("action_count") or 0))
    try:
        meanings = list(json.loads(meta.get("action_meanings") or "[]"))
    except json.JSONDecodeError:
        meanings = []
    if not train:
        raise DataError(f"latent set {store.path} has no training videos (every video is in the 'val' split)")
    return make_latent_set(
        train, val, fps=fps, tokenizer_id=store.tokenizer_id, path=str(store.path),
        action_count=count or None, action_meanings=meanings, token_grid=store.token_grid,
    )


# ---------------------------------------------------------------------------------------------- windows
def window_starts(frames: int, length: int, stride: int) -> list[int]:
    """Start frames of the windows of ``length`` frames every ``stride`` frames inside one video."""
    if length < 1 or stride < 1:
        raise ConfigError(f"window length and stride must be >= 1 (got {length}, {stride})")
    return list(range(0, frames - length + 1, stride)) if frames >= length else []


def windows(videos: Sequence[LatentVideo], length: int, stride: int) -> list[tuple[int, int, int]]:
    """All windows (video index, start, length) of a list of videos; each lies inside one video."""
    return [(vi, s, length) for vi, v in enumerate(videos) for s in window_starts(v.frames, length, stride)]


class WindowDataset(Dataset):
    """Maps a window key (video index, start, length) to its latents and actions (float32 / as stored).

    A mapped video gives a float16 copy of the window's frames only, so a DataLoader (or its workers) never
    holds a whole video; an in-memory video gives a view of its tensor.
    """

    def __init__(self, videos: Sequence[LatentVideo], action_kind: str = "none", action_dim: int = 0) -> None:
        self.videos = list(videos)
        self.action_kind = action_kind
        self.action_dim = action_dim

    def __len__(self) -> int:  # not meaningful for keyed access; the batch sampler defines the epoch
        return sum(v.frames for v in self.videos)

    def __getitem__(self, key: tuple[int, int, int]) -> dict[str, Any]:
        vi, start, length = key
        v = self.videos[vi]
        item: dict[str, Any] = {"latents": v.latents[start : start + length], "video": vi, "start": start}
        if self.action_kind == "discrete":
            a = v.actions[start : start + length] if v.actions is not None else None
            item["actions"] = a.long() if a is not None else torch.full((length,), -1, dtype=torch.long)
        elif self.action_kind == "continuous":
            a = v.actions[start : start + length] if v.actions is not None else None
            item["actions"] = a.float() if a is not None else torch.full((length, self.action_dim), float("nan"))
        return item


@dataclass
class Batch:
    """One training batch: every item has the same number of frames."""

    latents: torch.Tensor  # (batch, frames, tokens, channels) float32
    actions: torch.Tensor | None  # (batch, frames) int64 or (batch, frames, A) float32, or None
    kind: str  # "S" (short) or "L" (long)
    keys: list[tuple[int, int]]  # (video index, start) per item

    @property
    def size(self) -> int:
        return int(self.latents.shape[0])

    @property
    def frames(self) -> int:
        return int(self.latents.shape[1])

    def to(self, device: torch.device | str) -> Batch:
        """On ``device``; from pinned memory (the loader pins on CUDA) the copy does not block."""
        fast = self.latents.is_pinned()
        a = self.actions.to(device, non_blocking=fast) if self.actions is not None else None
        return Batch(self.latents.to(device, non_blocking=fast), a, self.kind, self.keys)


def collate_windows(items: list[dict[str, Any]], long_length: int | None = None) -> Batch:
    lat = torch.stack([it["latents"] for it in items]).float()
    acts = torch.stack([it["actions"] for it in items]) if "actions" in items[0] else None
    kind = LONG if long_length is not None and lat.shape[1] == long_length else SHORT
    return Batch(lat, acts, kind, [(it["video"], it["start"]) for it in items])


class WindowBatchSampler(Sampler[list[tuple[int, int, int]]]):
    """Batches of window keys for ONE DataLoader, the window length picked per batch.

    ``short=(length, batch size)``; ``long=(length, batch size)`` or None (no alternation). Per epoch:
    the short windows are shuffled into full batches; ``round(n_short * r / (1 - r))`` long batches are
    added (``r = long_ratio``; long windows shuffled and reused when they run out); the order of short
    and long batches is shuffled. With ``r = 1`` an epoch is one pass over the long windows. The plan
    depends only on (seed, epoch); ``set_position`` makes the next iteration start at any batch.
    """

    def __init__(
        self,
        videos: Sequence[LatentVideo],
        short: tuple[int, int],
        long: tuple[int, int] | None = None,
        long_ratio: float = 0.0,
        stride: int = 8,
        seed: int = 0,
        rank: int = 0,
        world: int = 1,
    ) -> None:
        if not 0.0 <= long_ratio <= 1.0:
            raise ConfigError(f"long_ratio must be in [0, 1], got {long_ratio}")
        self.short, self.long = short, long
        self.long_ratio = long_ratio if long is not None else 0.0
        self.seed = seed
        self.stride = stride
        self.rank, self.world = rank, world
        self.short_windows = windows(videos, short[0], stride) if self.long_ratio < 1 else []
        self.long_windows = windows(videos, long[0], stride) if long is not None and self.long_ratio > 0 else []
        if self.long_ratio < 1 and not self.short_windows:
            longest = max((v.frames for v in videos), default=0)
            raise DataError(
                f"no training video has {short[0]} frames (longest: {longest}); lower --seq-len / --seq-len-short"
            )
        if self.long_ratio > 0 and not self.long_windows:
            longest = max((v.frames for v in videos), default=0)
            raise DataError(
                f"no training video has {long[0]} frames for the long batches (longest: {longest}); "
                "lower --seq-len-long or --long-ratio"
            )
        for name, (_length, bs) in (("short", short), ("long", long if self.long_ratio > 0 else (0, world))):
            if bs < world:
                raise ConfigError(f"the {name} batch ({bs} windows) is smaller than the {world} processes that share "
                                  "it; raise the batch size or use fewer processes")
        self.epoch = 0
        self.position = 0

    # -------------------------------------------------------------- plan
    def _short_batches(self) -> int:
        n, bs = len(self.short_windows), self.short[1]
        return max(1, n // bs) if n else 0

    def __len__(self) -> int:
        """Batches per epoch (the same for every epoch)."""
        if self.long_ratio >= 1:
            return max(1, len(self.long_windows) // self.long[1])
        ns = self._short_batches()
        return ns + self._long_batches(ns)

    def _long_batches(self, n_short: int) -> int:
        r = self.long_ratio
        return 0 if r <= 0 else int(round(n_short * r / (1 - r)))

    def plan(self, epoch: int) -> list[list[tuple[int, int, int]]]:
        """Every batch of an epoch, in order (deterministic in (seed, epoch))."""
        rng = np.random.default_rng([self.seed, epoch])
        batches: list[list[tuple[int, int, int]]] = []
        if self.long_ratio >= 1:
            order = rng.permutation(len(self.long_windows))
            bs = self.long[1]
            return [[self.long_windows[i] for i in order[j * bs : (j + 1) * bs]] for j in range(len(self))]
        bs = self.short[1]
        order = rng.permutation(len(self.short_windows))
        ns = self._short_batches()
        short = [[self.short_windows[i] for i in order[j * bs : (j + 1) * bs]] for j in range(ns)]
        nl = self._long_batches(ns)
        longs: list[list[tuple[int, int, int]]] = []
        if nl:
            bl = self.long[1]
            need = nl * bl
            idx = np.concatenate(
                [rng.permutation(len(self.long_windows)) for _ in range(math.ceil(need / len(self.long_windows)))]
            )[:need]
            longs = [[self.long_windows[i] for i in idx[j * bl : (j + 1) * bl]] for j in range(nl)]
        kinds = np.array([0] * ns + [1] * nl)
        rng.shuffle(kinds)
        si = li = 0
        for k in kinds:
            if k == 0:
                batches.append(short[si])
                si += 1
            else:
                batches.append(longs[li])
                li += 1
        return batches

    # -------------------------------------------------------------- position
    def set_position(self, epoch: int, position: int = 0) -> None:
        self.epoch, self.position = int(epoch), int(position)

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed}

    def __iter__(self) -> Iterator[list[tuple[int, int, int]]]:
        """The batches from the current position; with several processes, this rank's items of each
        (every ``world``-th from its rank: all ranks walk the same plan, so they agree on each length)."""
        plan = self.plan(self.epoch)
        for batch in plan[self.position :]:
            yield batch[self.rank :: self.world] if self.world > 1 else batch


def make_loader(
    videos: Sequence[LatentVideo],
    short: tuple[int, int],
    long: tuple[int, int] | None = None,
    long_ratio: float = 0.0,
    stride: int = 8,
    seed: int = 0,
    action_kind: str = "none",
    action_dim: int = 0,
    num_workers: int = 0,
    rank: int = 0,
    world: int = 1,
    pin_memory: bool = False,
) -> tuple[DataLoader, WindowBatchSampler]:
    """ONE DataLoader whose batch sampler picks the window length per batch (this rank's share of each batch
    when ``world`` processes train together)."""
    sampler = WindowBatchSampler(videos, short, long, long_ratio, stride, seed, rank=rank, world=world)
    ds = WindowDataset(videos, action_kind, action_dim)
    long_len = long[0] if long is not None and long[0] != short[0] else None

    def collate(items: list[dict[str, Any]]) -> Batch:
        return collate_windows(items, long_len)

    loader = DataLoader(ds, batch_sampler=sampler, collate_fn=collate, num_workers=num_workers, pin_memory=pin_memory)
    return loader, sampler


def validation_windows(
    videos: Sequence[LatentVideo], length: int, stride: int, max_windows: int = 32
) -> list[tuple[int, int, int]]:
    """A fixed, evenly spread subset of the held-out windows (the same at every validation)."""
    ws = windows(videos, length, stride)
    if len(ws) <= max_windows:
        return ws
    pick = np.linspace(0, len(ws) - 1, max_windows).round().astype(int)
    return [ws[i] for i in pick]

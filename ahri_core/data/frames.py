"""Frames for tokenizer training: the videos' cached frames as one set, split by video, sampled fast.

- ``load_frame_data``: every video read at the requested rate or its own, whichever is lower, decoded into
  the frame cache (``data/frame_cache.py``) and split into train and validation by whole video
  (``data/split.py``).
- ``FrameSet``: the frames of several videos addressed by one global index.
- ``FrameSampler``: shuffled epochs over all frames of a ``FrameSet``; its state is two integers
  (epoch, position) plus its random seed, so a resumed run draws exactly the batches it would have drawn.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..errors import AhriError, DataError
from ..progress import Progress, ensure
from .frame_cache import MAX_CACHED_FRAMES, Decoder, cached_frames
from .split import SplitRule, split_videos
from .videos import as_video_refs


class FrameSet:
    """Frames of several videos addressed by one global index."""

    def __init__(self, arrays: Sequence[np.ndarray], ids: Sequence[str]) -> None:
        self.arrays = list(arrays)
        self.ids = list(ids)
        counts = np.array([len(a) for a in self.arrays], dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)

    def __len__(self) -> int:
        return int(self.offsets[-1])

    @property
    def counts(self) -> list[int]:
        return [len(a) for a in self.arrays]

    def get(self, indices: np.ndarray | Sequence[int]) -> np.ndarray:
        """uint8 (B, H, W, 3) for global frame indices."""
        idx = np.asarray(indices, dtype=np.int64)
        if len(self) == 0:
            raise DataError("no frames to sample from")
        vid = np.searchsorted(self.offsets, idx, side="right") - 1
        local = idx - self.offsets[vid]
        first = self.arrays[0]
        out = np.empty((len(idx), *first.shape[1:]), dtype=np.uint8)
        for v in np.unique(vid).tolist():
            sel = np.nonzero(vid == v)[0]
            out[sel] = self.arrays[v][local[sel]]  # one fancy-index read per video
        return out

    def evenly_spaced(self, n: int) -> np.ndarray:
        """Up to ``n`` global indices spread evenly over all frames (a fixed validation set)."""
        total = len(self)
        if total == 0:
            return np.zeros(0, dtype=np.int64)
        n = min(n, total)
        return np.unique(np.linspace(0, total - 1, n).round().astype(np.int64))


def to_tensor(frames: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
    """uint8 (B, H, W, 3) -> float32 (B, 3, H, W) in [0, 1] on ``device``."""
    a = np.ascontiguousarray(frames)
    if not a.flags.writeable:  # a read-only memory map: torch wants its own copy
        a = a.copy()
    t = torch.from_numpy(a).to(device)
    return t.permute(0, 3, 1, 2).float().div_(255.0)


def to_uint8(frames: torch.Tensor) -> np.ndarray:
    """float (B, 3, H, W) in [0, 1] -> uint8 (B, H, W, 3)."""
    x = frames.detach().float().clamp(0, 1).mul(255).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


class FrameSampler:
    """Random batches of frame indices: each epoch is a fresh permutation of all frames.

    The permutation of epoch e comes from ``numpy.random.default_rng([seed, e])``, so the sampler's whole
    state is (epoch, position): saving and restoring it reproduces every later batch exactly.
    """

    def __init__(self, total: int, batch_size: int, seed: int = 0) -> None:
        if total <= 0:
            raise DataError("no training frames: every video was empty or failed to decode")
        self.total, self.batch_size, self.seed = int(total), int(batch_size), int(seed)
        self.epoch, self.position = 0, 0
        self._perm: np.ndarray | None = None

    def _permutation(self) -> np.ndarray:
        if self._perm is None:
            self._perm = np.random.default_rng([self.seed, self.epoch]).permutation(self.total)
        return self._perm

    def next(self) -> np.ndarray:
        out = []
        need = self.batch_size
        while need > 0:
            perm = self._permutation()
            take = perm[self.position : self.position + need]
            out.append(take)
            need -= len(take)
            self.position += len(take)
            if self.position >= self.total:
                self.epoch += 1
                self.position = 0
                self._perm = None
        return np.concatenate(out)

    @property
    def epochs_done(self) -> float:
        return self.epoch + self.position / self.total

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed, "total": self.total}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if int(state["total"]) != self.total:
            raise DataError(
                f"the training data changed since the checkpoint ({int(state['total'])} frames then, {self.total} now); "
                "resume needs the same videos"
            )
        self.seed = int(state["seed"])
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self._perm = None


# ---------------------------------------------------------------------------------------------- loading
@dataclass
class FrameData:
    train: FrameSet
    val: FrameSet
    split: dict[str, str]
    failed: dict[str, str]
    val_is_heldout: bool
    rates: dict[str, float] = field(default_factory=dict)  # the rate each video was read at
    rule: SplitRule = field(default_factory=SplitRule)


def load_frame_data(
    videos: Iterable[Any],
    fps: float,
    size: Any,
    cache_dir: str | os.PathLike,
    val_fraction: float = 0.1,
    progress: Progress | None = None,
    decoder: Decoder | None = None,
    split: SplitRule | None = None,
    max_frames: int | None = MAX_CACHED_FRAMES,
) -> FrameData:
    """Decode (or map from the cache) every video and split them into train and validation by video.

    ``fps`` is the highest rate: each video is read at ``fps`` or its own rate, whichever is lower (never
    repeating frames). ``size``: an int, (height, width) or a :class:`FrameShape`. ``max_frames``: per-video
    cap of the cache (a longer video keeps every k-th frame, see :func:`cache_stride`). ``split``: the rule (default: the hash rule with ``val_fraction``); a chosen split
    naming an unknown video, or holding out every video, is refused before anything is decoded.
    Videos that fail to decode are reported through ``progress.log`` and skipped. With a single usable
    video there is nothing to hold out: validation then uses that training video (``val_is_heldout`` False).
    """
    p = ensure(progress)
    refs = as_video_refs(videos)
    if not refs:
        raise DataError("no videos to train on (fetch some first, e.g. `ahri fetch --source game`)")
    rule = split if split is not None else SplitRule.by_hash(val_fraction)
    rule.assign([r.id for r in refs])  # unknown ids and an empty training split fail here, before decoding
    arrays: dict[str, np.ndarray] = {}
    rates: dict[str, float] = {}
    failed: dict[str, str] = {}
    p.start("cache frames", total=len(refs))
    for r in refs:
        try:
            rates[r.id] = r.rate(fps)
            arrays[r.id] = cached_frames(r, rates[r.id], size, cache_dir, decoder, max_frames)
        except (AhriError, OSError) as e:
            failed[r.id] = str(e)
            p.log(f"skipped video {r.id}: {e}")
        p.advance("cache frames", 1)
    p.finish("cache frames")
    ok = [r.id for r in refs if r.id in arrays]
    if not ok:
        raise DataError(f"none of the {len(refs)} videos could be decoded")
    split = {i: s for i, s in rule.assign([r.id for r in refs]).items() if i in arrays}
    if rule.rule == "hash":
        split = split_videos(ok, rule.val_fraction)  # the hash rule's fix-ups apply to the usable videos
    tr = [i for i in ok if split[i] == "train"]
    va = [i for i in ok if split[i] == "val"]
    if not tr:
        raise DataError(
            f"no training video could be decoded ({len(failed)} failed); the held-out ones were {', '.join(va)}"
        )
    heldout = bool(va)
    if not va:
        va = tr
    return FrameData(
        train=FrameSet([arrays[i] for i in tr], tr),
        val=FrameSet([arrays[i] for i in va], va),
        split=split,
        failed=failed,
        val_is_heldout=heldout,
        rates={i: rates[i] for i in ok},
        rule=rule,
    )


def steps_per_epoch(frames: int, batch_size: int) -> int:
    return max(1, math.ceil(frames / batch_size))

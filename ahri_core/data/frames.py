"""Frames for tokenizer training: decode each video once into a uint8 cache, sample random frames fast.

- ``cached_frames``: a video resampled to (fps, size) is decoded once into
  ``<cache>/frames/<sha256[:16]>-<fps>fps-<size>.npy`` (uint8 (T, H, W, 3), written atomically) and
  memory-mapped on every later read, so training never waits for the video decoder.
- ``split_videos``: the train/validation split, by whole video (PITFALLS 14), deterministic from the ids.
  ``ahri tokenize`` uses the same function, so the latent index agrees with the tokenizer's split.
- ``FrameSampler``: shuffled epochs over all frames of a ``FrameSet``; its state is two integers
  (epoch, position) plus the seed, so a resumed run draws exactly the batches it would have drawn.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import AhriError, DataError
from ..fileio import atomic_path, sha256_file
from ..progress import Progress, ensure


# ---------------------------------------------------------------------------------------------- videos
@dataclass
class VideoRef:
    """A video to read: the fields of ``sources.store.VideoRecord`` that the tokenizer needs."""

    path: Path
    id: str
    meta: dict[str, Any] = field(default_factory=dict)
    actions: Any = None  # np.ndarray: int64 (T,) or float32 (T, A); None when the video has none
    _sha: str | None = None

    @property
    def sha256(self) -> str:
        if self._sha is None:
            s = self.meta.get("sha256") if isinstance(self.meta, dict) else None
            self._sha = s if isinstance(s, str) and len(s) == 64 else sha256_file(self.path)
        return self._sha


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


# ---------------------------------------------------------------------------------------------- split
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


# ---------------------------------------------------------------------------------------------- cache
def _fps_tag(fps: float) -> str:
    return f"{fps:g}".replace(".", "p")


def cache_path(cache_dir: str | os.PathLike, ref: VideoRef, fps: float, size: int) -> Path:
    return Path(cache_dir) / "frames" / f"{ref.sha256[:16]}-{_fps_tag(fps)}fps-{size}.npy"


Decoder = Callable[[Path, float, int], Iterable[np.ndarray]]


def default_decoder(path: Path, fps: float, size: int) -> Iterable[np.ndarray]:
    """Frames of ``path`` resampled to fps and center-cropped/resized to size x size (uint8 HxWx3)."""
    from ..video import iter_frames

    return iter_frames(path, fps=fps, size=size, fit="crop")


def decode_to_cache(ref: VideoRef, fps: float, size: int, dest: Path, decoder: Decoder | None = None) -> int:
    """Decode a whole video into ``dest`` (.npy, uint8 (T, H, W, 3)), atomically. Returns the frame count.

    Frames stream into a temporary raw file (a long video never sits in memory), which is then copied
    behind an .npy header under a temporary name and renamed onto ``dest``.
    """
    decoder = decoder or default_decoder
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, raw_name = tempfile.mkstemp(prefix=f".{dest.stem}.", suffix=".raw", dir=dest.parent)
    raw = Path(raw_name)
    try:
        count = 0
        with os.fdopen(fd, "wb") as f:
            for fr in decoder(ref.path, fps, size):
                a = np.asarray(fr, dtype=np.uint8)
                if a.shape != (size, size, 3):
                    raise DataError(f"{ref.path}: decoder returned a frame of shape {a.shape}, expected ({size}, {size}, 3)")
                f.write(a.tobytes())
                count += 1
        if count == 0:
            raise DataError(f"{ref.path}: no frames could be decoded")
        header = {"descr": "|u1", "fortran_order": False, "shape": (count, size, size, 3)}
        with atomic_path(dest) as tmp, open(tmp, "wb") as out, open(raw, "rb") as src:
            np.lib.format.write_array_header_1_0(out, header)
            shutil.copyfileobj(src, out, 1 << 22)
    finally:
        raw.unlink(missing_ok=True)
    return count


def cached_frames(
    ref: VideoRef | Any,
    fps: float,
    size: int,
    cache_dir: str | os.PathLike,
    decoder: Decoder | None = None,
) -> np.ndarray:
    """uint8 (T, size, size, 3) frames of a video, memory-mapped from the cache (decoded on first use)."""
    ref = as_video_ref(ref)
    path = cache_path(cache_dir, ref, fps, size)
    if not path.is_file():
        decode_to_cache(ref, fps, size, path, decoder)
    try:
        arr = np.load(path, mmap_mode="r")
    except (ValueError, OSError) as e:
        path.unlink(missing_ok=True)
        raise DataError(f"frame cache {path} was unreadable and has been removed; run again ({e})") from None
    if arr.ndim != 4 or arr.shape[1:] != (size, size, 3) or arr.dtype != np.uint8:
        path.unlink(missing_ok=True)
        raise DataError(f"frame cache {path} has shape {arr.shape}; it has been removed, run again")
    return arr


# ---------------------------------------------------------------------------------------------- frame sets
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


def load_frame_data(
    videos: Iterable[Any],
    fps: float,
    size: int,
    cache_dir: str | os.PathLike,
    val_fraction: float = 0.1,
    progress: Progress | None = None,
    decoder: Decoder | None = None,
) -> FrameData:
    """Decode (or map from the cache) every video and split them into train and validation by video.

    Videos that fail to decode are reported through ``progress.log`` and skipped. With a single usable
    video there is nothing to hold out: validation then uses that training video (``val_is_heldout`` False).
    """
    p = ensure(progress)
    refs = as_video_refs(videos)
    if not refs:
        raise DataError("no videos to train on (fetch some first, e.g. `ahri fetch --source game`)")
    arrays: dict[str, np.ndarray] = {}
    failed: dict[str, str] = {}
    p.start("cache frames", total=len(refs))
    for r in refs:
        try:
            arrays[r.id] = cached_frames(r, fps, size, cache_dir, decoder)
        except (AhriError, OSError) as e:
            failed[r.id] = str(e)
            p.log(f"skipped video {r.id}: {e}")
        p.advance("cache frames", 1)
    p.finish("cache frames")
    ok = [r.id for r in refs if r.id in arrays]
    if not ok:
        raise DataError(f"none of the {len(refs)} videos could be decoded")
    split = split_videos(ok, val_fraction)
    tr = [i for i in ok if split[i] == "train"]
    va = [i for i in ok if split[i] == "val"]
    heldout = bool(va)
    if not va:
        va = tr
    return FrameData(
        train=FrameSet([arrays[i] for i in tr], tr),
        val=FrameSet([arrays[i] for i in va], va),
        split=split,
        failed=failed,
        val_is_heldout=heldout,
    )


def steps_per_epoch(frames: int, batch_size: int) -> int:
    return max(1, math.ceil(frames / batch_size))

"""Frames for tokenizer training: decode each video once into a uint8 cache, sample random frames fast.

- ``cached_frames``: a video resampled to fps and brought to H x W (``FrameShape``: size and fit) is decoded
  once into ``<cache>/frames/<sha256[:16]>-<fps>fps-<H>x<W>-<fit>.npy`` (uint8 (T, H, W, 3), written
  atomically) and memory-mapped on every later read, so training never waits for the video decoder. A
  video longer than ``MAX_CACHED_FRAMES`` keeps every k-th frame, so the cache stays bounded.
- ``split_videos``: the train/validation split, by whole video (PITFALLS 14), deterministic from the ids;
  ``SplitRule``: that hash rule or videos chosen by the user (``--val-videos``, ``--split FILE``), with the
  record of how the split was made. ``ahri tokenize`` applies the tokenizer's own rule by default, so the
  latent index agrees with the tokenizer's split.
- Frame rates: a video is read at the requested rate or its own, whichever is lower (never repeating
  frames); ``resample_actions`` carries its actions over to the frames kept.
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
from typing import Any, NamedTuple

import numpy as np
import torch

from ..errors import AhriError, ConfigError, DataError
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


# ---------------------------------------------------------------------------------------------- actions
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


# ---------------------------------------------------------------------------------------------- cache
class FrameShape(NamedTuple):
    """The frames a reader makes: ``height`` x ``width`` pixels, a source of another aspect brought to it by
    ``fit`` (``pad``: scaled to fit, the rest black, the whole frame kept; ``crop``: scaled to cover, the
    centre kept; ``squash``: stretched)."""

    height: int
    width: int
    fit: str = "pad"

    @property
    def size(self) -> tuple[int, int]:
        return self.height, self.width

    @property
    def tag(self) -> str:
        return f"{self.height}x{self.width}-{self.fit}"


def as_shape(size: int | tuple[int, int] | FrameShape | Any, fit: str | None = None) -> FrameShape:
    """A :class:`FrameShape` from an int (square), (height, width), a FrameShape, or a tokenizer config
    (anything with ``height``, ``width`` and ``fit``); ``fit`` overrides."""
    if isinstance(size, FrameShape):
        return size if fit is None else size._replace(fit=fit)
    if hasattr(size, "height") and hasattr(size, "width"):
        return FrameShape(int(size.height), int(size.width), fit or str(getattr(size, "fit", "pad")))
    if isinstance(size, (int, np.integer)):
        return FrameShape(int(size), int(size), fit or "pad")
    h, w = (int(x) for x in size)
    return FrameShape(h, w, fit or "pad")


def _fps_tag(fps: float) -> str:
    return f"{fps:g}".replace(".", "p")


# A long video is not cached whole for tokenizer training: past this many frames (at the rate it is read),
# every k-th frame is kept, k the smallest stride that brings it under the cap, so the cache of a video is
# bounded and still spans all of it (an hour at 20 fps keeps every 4th frame: 18,000 frames, ~200 MB at 48x80).
MAX_CACHED_FRAMES = 20_000


def cache_path(cache_dir: str | os.PathLike, ref: VideoRef, fps: float, size: Any, every: int = 1) -> Path:
    shape = as_shape(size)
    tail = f"-every{every}" if every > 1 else ""
    return Path(cache_dir) / "frames" / f"{ref.sha256[:16]}-{_fps_tag(fps)}fps-{shape.tag}{tail}.npy"


Decoder = Callable[[Path, float, FrameShape], Iterable[np.ndarray]]


def default_decoder(path: Path, fps: float, shape: FrameShape | Any) -> Iterable[np.ndarray]:
    """Frames of ``path`` resampled to fps and brought to the shape's height x width by its fit (uint8 HxWx3)."""
    from ..video import iter_frames

    shape = as_shape(shape)
    return iter_frames(path, fps=fps, size=shape.size, fit=shape.fit)


def cache_stride(ref: VideoRef, fps: float, max_frames: int | None) -> int:
    """Keep every k-th frame of the video in the cache: the smallest k with (frames at ``fps``) / k within
    ``max_frames`` (1 when the cap is None or the length is unknown)."""
    if not max_frames:
        return 1
    dur = ref.duration
    n = int(math.ceil(dur * fps))
    return max(1, math.ceil(n / max_frames)) if n > 0 else 1


def decode_to_cache(
    ref: VideoRef, fps: float, size: Any, dest: Path, decoder: Decoder | None = None, every: int = 1
) -> int:
    """Decode a whole video into ``dest`` (.npy, uint8 (T, H, W, 3)), atomically. Returns the frame count.

    ``every``: keep frames 0, k, 2k, ... only. Frames stream into a temporary raw file (a long video never
    sits in memory), which is then copied behind an .npy header under a temporary name and renamed onto
    ``dest``.
    """
    decoder = decoder or default_decoder
    shape = as_shape(size)
    want = (shape.height, shape.width, 3)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, raw_name = tempfile.mkstemp(prefix=f".{dest.stem}.", suffix=".raw", dir=dest.parent)
    raw = Path(raw_name)
    try:
        count = 0
        with os.fdopen(fd, "wb") as f:
            for i, fr in enumerate(decoder(ref.path, fps, shape)):
                if i % every:
                    continue
                a = np.asarray(fr, dtype=np.uint8)
                if a.shape != want:
                    raise DataError(f"{ref.path}: decoder returned a frame of shape {a.shape}, expected {want}")
                f.write(a.tobytes())
                count += 1
        if count == 0:
            raise DataError(f"{ref.path}: no frames could be decoded")
        header = {"descr": "|u1", "fortran_order": False, "shape": (count, *want)}
        with atomic_path(dest) as tmp, open(tmp, "wb") as out, open(raw, "rb") as src:
            np.lib.format.write_array_header_1_0(out, header)
            shutil.copyfileobj(src, out, 1 << 22)
    finally:
        raw.unlink(missing_ok=True)
    return count


def cached_frames(
    ref: VideoRef | Any,
    fps: float,
    size: Any,
    cache_dir: str | os.PathLike,
    decoder: Decoder | None = None,
    max_frames: int | None = None,
) -> np.ndarray:
    """uint8 (T, H, W, 3) frames of a video, memory-mapped from the cache (decoded on first use).

    ``size``: an int (square), (height, width) or a :class:`FrameShape` (with its fit). ``max_frames``:
    the cap of :data:`MAX_CACHED_FRAMES` kind; a longer video keeps every k-th frame (``cache_stride``).
    """
    ref = as_video_ref(ref)
    shape = as_shape(size)
    every = cache_stride(ref, fps, max_frames)
    path = cache_path(cache_dir, ref, fps, shape, every)
    if not path.is_file():
        decode_to_cache(ref, fps, shape, path, decoder, every)
    try:
        arr = np.load(path, mmap_mode="r")
    except (ValueError, OSError) as e:
        path.unlink(missing_ok=True)
        raise DataError(f"frame cache {path} was unreadable and has been removed; run again ({e})") from None
    if arr.ndim != 4 or arr.shape[1:] != (shape.height, shape.width, 3) or arr.dtype != np.uint8:
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

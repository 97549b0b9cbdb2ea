"""The latent store: one packed safetensors file per video plus an index (written by ``ahri tokenize``).

Layout: ``<latents>/<tokenizer-id>/<video-id>.safetensors`` holds
- ``latents``: fp16 (frames, tokens, channels), values in (-1, 1);
- ``actions``: int64 (T,) or float32 (T, A), only when the video has actions;
- metadata (strings): fps (the rate this video's latents were read at: the tokenizer's, or the video's own
  when lower), video_id, source, sha256 (of the video file), tokenizer_id, tokenizer_sha256, frames,
  frame_size ("HxW"), fit, source_size, content_box, action_kind ("discrete" | "continuous" | "none"), action_count, action_meanings (JSON).

``<latents>/<tokenizer-id>/index.json`` lists the videos of the set, their split (by whole video, made by a
:class:`ahri_core.data.split.SplitRule`) and the set-wide facts: :class:`ahri_core.data.index.LatentIndex`
writes and reads it.

One file per video, never one per frame: a file per frame would mean millions of small files, slow to list,
copy and open; every write is atomic.

Reading: :meth:`LatentStore.load` reads a video's latents into memory; :meth:`LatentStore.map` leaves them in
the file as a :class:`MappedLatents` (a read-only memory map located from the safetensors header) that
reads only the frames it is indexed with, so a set larger than RAM trains with bounded memory. The data
lives in the kernel's page cache, which drops it under pressure; after each read the mapping lets go of its
pages (``MADV_DONTNEED``), because the kernel maps a file in large folios around every fault (megabytes per
window with read-ahead), which would otherwise pile up in the process's resident set. Files are replaced
by rename, never rewritten in place, so a mapping made before ``ahri tokenize`` rewrites a video keeps the
old data.
"""

from __future__ import annotations

import contextlib
import json
import math
import mmap
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ..errors import ConfigError, DataError, WriteError
from ..fileio import atomic_path, disk_full, write_failure
from .index import INDEX, SPLITS, LatentEntry, LatentIndex


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


class LatentFileWriter:
    """One video's latents written batch by batch, so memory does not grow with the video's length.

    ``append`` adds (n, tokens, channels) latents (stored fp16) to a temporary raw file next to ``path``;
    ``finish(actions, metadata)`` writes the safetensors file (header, latents, actions) under a temporary
    name and renames it onto ``path``: the same file :func:`write_latent_file` makes. ``abort`` (or leaving
    the ``with`` block by an exception) removes the temporary file; ``path`` is never half-written.
    """

    def __init__(self, path: str | os.PathLike, tokens: int, channels: int) -> None:
        import tempfile

        self.path = Path(path)
        self.shape = (int(tokens), int(channels))
        self.frames = 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{self.path.stem}.", suffix=".raw", dir=self.path.parent)
        self._raw = Path(name)
        self._f = os.fdopen(fd, "wb")

    def __enter__(self) -> LatentFileWriter:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.abort()

    def append(self, latents: torch.Tensor | np.ndarray) -> None:
        lat = torch.as_tensor(latents).detach().to("cpu", torch.float16).contiguous()
        if lat.dim() != 3 or tuple(lat.shape[1:]) != self.shape:
            raise DataError(f"{self.path}: latents must be (frames, {self.shape[0]}, {self.shape[1]}), got {tuple(lat.shape)}")
        try:
            self._f.write(lat.numpy().tobytes())
        except OSError as e:
            raise self._failed(e) from None
        self.frames += int(lat.shape[0])

    def _failed(self, e: OSError) -> Exception:
        """A full disk stops the whole run (:class:`WriteError`; no later file would fit either); other errors
        stay what they are (the caller reports the video and goes on)."""
        if disk_full(e):
            return WriteError(write_failure(self.path, e, "the finished latent files are kept"))
        return e

    def finish(self, actions: torch.Tensor | np.ndarray | None, metadata: dict[str, Any]) -> Path:
        import shutil

        try:
            self._f.close()  # the last buffered latents reach the file here
        except OSError as e:
            raise self._failed(e) from None
        if self.frames == 0:
            raise DataError(f"{self.path}: no latents to write")
        nbytes = self.frames * self.shape[0] * self.shape[1] * 2
        header: dict[str, Any] = {"latents": {"dtype": "F16", "shape": [self.frames, *self.shape],
                                              "data_offsets": [0, nbytes]}}
        tail = b""
        if actions is not None:
            a = torch.as_tensor(np.asarray(actions)).contiguous()
            if a.shape[0] != self.frames:
                raise DataError(f"{self.path}: {a.shape[0]} actions for {self.frames} frames")
            a = a.to(torch.int64) if not a.is_floating_point() else a.to(torch.float32)
            tail = a.numpy().tobytes()
            header["actions"] = {"dtype": "I64" if a.dtype == torch.int64 else "F32", "shape": list(a.shape),
                                 "data_offsets": [nbytes, nbytes + len(tail)]}
        meta = {k: v if isinstance(v, str) else json.dumps(v) for k, v in metadata.items() if v is not None}
        if meta:
            header["__metadata__"] = meta
        head = json.dumps(header, separators=(",", ":")).encode("utf-8")
        head += b" " * (-len(head) % 8)  # the data starts 8-byte aligned
        try:
            with atomic_path(self.path) as tmp, open(tmp, "wb") as out, open(self._raw, "rb") as src:
                out.write(len(head).to_bytes(8, "little"))
                out.write(head)
                shutil.copyfileobj(src, out, 1 << 22)
                out.write(tail)
        except OSError as e:
            raise self._failed(e) from None
        self._raw.unlink(missing_ok=True)
        return self.path

    def abort(self) -> None:
        if not self._f.closed:
            with contextlib.suppress(OSError):  # a full disk fails the flush too; the file goes anyway
                self._f.close()
        self._raw.unlink(missing_ok=True)


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


# safetensors dtypes numpy can map; bf16 has no numpy type (such a file is read into memory instead)
_NUMPY_DTYPES: dict[str, type[np.generic]] = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_,
}
_MAX_HEADER = 100 * 1024 * 1024  # the safetensors format's own limit on the JSON header


def read_safetensors_header(path: str | os.PathLike) -> tuple[dict[str, Any], int, int]:
    """(header {name: {dtype, shape, data_offsets}, "__metadata__": ...}, byte offset of the data, file size).

    The format: 8 bytes little-endian header length n, n bytes of JSON, then the tensors' bytes, each at
    ``data_offsets`` relative to ``8 + n``. A file too short or with a header that is not a JSON object
    raises :class:`DataError` naming the file.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            head = f.read(8)
            if len(head) < 8:
                raise DataError(f"latent file {path} is damaged ({size} bytes: shorter than a safetensors header)")
            n = int.from_bytes(head, "little")
            if n > size - 8 or n > _MAX_HEADER:
                raise DataError(
                    f"latent file {path} is damaged (a {n}-byte header in a {size}-byte file: truncated?)"
                )
            raw = f.read(n)
    except OSError as e:
        raise DataError(f"latent file {path} cannot be read ({e})") from None
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"latent file {path} is damaged (its header is not valid JSON: {e})") from None
    if not isinstance(header, dict):
        raise DataError(f"latent file {path} is damaged (its header is not a JSON object)")
    return header, 8 + n, size


def _tensor_location(
    path: Path, name: str, header: dict[str, Any], start: int, size: int
) -> tuple[np.dtype, tuple[int, ...], int]:
    """(numpy dtype, shape, absolute byte offset) of tensor ``name``, checked against the file's size."""
    entry = header.get(name)
    if name == "__metadata__" or entry is None:
        raise DataError(f"latent file {path} has no '{name}' tensor")
    try:
        dtype_name = entry["dtype"]
        shape = tuple(entry["shape"])
        begin, end = entry["data_offsets"]
        ok = all(isinstance(d, int) and d >= 0 for d in (*shape, begin, end))
    except (TypeError, KeyError, ValueError):
        ok = False
    if not ok:
        raise DataError(f"latent file {path} is damaged (the header entry of '{name}' is malformed: {entry!r})")
    if dtype_name not in _NUMPY_DTYPES:
        raise DataError(f"latent file {path} holds '{name}' as {dtype_name}, which cannot be memory-mapped")
    dtype = np.dtype(_NUMPY_DTYPES[dtype_name])
    nbytes = math.prod(shape) * dtype.itemsize
    if end - begin != nbytes:
        raise DataError(
            f"latent file {path} is damaged ('{name}' {dtype_name} {list(shape)} needs {nbytes} bytes, "
            f"its offsets span {end - begin})"
        )
    if start + end > size:
        raise DataError(
            f"latent file {path} is damaged ('{name}' ends at byte {start + end}, the file has {size}: truncated?)"
        )
    return dtype, shape, start + begin


def map_tensor(
    path: str | os.PathLike, name: str, header: tuple[dict[str, Any], int, int] | None = None
) -> np.ndarray:
    """A read-only ``np.memmap`` (mode "r") of tensor ``name`` of a safetensors file; nothing is read yet.

    Located from the header (``header``: :func:`read_safetensors_header`'s answer, to parse it once for
    several tensors); dtype, shape and offsets are checked against the file's size, and a damaged file
    raises :class:`DataError` naming it. A tensor with no elements is an empty read-only (unmapped) array.
    """
    path = Path(path)
    hdr, start, size = header if header is not None else read_safetensors_header(path)
    dtype, shape, offset = _tensor_location(path, name, hdr, start, size)
    if math.prod(shape) == 0:  # mmap cannot map zero bytes
        empty = np.empty(shape, dtype)
        empty.flags.writeable = False
        return empty
    try:
        return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape)
    except (OSError, ValueError) as e:
        raise DataError(f"latent file {path} cannot be mapped ({e})") from None


_DONTNEED = getattr(mmap, "MADV_DONTNEED", None)  # absent on Windows: pages then stay mapped


def _map_region(
    path: Path, dtype: np.dtype, shape: tuple[int, ...], offset: int
) -> tuple[mmap.mmap | None, np.ndarray]:
    """(the mmap object, a read-only array over it) of ``shape`` ``dtype`` values at byte ``offset``."""
    count = math.prod(shape)
    if count == 0:
        empty = np.empty(shape, dtype)
        empty.flags.writeable = False
        return None, empty
    delta = offset % mmap.ALLOCATIONGRANULARITY
    try:
        with open(path, "rb") as f:
            mm = mmap.mmap(f.fileno(), delta + count * dtype.itemsize, access=mmap.ACCESS_READ, offset=offset - delta)
    except (OSError, ValueError) as e:
        raise DataError(f"latent file {path} cannot be mapped ({e})") from None
    return mm, np.frombuffer(mm, dtype=dtype, count=count, offset=delta).reshape(shape)


class MappedLatents:
    """One video's latents (frames, tokens, channels) left in their file, read frame range by frame range.

    Indexing (``x[start : start + length]``, ``x[::every]``) reads only the frames indexed and returns a
    torch float16 tensor that owns its memory (latents stored as float32 are rounded as
    ``tensor.float().half()`` rounds them, so windows equal those of the in-memory set bit for bit); the
    mapping's pages are then let go, so the resident set does not grow with what was read.
    ``shape``, ``dim()``, ``len()`` and ``dtype`` answer as the tensor would. A torch function given the whole
    object (``torch.isfinite(x)``) reads the whole video into memory first: correct, but memory then grows
    with the video; :func:`ahri_core.data.windows.all_finite` reads in chunks instead. Pickling carries the
    file's path, not its data (a DataLoader worker started by spawn maps the file itself).
    """

    def __init__(
        self, path: str | os.PathLike, name: str = "latents", header: tuple[dict[str, Any], int, int] | None = None
    ) -> None:
        self.path = Path(path)
        self.name = name
        hdr, start, size = header if header is not None else read_safetensors_header(self.path)
        dtype, shape, offset = _tensor_location(self.path, name, hdr, start, size)
        if len(shape) != 3 or dtype.kind != "f":
            raise DataError(
                f"latent file {self.path}: '{name}' must be floating (frames, tokens, channels), "
                f"got {dtype} {list(shape)}"
            )
        self._mmap, self._array = _map_region(self.path, dtype, shape, offset)

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return type(self), (str(self.path), self.name)

    def __repr__(self) -> str:
        return f"MappedLatents({str(self.path)!r}, shape={tuple(self.shape)})"

    @property
    def shape(self) -> torch.Size:
        return torch.Size(self._array.shape)

    @property
    def dtype(self) -> torch.dtype:
        return torch.float16

    @property
    def ndim(self) -> int:
        return self._array.ndim

    def dim(self) -> int:
        return self._array.ndim

    def numel(self) -> int:
        return int(self._array.size)

    def __len__(self) -> int:
        return int(self._array.shape[0])

    def numpy(self) -> np.ndarray:
        """The read-only mapped array itself (as stored; nothing is read)."""
        return self._array

    def __getitem__(self, key: Any) -> torch.Tensor:
        t = torch.from_numpy(np.array(self._array[key]))
        self.release()
        return t if t.dtype == torch.float16 else t.float().to(torch.float16)

    def release(self) -> None:
        """Unmap the pages read so far from this process (they stay in the page cache; nothing is lost)."""
        if self._mmap is not None and _DONTNEED is not None:
            try:
                self._mmap.madvise(_DONTNEED)
            except (OSError, ValueError):  # a closed map or a kernel without madvise: pages stay mapped
                pass

    def tensor(self) -> torch.Tensor:
        """The whole video in memory (float16)."""
        return self[:]

    @classmethod
    def __torch_function__(cls, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        def load(x: Any) -> Any:
            if isinstance(x, MappedLatents):
                return x.tensor()
            if isinstance(x, (list, tuple)):
                return type(x)(load(y) for y in x)
            return x

        return func(*load(args), **{k: load(v) for k, v in (kwargs or {}).items()})


def read_latent_metadata(path: str | os.PathLike) -> dict[str, str] | None:
    """Metadata of a latent file, or None when it is missing or unreadable."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except (SafetensorError, OSError, FileNotFoundError):
        return None


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
        f"rate: tokenize the videos of one rate into their own set (ahri tokenize --videos DIR --out DIR), or "
        f"train a tokenizer with --fps {low:g} so every video is read at {low:g} fps"
    )


class LatentStore:
    """Reader of one latent set (a directory with ``index.json``)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.index = LatentIndex.read(self.path)
        self._by_id: dict[str, LatentEntry] = {v.id: v for v in self.index.videos}

    # ---- set-wide properties
    @property
    def tokenizer_id(self) -> str:
        return str(self.index.tokenizer_id)

    @property
    def tokens(self) -> int:
        return int(self.index.tokens)

    @property
    def channels(self) -> int:
        return int(self.index.channels)

    @property
    def fps(self) -> float:
        """The set's frame rate; a set whose videos have different rates raises :class:`DataError` naming them."""
        rates = self.rates()
        if not rates and self.index.fps is not None:
            return float(self.index.fps)
        return one_rate(rates, str(self.path))

    def rates(self) -> dict[str, float]:
        """{video id: frame rate of its latents}; entries without their own rate have the set's."""
        out = {}
        for v in self.index.videos:
            if v.fps is None:
                raise DataError(f"latent index {self.path / INDEX} gives no frame rate for video {v.id!r}")
            out[str(v.id)] = float(v.fps)
        return out

    @property
    def frame_size(self) -> tuple[int, int]:
        """(height, width) of the tokenizer's frames ("HxW" in the index; one number in sets of square
        tokenizers made before frames could have another shape); (0, 0) when not recorded."""
        v = self.index.frame_size
        try:
            if isinstance(v, str) and "x" in v:
                h, w = (int(x) for x in v.split("x"))
                return h, w
            return int(v or 0), int(v or 0)
        except (TypeError, ValueError):
            return 0, 0

    @property
    def token_grid(self) -> tuple[int, int] | None:
        """(rows, columns) of the latent tokens on the picture, from the tokenizer config in the index; None
        when the tokens are not a grid (``regions=False``) or the index does not say."""
        from ..models.tokenizer import TokenizerConfig

        cfg = self.index.tokenizer_config
        if not isinstance(cfg, dict):
            return None
        try:
            return TokenizerConfig.from_dict(cfg).token_grid
        except (ConfigError, TypeError, ValueError):  # a config of another version: plain packing
            return None

    def __len__(self) -> int:
        return len(self._by_id)

    def __contains__(self, video_id: object) -> bool:
        return video_id in self._by_id

    def videos(self, split: str | None = None) -> list[dict[str, Any]]:
        """Index entries {id, file, frames, split, has_actions, ...}, optionally of one split."""
        if split is not None and split not in SPLITS:
            raise DataError(f"split must be one of {SPLITS}, got {split!r}")
        return [v.to_dict() for v in self.index.videos if split is None or v.split == split]

    def entry(self, video_id: str) -> dict[str, Any]:
        if video_id not in self._by_id:
            raise DataError(f"video {video_id!r} is not in the latent set {self.path}")
        return self._by_id[video_id].to_dict()

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

    def map(self, video_id: str) -> tuple[MappedLatents | torch.Tensor, torch.Tensor | None]:
        """(latents left in the file as :class:`MappedLatents`, actions read into memory or None).

        Latents stored in a dtype numpy cannot map as floats (bf16) are read into memory (float16) instead.
        """
        path = self.file(video_id)
        header = read_safetensors_header(path)

        def mappable(name: str, allowed: set[str]) -> bool:
            entry = header[0].get(name)  # a malformed entry is reported by map_tensor
            if not isinstance(entry, dict) or not isinstance(entry.get("dtype"), str):
                return True
            return entry["dtype"] in allowed

        if not (mappable("latents", {"F16", "F32", "F64"}) and mappable("actions", set(_NUMPY_DTYPES))):
            lat, act = self.load(video_id)
            return lat.to(torch.float16), act
        lat = MappedLatents(path, header=header)
        if tuple(lat.shape[1:]) != (self.tokens, self.channels):
            raise DataError(
                f"latent file {path} holds {tuple(lat.shape)}, the index says (T, {self.tokens}, {self.channels})"
            )
        act = None
        if "actions" in header[0]:
            act = torch.from_numpy(np.array(map_tensor(path, "actions", header)))
            if act.dim() < 1 or act.shape[0] != lat.shape[0]:
                raise DataError(f"latent file {path} holds {tuple(act.shape)} actions for {lat.shape[0]} frames")
        return lat, act

    def metadata(self, video_id: str | None = None) -> dict[str, str]:
        """A video's file metadata; without an id, set-wide action metadata (kind, count, meanings as JSON)."""
        if video_id is not None:
            return read_latent_file(self.file(video_id))[2]
        return {
            "tokenizer_id": self.tokenizer_id,
            "fps": str(self.index.fps),
            "action_kind": str(self.index.action_kind),
            "action_count": str(self.index.action_count or 0),
            "action_meanings": json.dumps(self.index.action_meanings or []),
        }

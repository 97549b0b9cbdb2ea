"""Turn videos into a latent store with a trained tokenizer (``ahri tokenize``), and latents back into frames.

Each video is streamed at the tokenizer's fps (or at its own rate when that is lower: frames are never
repeated) and the tokenizer's frame size, encoded in batches, and written as one safetensors file (see
``data/latents.py`` for the format) with the rate it was read at; its actions are carried over to the frames
kept (``data.videos.resample_actions``). Resumable: a video whose file exists with the
same video sha256 and the same tokenizer weights (sha256) is skipped; files are written under a temporary
name and renamed, so an interrupted run never leaves a half-written file under a final name. A video that
fails to decode is reported and skipped; the result lists it and the CLI exits non-zero.

Under torchrun the videos are shared out among the processes (:func:`assign_videos`: each video is encoded
once, the longest first, each to the rank with the least work so far); rank 0 writes the one index at the
end, from every rank's files, and every rank returns the whole result.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import AhriError, CheckpointError, ConfigError, WriteError
from ..fileio import sha256_file
from ..locking import WriterLock
from ..models.tokenizer import Tokenizer, encode_frames, load_tokenizer, weights_for_inference
from ..progress import Progress, ensure
from ..runtime import autocast, choose_precision, resolve_device
from ..train import distributed
from ..video import content_box, resampled_count, same_rate
from ..video.rates import slow_videos_line
from ..workspace import read_run_meta
from .frame_cache import Decoder, as_shape, default_decoder
from .index import INDEX, INDEX_FORMAT, LatentEntry, LatentIndex
from .latents import LatentFileWriter, read_latent_metadata
from .split import SplitRule
from .videos import VideoRef, as_video_refs, resample_actions


# ---------------------------------------------------------------------------------------------- resolve
def resolve_tokenizer(ref: str | os.PathLike, runs_dir: str | os.PathLike | None = None) -> tuple[Path, str]:
    """``--tokenizer``: a run name under ``runs_dir``, a run directory, or a weights file.

    Returns (weights file, tokenizer id). The id is the run's directory name (or the file's stem for a
    loose weights file); it names the latent set ``<latents>/<tokenizer-id>/``.
    """
    p = Path(ref).expanduser()
    if p.is_file():
        tid = p.parent.name if p.stem in ("model", "ema") else p.stem
        return p, tid
    if p.is_dir():
        return weights_for_inference(p), p.name
    if runs_dir is not None and (Path(runs_dir) / str(ref)).is_dir():
        d = Path(runs_dir) / str(ref)
        return weights_for_inference(d), d.name
    known = []
    if runs_dir is not None and Path(runs_dir).is_dir():
        known = [d.name for d in sorted(Path(runs_dir).iterdir()) if read_run_meta(d).get("stage") == "tokenizer"]
    hint = f" (tokenizer runs here: {', '.join(known)})" if known else " (train one: ahri train --stage tokenizer)"
    raise ConfigError(f"--tokenizer {ref}: not a run name, run directory or weights file{hint}")


def _batches(frames: Iterable[np.ndarray], n: int) -> Iterator[np.ndarray]:
    buf: list[np.ndarray] = []
    for f in frames:
        buf.append(f)
        if len(buf) == n:
            yield np.stack(buf)
            buf = []
    if buf:
        yield np.stack(buf)


def encode_video(
    model: Tokenizer,
    video: VideoRef | Any,
    batch_size: int = 64,
    device: torch.device | str | None = None,
    precision: str = "fp32",
    decoder: Decoder | None = None,
    weights: str | os.PathLike | None = None,
    fps: float | None = None,
) -> Iterator[torch.Tensor]:
    """The latents of one video, fp16 (n, N, C) per batch of ``batch_size`` frames, streaming: frames are
    decoded, encoded and handed on batch by batch, so memory does not depend on the video's length.

    ``fps`` (default: the tokenizer's fps, or the video's own rate when that is lower) is the rate the
    video is read at. A batch whose latents are not finite (a damaged tokenizer) raises an error naming
    ``weights`` (the tokenizer file).
    """
    ref = as_video_refs([video])[0]
    cfg = model.cfg
    frames = (decoder or default_decoder)(ref.path, fps or ref.rate(cfg.fps), as_shape(cfg))
    n = 0
    for batch in _batches(frames, batch_size):
        z = encode_frames(model, batch, device, precision)
        if not bool(torch.isfinite(z).all()):
            raise CheckpointError(
                f"tokenizer {weights or '(in memory)'} produced non-finite latents for {ref.path}; "
                "the weights are damaged or the training diverged: retrain or restore the file"
            )
        n += len(z)
        yield z.to(torch.float16)
    if n == 0:
        raise AhriError(f"{ref.path}: no frames decoded")


# ---------------------------------------------------------------------------------------------- actions
def _aligned_actions(ref: VideoRef, frames: int, fps: float, notes: list[str]) -> tuple[np.ndarray | None, str]:
    """The video's actions carried over to ``frames`` latents read at ``fps`` (``resample_actions``).

    Discrete: the action that produced each kept frame; continuous: the mean since the previous kept
    frame. At the video's own rate they pass through unchanged.
    """
    if ref.actions is None:
        return None, "none"
    a = np.asarray(ref.actions)
    kind = "discrete" if a.ndim == 1 and np.issubdtype(a.dtype, np.integer) else "continuous"
    src_fps = ref.source_fps or fps
    expected = resampled_count(len(a), src_fps, fps)
    if abs(expected - frames) > 1:
        notes.append(f"{ref.id}: {len(a)} actions at {src_fps:g} fps for {frames} frames at {fps:g} fps; "
                     "frames without an action get 'no action'")
    return resample_actions(a, src_fps, fps, frames), kind


def _action_count(ref: VideoRef, actions: np.ndarray | None, kind: str) -> int:
    """Discrete: the video's declared action count, else 1 + the largest action; continuous: the width."""
    if actions is None:
        return 0
    if kind == "discrete":
        return int(ref.meta.get("action_count") or int(np.max(actions)) + 1)
    return int(actions.shape[1]) if kind == "continuous" else 0


def assign_videos(frames: Sequence[int], world: int) -> list[int]:
    """The rank that encodes each video: longest first, each to the rank with the fewest frames so far (ties to
    the lower rank). Deterministic, so every rank computes the same plan."""
    load = [0] * world
    owner = [0] * len(frames)
    for i in sorted(range(len(frames)), key=lambda i: (-int(frames[i]), i)):
        r = min(range(world), key=lambda r: (load[r], r))
        owner[i] = r
        load[r] += int(frames[i])
    return owner


def _fps_text(fps: float) -> str:
    return f"{fps:.10g}"


# ---------------------------------------------------------------------------------------------- the command
@dataclass
class TokenizeResult:
    out_dir: Path
    tokenizer_id: str
    written: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    slow: dict[str, float] = field(default_factory=dict)  # videos read below the tokenizer's rate: id -> rate
    frames: int = 0  # frames encoded in this run
    seconds: float = 0.0
    index: dict[str, Any] = field(default_factory=dict)
    precision: dict[str, Any] = field(default_factory=dict)  # the precision used and why

    @property
    def ok(self) -> bool:
        return not self.failed

    @property
    def frames_per_s(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0


def picture_meta(ref: VideoRef, cfg: Any) -> dict[str, str]:
    """``source_size`` ("WxH") and ``content_box`` ("top,left,height,width": the part of each H x W frame
    that shows the picture, without the bars of ``pad``) of a video, for its latent file."""
    wh = ref.source_size
    if wh is None:
        return {}
    t, left, h, w = content_box(wh, cfg.size, cfg.fit)
    return {"source_size": f"{wh[0]}x{wh[1]}", "content_box": f"{t},{left},{h},{w}"}


def _file_meta(ref: VideoRef, rate: float, count: int, actions: np.ndarray | None, kind: str, job: _Job) -> dict[str, str]:
    """The string metadata of a video's latent file."""
    cfg = job.cfg
    return {
        "format": INDEX_FORMAT,
        "fps": _fps_text(rate),
        "video_id": ref.id,
        "source": str(ref.meta.get("source") or ref.path.parent.name),
        "source_path": str(ref.path),
        "sha256": ref.sha256,
        "tokenizer_id": job.tid,
        "tokenizer_sha256": job.wsha,
        "frames": str(count),
        "frame_size": f"{cfg.height}x{cfg.width}",
        "fit": cfg.fit,
        **picture_meta(ref, cfg),
        "tokens": str(cfg.tokens),
        "channels": str(cfg.channels),
        "action_kind": kind,
        "action_count": str(_action_count(ref, actions, kind)),
        "action_meanings": json.dumps(ref.meta.get("action_meanings") if kind != "none" else None),
    }


def _split_rule(split: SplitRule | None, val_fraction: float | None, extra: dict[str, Any]) -> SplitRule:
    """The chosen split, else the hash split with ``val_fraction``, else the tokenizer's own (in its weights)."""
    if split is not None:
        return split
    if val_fraction is not None:
        return SplitRule.by_hash(val_fraction)
    return SplitRule.from_record(extra.get("split") or extra)


def _choose_precision(model: Tokenizer, dev: torch.device, precision: str, batch_size: int, cache_dir: Any,
                      dist: Any) -> Any:
    """The encoder's precision: measured on rank 0 (``auto``: by timing the encoder), used by every rank."""
    cfg = model.cfg

    @torch.inference_mode()
    def encode_once(p: str) -> None:
        x = torch.rand(batch_size, 3, *cfg.size, device=dev)
        with autocast(dev, p):
            model.encode(x)

    choice = None
    if dist.main:  # rank 0 measures, every rank uses its choice
        choice = choose_precision(precision, dev, step=encode_once, key=f"tokenize {json.dumps(cfg.to_dict(), sort_keys=True)} "
                                  f"batch {batch_size}", cache_dir=cache_dir)
    return distributed.broadcast(choice)


@dataclass
class _Job:
    """What one ``tokenize_videos`` call works with: the tokenizer, where the set goes, its split rule, the
    entries of earlier runs it keeps, the file metadata of every video done, and the result so far."""

    model: Tokenizer
    weights: Path
    tid: str
    wsha: str
    dev: torch.device
    precision: str
    rule: SplitRule
    out_dir: Path
    kept: list[LatentEntry]  # earlier videos of the set, not given this time, whose files still exist
    res: TokenizeResult
    dist: Any
    progress: Progress
    meta_of: dict[str, dict[str, str]] = field(default_factory=dict)

    @property
    def cfg(self) -> Any:
        return self.model.cfg

    def up_to_date(self, ref: VideoRef) -> dict[str, str] | None:
        """The metadata of the video's latent file when it is current (same video, same weights, same rate)."""
        meta = read_latent_metadata(self.out_dir / f"{ref.id}.safetensors")
        if (meta and meta.get("sha256") == ref.sha256 and meta.get("tokenizer_sha256") == self.wsha
                and meta.get("fps") == _fps_text(ref.rate(self.cfg.fps))):  # older files may repeat frames
            return meta
        return None

    def to_do(self, refs: list[VideoRef]) -> list[VideoRef]:
        """The videos this rank encodes: those without a current file, shared out among the ranks."""
        todo: list[VideoRef] = []
        for r in refs:
            try:
                m = self.up_to_date(r)
            except OSError as e:
                self.res.failed.append((r.id, str(e)))
                continue
            if m is not None:
                self.res.skipped.append(r.id)
                self.meta_of[r.id] = m
            else:
                todo.append(r)
        distributed.barrier()  # every rank has looked at the files before any is rewritten
        if self.dist.enabled:
            sizes = [int(round(float(r.meta.get("duration") or 0) * r.rate(self.cfg.fps))) or 1 for r in todo]
            owner = assign_videos(sizes, self.dist.world)
            todo = [r for r, o in zip(todo, owner) if o == self.dist.rank]
        return todo

    def encode(self, r: VideoRef, batch_size: int, decoder: Decoder | None, t0: float) -> bool:
        """Encode one video into its latent file; False (reported) when it fails to decode."""
        res, cfg, p = self.res, self.cfg, self.progress
        t_video = time.perf_counter()
        n_before = res.frames

        def advanced(n: int, vid: str = r.id) -> None:
            res.frames += n
            dt = max(time.perf_counter() - t0, 1e-9)
            p.advance("tokenize", n, video=vid, fps=res.frames / dt)

        try:
            rate = r.rate(cfg.fps)
            with LatentFileWriter(self.out_dir / f"{r.id}.safetensors", cfg.tokens, cfg.channels) as writer:
                for z in encode_video(self.model, r, batch_size, self.dev, self.precision, decoder,
                                      weights=self.weights, fps=rate):
                    writer.append(z)
                    advanced(len(z))
                count = writer.frames
                actions, kind = _aligned_actions(r, count, rate, res.notes)
                meta = _file_meta(r, rate, count, actions, kind, self)
                writer.finish(actions, meta)
            self.meta_of[r.id] = meta
            res.written.append(r.id)
            if rate < cfg.fps:
                res.slow[r.id] = rate
            dt = time.perf_counter() - t_video
            p.log(f"{r.id}: {count} frames in {dt:.1f}s ({(res.frames - n_before) / max(dt, 1e-9):.0f} frames/s)")
        except (CheckpointError, WriteError):
            raise  # the tokenizer itself is bad, or the disk is full: no later video would fare better
        except (AhriError, OSError) as e:
            res.failed.append((r.id, str(e)))
            p.log(f"failed {r.id}: {e}")
            return False
        return True

    def index(self) -> LatentIndex:
        """The index of the set: the entries of this run, plus the kept entries of earlier runs."""
        cfg = self.cfg
        entries = {vid: LatentEntry.from_file_meta(vid, f"{vid}.safetensors", m, cfg.fps)
                   for vid, m in self.meta_of.items()}
        for e in self.kept:
            if e.id not in entries:
                entries[e.id] = e
        split = self.rule.assign(sorted(entries))
        vids = [replace(entries[k], split=split[k]) for k in sorted(entries)]
        kinds = {e.action_kind for e in vids if e.has_actions}
        rates = sorted({e.fps for e in vids}, reverse=True)
        common = rates[0] if rates and all(same_rate(r, rates[0]) for r in rates) else None
        meanings = None
        for vid in sorted(self.meta_of):
            if self.meta_of[vid].get("action_meanings"):
                try:
                    meanings = json.loads(self.meta_of[vid]["action_meanings"])
                except json.JSONDecodeError:
                    meanings = None
                break
        return LatentIndex(
            format=INDEX_FORMAT,
            tokenizer_id=self.tid,
            tokenizer_weights=str(self.weights),
            tokenizer_sha256=self.wsha,
            tokenizer_config=cfg.to_dict(),
            tokens=cfg.tokens,
            channels=cfg.channels,
            fps=common if rates else cfg.fps,  # null when the videos have different rates (see videos[].fps)
            tokenizer_fps=cfg.fps,
            frame_size=f"{cfg.height}x{cfg.width}",
            fit=cfg.fit,
            split=self.rule.record(),
            action_kind=kinds.pop() if len(kinds) == 1 else ("mixed" if kinds else "none"),
            action_count=max((e.action_count for e in vids if e.has_actions), default=0),
            action_meanings=meanings,
            frames=sum(e.frames for e in vids),
            updated=datetime.now().isoformat(timespec="seconds"),
            videos=vids,
        )

    def write_index(self) -> None:
        """Rank 0 writes the index as it stands (after every video, so an interrupted run keeps its work)."""
        if not self.dist.main:
            return
        index = self.index()
        self.res.index = index.to_dict()
        index.write(self.out_dir)

    def gather(self) -> None:
        """Every rank's videos into the one index (rank 0 writes it) and into every rank's result."""
        res = self.res
        parts = distributed.gather((self.meta_of, res.written, res.failed, res.notes, res.frames, res.slow))
        for part in parts[1:] if self.dist.main else []:
            self.meta_of.update(part[0])
        res.written = [v for part in parts for v in part[1]]
        res.failed = [tuple(v) for part in parts for v in part[2]]
        res.notes = [v for part in parts for v in part[3]]
        res.frames = sum(part[4] for part in parts)
        res.slow = {k: v for part in parts for k, v in part[5].items()}


def tokenize_videos(
    tokenizer: str | os.PathLike,
    videos: Sequence[Any],
    out_root: str | os.PathLike,
    *,
    batch_size: int = 64,
    device: str = "auto",
    precision: str = "auto",
    val_fraction: float | None = None,
    runs_dir: str | os.PathLike | None = None,
    progress: Progress | None = None,
    decoder: Decoder | None = None,
    cache_dir: str | os.PathLike | None = None,
    split: SplitRule | None = None,
) -> TokenizeResult:
    """Tokenize ``videos`` into ``<out_root>/<tokenizer-id>/``; see the module docstring.

    tokenizer: run name (under ``runs_dir``), run directory or weights file. videos: ``VideoRecord``s or
    paths. Each video is read at the tokenizer's fps, or at its own rate when that is lower (the rate is
    written in its latent file and index entry). split: the held-out videos chosen by the user
    (``SplitRule.chosen`` / ``SplitRule.from_file``; an unknown id or a split with no training video is
    refused before anything is encoded); else val_fraction: the hash split with that share; default: the
    tokenizer's own split (its chosen videos, or its val_fraction; 0 stays 0), else 0.1. precision: auto
    (chosen on this machine by timing the encoder, cached in ``cache_dir``, default ``<out_root>/../cache``),
    bf16 or fp32.
    """
    dist = distributed.setup(device)  # joins the process group when launched by torchrun; else nothing
    p = ensure(progress) if dist.main else ensure(None)
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {batch_size}")
    if split is not None and val_fraction is not None:
        raise ConfigError("--val-fraction and a chosen split (--val-videos / --split) both decide the split; give one")
    weights, tid = resolve_tokenizer(tokenizer, runs_dir)
    dev = resolve_device(device)
    model, extra = load_tokenizer(weights, dev)
    cfg = model.cfg
    wsha = sha256_file(weights)
    rule = _split_rule(split, val_fraction, extra)
    if cache_dir is None:
        cache_dir = Path(out_root).parent / "cache"
    choice = _choose_precision(model, dev, precision, batch_size, cache_dir, dist)
    out_dir = Path(out_root) / tid
    refs = as_video_refs(videos)
    kept = _kept_entries(out_dir, cfg.fps, refs)
    rule.assign([*(r.id for r in refs), *(str(e.id) for e in kept)])  # refuses unknown ids, no training video
    lock = WriterLock(out_dir, "latent set")
    with distributed.main_first():
        out_dir.mkdir(parents=True, exist_ok=True)
        if dist.main:  # one writer per set; the other ranks write only their videos' files, never the index
            lock.acquire()
    try:
        # read again under the lock: another writer may have extended the index since the check above
        kept = _kept_entries(out_dir, cfg.fps, refs)
        rule.assign([*(r.id for r in refs), *(str(e.id) for e in kept)])
        return _tokenize(model, weights, tid, wsha, dev, choice, rule, out_dir, kept, dist, p, refs, batch_size,
                         decoder)
    finally:
        lock.release()


def _kept_entries(out_dir: Path, fps: float, refs: list[VideoRef]) -> list[LatentEntry]:
    """The earlier videos of the set, not given this time, whose files still exist."""
    prev = LatentIndex.previous(out_dir, fps)
    given = {r.id for r in refs}
    return [e for e in (prev.videos if prev is not None else []) if e.id not in given
            and (out_dir / str(e.file)).is_file()]


def _tokenize(model: Tokenizer, weights: Path, tid: str, wsha: str, dev: torch.device, choice: Any, rule: SplitRule,
              out_dir: Path, kept: list[LatentEntry], dist: Any, p: Progress, refs: list[VideoRef], batch_size: int,
              decoder: Decoder | None) -> TokenizeResult:
    """The videos encoded and the index written, with the set's writer lock held (rank 0)."""
    cfg = model.cfg
    res = TokenizeResult(out_dir=out_dir, tokenizer_id=tid, precision=choice.to_dict())
    p.log(f"{model.summary()}; weights {weights}; {choice.line()}")
    job = _Job(model, weights, tid, wsha, dev, choice.precision, replace(rule, strict=False), out_dir,
               [replace(e, split=None) for e in kept], res, dist, p)
    todo = job.to_do(refs)
    est = sum(int(round(float(r.meta.get("duration") or 0) * r.rate(cfg.fps))) for r in todo)
    p.start("tokenize", total=est or None)
    t0 = time.perf_counter()
    for r in todo:
        if job.encode(r, batch_size, decoder, t0):
            job.write_index()
    if dist.enabled:
        job.gather()
    job.write_index()
    distributed.barrier()  # the index is written before any rank returns
    if not res.index and (out_dir / INDEX).is_file():
        res.index = LatentIndex.read(out_dir).to_dict()
    res.seconds = time.perf_counter() - t0
    p.finish("tokenize", frames=res.frames, fps=res.frames_per_s)
    if res.slow:  # one line for them all (a channel of 30 fps replays under a 60 fps tokenizer is every video)
        res.notes.insert(0, slow_videos_line(res.slow, job.cfg.fps))
    for n in res.notes:
        p.log(n)
    return res


def load_decoder(tokenizer: str | os.PathLike, runs_dir: str | os.PathLike | None = None, device: str = "auto") -> Tokenizer:
    """The tokenizer named by ``tokenizer`` (run name, run dir or weights file), ready for ``decode_latents``."""
    weights, _ = resolve_tokenizer(tokenizer, runs_dir)
    model, _ = load_tokenizer(weights, resolve_device(device))
    return model

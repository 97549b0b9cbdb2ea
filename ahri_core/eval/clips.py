"""The evaluation clips: which windows of which videos ``ahri eval`` scores, their latents and their real frames.

- :func:`select_clips` picks non-overlapping windows of ``context + horizon`` frames spread over the videos
  (:class:`ClipRef`: a video and a start frame);
- :func:`clip_latents` gathers their true latents and the actions the model is conditioned on;
- :func:`read_clip_frames` decodes the real frames of the clips only, streaming each video once, so memory
  does not grow with the length of the videos; :func:`clip_content_box` is the part of the tokenizer's frame
  that shows the picture (without the bars of the ``pad`` fit), the part that is scored.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..inference.world import WorldModel
from ..progress import Progress
from ..visual import to_float
from ..workspace import Workspace

if TYPE_CHECKING:
    from ..data.windows import LatentVideo

__all__ = [
    "ClipRef",
    "clip_content_box",
    "clip_latents",
    "read_clip_frames",
    "select_clips",
]


@dataclass
class ClipRef:
    """One evaluation clip: frames start .. start + context + horizon - 1 of a held-out video."""

    video_id: str
    start: int


def select_clips(lengths: dict[str, int], context: int, horizon: int, clips: int, seed: int = 0) -> list[ClipRef]:
    """Up to ``clips`` non-overlapping windows of ``context + horizon`` frames, spread over the videos.

    Videos take turns (round robin, in an order fixed by ``seed``) so that a few long videos do not crowd
    out the others; inside a video, windows are non-overlapping and start at random offsets fixed by ``seed``.
    """
    span = context + horizon
    rng = np.random.default_rng(seed)
    per_video: dict[str, list[int]] = {}
    for vid in sorted(lengths):
        n = lengths[vid]
        if n < span:
            continue
        count = n // span
        slack = n - count * span
        offset = int(rng.integers(0, slack + 1))
        starts = [offset + i * span for i in range(count)]
        rng.shuffle(starts)
        per_video[vid] = starts
    order = list(per_video)
    rng.shuffle(order)
    out: list[ClipRef] = []
    while len(out) < clips and any(per_video[v] for v in order):
        for v in order:
            if per_video[v] and len(out) < clips:
                out.append(ClipRef(v, int(per_video[v].pop(0))))
    return out


def _video_file(latent_dir: Path, video_id: str, workspace: Workspace | None) -> Path | None:
    """The source video of a latent file: named in the index or the file's metadata, or found in the workspace."""
    import json

    cands: list[Path] = []
    idx = latent_dir / "index.json"
    entry: dict = {}
    if idx.is_file():
        try:
            for rec in json.loads(idx.read_text()).get("videos", []):
                if str(rec.get("id")) == video_id:
                    entry = rec
                    break
        except (OSError, ValueError):
            entry = {}
    for key in ("video", "video_path", "source_path", "path"):
        v = entry.get(key)
        if isinstance(v, str) and v:
            cands.append(Path(v))
    meta: dict = {}
    f = latent_dir / str(entry.get("file", f"{video_id}.safetensors"))
    if f.is_file():
        try:
            from safetensors import safe_open

            with safe_open(str(f), framework="pt") as fh:
                meta = fh.metadata() or {}
        except Exception:  # noqa: BLE001 - metadata is only a hint here
            meta = {}
    for key in ("source_path", "video_path", "path"):
        if meta.get(key):
            cands.append(Path(meta[key]))
    vid = meta.get("video_id") or video_id
    if workspace is not None:
        if meta.get("source"):
            cands.append(workspace.videos / meta["source"] / f"{vid}.mp4")
        if workspace.videos.is_dir():
            cands += sorted(workspace.videos.rglob(f"{vid}.mp4"))
    return next((c for c in cands if c.is_file()), None)



def clip_latents(
    world: WorldModel, videos: list[LatentVideo], refs: list[ClipRef], span: int
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The true latents (clips, span, N, Ch) of ``refs`` and the actions the model is conditioned on: the real
    actions when the run uses them, the codes its encoder infers for a latent-action run, else None."""
    by_id = {v.id: v for v in videos}
    lat, acts = [], []
    for r in refs:
        v = by_id[r.video_id]
        lat.append(v.latents[r.start : r.start + span].float())
        acts.append(None if v.actions is None else v.actions[r.start : r.start + span])
    z = torch.stack(lat)
    actions = _stack_actions(acts, span) if world.actions_usable() else None
    lam = getattr(world, "latent_actions", None)
    if lam is not None:
        with torch.no_grad():
            actions = lam(z.to(world.device)).cpu()  # (clips, span, dims), frame 0 NaN
    return z, actions


def _stack_actions(acts: list[torch.Tensor | None], span: int) -> torch.Tensor | None:
    if all(a is None for a in acts):
        return None
    like = next(a for a in acts if a is not None)
    out = []
    for a in acts:
        if a is None:
            shape = (span, *like.shape[1:])
            a = torch.full(shape, float("nan")) if like.is_floating_point() else torch.full(shape, -1, dtype=like.dtype)
        out.append(a)
    return torch.stack(out)


def clip_content_box(refs: list[ClipRef], latent_dir: Path, world: WorldModel) -> tuple[int, int, int, int]:
    """(top, left, height, width) of the tokenizer's frames that shows the picture of the clips' videos (the
    ``content_box`` their latent set records), for scoring and videos; the whole frame when it is not
    recorded or when the clips' videos differ."""
    from ..data.latents import LatentStore

    whole = (0, 0, *world.size)
    store = LatentStore(latent_dir)
    boxes = {tuple(store.entry(r.video_id).get("content_box") or whole) for r in refs}
    if len(boxes) != 1:
        return whole
    box = boxes.pop()
    t, left, h, w = box
    H, W = world.size
    return box if t >= 0 and left >= 0 and t + h <= H and left + w <= W else whole


def read_clip_frames(
    refs: list[ClipRef],
    span: int,
    latent_dir: Path,
    workspace: Workspace | None,
    fps: float,
    size: tuple[int, int],
    fit: str = "pad",
    progress: Progress | None = None,
) -> list[torch.Tensor | None]:
    """The real frames (float (span, 3, H, W) in [0, 1]) of every clip, or None where they cannot be had.

    Each video is decoded once, streaming, at the tokenizer's fps and size (the frames that were tokenized),
    and only the frames of its clips are kept (:func:`ahri_core.video.read_ranges`): memory holds the
    scored frames, never a whole video, and decoding stops after the last clip of the video. None: the
    video file is not found, or it has fewer frames than the clip needs.
    """
    from ..progress import ensure
    from ..video import read_ranges

    prog = ensure(progress)
    by_video: dict[str, list[int]] = {}
    for i, r in enumerate(refs):
        by_video.setdefault(r.video_id, []).append(i)
    out: list[torch.Tensor | None] = [None] * len(refs)
    prog.start("eval: frames", total=len(refs))
    for vid, idx in by_video.items():
        path = _video_file(latent_dir, vid, workspace)
        if path is None:
            prog.log(f"video of {vid} not found: its decoded true latents stand in for the real frames")
        else:
            parts = read_ranges(path, [(refs[i].start, refs[i].start + span) for i in idx], fps=fps, size=size, fit=fit)
            for i, fr in zip(idx, parts, strict=True):
                out[i] = to_float(fr) if len(fr) == span else None
        prog.advance("eval: frames", len(idx))
    prog.finish("eval: frames")
    return out

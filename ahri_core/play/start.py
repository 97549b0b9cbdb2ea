"""The real frames an ``ahri play`` session starts from (:class:`Start`): the first frames of a clip
(:func:`start_from_clip`) or of a held-out video of the run's latent set (:func:`start_from_run`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError, DataError
from ..inference.rollout import load_clip_actions
from ..inference.world import WorldModel
from ..visual import crop_box, to_uint8

__all__ = [
    "Start",
    "start_from_clip",
    "start_from_run",
]


@dataclass
class Start:
    """The real frames a session starts from, and their latents."""

    frames: np.ndarray  # (C, h, w, 3) uint8: the picture (the bars ``pad`` adds are cut off)
    latents: torch.Tensor  # (C, N, Ch) float32: what the dynamics model is given
    actions: torch.Tensor | None  # (C,) int64 / (C, A) float32, or None (no action)
    name: str  # the clip it came from
    box: tuple[int, int, int, int] = (0, 0, 0, 0)  # (top, left, height, width) of the picture in a model frame


def _clip_actions(world: WorldModel, actions: Any, count: int, where: str,
                  latents: torch.Tensor | None = None) -> torch.Tensor | None:
    """The start's actions: the clip's own, or, for a latent-action run, those inferred from its latents
    (as ``ahri rollout`` conditions its context frames)."""
    lam = getattr(world, "latent_actions", None)
    if lam is not None and latents is not None:
        with torch.inference_mode():
            return lam(latents[None].to(world.device))[0].float().cpu()  # (C, dims), frame 0 NaN
    if actions is None or not world.actions_usable():
        return None
    a = torch.as_tensor(np.asarray(actions))[:count]
    kind = world.dynamics.config.action_kind
    if a.dtype.is_floating_point == (kind == "discrete"):
        raise DataError(f"actions of {where} are of the wrong kind for this model ({kind})")
    return a.float() if a.dtype.is_floating_point else a.long()


def start_from_clip(world: WorldModel, clip: str | os.PathLike, context: int) -> Start:
    """The first ``context`` frames of a video, read at the model's rate and size (as ``ahri rollout``
    reads them), their latents and the actions of the clip's sidecar when it has one."""
    from ..video import capped_fps, content_box, probe, read_frames

    clip = Path(clip)
    if context < 1:
        raise ConfigError(f"--context {context}: must be at least 1")
    if not clip.is_file():
        raise DataError(f"clip {clip} does not exist")
    try:
        info = probe(clip, count=False)
        clip_fps, source = float(info.fps or 0) or None, (int(info.width), int(info.height))
    except Exception:  # noqa: BLE001 - read_frames below names a bad file clearly
        clip_fps, source = None, None
    rate = capped_fps(world.fps, clip_fps)
    frames = read_frames(clip, fps=rate, size=world.size, fit=world.fit, max_frames=context)
    if len(frames) < context:
        raise DataError(
            f"{clip} has {len(frames)} frames at {rate:g} fps, fewer than --context {context}; "
            "use a longer clip or a smaller --context"
        )
    latents = world.encode(frames)
    actions = _clip_actions(world, load_clip_actions(clip, rate, count=len(frames)), context, str(clip), latents)
    box = content_box(source, world.size, world.fit) if source is not None else (0, 0, *world.size)
    return Start(crop_box(frames, box), latents, actions, clip.name, tuple(int(x) for x in box))


def start_from_run(world: WorldModel, context: int) -> Start:
    """The first ``context`` frames of the first held-out video of the run's latent set: read from its video
    when the workspace still holds it, else decoded from the stored latents."""
    from ..data.latents import LatentStore

    if context < 1:
        raise ConfigError(f"--context {context}: must be at least 1")
    path = (world.info.get("latents") or {}).get("path")
    if not path or not (Path(path) / "index.json").is_file():
        raise DataError(
            f"run {world.name}: its latent set ({path or 'not recorded'}) is not there to take a held-out clip from; "
            "pass --clip VIDEO"
        )
    store = LatentStore(path)
    held_out = sorted((v for v in store.videos("val") if int(v.get("frames", 0)) >= context), key=lambda v: str(v["id"]))
    if not held_out:
        raise DataError(
            f"latent set {store.path} has no held-out video of at least {context} frames; pass --clip VIDEO "
            "or a smaller --context"
        )
    rec = held_out[0]
    ws = world.workspace
    if ws is not None and rec.get("source"):
        video = ws.source_dir(str(rec["source"])) / f"{rec['id']}.mp4"
        if video.is_file():
            return start_from_clip(world, video, context)
    lat, act = store.load(str(rec["id"]))
    lat = lat[:context].float()
    box = tuple(int(x) for x in (rec.get("content_box") or (0, 0, *world.size)))
    frames = crop_box(to_uint8(world.decode(lat)), box)
    acts = _clip_actions(world, act, context, str(store.file(str(rec["id"]))), lat)
    return Start(frames, lat, acts, str(rec["id"]), box)

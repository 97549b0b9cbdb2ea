"""``ahri play``: steer a trained world model live from a web page.

- :class:`ActionSpace`: the run's own actions, their meanings and which held keys choose which action.
- :func:`start_from_clip` / :func:`start_from_run`: the real frames a session starts from (a clip, or the
  first frames of a held-out video of the run's latent set).
- :class:`LiveDream`: the sampler of :mod:`ahri_core.inference.sampler` one frame at a time, the action of each frame
  chosen when it is made (KV cache, sliding window, context corruption: the sampler's own pieces, so a live
  session with the same actions and seed makes exactly the frames of :meth:`Sampler.rollout`).
- :class:`PlaySession`: one page's dream: a worker thread that makes frames at the model's frame rate (or as
  fast as it can when the model is slower), a latest-frame slot (frames are never queued), pause, reset,
  and recording to ``<run>/play/<time>.mp4`` (:class:`Recorder`).
- :class:`PlayServer`: the web server (aiohttp, the ``play`` extra): the page's three files and one
  WebSocket per page; nothing else on the machine is served.

The WebSocket protocol (all JSON text, except frames):

- server -> page: ``hello`` (run, frame rate, size, the actions and their keys), then one binary message per
  frame: a little-endian uint32 header length, the JSON header (frame index, real or dreamed, step, action,
  rates) and the frame as raw RGB bytes; ``state`` after a control message, ``recorded``, ``error``.
- page -> server: ``keys`` (the ``KeyboardEvent.code`` of every held key, oldest first), ``reset``,
  ``pause``, ``record`` and ``ack`` (the frame index just drawn). At most two frames are unacknowledged; the
  newest frame is sent when the page is ready, so a slow page skips frames instead of lagging behind.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import ipaddress
import json
import os
import queue
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import AhriError, ConfigError, DataError
from ..inference.rollout import load_clip_actions
from ..inference.sampler import Stream
from ..inference.world import WorldModel
from ..visual import Column, crop_box, grid_video, to_uint8

__all__ = [
    "ActionSpace",
    "Frame",
    "LatestFrame",
    "LiveDream",
    "PlaySession",
    "PlayServer",
    "Recorder",
    "Start",
    "is_local_host",
    "play_threads",
    "require_server_library",
    "run_action_meanings",
    "start_from_clip",
    "start_from_run",
]

# ---------------------------------------------------------------------------------------------- actions

# KeyboardEvent.code (the key's place on the keyboard, whatever the layout) -> what it asks for
MOVE_KEYS: dict[str, str] = {
    "ArrowUp": "up", "KeyW": "up",
    "ArrowDown": "down", "KeyS": "down",
    "ArrowLeft": "left", "KeyA": "left",
    "ArrowRight": "right", "KeyD": "right",
    "Space": "fire",
}
DIGIT_KEYS: dict[str, int] = {**{f"Digit{i}": i for i in range(10)}, **{f"Numpad{i}": i for i in range(10)}}
CONTROL_KEYS: dict[str, str] = {"KeyR": "reset", "KeyP": "pause", "KeyV": "record"}
_OPPOSITE = {"up": "down", "down": "up", "left": "right", "right": "left"}
_NOOP_WORDS = {"noop", "idle", "none", "nothing", "stay", "wait"}
_WORDS = (("up", "up"), ("down", "down"), ("left", "left"), ("right", "right"), ("fire", "fire"), ("attack", "fire"))


def meaning_parts(meaning: str) -> frozenset[str] | None:
    """What an action meaning asks for as a set of {up, down, left, right, fire}: "up_right" and ALE's
    "UPRIGHT" -> {up, right}; "attack" and "FIRE" -> {fire}; "idle" and "NOOP" -> {}; a meaning with other
    words (ALE's "RESET") -> None (only its number key reaches it)."""
    rest = "".join(ch for ch in meaning.lower() if ch.isalnum())
    if rest in _NOOP_WORDS:
        return frozenset()
    parts = set()
    for word, part in _WORDS:
        if word in rest:
            parts.add(part)
            rest = rest.replace(word, "", 1)
    return frozenset(parts) if parts and not rest else None


@dataclass(frozen=True)
class ActionSpace:
    """The actions a run was trained with and the keys that choose them.

    ``kind``: "discrete" (an index per frame, -1 = no action), "continuous" (a vector per frame, NaN = no
    action), "latent" (a code of the run's latent-action code book per frame, given to the model as its
    vector; -1 = no action) or "none" (the model never saw actions). ``idle`` is the input when no key is
    held: the run's own no-op when its meanings name one ("idle" in the built-in game, ALE's "NOOP"), since
    that is what the model saw while a player pressed nothing; else the model's "no action" (-1).

    Keys: arrows or WASD for directions and space for fire/attack choose the meaning that asks for exactly
    the held keys (else the largest part of them, the most recently pressed key first); number keys choose
    the action (or latent code) with that index. Continuous actions get no keys yet (every frame is "no
    action").

    Latent actions (learned from video without actions): the hook is :meth:`of`, which takes the code book
    from ``world.latent_actions`` (its ``vectors(codes)``), the code count from ``world.code_count`` and
    names from ``world.action_names()`` (a few labelled codes: "left", "jump"...); named codes get the keys
    their names ask for, codes 0-9 their number keys. :class:`PlaySession` only calls :meth:`choose`,
    :meth:`label` and :meth:`tensor`.
    """

    kind: str = "none"
    meanings: tuple[str, ...] = ()
    idle: int = -1
    dim: int = 0
    vectors: Callable[[torch.Tensor], torch.Tensor] | None = field(default=None, compare=False, repr=False)

    @classmethod
    def of(cls, world: WorldModel) -> ActionSpace:
        lam = getattr(world, "latent_actions", None)
        if lam is not None:
            count = int(getattr(world, "code_count", None) or 0)
            names: dict[int, str] = {}
            if hasattr(world, "action_names"):
                names = {int(v): str(k) for k, v in world.action_names().items()}
            meanings = tuple(names.get(i, f"code {i}") for i in range(count))
            return cls(kind="latent", meanings=meanings, idle=-1, vectors=lam.vectors)
        cfg = world.dynamics.config
        kind = str(getattr(cfg, "action_kind", "none"))
        if kind == "none":
            return cls()
        if kind == "continuous":
            return cls(kind="continuous", dim=int(getattr(cfg, "action_dim", 0)))
        if kind != "discrete":
            raise ConfigError(f"run {world.name}: action kind {kind!r} cannot be played (known: discrete, continuous, none)")
        count = int(getattr(cfg, "action_count", 0))
        meanings = run_action_meanings(world)
        if len(meanings) != count:
            meanings = [f"action {i}" for i in range(count)]
        idle = next((i for i, m in enumerate(meanings) if meaning_parts(m) == frozenset()), -1)
        return cls(kind="discrete", meanings=tuple(meanings), idle=idle)

    def choose(self, codes: Sequence[str]) -> int:
        """The discrete action (or code) for the held keys (``codes`` oldest first); ``idle`` when none applies."""
        if self.kind not in ("discrete", "latent"):
            return -1
        digits = [DIGIT_KEYS[c] for c in codes if c in DIGIT_KEYS and DIGIT_KEYS[c] < len(self.meanings)]
        if digits:
            return digits[-1]
        recency: dict[str, int] = {}
        for i, c in enumerate(codes):
            if c in MOVE_KEYS:
                recency[MOVE_KEYS[c]] = i
        for part, other in _OPPOSITE.items():  # both of a pair held: the later one counts
            if part in recency and other in recency and recency[part] < recency[other]:
                del recency[part]
        if not recency:
            return self.idle
        best, best_key = self.idle, (0, -1)
        for i, m in enumerate(self.meanings):
            parts = meaning_parts(m)
            if not parts or not parts <= recency.keys():
                continue
            key = (len(parts), max(recency[p] for p in parts))
            if key > best_key:
                best, best_key = i, key
        return best

    def label(self, action: int) -> str:
        if self.kind in ("discrete", "latent"):
            return self.meanings[action] if 0 <= action < len(self.meanings) else "no action"
        return "no action" if self.kind == "continuous" else ""

    def tensor(self, action: int, device: torch.device | str = "cpu") -> torch.Tensor | None:
        """The model's input for one frame: (1, 1) int64, (1, 1, A) float (NaN: no action) or None."""
        if self.kind == "discrete":
            return torch.tensor([[action]], dtype=torch.long, device=device)
        if self.kind == "latent" and self.vectors is not None:
            return self.vectors(torch.tensor([[action]], dtype=torch.long)).float().to(device)
        if self.kind == "continuous":
            return torch.full((1, 1, self.dim), float("nan"), device=device)
        return None

    def key_help(self) -> list[dict[str, Any]]:
        """One row per action for the page: its index, meaning and the keys that choose it."""
        names = {"up": "↑/W", "down": "↓/S", "left": "←/A", "right": "→/D", "fire": "space"}
        rows = []
        for i, m in enumerate(self.meanings):
            parts = meaning_parts(m)
            keys = [] if not parts else ["+".join(names[p] for p in ("up", "down", "left", "right", "fire") if p in parts)]
            if i == self.idle:
                keys.append("no key")
            if i < 10:
                keys.append(str(i))
            rows.append({"index": i, "meaning": m, "keys": keys})
        return rows

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "meanings": list(self.meanings), "idle": self.idle,
                "idle_label": self.label(self.idle), "keys": self.key_help()}


def run_action_meanings(world: WorldModel) -> list[str]:
    """The meanings of a run's discrete actions: recorded with the run when it has them, else read from the
    index of the latent set it was trained on (``action_meanings``); [] when neither says."""
    lat = world.info.get("latents") or {}
    found = lat.get("action_meanings")
    if not found:
        meta_lat = _read_json(world.run_dir / "run.json").get("latents") or {}
        found = meta_lat.get("action_meanings")
        path = lat.get("path") or meta_lat.get("path")
        if not found and path:
            found = _read_json(Path(path) / "index.json").get("action_meanings")
    if isinstance(found, str):
        with contextlib.suppress(json.JSONDecodeError):
            found = json.loads(found)
    return [str(m) for m in found] if isinstance(found, list) else []


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


# ---------------------------------------------------------------------------------------------- start


@dataclass
class Start:
    """The real frames a session starts from, and their latents."""

    frames: np.ndarray  # (C, h, w, 3) uint8: the picture (the bars ``pad`` adds are cut off)
    latents: torch.Tensor  # (C, N, Ch) float32: what the dynamics model is given
    actions: torch.Tensor | None  # (C,) int64 / (C, A) float32, or None (no action)
    name: str  # the clip it came from
    box: tuple[int, int, int, int] = (0, 0, 0, 0)  # (top, left, height, width) of the picture in a model frame


def _takes_actions(world: WorldModel) -> bool:
    return getattr(world.dynamics.config, "action_kind", "none") != "none"


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


# ---------------------------------------------------------------------------------------------- live sampler


class LiveDream:
    """:class:`~ahri_core.inference.sampler.Sampler` one frame at a time, each frame's action given when it is made.

    The same steps as the sampler's cached rollout, in the same order and with the same noise: the context
    is corrupted and committed to the KV cache (frames older than the model's window are skipped), then each
    new frame is denoised in ``steps`` Euler steps from pure noise and committed, corrupted, for the frames
    after it. The cache is a ring of the model's window, so every frame costs the same however long the
    session runs. :meth:`next` returns as soon as the frame is denoised; its commit runs at the start of the
    following call (or :meth:`settle`), so a caller can show the frame first.
    """

    def __init__(self, world: WorldModel, steps: int = 4, tau_ctx: float = 0.1, precision: str = "fp32",
                 seed: int = 0) -> None:
        self.world = world
        self.sampler = world.sampler(steps, tau_ctx, precision=precision)
        self.seed = int(seed)
        self._stream: Stream | None = None
        self._pending: tuple[torch.Tensor, torch.Tensor | None] | None = None

    @property
    def frames(self) -> int:
        """Frames committed (context included)."""
        return 0 if self._stream is None else self._stream.frames

    def start(self, latents: torch.Tensor, actions: torch.Tensor | None = None) -> None:
        """Begin from ``latents`` (C, N, Ch) with their ``actions`` ((C,) / (C, A) / None), noise seeded afresh."""
        if latents.shape[0] < 1:
            raise DataError("a live dream needs at least one context frame")
        act = None if actions is None or not _takes_actions(self.world) else actions[None]
        mf = self.sampler.traits.max_frames
        self._pending = None
        # a model without a window limit still gets one: memory must not grow with the session
        self._stream = self.sampler.stream(latents[None], act, torch.Generator().manual_seed(self.seed),
                                           cache_frames=mf if mf is not None else max(latents.shape[0] + 1, 64))

    def next(self, action: torch.Tensor | None) -> torch.Tensor:
        """The next frame's clean latents (N, Ch) given the action that makes it ((1, 1) / (1, 1, A) / None)."""
        if self._stream is None:
            raise ConfigError("LiveDream.next before start")
        self.settle()
        a = action if action is not None and _takes_actions(self.world) else None
        x = self._stream.denoise(a)
        self.world.check_finite(x)
        self._pending = (x, a)
        return x[0, 0].float().cpu()

    def settle(self) -> bool:
        """Commit the last frame made (corrupted as context), if not done yet; returns whether it did."""
        if self._pending is None or self._stream is None:
            return False
        x, a = self._pending
        self._pending = None
        self._stream.commit(x, a)
        return True


# ---------------------------------------------------------------------------------------------- frames


@dataclass(frozen=True)
class Frame:
    """One frame shown on the page."""

    index: int  # frames this session has made, counted from 1 (never reset)
    image: np.ndarray  # (h, w, 3) uint8
    real: bool  # a real frame of the start clip (else dreamed)
    step: int  # real: its place in the start clip (from 1); dreamed: frames dreamed since the (re)start
    action: str  # the meaning of the action that made the frame ("" when a real frame has none)
    start: int = 1  # which start of the session it belongs to: 1, then one more at each reset
    seconds: dict[str, float] = field(default_factory=dict)  # model / decode time of a dreamed frame


class LatestFrame:
    """The newest frame, overwritten by each new one: readers never see a queue, only the latest."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._frame: Frame | None = None

    def put(self, frame: Frame) -> None:
        with self._cond:
            self._frame = frame
            self._cond.notify_all()

    def get(self) -> Frame | None:
        with self._cond:
            return self._frame

    def wait_newer(self, index: int, timeout: float | None = None) -> Frame | None:
        """The latest frame once its index is above ``index``; None after ``timeout`` seconds."""
        with self._cond:
            self._cond.wait_for(lambda: self._frame is not None and self._frame.index > index, timeout)
            f = self._frame
            return f if f is not None and f.index > index else None


# ---------------------------------------------------------------------------------------------- recording


class Recorder:
    """Writes a session's frames to an mp4 as they come, from a thread of its own.

    Frames are upscaled ``scale`` times with a label band; real frames have a green border, dreamed ones a
    red border (:func:`~ahri_core.visual.grid_video`). The file appears under its name only when complete.
    """

    def __init__(self, path: str | os.PathLike, fps: float, title: str, scale: int = 4) -> None:
        self.path = Path(path)
        self.fps = float(fps)
        self.title = title
        self.scale = int(scale)
        self.frames = 0
        self.error: str | None = None
        self._ended = False
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._write, name="ahri-play-recorder", daemon=True)
        self._thread.start()

    def add(self, frame: Frame) -> None:
        self._queue.put(frame)

    def _compose(self) -> Iterable[np.ndarray]:
        while True:
            f = self._queue.get()
            if f is None:
                self._ended = True
                return
            status = f"real {f.step}" if f.real else f"dream +{f.step} {f.action}"
            col = Column(self.title, f.image[None], np.array([not f.real]))
            self.frames += 1
            yield grid_video([col], scale=self.scale, status=[status])[0]

    def _write(self) -> None:
        from ..video import write_video

        try:
            write_video(self.path, self._compose(), self.fps)
        except Exception as e:  # noqa: BLE001 - reported by close(); the session goes on
            self.error = str(e) if self.frames else None  # no frame at all: nothing to write, no error
            while not self._ended and self._queue.get() is not None:  # let close() finish
                pass

    def close(self) -> Path | None:
        """Finish the file; returns its path, or None when no frame was recorded (no file is left)."""
        self._queue.put(None)
        self._thread.join()
        if self.error:
            raise DataError(f"recording {self.path} failed: {self.error}")
        return self.path if self.frames and self.path.is_file() else None


_TAKEN: set[Path] = set()  # recording names handed out in this process (their files appear only when done)
_TAKEN_LOCK = threading.Lock()


def recording_path(folder: Path) -> Path:
    """``<folder>/<date-time>.mp4``, with a suffix when that name is taken (on disk or by another session)."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    with _TAKEN_LOCK:
        p, i = Path(folder) / f"{stamp}.mp4", 2
        while p.exists() or p in _TAKEN:
            p, i = Path(folder) / f"{stamp}-{i}.mp4", i + 1
        _TAKEN.add(p)
    return p


# ---------------------------------------------------------------------------------------------- session

EventHandler = Callable[[str, dict[str, Any]], None]


class PlaySession:
    """One page's dream.

    Control (any thread): :meth:`set_keys`, :meth:`pause`, :meth:`reset`, :meth:`record`. Frames: the worker
    started by :meth:`start` calls :meth:`step` at ``fps`` (the model's rate by default; 0 = as fast as it
    can) and puts each frame into :attr:`latest`; when a frame is late the next one starts at once, and more
    than a period late the schedule starts afresh (no burst to catch up, no queue). Without the worker,
    :meth:`step` makes one frame on the caller's thread.

    A session starts (and restarts on reset) by showing the real frames of ``start`` one per period, then
    dreams from them with the action of the held keys; the same seed and keys make the same frames.
    ``on_event(kind, data)`` hears "recorded" ({path, frames}) and "error" ({message}) from any thread.
    """

    def __init__(
        self,
        world: WorldModel,
        start: Start,
        steps: int = 4,
        tau_ctx: float = 0.1,
        precision: str = "fp32",
        seed: int = 0,
        fps: float | None = None,
        record_dir: str | os.PathLike | None = None,
        record_scale: int = 4,
        on_event: EventHandler | None = None,
    ) -> None:
        if len(start.frames) != len(start.latents) or len(start.frames) < 1:
            raise DataError(f"start {start.name}: {len(start.frames)} frames but {len(start.latents)} latents")
        self.world = world
        self.start_clip = start
        self.steps = int(steps)
        self.actions = ActionSpace.of(world)
        self.live = LiveDream(world, steps=steps, tau_ctx=tau_ctx, precision=precision, seed=seed)
        self.fps = float(world.fps if fps is None else fps)
        self.record_dir = Path(record_dir) if record_dir is not None else world.run_dir / "play"
        self.record_scale = int(record_scale)
        self.on_event = on_event
        self.notify: Callable[[], None] | None = None  # called after each new frame (from the worker)
        self.latest = LatestFrame()
        self.recordings: list[Path] = []
        self.error: str | None = None
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._keys: tuple[str, ...] = ()
        self._paused = False
        self._reset = True
        self._shown = 0  # real frames of the start shown since the (re)start
        self._dreamed = 0
        self._starts = 0
        self._index = 0
        self._busy = 0.0  # smoothed seconds per dreamed frame
        self._commit_s = 0.0  # the last commit of a dreamed frame to the KV cache
        self._closing = threading.Lock()
        self._recorder: Recorder | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ control
    def set_keys(self, codes: Sequence[str]) -> None:
        """The ``KeyboardEvent.code`` of every held key, oldest first."""
        with self._lock:
            self._keys = tuple(str(c) for c in codes)

    def pause(self, on: bool | None = None) -> bool:
        """Pause (True), resume (False) or toggle (None); returns whether it is paused now."""
        with self._lock:
            self._paused = (not self._paused) if on is None else bool(on)
            paused = self._paused
        self._wake.set()
        return paused

    def reset(self) -> None:
        """Start again from the real frames, with the same noise."""
        with self._lock:
            self._reset = True
        self._wake.set()

    def record(self, on: bool | None = None) -> Path | None:
        """Start (True), stop (False) or toggle (None) recording; returns the file written when it stops."""
        with self._lock:
            rec = self._recorder
            want = (rec is None) if on is None else bool(on)
            if want and self._stop.is_set():
                return None
            if want:
                if rec is None:
                    title = f"ahri play {self.world.name} {self.steps} steps"
                    fps = self.fps if self.fps > 0 else self.world.fps
                    self._recorder = Recorder(recording_path(self.record_dir), fps, title, self.record_scale)
                return None
            if rec is None:
                return None
            self._recorder = None
        return self._finish(rec)

    def _finish(self, rec: Recorder) -> Path | None:
        try:
            path = rec.close()
        except AhriError as e:
            self._event("error", {"message": str(e)})
            return None
        if path is not None:
            self.recordings.append(path)
            self._event("recorded", {"path": str(path), "frames": rec.frames})
        return path

    @property
    def paused(self) -> bool:
        return self._paused

    @property
    def recording(self) -> bool:
        return self._recorder is not None

    def stats(self) -> dict[str, Any]:
        """The rates the page shows: target fps, what the model can make, and whether it falls behind."""
        capacity = 1.0 / self._busy if self._busy > 0 else None
        behind = bool(self.fps > 0 and capacity is not None and capacity < 0.97 * self.fps)
        return {"target_fps": self.fps, "model_fps": capacity, "behind": behind, "paused": self._paused,
                "recording": self.recording}

    def _event(self, kind: str, data: dict[str, Any]) -> None:
        if self.on_event is not None:
            self.on_event(kind, data)

    # ------------------------------------------------------------------ frames
    def step(self) -> Frame:
        """Make the next frame (a real one of the start, or a dreamed one) and return it."""
        with self._lock:
            reset, self._reset = self._reset, False
            codes = self._keys
        start = self.start_clip
        if reset:
            self._shown, self._dreamed = 0, 0
            self._starts += 1
        seconds: dict[str, float] = {}
        if self._shown < len(start.frames):
            i = self._shown
            if i == 0:
                t = time.perf_counter()
                self.live.start(start.latents, start.actions)
                seconds["model"] = time.perf_counter() - t
            self._shown += 1
            act = ""
            if start.actions is not None and self.actions.kind == "discrete":
                act = self.actions.label(int(start.actions[i]))
            image, real, number = start.frames[i], True, i + 1
        else:
            self.settle()
            t0 = time.perf_counter()
            a = self.actions.choose(codes)
            latent = self.live.next(self.actions.tensor(a))
            t1 = time.perf_counter()
            decoded = to_uint8(self.world.decode(latent[None]))[0]
            image = crop_box(decoded, start.box) if start.box[2] else decoded
            t2 = time.perf_counter()
            # the model's share includes committing the previous frame (done after it was shown)
            seconds = {"model": t1 - t0 + self._commit_s, "decode": t2 - t1}
            took = t2 - t0 + self._commit_s
            self._busy = took if self._busy == 0 else 0.8 * self._busy + 0.2 * took
            self._dreamed += 1
            act, real, number = self.actions.label(a), False, self._dreamed
        self._index += 1
        frame = Frame(self._index, image, real, number, act, start=self._starts, seconds=seconds)
        with self._lock:
            rec = self._recorder
        if rec is not None:
            rec.add(frame)
        return frame

    def settle(self) -> None:
        """Commit the frame just made to the model's context (the worker does it once the frame is out)."""
        t = time.perf_counter()
        if self.live.settle():
            self._commit_s = time.perf_counter() - t

    def publish(self, frame: Frame) -> None:
        self.latest.put(frame)
        if self.notify is not None:
            self.notify()

    # ------------------------------------------------------------------ worker
    def start(self) -> None:
        """Start the worker thread (once)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="ahri-play-worker", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        period = 1.0 / self.fps if self.fps > 0 else 0.0
        due = time.perf_counter()
        try:
            while not self._stop.is_set():
                with self._lock:
                    idle = self._paused and not self._reset
                if idle:
                    self._wake.wait(0.25)
                    self._wake.clear()
                    due = time.perf_counter()
                    continue
                frame = self.step()
                self.publish(frame)
                self.settle()
                due += period
                now = time.perf_counter()
                if due > now:
                    self._wake.wait(due - now)
                    self._wake.clear()
                elif now - due > period:
                    due = now  # more than a frame behind: a new schedule from now, no burst to catch up
        except AhriError as e:
            self.error = str(e)
            self._event("error", {"message": str(e)})
        except Exception as e:  # noqa: BLE001 - the page shows it; the server goes on
            self.error = f"{type(e).__name__}: {e}"
            self._event("error", {"message": self.error})

    def close(self) -> list[Path]:
        """Stop the worker and finish a recording in progress; returns the files this session recorded."""
        with self._closing:  # a second caller waits until the first has finished the recording
            self._stop.set()
            self._wake.set()
            if self._thread is not None and self._thread is not threading.current_thread():
                self._thread.join()
            self.record(False)
            return list(self.recordings)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()


# ---------------------------------------------------------------------------------------------- server

STATIC = {  # the only files served: name -> (file in play/static, content type)
    "/": ("index.html", "text/html; charset=utf-8"),
    "/play.js": ("play.js", "text/javascript; charset=utf-8"),
    "/play.css": ("play.css", "text/css; charset=utf-8"),
}
_HEADERS = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
}
MAX_IN_FLIGHT = 2  # frames sent and not yet drawn: one on the wire while the page draws the other


def play_threads() -> int:
    """Torch threads for play: one core fewer than :func:`~ahri_core.runtime.default_threads` gives, for
    the server and the page. At batch 1 a second thread barely speeds the model up (the cpu preset: 10.0 vs
    10.6 ms a frame), while it takes the core the server and the browser run on: on 2 idle cores play
    reached 25 frames/s end to end with two threads and 55 with one (docs/benchmarks.md, "Play")."""
    from ..runtime import default_threads

    return max(1, default_threads() - 1)


def is_local_host(host: str) -> bool:
    """Whether ``host`` is a loopback name or address (only this machine can reach it)."""
    if host.lower() in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def require_server_library() -> None:
    """The web server library is the ``play`` extra: a clear error when it is not installed."""
    try:
        import aiohttp  # noqa: F401
    except ImportError:
        raise ConfigError("ahri play needs its web server: pip install 'ahri[play]' (aiohttp)") from None


def _static_text(name: str) -> bytes:
    from importlib import resources

    return (resources.files("ahri_core.play") / "static" / name).read_bytes()


def frame_message(frame: Frame, stats: dict[str, Any]) -> bytes:
    """A frame as one binary WebSocket message: uint32 LE header length, JSON header, raw RGB bytes."""
    h, w = frame.image.shape[:2]
    head = {
        "frame": frame.index, "start": frame.start, "real": frame.real, "step": frame.step, "action": frame.action, "width": w,
        "height": h, "ms": {k: round(1e3 * v, 2) for k, v in frame.seconds.items()}, **stats,
    }
    hb = json.dumps(head, separators=(",", ":")).encode()
    return len(hb).to_bytes(4, "little") + hb + np.ascontiguousarray(frame.image, np.uint8).tobytes()


def parse_frame_message(data: bytes) -> tuple[dict[str, Any], np.ndarray]:
    """The inverse of :func:`frame_message` (clients and tests)."""
    n = int.from_bytes(data[:4], "little")
    head = json.loads(data[4 : 4 + n])
    img = np.frombuffer(data[4 + n :], np.uint8).reshape(head["height"], head["width"], 3)
    return head, img


class PlayServer:
    """The page and one :class:`PlaySession` per connected page, served from a thread of its own.

    ``start()`` listens on ``host:port`` (port 0: any free port) and returns the URL; ``close()`` ends every
    session (recordings are finished) and stops the server. Sessions share the model; each has its own KV
    cache, worker and noise. ``on_event(kind, data)`` hears "opened"/"closed" ({session}), "recorded" and
    "error" ({session, ...}); it is called from the server's threads and must not block.
    """

    def __init__(
        self,
        world: WorldModel,
        start: Start,
        *,
        steps: int = 4,
        tau_ctx: float = 0.1,
        precision: str = "fp32",
        seed: int = 0,
        host: str = "127.0.0.1",
        port: int = 7860,
        fps: float | None = None,
        record: bool = False,
        record_dir: str | os.PathLike | None = None,
        max_sessions: int = 4,
        on_event: EventHandler | None = None,
    ) -> None:
        if not 0 <= int(port) <= 65535:
            raise ConfigError(f"--port {port}: must be in 0..65535 (0: any free port)")
        world.sampler(steps, tau_ctx, precision=precision)  # refuse impossible settings before listening
        self.world, self.start_clip = world, start
        self.options = dict(steps=steps, tau_ctx=tau_ctx, precision=precision, seed=seed, fps=fps,
                            record_dir=record_dir)
        self.record_at_start = bool(record)
        self.host, self.port = host, int(port)
        self.max_sessions = int(max_sessions)
        self.on_event = on_event
        self.sessions: dict[int, PlaySession] = {}
        self.recordings: list[Path] = []
        self._count = 0
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._ready = threading.Event()
        self._done = threading.Event()  # set when the server's thread has finished
        self._failed: BaseException | None = None
        self._sockets: set[Any] = set()
        # The blocking work the pages ask for (open, record, close a session) runs here; close() waits for it,
        # so no session is still finishing when the process exits.
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="ahri-play-task")
        self._assets = {route: (_static_text(name), ctype) for route, (name, ctype) in STATIC.items()}

    @property
    def url(self) -> str:
        """Where a browser on this machine opens the page (an every-address host is reached at loopback)."""
        host = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(self.host, self.host)
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port}/"

    # ------------------------------------------------------------------ lifecycle
    def start(self, timeout: float = 30.0) -> str:
        require_server_library()
        self._thread = threading.Thread(target=self._serve, name="ahri-play-server", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise ConfigError(f"the play server did not start listening on {self.host}:{self.port} within {timeout:g} s")
        if self._failed is not None:
            self._thread.join()
            raise self._failed
        return self.url

    def close(self) -> list[Path]:
        """Stop: every page is disconnected, every session closed; returns all recordings made."""
        # The server's state is an Event, never Thread.is_alive(): on Python 3.11 a join() cut short by Ctrl-C
        # can leave a running thread marked as stopped.
        if self._loop is not None and self._stopping is not None and not self._done.is_set():
            self._loop.call_soon_threadsafe(self._stopping.set)
            self._done.wait(30)
        self._pool.shutdown(wait=True)  # sessions the pages were still opening or closing finish first
        for sid in list(self.sessions):
            self._end(sid)
        return list(self.recordings)

    def wait(self, poll: float = 0.2) -> None:
        """Block until the server stops (Ctrl-C raises KeyboardInterrupt here).

        Sleeps between looks at the flag rather than waiting on the event: a Ctrl-C that lands inside
        ``Event.wait`` can leave the event's internal lock taken by this thread, and ``close`` (which waits on
        the same event) and the server thread (which sets it) would then block on that lock for ever."""
        while self._thread is not None and not self._done.is_set():
            time.sleep(poll)

    def _serve(self) -> None:
        from aiohttp import web

        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        runner = web.AppRunner(self._app(), handle_signals=False, access_log=None, shutdown_timeout=5.0)
        try:
            self._stopping = asyncio.Event()
            loop.run_until_complete(runner.setup())
            site = web.TCPSite(runner, self.host, self.port)
            try:
                loop.run_until_complete(site.start())
            except OSError as e:
                why = e.strerror or str(e)
                self._failed = ConfigError(
                    f"cannot listen on {self.host}:{self.port} ({why}); choose another --port or --host"
                )
                return
            addrs = runner.addresses
            if addrs:
                self.port = int(addrs[0][1])
            self._ready.set()
            loop.run_until_complete(self._stopping.wait())
        finally:
            with contextlib.suppress(Exception):
                loop.run_until_complete(runner.cleanup())
            # Pages still connected: cancel their handlers and let each one close its session here, while the
            # loop runs (a handler left pending would run its cleanup later, from the garbage collector).
            pending = asyncio.all_tasks(loop)
            for task in pending:
                task.cancel()
            with contextlib.suppress(Exception):
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            self._ready.set()
            loop.close()
            self._done.set()

    # ------------------------------------------------------------------ app
    def _app(self):
        from aiohttp import web

        app = web.Application(client_max_size=64 * 1024)
        for route in STATIC:
            app.router.add_get(route, self._asset, allow_head=False)
        app.router.add_get("/ws", self._socket)
        app.on_shutdown.append(self._disconnect_all)
        return app

    async def _asset(self, request):
        from aiohttp import web

        body, ctype = self._assets[request.path]
        return web.Response(body=body, headers={**_HEADERS, "Content-Type": ctype})

    async def _disconnect_all(self, app) -> None:
        from aiohttp import WSCloseCode

        for ws in list(self._sockets):
            with contextlib.suppress(Exception):
                await ws.close(code=WSCloseCode.GOING_AWAY, message=b"server stopped")

    def _same_origin(self, request) -> bool:
        """A page of another site may not open the socket (the browser always sends its Origin)."""
        origin = request.headers.get("Origin")
        if origin is None:
            return True  # not a browser: programs on this machine may connect
        from urllib.parse import urlsplit

        return urlsplit(origin).netloc.lower() == request.host.lower()

    def _open(self, page: EventHandler | None = None) -> tuple[int, PlaySession]:
        """A new session; its events go to ``page`` (the page's socket) and to the server's ``on_event``."""
        self._count += 1
        sid = self._count

        def relay(kind: str, data: dict[str, Any]) -> None:
            if kind == "recorded":
                self.recordings.append(Path(data["path"]))
            if page is not None:
                page(kind, data)
            if self.on_event is not None:
                self.on_event(kind, {"session": sid, **data})

        session = PlaySession(self.world, self.start_clip, on_event=relay, **self.options)
        self.sessions[sid] = session
        if self.record_at_start:
            session.record(True)
        if self.on_event is not None:
            self.on_event("opened", {"session": sid})
        return sid, session

    def _end(self, sid: int) -> None:
        session = self.sessions.get(sid)
        if session is None:
            return
        session.close()
        if self.sessions.pop(sid, None) is not None and self.on_event is not None:
            self.on_event("closed", {"session": sid})

    def hello(self, session: PlaySession) -> dict[str, Any]:
        w = self.world
        start = session.start_clip
        h, wd = start.frames.shape[1:3]
        return {
            "type": "hello", "run": w.name, "fps": session.fps, "model_fps": w.fps, "steps": session.steps,
            "width": int(wd), "height": int(h), "start": start.name, "context": len(start.frames),
            "actions": session.actions.describe(), "controls": {v: k for k, v in CONTROL_KEYS.items()},
        }

    async def _socket(self, request):
        from aiohttp import WSMsgType, web

        if not self._same_origin(request):
            return web.Response(status=403, text="another site may not open this socket")
        ws = web.WebSocketResponse(compress=False, max_msg_size=16 * 1024)
        await ws.prepare(request)
        if len(self.sessions) >= self.max_sessions:
            await ws.send_json({"type": "error", "message": f"{self.max_sessions} pages are playing already; close one"})
            await ws.close()
            return ws
        loop = asyncio.get_running_loop()
        changed = asyncio.Event()

        def to_page(kind: str, data: dict[str, Any]) -> None:
            msg = {"type": kind, **data}
            if kind == "recorded":
                msg["name"] = _shown_path(Path(data["path"]), self.world.run_dir)
            with contextlib.suppress(RuntimeError):  # the server has stopped: nobody to tell
                loop.call_soon_threadsafe(lambda: asyncio.ensure_future(_send_json(ws, msg)))

        try:
            sid, session = await loop.run_in_executor(self._pool, self._open, to_page)
        except AhriError as e:
            await ws.send_json({"type": "error", "message": str(e)})
            await ws.close()
            return ws
        self._sockets.add(ws)
        state = {"in_flight": 0}
        session.notify = lambda: loop.call_soon_threadsafe(changed.set)
        await ws.send_json(self.hello(session))
        session.start()
        sender = asyncio.ensure_future(self._send_frames(ws, session, changed, state))
        try:
            async for msg in ws:
                if msg.type != WSMsgType.TEXT:
                    if msg.type == WSMsgType.BINARY:
                        continue
                    break
                reply = await self._control(session, msg.data, state, loop)
                changed.set()
                if reply is not None:
                    await ws.send_json(reply)
        finally:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await sender
            self._sockets.discard(ws)
            await loop.run_in_executor(self._pool, self._end, sid)
        return ws

    async def _control(self, session: PlaySession, text: str, state: dict[str, int], loop) -> dict[str, Any] | None:
        try:
            msg = json.loads(text)
        except json.JSONDecodeError:
            return None
        if not isinstance(msg, dict):
            return None
        kind = msg.get("type")
        if kind == "ack":
            state["in_flight"] = max(0, state["in_flight"] - 1)
            return None
        if kind == "keys":
            codes = msg.get("codes")
            if isinstance(codes, list):
                session.set_keys([c for c in codes[:32] if isinstance(c, str) and len(c) <= 32])
            return None
        if kind == "reset":
            session.reset()
        elif kind == "pause":
            on = msg.get("on")
            session.pause(on if isinstance(on, bool) else None)
        elif kind == "record":
            on = msg.get("on")
            await loop.run_in_executor(self._pool, session.record, on if isinstance(on, bool) else None)
        else:
            return None
        return {"type": "state", "paused": session.paused, "recording": session.recording}

    async def _send_frames(self, ws, session: PlaySession, changed: asyncio.Event, state: dict[str, int]) -> None:
        last = 0
        while not ws.closed:
            changed.clear()
            frame = session.latest.get()
            if frame is not None and frame.index != last and state["in_flight"] < MAX_IN_FLIGHT:
                await ws.send_bytes(frame_message(frame, session.stats()))
                last = frame.index
                state["in_flight"] += 1
                continue
            await changed.wait()


async def _send_json(ws, msg: dict[str, Any]) -> None:
    with contextlib.suppress(Exception):
        if not ws.closed:
            await ws.send_json(msg)


def _shown_path(path: Path, run_dir: Path) -> str:
    """A recording's path as the page shows it: relative to the run's folder's parent when inside it."""
    try:
        return str(path.relative_to(run_dir.parent))
    except ValueError:
        return path.name



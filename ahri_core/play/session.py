"""One page's dream in ``ahri play`` (:class:`PlaySession`): a worker thread that makes frames at the
model's frame rate (or as fast as it can when the model is slower), a latest-frame slot (frames are never
queued), pause, reset, and recording to ``<run>/play/<time>.mp4``.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..errors import AhriError, DataError
from ..inference.world import WorldModel
from ..visual import crop_box, to_uint8
from .actions import ActionSpace
from .dream import LiveDream
from .frames import Frame, LatestFrame
from .recording import Recorder, RecordLimits, recording_path
from .start import Start

__all__ = [
    "EventHandler",
    "PlaySession",
]


EventHandler = Callable[[str, dict[str, Any]], None]


class PlaySession:
    """One page's dream.

    Control (any thread): :meth:`set_keys`, :meth:`pause`, :meth:`reset`, :meth:`record`. Frames: the worker
    started by :meth:`start` calls :meth:`step` at ``fps`` (the model's rate by default; 0 = as fast as it
    can) and puts each frame into :attr:`latest`; when a frame is late the next one starts at once, and more
    than a period late the schedule starts afresh (no burst to catch up, no queue). Without the worker,
    :meth:`step` makes one frame on the caller's thread.

    A recording stops by itself at the caps of ``record_minutes`` (of video), ``record_bytes`` (its file) and
    when the disk would keep less than ``record_free_bytes`` free; the page is told why ("error").

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
        record_minutes: float = RecordLimits.minutes,
        record_bytes: int = RecordLimits.bytes,
        record_free_bytes: int = RecordLimits.keep_free,
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
        self.limits = RecordLimits(float(record_minutes), int(record_bytes), int(record_free_bytes))
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
        refused = None
        with self._lock:
            rec = self._recorder
            want = (rec is None) if on is None else bool(on)
            if want and (rec is not None or self._stop.is_set()):
                return None
            if want:
                refused = self.limits.refuse(self.record_dir)
                if refused is None:
                    title = f"ahri play {self.world.name} {self.steps} steps"
                    fps = self.fps if self.fps > 0 else self.world.fps
                    self._recorder = Recorder(recording_path(self.record_dir), fps, title, self.record_scale)
            elif rec is None:
                return None
            else:
                self._recorder = None
        if want:
            if refused is not None:
                self._event("error", {"message": refused})
            return None
        return self._finish(rec)

    def _cap(self, rec: Recorder, why: str) -> None:
        """Stop ``rec`` at one of its caps and say why (unless the page stopped it meanwhile)."""
        with self._lock:
            if self._recorder is not rec:
                return
            self._recorder = None
        self._event("error", {"message": why})
        self._finish(rec)

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
            why = self.limits.stop(rec)
            if why is not None:
                self._cap(rec, why)
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

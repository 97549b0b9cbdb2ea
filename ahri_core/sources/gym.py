"""Record clips from a Gymnasium environment (the ``gym`` extra: gymnasium + ale-py, Atari ROMs included).

A sticky-random policy drives the environment: each step keeps the previous action with probability
``STICKY_PROB``, else draws a new one uniformly. Frames are the environment's RGB render; actions follow
the project convention (``actions[t]`` produced frame t, ``actions[0]`` = -1 for discrete actions, a NaN
row for continuous ones). A clip ends early when its episode ends, so no clip spans a reset.

For Atari (``ALE/...``) the environment's own sticky actions are switched off
(``repeat_action_probability=0``) so that the recorded action is the one the emulator executed, and the
frame rate is the emulator's 60 Hz divided by the frame skip (15 fps for the v5 defaults).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..config.settings import FetchSettings
from ..errors import FetchError, VideoError
from ..progress import Progress, ensure
from ..video import resize_frames
from .store import FetchResult, content_hash, existing, rebuild_manifest, safe_id, store_frames

STICKY_PROB = 0.8
ATARI_HZ = 60.0


def _import_gym():
    try:
        import gymnasium
    except ImportError:
        raise FetchError(
            "--source gym needs the gym extra: pip install 'ahri[gym]' (gymnasium, ale-py)"
        ) from None
    try:
        import ale_py

        gymnasium.register_envs(ale_py)
    except ImportError:
        pass
    return gymnasium


def make_env(env_id: str, seed: int):
    """Create ``env_id`` rendering RGB arrays; returns (env, fps, action_meanings or None)."""
    gym = _import_gym()
    kwargs: dict = {"render_mode": "rgb_array"}
    if env_id.startswith("ALE/"):
        kwargs["repeat_action_probability"] = 0.0
    try:
        env = gym.make(env_id, **kwargs)
    except Exception as e:  # gymnasium raises many kinds (unknown id, missing ROM or dependency)
        raise FetchError(
            f"--env {env_id}: cannot create the environment ({str(e).splitlines()[0]})"
        ) from None
    fps = float(env.metadata.get("render_fps") or 30)
    if env_id.startswith("ALE/"):
        skip = (env.spec.kwargs if env.spec else {}).get("frameskip", 4)
        skip = float(np.mean(skip)) if isinstance(skip, (tuple, list)) else float(skip)
        fps = ATARI_HZ / max(skip, 1.0)
    meanings = None
    get = getattr(env.unwrapped, "get_action_meanings", None)
    if callable(get):
        meanings = [str(m) for m in get()]
    elif hasattr(env.action_space, "n"):
        meanings = [str(i) for i in range(int(env.action_space.n))]
    return env, fps, meanings


class StickyRandomPolicy:
    """Keeps the previous action with probability ``sticky``; otherwise samples a fresh one."""

    def __init__(self, space, rng: np.random.Generator, sticky: float = STICKY_PROB) -> None:
        self.space, self.rng, self.sticky = space, rng, sticky
        self.prev = None

    def __call__(self):
        if self.prev is None or self.rng.random() >= self.sticky:
            if hasattr(self.space, "n"):
                self.prev = int(self.space.start + self.rng.integers(self.space.n))
            else:
                lo = np.where(np.isfinite(self.space.low), self.space.low, -1.0)
                hi = np.where(np.isfinite(self.space.high), self.space.high, 1.0)
                self.prev = self.rng.uniform(lo, hi).astype(np.float32)
        return self.prev


def record_episode(env, policy, frames: int, seed: int, size: int | None = None):
    """One clip of up to ``frames`` frames: (uint8 (T, H, W, 3), actions) starting from ``reset(seed)``."""
    env.reset(seed=seed)
    env.action_space.seed(seed)
    discrete = hasattr(env.action_space, "n")
    shots = [np.asarray(env.render())]
    acts: list = [-1 if discrete else None]
    for _ in range(frames - 1):
        a = policy()
        _, _, terminated, truncated, _ = env.step(a)
        shots.append(np.asarray(env.render()))
        acts.append(a)
        if terminated or truncated:
            break
    video = np.stack(shots).astype(np.uint8)
    if video.ndim != 4 or video.shape[-1] != 3:
        raise FetchError(f"environment renders {video.shape[1:]} frames, not RGB images")
    if size is not None:
        video = resize_frames(video, size, fit="crop")
    else:  # yuv420p needs even sides
        h, w = video.shape[1:3]
        video = video[:, : h - h % 2, : w - w % 2]
    if discrete:
        actions = np.asarray(acts, dtype=np.int64)
    else:
        dim = int(np.prod(env.action_space.shape))
        actions = np.full((len(acts), dim), np.nan, np.float32)
        for t, a in enumerate(acts[1:], start=1):
            actions[t] = np.asarray(a, np.float32).reshape(-1)
    return np.ascontiguousarray(video), actions


def record_gym(
    dest: str | os.PathLike,
    env_id: str | None = None,
    count: int | None = None,
    frames: int | None = None,
    seed: int | None = None,
    size: int | None = None,
    settings: FetchSettings | None = None,
    progress: Progress | None = None,
) -> FetchResult:
    """Record ``count`` clips of ``frames`` frames from ``env_id`` into ``dest`` (ids ``<env>-s<seed>-<i>``).

    Arguments left as None come from ``settings``. Clip i resets the environment with seed
    ``seed * 1000003 + i``; a clip already stored with the same content is skipped.
    """
    s = settings or FetchSettings()
    env_id = env_id or s.env
    count = count if count is not None else s.count
    frames = frames if frames is not None else s.frames
    seed = seed if seed is not None else s.seed
    size = size if size is not None else s.size
    progress = ensure(progress)
    dest = Path(dest)
    env, fps, meanings = make_env(env_id, seed)
    result = FetchResult(source="gym", dest=dest)
    progress.start("record", total=count)
    try:
        for i in range(count):
            clip_seed = seed * 1_000_003 + i
            vid = safe_id(f"{env_id.replace('/', '-')}-s{seed}-{i:04d}")
            policy = StickyRandomPolicy(env.action_space, np.random.default_rng(clip_seed))
            try:
                video, actions = record_episode(env, policy, frames, clip_seed, size)
            except FetchError:
                raise
            except Exception as e:  # an environment failing mid-episode
                result.failed.append(
                    (vid, f"environment error ({str(e).splitlines()[0] if str(e) else type(e).__name__})")
                )
                progress.advance("record", 1)
                continue
            digest = content_hash(video, actions)
            prev = existing(dest, vid)
            if prev is not None and prev.get("extra", {}).get("content_sha256") == digest:
                result.skipped.append(vid)
            else:
                meta = {
                    "source": "gym",
                    "source_url": f"gymnasium:{env_id}",
                    "origin": f"gym:{env_id}:{clip_seed}",
                    "title": f"{env_id} seed {clip_seed}",
                    "extra": {
                        "env": env_id,
                        "seed": clip_seed,
                        "policy": f"sticky-random p={STICKY_PROB}",
                        "content_sha256": digest,
                    },
                }
                try:
                    rec = store_frames(
                        dest, vid, video, fps, meta, actions=actions, action_meanings=meanings, crf=15
                    )
                    result.stored.append(rec)
                except VideoError as e:
                    result.failed.append((vid, str(e)))
            progress.advance("record", 1, frames=len(video))
    finally:
        env.close()
        progress.finish("record", stored=len(result.stored))
    if result.stored:
        rebuild_manifest(dest)
    return result


__all__ = ["STICKY_PROB", "StickyRandomPolicy", "make_env", "record_episode", "record_gym"]

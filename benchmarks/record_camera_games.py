"""Record clips, with their actions, of games whose camera moves with the player, into an ahri video store.

    python benchmarks/record_camera_games.py --game mario --out DIR --clips 16 --frames 400 --seed 0

Games (none of them is a dependency of ahri; each needs its own package, see docs/own-game.md):

- ``mario``: Super Mario Bros (``gym-super-mario-bros``, which needs ``numpy<2``): a side-scroller whose
  camera follows Mario to the right. The 7 SIMPLE_MOVEMENT actions; the NES runs at 60 Hz and each action
  is held for 4 frames, so clips are 15 fps at the console's 256x240. A clip plays one stage (drawn per
  clip from ``--levels``, all 32 by default) and ends when Mario dies or reaches the flag.
- ``doom``: ViZDoom playing Freedoom 1 (``vizdoom``): first person, so every step or turn moves the whole
  view; the status bar and the held weapon stay in place. 12 actions (forward, turns, strafes, back, attack,
  use, and combinations); Doom runs at 35 Hz and each action is held for 2 tics: 17.5 fps at 160x120. A
  clip plays one map (``--levels``, E1M1-E1M9) and ends when the player dies.
- ``crafter``: Crafter (``crafter``): a top-down world seen from above, the view centred on the player, who
  often stands still (noop, gathering, crafting). 17 actions; one step per frame at 5 fps (the rate of
  Crafter's own viewer), 144x144 (16 pixels a tile). A clip ends when the player dies.

The policy is ahri's sticky-random one (``ahri fetch --source gym``): keep the previous action with
probability ``STICKY_PROB``, else draw a new one, here from a per-game distribution biased so that the
player mostly moves (Mario: right and right+jump; Doom: forward and turning) and the camera really moves.
Actions follow the project convention: ``actions[t]`` produced frame t and ``actions[0] = -1``.

Each clip is stored like ``ahri fetch`` stores one: ``<id>.mp4``, ``<id>.actions.npy`` and a JSON sidecar
with the frame rate and the action meanings, plus ``manifest.json``. The default ``--out`` is
``<workspace>/videos/<game>``, where ``ahri tokenize`` finds it; any other folder can be imported with
``ahri fetch --source local --path DIR``. Clip i of seed K uses seed ``K * 1000003 + i`` for the level
draw, the policy and the game, so a run is deterministic and a second run stores nothing new. Clips shorter
than ``--min-frames`` (an early death) are dropped and another is recorded in their place.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from ahri_core.errors import VideoError
from ahri_core.sources.gym import STICKY_PROB
from ahri_core.sources.store import content_hash, existing, rebuild_manifest, safe_id, store_frames
from ahri_core.video import resize_frames
from ahri_core.workspace import Workspace


class MissingGame(RuntimeError):
    """A game's package is not installed."""


def _need(module: str, pip: str):
    try:
        return __import__(module)
    except ImportError as e:
        raise MissingGame(f"{module} is not installed ({e}); install it with: pip install {pip}") from None


# ----------------------------------------------------------------------------------------------
# Games: start(level, seed) -> first frame; step(action) -> (frame or None, done); moved() after a step
# ----------------------------------------------------------------------------------------------


class Mario:
    name = "mario"
    hz, skip = 60.0, 4
    levels = [f"{w}-{s}" for w in range(1, 9) for s in range(1, 5)]
    # SIMPLE_MOVEMENT: NOOP, right, right+A, right+B, right+A+B, A, left
    weights = [0.04, 0.30, 0.25, 0.15, 0.16, 0.05, 0.05]

    def __init__(self) -> None:
        pip = "'gym-super-mario-bros==7.4.0' 'numpy<2'"
        with contextlib.redirect_stderr(io.StringIO()):  # old gym prints a notice on import
            _need("nes_py", pip)
            smb = _need("gym_super_mario_bros", pip)
        warnings.filterwarnings("ignore", module=r"gym(\.|$)")  # and warns on every step: not about us
        from gym_super_mario_bros.actions import SIMPLE_MOVEMENT
        from nes_py.wrappers import JoypadSpace

        self._make, self._joypad, self._buttons = smb.make, JoypadSpace, SIMPLE_MOVEMENT
        self.meanings = ["+".join(b) for b in SIMPLE_MOVEMENT]
        self.env, self._x, self._last = None, None, None

    def url(self, level: str) -> str:
        return f"gym-super-mario-bros:SuperMarioBros-{level}-v0"

    def start(self, level: str, seed: int) -> np.ndarray:
        self.close()
        env = self._make(f"SuperMarioBros-{level}-v0", apply_api_compatibility=True, render_mode="rgb_array")
        self.env = self._joypad(env, self._buttons)
        _, info = self.env.reset()  # the emulator is deterministic: the seed only drives the policy
        self._x = self._last = info.get("x_pos")
        return np.array(self.env.render())  # a copy: the emulator reuses its screen buffer

    def step(self, action: int) -> tuple[np.ndarray | None, bool]:
        done = False
        for _ in range(self.skip):
            _, _, terminated, truncated, info = self.env.step(action)
            self._x = info.get("x_pos")
            if terminated or truncated:
                done = True
                break
        return np.array(self.env.render()), done

    def moved(self) -> bool:
        last, self._last = self._last, self._x
        return last is not None and last != self._x

    def close(self) -> None:
        if self.env is not None:
            self.env.close()
            self.env = None


class Doom:
    name = "doom"
    hz, skip = 35.0, 2
    levels = [f"E1M{i}" for i in range(1, 10)]
    combos = [
        ("NOOP", []),
        ("FORWARD", ["MOVE_FORWARD"]),
        ("FORWARD+TURN_LEFT", ["MOVE_FORWARD", "TURN_LEFT"]),
        ("FORWARD+TURN_RIGHT", ["MOVE_FORWARD", "TURN_RIGHT"]),
        ("TURN_LEFT", ["TURN_LEFT"]),
        ("TURN_RIGHT", ["TURN_RIGHT"]),
        ("STRAFE_LEFT", ["MOVE_LEFT"]),
        ("STRAFE_RIGHT", ["MOVE_RIGHT"]),
        ("BACKWARD", ["MOVE_BACKWARD"]),
        ("ATTACK", ["ATTACK"]),
        ("FORWARD+ATTACK", ["MOVE_FORWARD", "ATTACK"]),
        ("USE", ["USE"]),
    ]
    weights = [0.03, 0.25, 0.12, 0.12, 0.10, 0.10, 0.04, 0.04, 0.04, 0.05, 0.06, 0.05]
    buttons = ["MOVE_FORWARD", "MOVE_BACKWARD", "TURN_LEFT", "TURN_RIGHT", "MOVE_LEFT", "MOVE_RIGHT", "ATTACK", "USE"]

    def __init__(self) -> None:
        vzd = _need("vizdoom", "vizdoom")
        self.vzd = vzd
        self.meanings = [m for m, _ in self.combos]
        self.vectors = [[float(b in held) for b in self.buttons] for _, held in self.combos]
        self._tmp = tempfile.TemporaryDirectory(prefix="ahri-doom-")
        g = vzd.DoomGame()
        g.load_config(os.path.join(vzd.scenarios_path, "freedoom1.cfg"))
        g.set_doom_config_path(os.path.join(self._tmp.name, "_vizdoom.ini"))
        g.set_window_visible(False)
        g.set_mode(vzd.Mode.PLAYER)
        g.set_screen_resolution(vzd.ScreenResolution.RES_160X120)
        g.set_screen_format(vzd.ScreenFormat.RGB24)
        g.set_render_hud(True)
        g.set_render_weapon(True)
        g.set_render_messages(False)
        g.set_render_crosshair(False)
        g.set_sound_enabled(False)
        g.set_audio_buffer_enabled(False)
        g.set_automap_buffer_enabled(False)
        g.set_available_buttons([getattr(vzd.Button, b) for b in self.buttons])
        g.set_available_game_variables(
            [vzd.GameVariable.POSITION_X, vzd.GameVariable.POSITION_Y, vzd.GameVariable.ANGLE]
        )
        self.game, self._inited, self._last = g, False, None

    def url(self, level: str) -> str:
        return f"vizdoom:freedoom1.wad:{level}"

    def _frame(self) -> np.ndarray | None:
        state = self.game.get_state()
        if state is None:
            return None
        self._pose = tuple(float(v) for v in state.game_variables)
        return np.array(state.screen_buffer)

    def start(self, level: str, seed: int) -> np.ndarray:
        self.game.set_doom_map(level)
        self.game.set_seed(seed % 2**32)
        if not self._inited:
            cwd = os.getcwd()
            os.chdir(self._tmp.name)  # the engine writes its scratch files into the working directory
            try:
                self.game.init()
            finally:
                os.chdir(cwd)
            self._inited = True
        self.game.new_episode()
        self._last = None
        frame = self._frame()
        self._last = self._pose
        return frame

    def step(self, action: int) -> tuple[np.ndarray | None, bool]:
        self.game.make_action(self.vectors[action], self.skip)
        if self.game.is_episode_finished():
            return None, True
        return self._frame(), self.game.is_player_dead()

    def moved(self) -> bool:
        last, self._last = self._last, self._pose
        return last is not None and last != self._pose

    def close(self) -> None:
        if self._inited:
            self.game.close()
            self._inited = False
        self._tmp.cleanup()


class Crafter:
    name = "crafter"
    hz, skip = 5.0, 1
    levels = ["world"]
    # noop, left, right, up, down, do, sleep, place x4, make x6
    weights = [0.30, 0.11, 0.11, 0.11, 0.11, 0.16, 0.02] + [0.01] * 4 + [0.01] * 6

    def __init__(self, size: int | None = None) -> None:
        with contextlib.redirect_stderr(io.StringIO()):  # it imports old gym, which prints a notice
            self.crafter = _need("crafter", "crafter")
        self.meanings = [str(a) for a in self.crafter.constants.actions]
        self.size = size or 144
        self.env, self._pos, self._last = None, None, None

    def url(self, level: str) -> str:
        return "crafter"

    def start(self, level: str, seed: int) -> np.ndarray:
        self.env = self.crafter.Env(size=(self.size, self.size), seed=seed % 2**31)
        self._pos = self._last = None  # known from the first step on
        return np.array(self.env.reset())

    def step(self, action: int) -> tuple[np.ndarray | None, bool]:
        obs, _, done, info = self.env.step(action)
        self._pos = tuple(int(v) for v in info["player_pos"])
        return np.array(obs), bool(done)

    def moved(self) -> bool:
        last, self._last = self._last, self._pos
        return last is not None and last != self._pos

    def close(self) -> None:
        self.env = None


GAMES = {"mario": Mario, "doom": Doom, "crafter": Crafter}


# ----------------------------------------------------------------------------------------------
# Policy and recording
# ----------------------------------------------------------------------------------------------


class BiasedStickyPolicy:
    """Keeps the previous action with probability ``sticky``; otherwise draws one from ``weights``."""

    def __init__(self, weights, rng: np.random.Generator, sticky: float = STICKY_PROB) -> None:
        w = np.asarray(weights, np.float64)
        self.p, self.rng, self.sticky, self.prev = w / w.sum(), rng, sticky, None

    def __call__(self) -> int:
        if self.prev is None or self.rng.random() >= self.sticky:
            self.prev = int(self.rng.choice(len(self.p), p=self.p))
        return self.prev


def record_clip(game, level: str, seed: int, frames: int, size: int | None, sticky: float = STICKY_PROB):
    """One clip of up to ``frames`` frames: (uint8 (T, H, W, 3), int64 actions (T,), share of moving steps)."""
    policy = BiasedStickyPolicy(game.weights, np.random.default_rng(seed), sticky)
    shots, acts, moving = [game.start(level, seed)], [-1], 0
    while len(shots) < frames:
        a = policy()
        frame, done = game.step(a)
        if frame is None:  # the episode ended without a frame to show
            break
        shots.append(frame)
        acts.append(a)
        moving += game.moved()
        if done:
            break
    video = np.stack(shots).astype(np.uint8)
    if size is not None and video.shape[1:3] != (size, size):
        video = resize_frames(video, size, fit="crop")
    else:  # yuv420p needs even sides
        h, w = video.shape[1:3]
        video = video[:, : h - h % 2, : w - w % 2]
    share = moving / max(len(shots) - 1, 1)
    return np.ascontiguousarray(video), np.asarray(acts, np.int64), share


def record(
    game_name: str,
    dest: Path,
    count: int,
    frames: int,
    seed: int,
    size: int | None = None,
    levels: list[str] | None = None,
    min_frames: int = 32,
    minutes: float | None = None,
    sticky: float = STICKY_PROB,
) -> dict:
    """Store ``count`` clips (or clips until ``minutes`` of footage) of ``game_name`` into ``dest``."""
    if not 0 <= sticky < 1:
        raise SystemExit(f"error: --sticky {sticky}: must be in [0, 1)")
    cls = GAMES[game_name]
    game = cls(size) if cls is Crafter else cls()
    levels = levels or list(cls.levels)
    bad = [lv for lv in levels if lv not in cls.levels]
    if bad:
        raise SystemExit(f"error: --levels {','.join(bad)}: not a {game_name} level (choose from {', '.join(cls.levels)})")
    fps = cls.hz / cls.skip
    want = None if minutes is None else int(round(minutes * 60 * fps))
    dest.mkdir(parents=True, exist_ok=True)
    stored = skipped = dropped = total = 0
    i = 0
    t0 = time.perf_counter()
    try:
        while (total < want) if want is not None else (stored + skipped < count):
            if i >= 20 * max(count, 1) + 1000:
                raise SystemExit(f"error: {dropped} of {i} clips were shorter than --min-frames {min_frames}")
            clip_seed = seed * 1_000_003 + i
            level = levels[int(np.random.default_rng(clip_seed).integers(len(levels)))]
            vid = safe_id(f"{game_name}-s{seed}-{i:04d}")
            i += 1
            video, actions, share = record_clip(game, level, clip_seed, frames, size, sticky)
            if len(video) < min_frames:
                dropped += 1
                print(f"  {vid} {level}: {len(video)} frames, dropped (< --min-frames {min_frames})", flush=True)
                continue
            total += len(video)
            digest = content_hash(video, actions)
            prev = existing(dest, vid)
            if prev is not None and prev.get("extra", {}).get("content_sha256") == digest:
                skipped += 1
                print(f"  {vid} {level}: {len(video)} frames, already stored", flush=True)
                continue
            meta = {
                "source": dest.name,
                "source_url": game.url(level),
                "origin": f"{game_name}:{level}:{clip_seed}",
                "title": f"{game_name} {level} seed {clip_seed}" if len(cls.levels) > 1 else f"{game_name} seed {clip_seed}",
                "extra": {
                    "game": game_name,
                    "level": level,
                    "seed": clip_seed,
                    "policy": f"biased sticky-random p={sticky}",
                    "frame_skip": cls.skip,
                    "moving_share": round(share, 4),
                    "content_sha256": digest,
                },
            }
            try:
                store_frames(dest, vid, video, fps, meta, actions=actions, action_meanings=game.meanings, crf=15)
            except VideoError as e:
                raise SystemExit(f"error: {vid}: {e}") from None
            stored += 1
            h, w = video.shape[1:3]
            print(f"  {vid} {level}: {len(video)} frames {w}x{h} @ {fps:g} fps, player moving in "
                  f"{100 * share:.0f}% of steps", flush=True)
    finally:
        game.close()
    if stored:
        rebuild_manifest(dest)
    took = time.perf_counter() - t0
    print(f"{game_name}: {stored} stored, {skipped} already stored, {dropped} dropped; {total} frames "
          f"= {total / fps / 60:.1f} min at {fps:g} fps in {dest} ({took:.0f} s)")
    return {"stored": stored, "skipped": skipped, "dropped": dropped, "frames": total, "fps": fps}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--game", required=True, choices=sorted(GAMES))
    ap.add_argument("--out", type=Path, help="store directory (default: <workspace>/videos/<game>)")
    ap.add_argument("--workspace", type=Path, help="for the default --out (default: $AHRI_HOME or ahri's)")
    ap.add_argument("--clips", dest="count", metavar="N", type=int, default=16, help="clips to store (default 16)")
    ap.add_argument("--minutes", type=float, help="instead of --clips: record until this much footage")
    ap.add_argument("--frames", type=int, default=400, help="frames per clip at most (default 400)")
    ap.add_argument("--min-frames", type=int, default=32, help="drop shorter clips (early deaths; default 32)")
    ap.add_argument("--seed", type=int, default=0, help="clip i uses seed K * 1000003 + i (default 0)")
    ap.add_argument("--size", type=int, help="square frame size (even; scaled and centre-cropped); default native")
    ap.add_argument("--levels", help="comma-separated levels to draw from: mario 1-1..8-4, doom E1M1..E1M9")
    ap.add_argument("--sticky", type=float, default=STICKY_PROB,
                    help=f"chance of keeping the previous action each step (default {STICKY_PROB}); lower: the "
                    "action changes more often, so the context's motion tells less of it")
    a = ap.parse_args(argv)
    if a.count < 1 or a.frames < 2 or (a.minutes is not None and a.minutes <= 0):
        ap.error("--clips must be >= 1, --frames >= 2 and --minutes > 0")
    if a.size is not None and (a.size < 16 or a.size % 2):
        ap.error("--size must be even and at least 16")
    dest = a.out if a.out is not None else Workspace.resolve(a.workspace).source_dir(a.game)
    levels = [s.strip() for s in a.levels.split(",") if s.strip()] if a.levels else None
    try:
        record(a.game, dest.expanduser(), a.count, a.frames, a.seed, a.size, levels, a.min_frames, a.minutes,
               a.sticky)
    except MissingGame as e:
        print(f"error: --game {a.game}: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

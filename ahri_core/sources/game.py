"""The built-in game: a small top-down lane arena rendered with numpy, for offline data.

A world of 192 x 192 units holds three lanes between two bases (blue bottom-left, red top-right),
a river, jungle trees and cliff walls. Minion waves of both teams spawn every few seconds, walk
their lane, fight each other, and are shot by towers. The player (blue) is moved by the actions;
the camera follows the player, so the ground scrolls. A HUD strip at the bottom shows a minimap,
the player's health and a match clock.

Everything is simulated in world units (independent of the frame size) and then rendered: the
frame is ``VIEW_UNITS`` world units wide at any size, so ``size`` only changes the resolution.
Deterministic per seed: ``render_clip(seed, frames, size)`` returns the same arrays on every call.

Action convention (project-wide): ``actions[t]`` is the action that produced frame t, applied to
the state of frame t-1; ``actions[0] = -1`` since frame 0 is the initial state.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from ahri_core.errors import ConfigError

GAME_FPS = 20
ACTION_MEANINGS: list[str] = [
    "idle",
    "up",
    "up_right",
    "right",
    "down_right",
    "down",
    "down_left",
    "left",
    "up_left",
    "attack",
]
NUM_ACTIONS = len(ACTION_MEANINGS)
ATTACK = 9
STICKY_PROB = 0.875  # probability of keeping the previous action each frame
# When the policy draws a new action: mostly moves (as a player does), some attacks, a little idling.
ACTION_WEIGHTS = np.array([0.05] + [0.85 / 8] * 8 + [0.10])

WORLD_UNITS = 192.0  # the square world, in world units
VIEW_UNITS = 64.0  # world units across the frame width; at size 64 one unit is one pixel
HUD_UNITS = 12.0  # height of the HUD strip at the bottom of the frame
PAD_UNITS = 32.0  # cliffs drawn around the world, so the camera can stay centred on the player

# Player motion per frame, world units (x right, y down). Straight 4, diagonal (3, 3): nearly the same
# speed and whole pixels at the default size, so the scroll is exact at 64 x 64.
_MOVES = np.array(
    [[0, 0], [0, -4], [3, -3], [4, 0], [3, 3], [0, 4], [-3, 3], [-4, 0], [-3, -3], [0, 0]], dtype=np.float64
)
_PLAYER_MARGIN = 10.0  # the player is clamped to [margin, WORLD - margin]
_ATTACK_FRAMES = 5  # length of one swing (the ring effect), frames
_ATTACK_RADIUS = 11.0
_PLAYER_HP = 100.0

_MINION_SPEED = 0.8
_MINION_HP = 6.0
_WAVE_PERIOD = 150  # frames between waves
_MELEE, _CASTER = 0, 1
_ENGAGE = (5.0, 11.0)  # stop-and-fight distance by minion kind
_MINION_COOLDOWN = (12, 16)
_TOWER_RANGE = 22.0
_TOWER_COOLDOWN = 18
_BLUE, _RED = 0, 1
_BASES = np.array([[22.0, 170.0], [170.0, 22.0]])  # blue, red
_BASE_RADIUS = 16.0

# Effects: sparks (hits) and puffs (deaths); per-kind lifetimes in frames.
_SPARK, _PUFF = 0, 1
_EFFECT_FRAMES = (2, 4)
_MAX_EFFECT_AGE = 4


# ----------------------------------------------------------------------------------------------
# Public types


@dataclass
class GameClip:
    frames: np.ndarray  # uint8 (T, H, W, 3)
    actions: np.ndarray  # int64 (T,), actions[0] = -1


@dataclass
class GameTrace:
    """The simulated state per frame, independent of the frame size (world units).

    ``player[t]`` is the player's world position in frame t; ``camera[t]`` the world position of the
    view's top-left corner (before rounding to pixels). Lists hold one small array per frame.
    """

    seed: int
    actions: np.ndarray  # int64 (T,)
    player: np.ndarray  # float64 (T, 2) x, y
    camera: np.ndarray  # float64 (T, 2)
    facing: np.ndarray  # int64 (T,) direction 1..8 of the last move
    attack_phase: np.ndarray  # int64 (T,) -1 when not attacking, else 0.._ATTACK_FRAMES-1
    player_hp: np.ndarray  # float64 (T,)
    clock: np.ndarray  # int64 (T,) match time in seconds
    tick: np.ndarray  # int64 (T,) frames since the world started (drives ambient animation)
    tower_flash: np.ndarray  # bool (T, towers)
    minions: list[np.ndarray]  # per frame (M, 3): x, y, sprite id (team * 2 + kind)
    projectiles: list[np.ndarray]  # per frame (P, 3): x, y, sprite id (team * 2 + kind)
    effects: list[np.ndarray]  # per frame (E, 3): x, y, sprite id (kind * 4 + age)


# ----------------------------------------------------------------------------------------------
# Map geometry


def _rounded_polyline(points: list[tuple[float, float]], radius: float, steps: int = 10) -> np.ndarray:
    """A polyline whose corners are replaced by quadratic curves, so lateral offsets never jump."""
    pts = [np.asarray(p, dtype=np.float64) for p in points]
    out = [pts[0]]
    for i in range(1, len(pts) - 1):
        p, a, b = pts[i], pts[i - 1], pts[i + 1]
        d1 = (p - a) / np.linalg.norm(p - a)
        d2 = (b - p) / np.linalg.norm(b - p)
        start, end = p - d1 * radius, p + d2 * radius
        for t in np.linspace(0.0, 1.0, steps):
            out.append((1 - t) ** 2 * start + 2 * (1 - t) * t * p + t**2 * end)
    out.append(pts[-1])
    return np.array(out)


class _Lane:
    def __init__(self, points: np.ndarray):
        self.points = points
        seg = np.diff(points, axis=0)
        self.length_seg = np.linalg.norm(seg, axis=1)
        self.dirs = seg / self.length_seg[:, None]
        self.normals = np.stack([-self.dirs[:, 1], self.dirs[:, 0]], axis=1)
        self.cum = np.concatenate([[0.0], np.cumsum(self.length_seg)])
        self.length = float(self.cum[-1])

    def position(self, s: np.ndarray, lateral: np.ndarray) -> np.ndarray:
        i = np.clip(np.searchsorted(self.cum, s, side="right") - 1, 0, len(self.length_seg) - 1)
        along = (s - self.cum[i])[:, None]
        return self.points[i] + self.dirs[i] * along + self.normals[i] * lateral[:, None]


_CORNER_TL = (22.0, 22.0)
_CORNER_BR = (170.0, 170.0)
_LANES = [
    _Lane(_rounded_polyline([tuple(_BASES[0]), _CORNER_TL, tuple(_BASES[1])], 26.0)),  # top
    _Lane(_rounded_polyline([tuple(_BASES[0]), tuple(_BASES[1])], 0.0)),  # mid
    _Lane(_rounded_polyline([tuple(_BASES[0]), _CORNER_BR, tuple(_BASES[1])], 26.0)),  # bot
]
_RIVER = np.array([[34.0, 34.0], [158.0, 158.0]])


def _tower_table() -> tuple[np.ndarray, np.ndarray]:
    pos, team = [], []
    for lane in _LANES:
        for t, frac in ((_BLUE, 0.3), (_RED, 0.7)):
            p = lane.position(np.array([frac * lane.length]), np.array([7.0]))[0]
            pos.append(p)
            team.append(t)
    return np.array(pos), np.array(team)


_TOWER_POS, _TOWER_TEAM = _tower_table()


# ----------------------------------------------------------------------------------------------
# Simulation


_TABLE_RES = 10  # lane lookup samples per world unit
_LANE_LEN = np.array([lane.length for lane in _LANES])


def _lane_tables() -> tuple[np.ndarray, np.ndarray]:
    """Centre point and normal of every lane sampled along its arc length: (lanes, K, 2) each."""
    k = int(np.ceil(_LANE_LEN.max() * _TABLE_RES)) + 2
    centre, normal = np.zeros((len(_LANES), k, 2)), np.zeros((len(_LANES), k, 2))
    s = np.arange(k) / _TABLE_RES
    for i, lane in enumerate(_LANES):
        sc = np.minimum(s, lane.length)
        centre[i] = lane.position(sc, np.zeros(k))
        normal[i] = lane.position(sc, np.ones(k)) - centre[i]
    return centre, normal


_LANE_CENTRE, _LANE_NORMAL = _lane_tables()
_N_TOWERS = len(_TOWER_POS)
_ENGAGE2 = np.array(_ENGAGE) ** 2
_COOLDOWNS = np.array(_MINION_COOLDOWN)
_TOWER_MUZZLE = _TOWER_POS + np.array([0.0, -9.0])
_TOWER_HIT = _TOWER_POS + np.array([0.0, -3.0])
_PREWALK = 90  # frames the first wave has already walked when a world starts (nothing meets before)

# Minion table columns (one row per living minion, rows in spawn order so uids stay sorted).
_X, _Y, _S, _LAT, _HP, _CD, _TEAM, _KIND, _LANE, _UID, _VEL, _END, _SPR = range(13)
# Projectile columns: target is a minion uid (type 0), 0 for the player (type 1) or a tower index (type 2).
_PX, _PY, _PTEAM, _PDMG, _PTYPE, _PTARGET, _PSPEED, _PSPR = range(8)
# Effect columns: sprite id is kind * _MAX_EFFECT_AGE + age.
_EX, _EY, _EKIND, _EAGE, _ESPR = range(5)
_EFFECT_LIFE = np.array(_EFFECT_FRAMES)


class _World:
    """Game state and its update rule. All quantities in world units and frames."""

    def __init__(self, rng: np.random.Generator):
        self.rng = rng
        self.minions = np.zeros((0, 13))
        self.proj = np.zeros((0, 8))
        self.effects = np.zeros((0, 5))
        self.next_uid = 1
        self.tower_cd = rng.integers(0, _TOWER_COOLDOWN, _N_TOWERS)
        self.tower_flash = np.zeros(_N_TOWERS, bool)
        self.px, self.py = 0.0, 0.0
        self.player_hp = _PLAYER_HP
        self.facing = 1
        self.attack_run = 0  # consecutive attack frames
        self.blocked = False  # the last move was stopped by the world's edge
        self._spawn_wave(_PREWALK)
        self.wave_timer = _PREWALK

    def _spawn_wave(self, walked: int = 0) -> None:
        # Per lane and team: two melee in front, two casters behind, fixed lateral slots.
        kind = np.array([_MELEE, _MELEE, _CASTER, _CASTER])
        lat = np.array([-2.0, 2.0, -2.5, 2.5])
        back = np.array([0.0, 0.0, -6.0, -6.0])
        lanes, teams, slots = (
            g.ravel() for g in np.meshgrid([0, 1, 2], [_BLUE, _RED], [0, 1, 2, 3], indexing="ij")
        )
        k = len(lanes)
        m = np.zeros((k, 13))
        vel = np.where(teams == _BLUE, _MINION_SPEED, -_MINION_SPEED)
        s0 = _BASE_RADIUS + back[slots]
        m[:, _S] = np.where(teams == _BLUE, s0, _LANE_LEN[lanes] - s0) + vel * walked
        m[:, _LAT] = lat[slots]
        m[:, _HP] = _MINION_HP
        m[:, _CD] = np.maximum(self.rng.integers(0, _COOLDOWNS[kind[slots]]) - walked, 0)
        m[:, _TEAM] = teams
        m[:, _KIND] = kind[slots]
        m[:, _LANE] = lanes
        m[:, _UID] = self.next_uid + np.arange(k)
        m[:, _VEL] = vel
        m[:, _END] = np.where(teams == _BLUE, _LANE_LEN[lanes] - _BASE_RADIUS, _BASE_RADIUS)
        m[:, _SPR] = teams * 2 + kind[slots]
        self.next_uid += k
        self._place(m)
        self.minions = np.concatenate([self.minions, m])

    @staticmethod
    def _place(m: np.ndarray) -> None:
        k = (m[:, _S] * _TABLE_RES + 0.5).astype(np.int64)
        lane = m[:, _LANE].astype(np.int64)
        m[:, _X : _Y + 1] = _LANE_CENTRE[lane, k] + _LANE_NORMAL[lane, k] * m[:, _LAT, None]

    def _add_effects(self, x, y, kind: int) -> None:
        e = np.zeros((np.size(x), 5))
        e[:, _EX], e[:, _EY], e[:, _EKIND], e[:, _ESPR] = x, y, kind, kind * _MAX_EFFECT_AGE
        self.effects = np.concatenate([self.effects, e])

    def step(self, action: int) -> None:
        m = self.minions
        # Player: move (clamped to the world), attack in swings of _ATTACK_FRAMES frames.
        if 1 <= action <= 8:
            self.facing = action
            wx, wy = self.px + _MOVES[action, 0], self.py + _MOVES[action, 1]
            lo, hi = _PLAYER_MARGIN, WORLD_UNITS - _PLAYER_MARGIN
            self.px, self.py = min(max(wx, lo), hi), min(max(wy, lo), hi)
            self.blocked = self.px != wx or self.py != wy
        else:
            self.blocked = False
        self.attack_run = self.attack_run + 1 if action == ATTACK else 0
        if action == ATTACK and (self.attack_run - 1) % _ATTACK_FRAMES == 0 and len(m):
            d2 = (m[:, _X] - self.px) ** 2 + (m[:, _Y] - self.py) ** 2
            hit = (m[:, _TEAM] == _RED) & (d2 <= _ATTACK_RADIUS**2)
            m[hit, _HP] -= 3.0
            self._add_effects(m[hit, _X], m[hit, _Y], _SPARK)
        self.player_hp = min(_PLAYER_HP, self.player_hp + 0.15)

        self.wave_timer += 1
        if self.wave_timer >= _WAVE_PERIOD:
            self.wave_timer = 0
            self._spawn_wave()
            m = self.minions

        # Everything that can be targeted: minions, then towers, then the player (blue).
        n = len(m)
        tx = np.concatenate([m[:, _X], _TOWER_POS[:, 0], [self.px]])
        ty = np.concatenate([m[:, _Y], _TOWER_POS[:, 1], [self.py]])
        tteam = np.concatenate([m[:, _TEAM], _TOWER_TEAM, [_BLUE]])
        new_proj = []
        if n:
            team = m[:, _TEAM]
            d2 = (m[:, _X, None] - tx) ** 2 + (m[:, _Y, None] - ty) ** 2
            d2[team[:, None] == tteam] = np.inf
            target = d2.argmin(axis=1)
            kind = m[:, _KIND].astype(np.int64)
            fighting = d2[np.arange(n), target] <= _ENGAGE2[kind]
            m[:, _S] += m[:, _VEL] * ~fighting
            np.maximum(m[:, _CD] - 1, 0, out=m[:, _CD])
            for j in np.flatnonzero(fighting & (m[:, _CD] == 0)):
                tgt = int(target[j])
                m[j, _CD] = _COOLDOWNS[kind[j]]
                if kind[j] == _MELEE:  # instant hit, a spark between the two
                    if tgt < n:
                        m[tgt, _HP] -= 1.0
                    elif tgt == n + _N_TOWERS:
                        self.player_hp -= 2.0
                    self._add_effects((tx[tgt] + m[j, _X]) / 2, (ty[tgt] + m[j, _Y]) / 2, _SPARK)
                else:  # casters throw a bolt
                    if tgt < n:
                        ptype, ptarget, dmg = 0, m[tgt, _UID], 1.0
                    elif tgt < n + _N_TOWERS:
                        ptype, ptarget, dmg = 2, tgt - n, 0.0
                    else:
                        ptype, ptarget, dmg = 1, 0, 2.0
                    new_proj.append(
                        [m[j, _X], m[j, _Y], m[j, _TEAM], dmg, ptype, ptarget, 2.5, m[j, _TEAM] * 2 + 1]
                    )
            self._place(m)

        # Towers shoot the nearest enemy minion in range, else the player (red towers only).
        np.maximum(self.tower_cd - 1, 0, out=self.tower_cd)
        ready = np.flatnonzero(self.tower_cd == 0)
        self.tower_flash[:] = False
        if len(ready):
            d2 = (_TOWER_POS[ready, 0, None] - tx) ** 2 + (_TOWER_POS[ready, 1, None] - ty) ** 2
            d2[_TOWER_TEAM[ready, None] == tteam] = np.inf
            d2[:, n : n + _N_TOWERS] = np.inf
            d2[:, -1] += 1e6  # minions first
            target = d2.argmin(axis=1)
            dmin = d2[np.arange(len(ready)), target]
            fire = (dmin <= _TOWER_RANGE**2) | ((dmin >= 1e6) & (dmin <= 1e6 + _TOWER_RANGE**2))
            for k, tgt in zip(ready[fire], target[fire], strict=True):
                team = _TOWER_TEAM[k]
                mx, my = _TOWER_MUZZLE[k]
                if tgt < n:
                    new_proj.append([mx, my, team, 3.0, 0, m[tgt, _UID], 3.5, team * 2])
                else:
                    new_proj.append([mx, my, team, 12.0, 1, 0, 3.5, team * 2])
                self.tower_cd[k] = _TOWER_COOLDOWN
                self.tower_flash[k] = True
        if new_proj:
            self.proj = np.concatenate([self.proj, np.array(new_proj)])
        if len(self.proj):
            self._step_projectiles()

        # Deaths and minions that reached the enemy base leave the table.
        if n:
            dead = m[:, _HP] <= 0
            gone = dead | ((m[:, _S] - m[:, _END]) * m[:, _VEL] >= 0)
            if gone.any():
                self._add_effects(m[dead, _X], m[dead, _Y], _PUFF)
                self.minions = m[~gone]
        if self.player_hp <= 0:
            self.player_hp = _PLAYER_HP
        if len(self.effects):
            e = self.effects
            e[:, _EAGE] += 1
            e[:, _ESPR] += 1
            self.effects = e[e[:, _EAGE] < _EFFECT_LIFE[e[:, _EKIND].astype(np.int64)]]

    def _step_projectiles(self) -> None:
        p, m = self.proj, self.minions
        ptype = p[:, _PTYPE]
        tgt_x = np.full(len(p), self.px)
        tgt_y = np.full(len(p), self.py)
        ok = np.ones(len(p), bool)
        row = np.zeros(len(p), np.int64)
        on_minion = ptype == 0
        if on_minion.any():
            uid = p[on_minion, _PTARGET]
            r = np.minimum(np.searchsorted(m[:, _UID], uid), max(len(m) - 1, 0))
            found = (m[r, _UID] == uid) if len(m) else np.zeros(len(uid), bool)
            ok[on_minion] = found
            row[on_minion] = r
            if len(m):
                tgt_x[on_minion], tgt_y[on_minion] = m[r, _X], m[r, _Y]
        on_tower = ptype == 2
        if on_tower.any():
            k = p[on_tower, _PTARGET].astype(np.int64)
            tgt_x[on_tower], tgt_y[on_tower] = _TOWER_HIT[k, 0], _TOWER_HIT[k, 1]
        dx, dy = tgt_x - p[:, _PX], tgt_y - p[:, _PY]
        dist = np.sqrt(dx * dx + dy * dy)
        arrive = ok & (dist <= p[:, _PSPEED])
        f = np.minimum(p[:, _PSPEED], dist) / np.maximum(dist, 1e-9)
        p[:, _PX] += dx * f
        p[:, _PY] += dy * f
        if arrive.any():
            hit = arrive & on_minion
            np.subtract.at(m[:, _HP], row[hit], p[hit, _PDMG])
            self.player_hp -= float(p[arrive & (ptype == 1), _PDMG].sum())
            self._add_effects(p[arrive, _PX], p[arrive, _PY], _SPARK)
        self.proj = p[ok & ~arrive]


def _clock_start(rng: np.random.Generator) -> tuple[int, int]:
    return int(rng.integers(60, 25 * 60)), int(rng.integers(0, GAME_FPS))


def simulate(seed: int, frames: int) -> GameTrace:
    """Run the game for ``frames`` frames with the seeded sticky-random policy; no rendering.

    The policy and the world draw from separate streams of ``seed``, so the actions of a seed do not
    depend on what happens in the world, except that a move blocked by the world's edge is redrawn.
    """
    if int(frames) != frames or frames < 1:
        raise ConfigError(f"game: frames must be an integer >= 1, got {frames}")
    frames = int(frames)
    keep_rng, draw_rng, world_rng = (
        np.random.default_rng(s) for s in np.random.SeedSequence(int(seed)).spawn(3)
    )
    # Sticky-random policy: keep the previous action with STICKY_PROB, else draw from ACTION_WEIGHTS;
    # a move that ran into the world's edge is always redrawn (nobody walks into a wall for seconds).
    # One stream per decision, so a clip of N frames is the start of any longer clip of the same seed.
    keep = keep_rng.random(frames) < STICKY_PROB
    cdf = np.cumsum(ACTION_WEIGHTS)
    fresh = np.minimum(np.searchsorted(cdf / cdf[-1], draw_rng.random(frames), side="right"), NUM_ACTIONS - 1)

    world = _World(world_rng)
    # Warm up with the player far away so lanes hold walking and fighting waves at frame 0.
    world.px = world.py = -1000.0
    warmup = int(world_rng.integers(0, _WAVE_PERIOD))
    for _ in range(warmup):
        world.step(0)
    lane = _LANES[int(world_rng.integers(0, len(_LANES)))]
    s = world_rng.uniform(0.2, 0.8) * lane.length
    start = lane.position(np.array([s]), np.array([world_rng.uniform(-12.0, 12.0)]))[0]
    world.px, world.py = (float(c) for c in np.clip(start, _PLAYER_MARGIN, WORLD_UNITS - _PLAYER_MARGIN))
    world.player_hp = float(world_rng.uniform(40.0, _PLAYER_HP))
    world.facing = int(world_rng.integers(1, 9))
    world.effects = world.effects[:0]
    world.proj = world.proj[world.proj[:, _PTYPE] != 1]  # nothing aimed at the far-away warm-up player
    clock0, sub0 = _clock_start(world_rng)

    actions = np.full(frames, -1, dtype=np.int64)
    player = np.zeros((frames, 2))
    facing = np.zeros(frames, np.int64)
    attack = np.full(frames, -1, np.int64)
    hp = np.zeros(frames)
    flash = np.zeros((frames, _N_TOWERS), bool)
    minions, projs, effects = [], [], []
    prev = int(fresh[0])
    for t in range(frames):
        if t > 0:
            prev = prev if keep[t] and not world.blocked else int(fresh[t])
            actions[t] = prev
            world.step(prev)
        player[t] = world.px, world.py
        facing[t] = world.facing
        attack[t] = (world.attack_run - 1) % _ATTACK_FRAMES if world.attack_run > 0 else -1
        hp[t] = world.player_hp
        flash[t] = world.tower_flash
        minions.append(world.minions[:, [_X, _Y, _SPR]])
        projs.append(world.proj[:, [_PX, _PY, _PSPR]])
        effects.append(world.effects[:, [_EX, _EY, _ESPR]])
    clock = clock0 + (sub0 + np.arange(frames)) // GAME_FPS
    return GameTrace(
        seed=int(seed),
        actions=actions,
        player=player,
        camera=_camera_world(player),
        facing=facing,
        attack_phase=attack,
        player_hp=hp,
        clock=clock.astype(np.int64),
        tick=warmup + np.arange(frames, dtype=np.int64),
        tower_flash=flash,
        minions=minions,
        projectiles=projs,
        effects=effects,
    )


def _camera_world(player: np.ndarray) -> np.ndarray:
    """Top-left corner of the view in world units: always centred on the player (the padding of cliffs
    around the world is wider than half a view, so it never needs clamping)."""
    play_h = VIEW_UNITS - HUD_UNITS
    return player - np.array([VIEW_UNITS / 2, play_h / 2])


# ----------------------------------------------------------------------------------------------
# Procedural textures (fixed map, cached per frame size)


def _interp_weights(coords: np.ndarray, origin: float, step: float, count: int, smooth: bool):
    """Index and weight to interpolate samples taken at origin + k * step onto ``coords``."""
    x = (coords - origin) / step
    i0 = np.clip(np.floor(x).astype(np.int64), 0, count - 2)
    f = np.clip(x - i0, 0.0, 1.0).astype(np.float32)
    if smooth:
        f = f * f * (3 - 2 * f)
    return i0, f


def _resample(samples: np.ndarray, cx: np.ndarray, cy: np.ndarray, origin: float, step: float, smooth: bool):
    """Interpolate a square grid of samples (every ``step`` units from ``origin``) onto the grid cy x cx.

    (Bi)linear interpolation is separable: rows first, then columns; no matrix products, so no BLAS
    threads are involved.
    """
    iy, fy = _interp_weights(cy, origin, step, samples.shape[0], smooth)
    ix, fx = _interp_weights(cx, origin, step, samples.shape[1], smooth)
    rows = samples[iy] * (1 - fy[:, None]) + samples[iy + 1] * fy[:, None]
    return rows[:, ix] * (1 - fx) + rows[:, ix + 1] * fx


def _value_noise(cx: np.ndarray, cy: np.ndarray, cell: float, seed: int) -> np.ndarray:
    """Smooth value noise in [0, 1], lattice spacing ``cell`` units, on the grid cx (columns) x cy (rows)."""
    n = int((WORLD_UNITS + 2 * PAD_UNITS) / cell) + 3
    lattice = np.random.default_rng(seed).random((n, n)).astype(np.float32)
    return _resample(lattice, cx, cy, -PAD_UNITS, cell, smooth=True)


def _fbm(cx, cy, cells, seed) -> np.ndarray:
    total, weight = 0.0, 0.0
    for k, cell in enumerate(cells):
        w = cell**0.5
        total = total + w * _value_noise(cx, cy, cell, seed + 17 * k)
        weight += w
    return total / weight


def _seg_distance(u, v, a, b) -> np.ndarray:
    ab = b - a
    t = np.clip(((u - a[0]) * ab[0] + (v - a[1]) * ab[1]) / float(ab @ ab), 0.0, 1.0)
    return np.hypot(u - (a[0] + t * ab[0]), v - (a[1] + t * ab[1]))


def _polyline_distance(u, v, pts) -> np.ndarray:
    d = np.full(np.broadcast_shapes(np.shape(u), np.shape(v)), np.inf)
    for a, b in zip(pts[:-1], pts[1:], strict=True):
        d = np.minimum(d, _seg_distance(u, v, a, b))
    return d


_FIELD_STEP = 1.0  # distance fields are sampled every unit, then interpolated (they are smooth)


@functools.lru_cache(maxsize=1)
def _distance_fields() -> tuple[np.ndarray, np.ndarray]:
    """Distance to the nearest lane centre line and to the river's axis, sampled every _FIELD_STEP units."""
    g = np.arange(-PAD_UNITS, WORLD_UNITS + PAD_UNITS + _FIELD_STEP, _FIELD_STEP)
    x, y = g[None, :], g[:, None]
    lanes = np.min([_polyline_distance(x, y, ln.points) for ln in _LANES], axis=0).astype(np.float32)
    river = _seg_distance(x, y, _RIVER[0], _RIVER[1]).astype(np.float32)
    return lanes, river


def _field_at(field: np.ndarray, x: float, y: float) -> float:
    return float(field[round((y + PAD_UNITS) / _FIELD_STEP), round((x + PAD_UNITS) / _FIELD_STEP)])


def _smooth(edge0: float, edge1: float, x: np.ndarray) -> np.ndarray:
    t = np.clip((x - edge0) / (edge1 - edge0), 0.0, 1.0)
    return t * t * (3 - 2 * t)


def _mix(a: np.ndarray, color, t: np.ndarray) -> np.ndarray:
    return a + (np.asarray(color, dtype=np.float32) - a) * t[..., None]


_WATER_PHASES = 8  # the river's ripples loop every 8 frames


def _water_colour(arg: np.ndarray, phase: int) -> np.ndarray:
    ripples = 0.5 + 0.5 * np.sin(arg - np.float32(2 * np.pi * phase / _WATER_PHASES))
    return np.stack([0.12 + 0.1 * ripples, 0.32 + 0.12 * ripples, 0.5 + 0.12 * ripples], axis=-1)


def _ground_float(n: int, scale: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The padded world as float RGB, ``n`` x ``n`` pixels, ``scale`` pixels per unit, water at phase 0.

    Also returns how much of each pixel is water (after everything drawn over it) and the ripple
    argument, so the animation phases can be made by swapping the water colour.
    """
    c = ((np.arange(n) + 0.5) / scale - PAD_UNITS).astype(np.float32)
    u, v = c[None, :], c[:, None]  # x (columns) and y (rows), broadcast against each other
    shape = (n, n)

    # Grass: large patches, medium clumps, fine blades.
    patches = _fbm(c, c, (24.0, 9.0), 11)
    blades = _value_noise(c, c, 1.3, 23)
    img = _mix(np.broadcast_to(np.float32([0.16, 0.36, 0.15]), shape + (3,)), (0.36, 0.56, 0.22), patches)
    tufts = _value_noise(c, c, 0.8, 29)
    img = img * (0.45 + 0.7 * blades + 0.45 * tufts)[..., None]
    flowers = (_value_noise(c, c, 2.0, 31) > 0.86) & (_value_noise(c, c, 7.0, 37) > 0.6)
    img = np.where(flowers[..., None], _mix(img, (0.85, 0.8, 0.45), np.full(shape, 0.5, np.float32)), img)

    # Cliff walls along the world border (outside the side lanes).
    edge = np.minimum(np.minimum(u, WORLD_UNITS - u), np.minimum(v, WORLD_UNITS - v))
    rock_n = _fbm(c, c, (6.0, 2.5), 41)
    wall = _smooth(10.0, 6.0, edge + 4.0 * (rock_n - 0.5))
    rock = np.stack([0.36 + 0.3 * rock_n, 0.33 + 0.27 * rock_n, 0.3 + 0.22 * rock_n], axis=-1)
    cracks = _smooth(0.06, 0.0, np.abs(_value_noise(c, c, 3.0, 43) - 0.5))
    rock = rock * ((1 - 0.45 * cracks) * (0.45 + 0.55 * _smooth(-16.0, 2.0, edge)))[..., None]
    img = img + (rock - img) * wall[..., None]

    # River with sandy banks and ripples.
    lane_field, river_field = _distance_fields()
    river_d = _resample(river_field, c, c, -PAD_UNITS, _FIELD_STEP, smooth=False)
    river_d = river_d + 3.0 * (_value_noise(c, c, 8.0, 51) - 0.5)
    sand = _smooth(12.0, 9.5, river_d)
    img = _mix(img, (0.62, 0.56, 0.38), sand * (0.85 + 0.15 * blades))
    # Ripples run along the river (u + v grows downstream).
    ripple_arg = (u + v) * 1.3 + 6.0 * _value_noise(c, c, 6.0, 53)
    water = _smooth(8.5, 7.0, river_d)
    img = img + (_water_colour(ripple_arg, 0) - img) * water[..., None]

    # Lanes: packed dirt with square cobbles, soft edges.
    lane_d = _resample(lane_field, c, c, -PAD_UNITS, _FIELD_STEP, smooth=False)
    lane_d = lane_d + 2.0 * (_value_noise(c, c, 5.0, 61) - 0.5)
    cu, cv = np.floor((u + PAD_UNITS) / 3.0), np.floor((v + PAD_UNITS) / 3.0)  # cobble cells
    cell_rng = np.random.default_rng(67).random((int((WORLD_UNITS + 2 * PAD_UNITS) / 3) + 2,) * 2)
    cell = cell_rng[cv.astype(np.int64), cu.astype(np.int64)].astype(np.float32)
    fu, fv = (u + PAD_UNITS) / 3.0 - cu, (v + PAD_UNITS) / 3.0 - cv
    grout = np.maximum(_smooth(0.14, 0.0, np.minimum(fu, 1 - fu)), _smooth(0.14, 0.0, np.minimum(fv, 1 - fv)))
    stone_base = np.float32([0.58, 0.5, 0.38])
    stone = stone_base * (0.8 + 0.35 * cell)[..., None] * (0.92 + 0.16 * blades)[..., None]
    stone = stone * (1 - 0.35 * grout)[..., None]
    dirt = _smooth(9.0, 7.0, lane_d)
    img = _mix(img, (0.4, 0.32, 0.2), dirt * 0.9)
    paved = _smooth(6.5, 5.5, lane_d)
    img = img + (stone - img) * paved[..., None]
    water = water * (1 - dirt * 0.9) * (1 - paved)

    # Jungle trees (jittered grid, skipped near lanes, river, bases and walls); dark shadow first.
    rng = np.random.default_rng(71)
    shade = np.zeros(shape, np.float32)
    canopy = np.zeros(shape + (3,), np.float32)
    cover = np.zeros(shape, np.float32)
    spacing = 10.0
    for gy in np.arange(spacing / 2, WORLD_UNITS, spacing):
        for gx in np.arange(spacing / 2, WORLD_UNITS, spacing):
            x, y = float(gx + rng.uniform(-3.5, 3.5)), float(gy + rng.uniform(-3.5, 3.5))
            r = float(rng.uniform(3.2, 4.8))
            tone = float(rng.uniform(0.0, 1.0))
            p = np.array([x, y])
            if min(x, y, WORLD_UNITS - x, WORLD_UNITS - y) < 12:
                continue
            if _field_at(lane_field, x, y) < 14 or _field_at(river_field, x, y) < 15:
                continue
            if np.min(np.hypot(*(_BASES - p).T)) < 30 or np.min(np.hypot(*(_TOWER_POS - p).T)) < 12:
                continue
            if rng.random() < 0.3:
                continue
            lo_x = int(max(0, (x + PAD_UNITS - r - 3) * scale))
            hi_x = int(min(n, (x + PAD_UNITS + r + 3) * scale + 1))
            lo_y = int(max(0, (y + PAD_UNITS - r - 3) * scale))
            hi_y = int(min(n, (y + PAD_UNITS + r + 3) * scale + 1))
            su, sv = u[:, lo_x:hi_x], v[lo_y:hi_y, :]
            sh = _smooth(r + 0.6, r - 0.4, np.hypot(su - x - 1.6, sv - y - 1.6))
            shade[lo_y:hi_y, lo_x:hi_x] = np.maximum(shade[lo_y:hi_y, lo_x:hi_x], sh)
            d = np.hypot(su - x, sv - y)
            inside = _smooth(r + 0.4, r - 0.4, d)
            light = np.clip(1.0 - ((su - x) + (sv - y)) / (2.2 * r), 0.3, 1.6)
            leaf = 0.75 + 0.5 * _value_noise(c[lo_x:hi_x], c[lo_y:hi_y], 1.1, 79)
            col = np.float32([0.08 + 0.06 * tone, 0.22 + 0.1 * tone, 0.1])
            tree_col = col[None, None] * (light * leaf)[..., None]
            cur = cover[lo_y:hi_y, lo_x:hi_x]
            canopy[lo_y:hi_y, lo_x:hi_x] = (
                canopy[lo_y:hi_y, lo_x:hi_x] * (1 - inside[..., None]) + tree_col * (inside[..., None])
            )
            cover[lo_y:hi_y, lo_x:hi_x] = np.maximum(cur, inside)
    img = img * (1 - 0.5 * shade)[..., None]
    img = img * (1 - cover[..., None]) + canopy
    water = water * (1 - 0.5 * shade) * (1 - cover)

    # Bases: team-tinted stone platforms with rings and a nexus crystal.
    for team, centre in enumerate(_BASES):
        tint = np.float32([0.35, 0.45, 0.75] if team == _BLUE else [0.75, 0.35, 0.3])
        d = np.hypot(u - float(centre[0]), v - float(centre[1]))
        plat = _smooth(20.0, 18.5, d)
        rings = 0.85 + 0.15 * np.cos(d * 1.4)
        base_col = (0.45 * tint + 0.3) * rings[..., None] * (0.9 + 0.2 * blades)[..., None]
        img = img + (base_col - img) * plat[..., None]
        water = water * (1 - plat)
        crystal = _smooth(5.0, 4.0, d)
        glow = np.clip(1.2 - d / 5.0, 0.0, 1.0)
        img = img + ((0.6 * tint + 0.4) * (0.7 + 0.5 * glow)[..., None] - img) * crystal[..., None]
    return img, water, ripple_arg


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(x * 255.0 + 0.5, 0, 255).astype(np.uint8)


def _box_down(img: np.ndarray, k: int) -> np.ndarray:
    if k == 1:
        return img
    h, w = img.shape[0] // k, img.shape[1] // k
    return img[: h * k, : w * k].reshape(h, k, w, k, -1).mean(axis=(1, 3))


@functools.lru_cache(maxsize=4)
def _ground(size: int) -> np.ndarray:
    """uint8 (_WATER_PHASES, N, N, 3): the padded world at each phase of the river animation."""
    scale = size / VIEW_UNITS
    ss = 2 if scale <= 2.0 else 1  # supersample small sizes
    n = round((WORLD_UNITS + 2 * PAD_UNITS) * scale)
    img, water, arg = _ground_float(n * ss, scale * ss)
    base = _water_colour(arg, 0)
    out = np.empty((_WATER_PHASES, n, n, 3), np.uint8)
    for k in range(_WATER_PHASES):
        out[k] = _to_uint8(
            np.clip(_box_down(img + water[..., None] * (_water_colour(arg, k) - base), ss), 0, 1)
        )
    return out


# ----------------------------------------------------------------------------------------------
# Sprites: rasterised once per size from a few primitives, with supersampled alpha


@dataclass
class _Sheet:
    """Same-shaped sprites: pixel offsets (P,), premultiplied colour (S, P, 3) in 0..255, alpha (S, P)."""

    dy: np.ndarray
    dx: np.ndarray
    rgb: np.ndarray
    alpha: np.ndarray
    radius: int


def _raster_layers(layers: list[tuple], x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    rgb = np.zeros(x.shape + (3,))
    a = np.zeros(x.shape)
    for layer in layers:
        kind, geo, color, alpha = layer[0], layer[1], np.asarray(layer[2], dtype=np.float64), layer[3]
        shade = layer[4] if len(layer) > 4 else 0.0
        if kind == "circle":
            cx, cy, r = geo
            d = np.hypot(x - cx, y - cy)
            cov = d <= r
            light = 1.0 + shade * np.clip(-((x - cx) + (y - cy)) / (1.5 * r), -1, 1)
        elif kind == "ellipse":
            cx, cy, rx, ry = geo
            cov = ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 <= 1.0
            light = np.ones_like(x)
        elif kind == "ring":
            cx, cy, r0, r1 = geo
            d = np.hypot(x - cx, y - cy)
            cov = (d >= r0) & (d <= r1)
            light = np.ones_like(x)
        elif kind == "segment":
            x0, y0, x1, y1, w = geo
            cov = _seg_distance(x, y, np.array([x0, y0]), np.array([x1, y1])) <= w / 2
            light = np.ones_like(x)
        elif kind == "rect":
            x0, y0, x1, y1 = geo
            cov = (x >= x0) & (x <= x1) & (y >= y0) & (y <= y1)
            light = 1.0 + shade * np.clip(-(x - (x0 + x1) / 2) / max(x1 - x0, 1e-6), -1, 1)
        else:  # pragma: no cover - internal tables only
            raise ValueError(kind)
        la = cov * alpha
        col = np.clip(color * light[..., None], 0.0, 1.0)
        rgb = col * la[..., None] + rgb * (1 - la[..., None])
        a = la + a * (1 - la)
    return rgb, a


def _make_sheet(sprites: list[list[tuple]], radius_units: float, scale: float, ss: int = 4) -> _Sheet:
    r = int(np.ceil(radius_units * scale)) + 1
    d = np.arange(-r, r + 1)
    dy, dx = (g.ravel() for g in np.meshgrid(d, d, indexing="ij"))
    offs = (np.arange(ss) + 0.5) / ss - 0.5
    # (P, ss, ss) sample coordinates in world units relative to the sprite anchor.
    sx = (dx[:, None, None] + offs[None, None, :]) / scale
    sy = (dy[:, None, None] + offs[None, :, None]) / scale
    rgbs, alphas = [], []
    for layers in sprites:
        rgb, a = _raster_layers(layers, sx, sy)
        rgbs.append(rgb.mean(axis=(1, 2)) * 255.0)
        alphas.append(a.mean(axis=(1, 2)))
    rgb_arr, a_arr = np.array(rgbs, np.float32), np.array(alphas, np.float32)
    keep = a_arr.max(axis=0) > 0.02
    return _Sheet(dy[keep], dx[keep], rgb_arr[:, keep], a_arr[:, keep], r)


_TEAM_COLORS = {_BLUE: (0.25, 0.5, 1.0), _RED: (0.95, 0.25, 0.2)}
_DIRS = {k: v / np.linalg.norm(v) for k, v in enumerate(_MOVES) if 1 <= k <= 8}


def _minion_layers(team: int, kind: int) -> list[tuple]:
    col = _TEAM_COLORS[team]
    dark = tuple(0.35 * c for c in col)
    layers = [("ellipse", (0.5, 1.6, 2.0, 1.0), (0, 0, 0), 0.45), ("circle", (0, 0, 2.0), dark, 1.0)]
    layers.append(("circle", (0, 0, 1.55), col, 1.0, 0.5))
    if kind == _CASTER:
        core = (0.8, 0.6, 1.0) if team == _BLUE else (1.0, 0.75, 0.3)
        layers.append(("circle", (0, 0, 0.8), core, 1.0))
    return layers


def _tower_layers(team: int, flash: bool) -> list[tuple]:
    col = _TEAM_COLORS[team]
    glow = (1.0, 1.0, 0.85) if flash else tuple(0.5 + 0.5 * c for c in col)
    return [
        ("ellipse", (1.5, 1.5, 5.0, 2.5), (0, 0, 0), 0.45),
        ("circle", (0, 0, 4.0), (0.3, 0.3, 0.32), 1.0),
        ("circle", (0, 0, 3.3), (0.55, 0.55, 0.58), 1.0, 0.4),
        ("rect", (-1.8, -8.0, 1.8, 0.0), (0.62, 0.6, 0.58), 1.0, 0.6),
        ("rect", (-2.6, -8.6, 2.6, -7.2), (0.45, 0.43, 0.42), 1.0),
        ("circle", (0, -10.2, 2.9 if flash else 2.3), glow, 0.35),
        ("circle", (0, -10.2, 1.8), col, 1.0, 0.6),
        ("circle", (-0.5, -10.7, 0.6), (1, 1, 1), 0.8),
    ]


def _player_layers(facing: int) -> list[tuple]:
    fx, fy = _DIRS[facing]
    return [
        ("ellipse", (0.8, 2.6, 3.4, 1.6), (0, 0, 0), 0.45),
        ("segment", (fx * 1.5, fy * 1.5, fx * 6.2, fy * 6.2, 1.2), (0.92, 0.92, 0.98), 1.0),
        ("circle", (0, 0, 3.3), (0.08, 0.1, 0.2), 1.0),
        ("circle", (0, 0, 2.8), (0.55, 0.65, 0.85), 1.0, 0.5),
        ("circle", (0, 0, 1.5), (0.95, 0.8, 0.3), 1.0, 0.3),
        ("circle", (fx * 1.7, fy * 1.7, 0.9), (0.95, 0.85, 0.7), 1.0),
    ]


def _ring_layers(phase: int) -> list[tuple]:
    r = 4.5 + 1.6 * phase
    a = 0.95 - 0.13 * phase
    return [
        ("ring", (0, 0, r - 1.1, r), (1.0, 0.95, 0.55), a),
        ("ring", (0, 0, r - 2.2, r - 1.1), (1, 0.7, 0.2), a * 0.5),
    ]


def _projectile_layers(team: int, kind: int) -> list[tuple]:
    if kind == 0:  # tower bolt
        core = (1.0, 0.95, 0.7)
        glow = (0.5, 0.8, 1.0) if team == _BLUE else (1.0, 0.55, 0.2)
        return [("circle", (0, 0, 2.2), glow, 0.55), ("circle", (0, 0, 1.2), core, 1.0)]
    glow = (0.7, 0.5, 1.0) if team == _BLUE else (1.0, 0.8, 0.3)
    return [("circle", (0, 0, 0.9), glow, 1.0)]


def _effect_layers(kind: int, age: int) -> list[tuple]:
    if kind == _SPARK:
        r = 1.4 if age == 0 else 0.9
        return [
            ("segment", (-r, 0, r, 0, 0.6), (1, 1, 0.8), 1.0),
            ("segment", (0, -r, 0, r, 0.6), (1, 1, 0.8), 1.0),
        ]
    r = 1.5 + 0.8 * age
    return [("circle", (0, -0.5 * age, r), (0.75, 0.75, 0.75), 0.7 - 0.15 * age)]


def _firefly_layers(kind: int) -> list[tuple]:
    col = (0.95, 1.0, 0.55) if kind == 0 else (0.7, 1.0, 0.8)
    return [("circle", (0, 0, 1.3), col, 0.3), ("circle", (0, 0, 0.55), col, 1.0)]


def _firefly_table() -> np.ndarray:
    """Ambient fireflies drifting on small loops over the whole map (the same for every seed).

    Columns: anchor x, anchor y, amplitude x, amplitude y, angular speed x, y (radians per frame),
    phase x, y, colour.
    """
    rng = np.random.default_rng(83)
    n = 110
    return np.column_stack(
        [
            rng.uniform(-8.0, WORLD_UNITS + 8.0, (n, 2)),
            rng.uniform(3.0, 7.0, (n, 2)),
            rng.uniform(0.04, 0.09, (n, 2)) * rng.choice([-1.0, 1.0], (n, 2)),
            rng.uniform(0.0, 2 * np.pi, (n, 2)),
            rng.integers(0, 2, n),
        ]
    )


_FIREFLIES = _firefly_table()


def firefly_positions(tick: np.ndarray) -> np.ndarray:
    """World positions (T, fireflies, 2) of the ambient fireflies at the given world ticks."""
    f = _FIREFLIES
    t = np.asarray(tick, dtype=np.float64)[:, None, None]
    return f[None, :, 0:2] + f[None, :, 2:4] * np.sin(f[None, :, 4:6] * t + f[None, :, 6:8])


@dataclass
class _Art:
    size: int
    scale: float
    play_h: int
    ground: np.ndarray  # (phases, N, N, 3)
    minions: _Sheet
    towers: _Sheet
    players: _Sheet
    rings: _Sheet
    projectiles: _Sheet
    effects: _Sheet
    fireflies: _Sheet
    hud: np.ndarray
    layout: dict[str, tuple[int, int, int, int]]
    minimap_base: np.ndarray
    digits: np.ndarray  # (11, h, w) float32 coverage: 0-9 and ':'


@functools.lru_cache(maxsize=8)
def _art(size: int) -> _Art:
    scale = size / VIEW_UNITS
    play_h = size - round(HUD_UNITS * scale)
    ground = _ground(size)[0]
    minions = _make_sheet(
        [_minion_layers(t, k) for t in (_BLUE, _RED) for k in (_MELEE, _CASTER)], 3.0, scale
    )
    towers = _make_sheet([_tower_layers(t, f) for t in (_BLUE, _RED) for f in (False, True)], 13.0, scale)
    players = _make_sheet([_player_layers(f) for f in range(1, 9)], 7.0, scale)
    rings = _make_sheet([_ring_layers(p) for p in range(_ATTACK_FRAMES)], 4.5 + 1.6 * _ATTACK_FRAMES, scale)
    projectiles = _make_sheet([_projectile_layers(t, k) for t in (_BLUE, _RED) for k in (0, 1)], 2.5, scale)
    effects = _make_sheet(
        [_effect_layers(k, a) for k in (_SPARK, _PUFF) for a in range(_MAX_EFFECT_AGE)], 5.5, scale
    )
    hud, layout, minimap_base, digits = _hud_art(size, scale, play_h, ground)
    return _Art(
        size,
        scale,
        play_h,
        _ground(size),
        minions,
        towers,
        players,
        rings,
        projectiles,
        effects,
        _make_sheet([_firefly_layers(k) for k in (0, 1)], 1.5, scale),
        hud,
        layout,
        minimap_base,
        digits,
    )


# 3 x 5 digit glyphs, rows top to bottom.
_GLYPHS = {
    "0": "111101101101111",
    "1": "010110010010111",
    "2": "111001111100111",
    "3": "111001111001111",
    "4": "101101111001001",
    "5": "111100111001111",
    "6": "111100111101111",
    "7": "111001010010010",
    "8": "111101111101111",
    "9": "111101111001111",
    ":": "000010000010000",
}


def _box(scale: float, x0: float, y0: float, x1: float, y1: float, top: float) -> tuple[int, int, int, int]:
    """A HUD box in units (y relative to the HUD top) -> pixel (y0, y1, x0, x1) in frame coordinates."""
    return (top + round(y0 * scale), top + round(y1 * scale), round(x0 * scale), round(x1 * scale))


def _hud_art(size: int, scale: float, play_h: int, ground: np.ndarray):
    """The static HUD strip, the boxes of its changing parts, the minimap's base image and the digits."""
    hud_h = size - play_h
    hud = np.zeros((hud_h, size, 3), np.float64)
    yy = np.arange(hud_h)[:, None] / max(hud_h - 1, 1)  # (rows, 1): a slight vertical gradient
    hud[:] = (np.array([0.1, 0.11, 0.15])[None, :] * (1.15 - 0.3 * yy))[:, None, :]
    hud[: max(1, round(0.8 * scale))] = (0.62, 0.5, 0.28)  # gold trim
    layout = {
        "minimap": _box(scale, 1.5, 1.5, 11.5, 11.5, play_h),
        "health": _box(scale, 22.0, 3.5, 42.0, 6.5, play_h),
        "clock": _box(scale, 44.0, 3.0, 63.0, 9.0, play_h),
    }
    rel = {k: (y0 - play_h, y1 - play_h, x0, x1) for k, (y0, y1, x0, x1) in layout.items()}

    def frame_box(y0, y1, x0, x1, color):
        pad = max(1, round(0.6 * scale))
        hud[max(y0 - pad, 0) : y1 + pad, max(x0 - pad, 0) : x1 + pad] = color

    y0, y1, x0, x1 = rel["minimap"]
    frame_box(y0, y1, x0, x1, (0.55, 0.45, 0.25))
    y0, y1, x0, x1 = rel["health"]
    frame_box(y0, y1, x0, x1, (0.05, 0.05, 0.06))
    # Mana bar under health: static decoration.
    mana = _box(scale, 22.0, 7.5, 42.0, 9.0, 0)
    hud[mana[0] : mana[1], mana[2] : mana[3]] = (0.15, 0.3, 0.75)
    # Portrait: the player's emblem in a gold frame.
    py0, py1, px0, px1 = _box(scale, 13.5, 2.0, 20.5, 10.0, 0)
    hud[py0:py1, px0:px1] = (0.55, 0.45, 0.25)
    cy, cx = (py0 + py1) / 2, (px0 + px1) / 2
    ys, xs = np.mgrid[py0:py1, px0:px1]
    r = np.hypot(ys + 0.5 - cy, xs + 0.5 - cx)
    inner = r <= 0.42 * (py1 - py0)
    hud[py0:py1, px0:px1][inner] = (0.55, 0.65, 0.85)
    hud[py0:py1, px0:px1][r <= 0.2 * (py1 - py0)] = (0.95, 0.8, 0.3)
    y0, y1, x0, x1 = rel["clock"]
    hud[y0:y1, x0:x1] = (0.05, 0.05, 0.07)

    # Minimap: the world without its cliff padding, area-averaged and darkened, towers marked.
    my0, my1, mx0, mx1 = layout["minimap"]
    m = my1 - my0
    pad = round(PAD_UNITS * scale)
    g = ground[pad : ground.shape[0] - pad, pad : ground.shape[1] - pad].astype(np.float64) / 255.0
    k = g.shape[0] / m
    idx = (np.arange(m + 1) * k).astype(np.int64)
    rows = np.add.reduceat(g, idx[:-1], axis=0) / np.diff(idx)[:, None, None]
    mini = np.add.reduceat(rows, idx[:-1], axis=1) / np.diff(idx)[None, :, None]
    mini = 0.75 * mini
    for pos, team in zip(_TOWER_POS, _TOWER_TEAM, strict=True):
        ty, tx = (int(pos[1] / WORLD_UNITS * m), int(pos[0] / WORLD_UNITS * m))
        mini[min(ty, m - 1), min(tx, m - 1)] = np.array(_TEAM_COLORS[int(team)]) * 0.8

    # Digits: glyph coverage per pixel (4 x 4 samples), so small sizes get grey strokes, not holes.
    gh, gw = max(1, round(5 * scale)), max(1, round(3 * scale))
    sub = (np.arange(4) + 0.5) / 4
    ri = np.minimum(((np.arange(gh)[:, None] + sub) * 5 / gh).astype(np.int64), 4).ravel()
    ci = np.minimum(((np.arange(gw)[:, None] + sub) * 3 / gw).astype(np.int64), 2).ravel()
    digits = np.zeros((11, gh, gw), np.float32)
    for i, ch in enumerate("0123456789:"):
        glyph = np.array([int(c) for c in _GLYPHS[ch]], np.float32).reshape(5, 3)
        digits[i] = glyph[ri][:, ci].reshape(gh, 4, gw, 4).mean(axis=(1, 3))
    return _to_uint8(hud), layout, _to_uint8(mini), digits


def hud_layout(size: int = 64) -> dict[str, tuple[int, int, int, int]]:
    """Frame-pixel boxes (y0, y1, x0, x1) of the HUD parts that change; the rest of the HUD is static.

    Also holds ``"hud"``: the whole strip, and ``"play"``: the scrolling view above it.
    """
    art = _art(_check_size(size))
    out = dict(art.layout)
    out["hud"] = (art.play_h, size, 0, size)
    out["play"] = (0, art.play_h, 0, size)
    return out


# ----------------------------------------------------------------------------------------------
# Rendering


def _blit(
    play: np.ndarray, sheet: _Sheet, f: np.ndarray, ids: np.ndarray, ys: np.ndarray, xs: np.ndarray
) -> None:
    """Alpha-blend sprites ``sheet[ids]`` anchored at pixel (ys, xs) of frames ``f`` into ``play`` (T, H, W, 3).

    Within a call, sprites lower on the screen cover those above them (drawn later).
    """
    h, w = play.shape[1:3]
    r = sheet.radius
    vis = (ys > -r) & (ys < h + r) & (xs > -r) & (xs < w + r)
    if not vis.any():
        return
    f, ids, ys, xs = f[vis], ids[vis], ys[vis], xs[vis]
    order = np.lexsort((ys, f))
    f, ids, ys, xs = f[order], ids[order], ys[order], xs[order]
    yy = ys[:, None] + sheet.dy[None]  # (instances, sprite pixels)
    xx = xs[:, None] + sheet.dx[None]
    a = sheet.alpha[ids]
    ok = (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w) & (a > 0.004)
    ff = np.broadcast_to(f[:, None], ok.shape)[ok]
    yy, xx = yy[ok], xx[ok]
    av = a[ok][:, None]
    bg = play[ff, yy, xx].astype(np.float32)
    play[ff, yy, xx] = (bg * (1.0 - av) + sheet.rgb[ids][ok] + 0.5).astype(np.uint8)


def _stack(items: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame (n_t, 3) arrays -> all rows (N, 3) and their frame index (N,)."""
    counts = np.fromiter((len(x) for x in items), np.int64, len(items))
    rows = np.concatenate(items) if counts.sum() else np.zeros((0, 3))
    return rows, np.repeat(np.arange(len(items)), counts)


def _check_size(size: int) -> int:
    if int(size) != size or size < 16 or size > 512:
        raise ConfigError(f"game: size must be an integer from 16 to 512, got {size}")
    return int(size)


def render_trace(trace: GameTrace, size: int = 64) -> np.ndarray:
    """Render a simulated trace to uint8 frames (T, size, size, 3)."""
    art = _art(_check_size(size))
    s, ph = art.scale, art.play_h
    n_frames = len(trace.actions)
    frame_idx = np.arange(n_frames)
    out = np.empty((n_frames, size, size, 3), np.uint8)
    play = out[:, :ph]

    # Ground: the camera's window into the padded world, at this frame's river phase.
    world_px = art.ground.shape[1]
    cam_px = np.floor((trace.camera + PAD_UNITS) * s).astype(np.int64)
    cam_px[:, 0] = np.clip(cam_px[:, 0], 0, world_px - size)
    cam_px[:, 1] = np.clip(cam_px[:, 1], 0, world_px - ph)
    phase = trace.tick % _WATER_PHASES
    for t in range(n_frames):
        cx, cy = cam_px[t]
        play[t] = art.ground[phase[t], cy : cy + ph, cx : cx + size]

    def screen(xy: np.ndarray, f: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        p = np.floor((xy + PAD_UNITS) * s).astype(np.int64) - cam_px[f]
        return p[:, 1], p[:, 0]

    # Sprites, back to front: towers, minions, the attack ring, the player, projectiles, effects.
    f = np.repeat(frame_idx, _N_TOWERS)
    ys, xs = screen(np.tile(_TOWER_POS, (n_frames, 1)), f)
    _blit(play, art.towers, f, (_TOWER_TEAM[None] * 2 + trace.tower_flash).ravel(), ys, xs)
    minions, mf = _stack(trace.minions)
    ys, xs = screen(minions[:, :2], mf)
    _blit(play, art.minions, mf, minions[:, 2].astype(np.int64), ys, xs)
    py, px = screen(trace.player, frame_idx)
    att = trace.attack_phase >= 0
    _blit(play, art.rings, frame_idx[att], trace.attack_phase[att], py[att], px[att])
    _blit(play, art.players, frame_idx, trace.facing - 1, py, px)
    for items, sheet in ((trace.projectiles, art.projectiles), (trace.effects, art.effects)):
        rows, rf = _stack(items)
        ys, xs = screen(rows[:, :2], rf)
        _blit(play, sheet, rf, rows[:, 2].astype(np.int64), ys, xs)
    ff = firefly_positions(trace.tick)  # (T, fireflies, 2)
    f = np.repeat(frame_idx, ff.shape[1])
    ys, xs = screen(ff.reshape(-1, 2), f)
    _blit(play, art.fireflies, f, np.tile(_FIREFLIES[:, 8].astype(np.int64), n_frames), ys, xs)

    # The player's health bar floats above the player.
    bar_w, bar_h = max(2, round(8 * s)), max(1, round(1.2 * s))
    oy, ox = (g.ravel() for g in np.mgrid[0:bar_h, 0:bar_w])
    by = (py - round(7.0 * s))[:, None] + oy
    bx = (px - bar_w // 2)[:, None] + ox
    full = ox[None] < np.round(bar_w * trace.player_hp / _PLAYER_HP)[:, None]
    ok = (by >= 0) & (by < ph) & (bx >= 0) & (bx < size)
    bf = np.broadcast_to(frame_idx[:, None], ok.shape)
    play[bf[ok], by[ok], bx[ok]] = np.where(full[ok][:, None], (70, 220, 70), (30, 10, 10)).astype(np.uint8)

    # HUD: the static strip, then the health bar, minimap dots and the clock.
    out[:, ph:] = art.hud
    hy0, hy1, hx0, hx1 = art.layout["health"]
    fill = np.round((hx1 - hx0) * trace.player_hp / _PLAYER_HP).astype(np.int64)
    full = (np.arange(hx1 - hx0)[None] < fill[:, None])[:, None, :, None]  # (T, 1, w, 1)
    out[:, hy0:hy1, hx0:hx1] = np.where(full, np.uint8([60, 200, 70]), np.uint8([40, 12, 12]))
    top = hy0 + max(1, (hy1 - hy0) // 3)
    np.copyto(out[:, hy0:top, hx0:hx1], np.uint8([120, 240, 120]), where=full)

    my0, my1, mx0, mx1 = art.layout["minimap"]
    m = my1 - my0
    mm = out[:, my0:my1, mx0:mx1]
    mm[:] = art.minimap_base
    dot = max(1, round(0.75 * s))
    q = np.minimum((minions[:, :2] / WORLD_UNITS * m).astype(np.int64), m - dot)
    red = minions[:, 2] >= 2
    for dy in range(dot):
        for dx in range(dot):
            mm[mf[~red], q[~red, 1] + dy, q[~red, 0] + dx] = (90, 150, 255)
            mm[mf[red], q[red, 1] + dy, q[red, 0] + dx] = (255, 80, 70)
    # The camera's view as an outline, then the player as a 2 x 2 dot.
    vw = max(1, round(VIEW_UNITS / WORLD_UNITS * m))
    vh = max(1, round((VIEW_UNITS - HUD_UNITS) / WORLD_UNITS * m))
    outline = [(0, x) for x in range(vw + 1)] + [(vh, x) for x in range(vw + 1)]
    outline += [(y, 0) for y in range(1, vh)] + [(y, vw) for y in range(1, vh)]
    oy, ox = np.array(outline).T
    v = np.floor(trace.camera / WORLD_UNITS * m).astype(np.int64)
    ry, rx = v[:, 1, None] + oy, v[:, 0, None] + ox
    ok = (ry >= 0) & (ry < m) & (rx >= 0) & (rx < m)
    mm[np.broadcast_to(frame_idx[:, None], ok.shape)[ok], ry[ok], rx[ok]] = (220, 220, 220)
    dot = max(2, round(1.5 * s))
    q = np.clip((trace.player / WORLD_UNITS * m).astype(np.int64) - dot // 2, 0, m - dot)
    for dy in range(dot):
        for dx in range(dot):
            mm[frame_idx, q[:, 1] + dy, q[:, 0] + dx] = (255, 235, 80)

    cy0, cy1, cx0, cx1 = art.layout["clock"]
    gh, gw = art.digits.shape[1:]
    gap = max(1, round(s))
    minutes, seconds = np.minimum(trace.clock // 60, 99), trace.clock % 60
    chars = [minutes // 10, minutes % 10, np.full(n_frames, 10), seconds // 10, seconds % 10]
    x = cx0 + max(0, ((cx1 - cx0) - (5 * gw + 4 * gap)) // 2)
    y = cy0 + max(0, ((cy1 - cy0) - gh) // 2)
    for ch in chars:
        region = out[:, y : min(y + gh, cy1), x : min(x + gw, cx1)]
        a = art.digits[ch][:, : region.shape[1], : region.shape[2], None]
        region[:] = (region * (1 - a) + np.float32([235, 225, 190]) * a + 0.5).astype(np.uint8)
        x += gw + gap
    return out


def render_clip(seed: int, frames: int, size: int = 64) -> GameClip:
    """Simulate and render one clip: uint8 frames (T, size, size, 3) and int64 actions (T,)."""
    size = _check_size(size)
    trace = simulate(seed, frames)
    return GameClip(frames=render_trace(trace, size), actions=trace.actions.copy())

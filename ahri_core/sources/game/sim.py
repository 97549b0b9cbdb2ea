"""The game's rules: actions, the sticky-random player policy, minion waves, towers, projectiles and effects.

:func:`simulate` runs the world for a number of frames and returns a :class:`GameTrace` in world units,
independent of the frame size; :mod:`.render` turns a trace into pixels.

Action convention (project-wide): ``actions[t]`` is the action that produced frame t, applied to
the state of frame t-1; ``actions[0] = -1`` since frame 0 is the initial state.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ahri_core.errors import ConfigError

from .geometry import (
    _BASE_RADIUS,
    _BLUE,
    _LANES,
    _RED,
    _TOWER_POS,
    _TOWER_TEAM,
    HUD_UNITS,
    VIEW_UNITS,
    WORLD_UNITS,
)

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

"""Rendering: a simulated :class:`~.sim.GameTrace` to uint8 frames, and :func:`render_clip` (simulate + render).

Per frame: the camera's window into the ground texture at the river's animation phase, then the sprites back
to front (towers, minions, the attack ring, the player, projectiles, effects, fireflies), the health bar over
the player, and the HUD strip (:mod:`.hud`).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from .art import (
    _FIREFLIES,
    _WATER_PHASES,
    _check_size,
    _effect_layers,
    _firefly_layers,
    _ground,
    _make_sheet,
    _minion_layers,
    _player_layers,
    _projectile_layers,
    _ring_layers,
    _Sheet,
    _tower_layers,
    firefly_positions,
)
from .geometry import _BLUE, _RED, _TOWER_POS, _TOWER_TEAM, PAD_UNITS, VIEW_UNITS
from .hud import HudArt, draw_hud, hud_art, play_height
from .sim import (
    _ATTACK_FRAMES,
    _CASTER,
    _MAX_EFFECT_AGE,
    _MELEE,
    _N_TOWERS,
    _PLAYER_HP,
    _PUFF,
    _SPARK,
    GameClip,
    GameTrace,
    simulate,
)


@dataclass
class _Art:
    """Everything a frame of one size is drawn from (made once per size)."""

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
    hud: HudArt


@functools.lru_cache(maxsize=8)
def _art(size: int) -> _Art:
    scale = size / VIEW_UNITS
    play_h = play_height(size)
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
        hud_art(size, scale, play_h, ground),
    )


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

    draw_hud(out, art.hud, trace, minions, mf, s)
    return out


def render_clip(seed: int, frames: int, size: int = 64) -> GameClip:
    """Simulate and render one clip: uint8 frames (T, size, size, 3) and int64 actions (T,)."""
    size = _check_size(size)
    trace = simulate(seed, frames)
    return GameClip(frames=render_trace(trace, size), actions=trace.actions.copy())

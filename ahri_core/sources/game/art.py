"""The game's art: the ground texture of the whole map (grass, cliffs, river, lanes, trees, bases) and the
sprite sheets (minions, towers, the player, attack rings, projectiles, effects, fireflies).

All of it is computed once per frame size from fixed seeds and cached; nothing here depends on a clip.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from ahri_core.errors import ConfigError

from .geometry import (
    _BASES,
    _BLUE,
    _LANES,
    _RED,
    _RIVER,
    _TOWER_POS,
    PAD_UNITS,
    VIEW_UNITS,
    WORLD_UNITS,
    _polyline_distance,
    _seg_distance,
)
from .sim import _CASTER, _MOVES, _SPARK


def _check_size(size: int) -> int:
    if int(size) != size or size < 16 or size > 512:
        raise ConfigError(f"game: size must be an integer from 16 to 512, got {size}")
    return int(size)


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


def _trees(n: int, scale: float, c: np.ndarray, lane_field: np.ndarray, river_field: np.ndarray
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Jungle trees (jittered grid, skipped near lanes, river, bases and walls) on the ``n`` x ``n`` ground of
    :func:`_ground_float`: (their dark shadow, their canopy colour, how much of each pixel the canopy covers)."""
    u, v = c[None, :], c[:, None]
    shape = (n, n)
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
    return shade, canopy, cover


def _draw_bases(img: np.ndarray, water: np.ndarray, u: np.ndarray, v: np.ndarray, blades: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray]:
    """The bases drawn over the ground: team-tinted stone platforms with rings and a nexus crystal; returns
    (the picture, the water left visible)."""
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
    return img, water


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

    # Jungle trees, their dark shadow first.
    shade, canopy, cover = _trees(n, scale, c, lane_field, river_field)
    img = img * (1 - 0.5 * shade)[..., None]
    img = img * (1 - cover[..., None]) + canopy
    water = water * (1 - 0.5 * shade) * (1 - cover)

    img, water = _draw_bases(img, water, u, v, blades)
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

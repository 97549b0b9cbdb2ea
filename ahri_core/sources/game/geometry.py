"""The map of the built-in game: its measures, the two bases, the three lanes, the river and the towers.

Everything here is in world units and fixed (no seed): the simulation walks minions along these lanes and
the art draws the same lanes, river and towers into the ground texture.
"""

from __future__ import annotations

import numpy as np

WORLD_UNITS = 192.0  # the square world, in world units
VIEW_UNITS = 64.0  # world units across the frame width; at size 64 one unit is one pixel
HUD_UNITS = 12.0  # height of the HUD strip at the bottom of the frame
PAD_UNITS = 32.0  # cliffs drawn around the world, so the camera can stay centred on the player

_BLUE, _RED = 0, 1
_BASES = np.array([[22.0, 170.0], [170.0, 22.0]])  # blue, red
_BASE_RADIUS = 16.0


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


def _seg_distance(u, v, a, b) -> np.ndarray:
    ab = b - a
    t = np.clip(((u - a[0]) * ab[0] + (v - a[1]) * ab[1]) / float(ab @ ab), 0.0, 1.0)
    return np.hypot(u - (a[0] + t * ab[0]), v - (a[1] + t * ab[1]))


def _polyline_distance(u, v, pts) -> np.ndarray:
    d = np.full(np.broadcast_shapes(np.shape(u), np.shape(v)), np.inf)
    for a, b in zip(pts[:-1], pts[1:], strict=True):
        d = np.minimum(d, _seg_distance(u, v, a, b))
    return d

"""The HUD strip at the bottom of every frame: a minimap, the player's health and a match clock.

Its static art (the strip with its frames and portrait, the minimap's picture of the map, the digit glyphs)
is made once per frame size by :func:`hud_art`; :func:`draw_hud` writes the parts that change per frame.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .art import _TEAM_COLORS, _check_size, _to_uint8
from .geometry import _TOWER_POS, _TOWER_TEAM, HUD_UNITS, PAD_UNITS, VIEW_UNITS, WORLD_UNITS
from .sim import _PLAYER_HP, GameTrace

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


def play_height(size: int) -> int:
    """Rows of the scrolling view above the HUD strip in a frame of ``size`` pixels."""
    return size - round(HUD_UNITS * (size / VIEW_UNITS))


def _layout(scale: float, play_h: int) -> dict[str, tuple[int, int, int, int]]:
    """Frame-pixel boxes (y0, y1, x0, x1) of the HUD parts that change."""
    return {
        "minimap": _box(scale, 1.5, 1.5, 11.5, 11.5, play_h),
        "health": _box(scale, 22.0, 3.5, 42.0, 6.5, play_h),
        "clock": _box(scale, 44.0, 3.0, 63.0, 9.0, play_h),
    }


@dataclass
class HudArt:
    """The static HUD of one frame size."""

    top: int  # first frame row of the strip (the play view's height)
    strip: np.ndarray  # uint8 (rows, size, 3)
    layout: dict[str, tuple[int, int, int, int]]  # boxes of the changing parts, frame pixels
    minimap_base: np.ndarray  # uint8 (m, m, 3): the map, darkened, towers marked
    digits: np.ndarray  # (11, h, w) float32 coverage: 0-9 and ':'


def hud_art(size: int, scale: float, play_h: int, ground: np.ndarray) -> HudArt:
    """The static HUD strip, the boxes of its changing parts, the minimap's base image and the digits."""
    hud_h = size - play_h
    hud = np.zeros((hud_h, size, 3), np.float64)
    yy = np.arange(hud_h)[:, None] / max(hud_h - 1, 1)  # (rows, 1): a slight vertical gradient
    hud[:] = (np.array([0.1, 0.11, 0.15])[None, :] * (1.15 - 0.3 * yy))[:, None, :]
    hud[: max(1, round(0.8 * scale))] = (0.62, 0.5, 0.28)  # gold trim
    layout = _layout(scale, play_h)
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
    return HudArt(play_h, _to_uint8(hud), layout, _to_uint8(mini), digits)


def hud_layout(size: int = 64) -> dict[str, tuple[int, int, int, int]]:
    """Frame-pixel boxes (y0, y1, x0, x1) of the HUD parts that change; the rest of the HUD is static.

    Also holds ``"hud"``: the whole strip, and ``"play"``: the scrolling view above it.
    """
    size = _check_size(size)
    play_h = play_height(size)
    out = _layout(size / VIEW_UNITS, play_h)
    out["hud"] = (play_h, size, 0, size)
    out["play"] = (0, play_h, 0, size)
    return out


def draw_hud(
    out: np.ndarray, hud: HudArt, trace: GameTrace, minions: np.ndarray, mf: np.ndarray, scale: float
) -> None:
    """Write the HUD of every frame into ``out`` (T, size, size, 3) uint8: the static strip, then the
    health bar, the minimap (minions as dots, the camera's view as an outline, the player) and the clock.

    ``minions``: all minion rows (N, 3) of the trace, ``mf``: the frame of each row.
    """
    s = scale
    n_frames = len(trace.actions)
    frame_idx = np.arange(n_frames)
    out[:, hud.top :] = hud.strip
    hy0, hy1, hx0, hx1 = hud.layout["health"]
    fill = np.round((hx1 - hx0) * trace.player_hp / _PLAYER_HP).astype(np.int64)
    full = (np.arange(hx1 - hx0)[None] < fill[:, None])[:, None, :, None]  # (T, 1, w, 1)
    out[:, hy0:hy1, hx0:hx1] = np.where(full, np.uint8([60, 200, 70]), np.uint8([40, 12, 12]))
    top = hy0 + max(1, (hy1 - hy0) // 3)
    np.copyto(out[:, hy0:top, hx0:hx1], np.uint8([120, 240, 120]), where=full)

    my0, my1, mx0, mx1 = hud.layout["minimap"]
    m = my1 - my0
    mm = out[:, my0:my1, mx0:mx1]
    mm[:] = hud.minimap_base
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

    cy0, cy1, cx0, cx1 = hud.layout["clock"]
    gh, gw = hud.digits.shape[1:]
    gap = max(1, round(s))
    minutes, seconds = np.minimum(trace.clock // 60, 99), trace.clock % 60
    chars = [minutes // 10, minutes % 10, np.full(n_frames, 10), seconds // 10, seconds % 10]
    x = cx0 + max(0, ((cx1 - cx0) - (5 * gw + 4 * gap)) // 2)
    y = cy0 + max(0, ((cy1 - cy0) - gh) // 2)
    for ch in chars:
        region = out[:, y : min(y + gh, cy1), x : min(x + gw, cx1)]
        a = hud.digits[ch][:, : region.shape[1], : region.shape[2], None]
        region[:] = (region * (1 - a) + np.float32([235, 225, 190]) * a + 0.5).astype(np.uint8)
        x += gw + gap

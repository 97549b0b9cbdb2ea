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

The parts, each a module of this package:

- :mod:`.geometry`: the map (world measures, bases, lanes, river, towers);
- :mod:`.sim`: the rules and the policy, :func:`simulate` -> :class:`GameTrace` (world units, no pixels);
- :mod:`.art`: the ground texture and the sprite sheets, made once per frame size;
- :mod:`.hud`: the HUD strip (minimap, health, clock) and :func:`hud_layout`;
- :mod:`.render`: :func:`render_trace` (trace -> frames) and :func:`render_clip` (simulate + render).
"""

from __future__ import annotations

from .art import firefly_positions
from .geometry import HUD_UNITS, PAD_UNITS, VIEW_UNITS, WORLD_UNITS
from .hud import hud_layout
from .render import render_clip, render_trace
from .sim import (
    _MOVES,
    ACTION_MEANINGS,
    ACTION_WEIGHTS,
    ATTACK,
    GAME_FPS,
    NUM_ACTIONS,
    STICKY_PROB,
    GameClip,
    GameTrace,
    simulate,
)

__all__ = [
    "ACTION_MEANINGS",
    "ACTION_WEIGHTS",
    "ATTACK",
    "GAME_FPS",
    "HUD_UNITS",
    "NUM_ACTIONS",
    "PAD_UNITS",
    "STICKY_PROB",
    "VIEW_UNITS",
    "WORLD_UNITS",
    "GameClip",
    "GameTrace",
    "firefly_positions",
    "hud_layout",
    "render_clip",
    "render_trace",
    "simulate",
    "_MOVES",
]

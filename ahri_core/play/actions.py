"""The actions of a run in ``ahri play``: what each action meaning asks for, the keys that choose each
action (:class:`ActionSpace`) and where a run's action meanings are read from (:func:`run_action_meanings`).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError
from ..inference.world import WorldModel

__all__ = [
    "ActionSpace",
    "CONTROL_KEYS",
    "DIGIT_KEYS",
    "MOVE_KEYS",
    "meaning_parts",
    "run_action_meanings",
]


# KeyboardEvent.code (the key's place on the keyboard, whatever the layout) -> what it asks for
MOVE_KEYS: dict[str, str] = {
    "ArrowUp": "up", "KeyW": "up",
    "ArrowDown": "down", "KeyS": "down",
    "ArrowLeft": "left", "KeyA": "left",
    "ArrowRight": "right", "KeyD": "right",
    "Space": "fire",
}
DIGIT_KEYS: dict[str, int] = {**{f"Digit{i}": i for i in range(10)}, **{f"Numpad{i}": i for i in range(10)}}
CONTROL_KEYS: dict[str, str] = {"KeyR": "reset", "KeyP": "pause", "KeyV": "record"}
_OPPOSITE = {"up": "down", "down": "up", "left": "right", "right": "left"}
_NOOP_WORDS = {"noop", "idle", "none", "nothing", "stay", "wait"}
_WORDS = (("up", "up"), ("down", "down"), ("left", "left"), ("right", "right"), ("fire", "fire"), ("attack", "fire"))


def meaning_parts(meaning: str) -> frozenset[str] | None:
    """What an action meaning asks for as a set of {up, down, left, right, fire}: "up_right" and ALE's
    "UPRIGHT" -> {up, right}; "attack" and "FIRE" -> {fire}; "idle" and "NOOP" -> {}; a meaning with other
    words (ALE's "RESET") -> None (only its number key reaches it)."""
    rest = "".join(ch for ch in meaning.lower() if ch.isalnum())
    if rest in _NOOP_WORDS:
        return frozenset()
    parts = set()
    for word, part in _WORDS:
        if word in rest:
            parts.add(part)
            rest = rest.replace(word, "", 1)
    return frozenset(parts) if parts and not rest else None


@dataclass(frozen=True)
class ActionSpace:
    """The actions a run was trained with and the keys that choose them.

    ``kind``: "discrete" (an index per frame, -1 = no action), "continuous" (a vector per frame, NaN = no
    action), "latent" (a code of the run's latent-action code book per frame, given to the model as its
    vector; -1 = no action) or "none" (the model never saw actions). ``idle`` is the input when no key is
    held: the run's own no-op when its meanings name one ("idle" in the built-in game, ALE's "NOOP"), since
    that is what the model saw while a player pressed nothing; else the model's "no action" (-1).

    Keys: arrows or WASD for directions and space for fire/attack choose the meaning that asks for exactly
    the held keys (else the largest part of them, the most recently pressed key first); number keys choose
    the action (or latent code) with that index. Continuous actions get no keys yet (every frame is "no
    action").

    Latent actions (learned from video without actions): the hook is :meth:`of`, which takes the code book
    from ``world.latent_actions`` (its ``vectors(codes)``), the code count from ``world.code_count`` and
    names from ``world.action_names()`` (a few labelled codes: "left", "jump"...); named codes get the keys
    their names ask for, codes 0-9 their number keys. :class:`PlaySession` only calls :meth:`choose`,
    :meth:`label` and :meth:`tensor`.
    """

    kind: str = "none"
    meanings: tuple[str, ...] = ()
    idle: int = -1
    dim: int = 0
    vectors: Callable[[torch.Tensor], torch.Tensor] | None = field(default=None, compare=False, repr=False)

    @classmethod
    def of(cls, world: WorldModel) -> ActionSpace:
        lam = getattr(world, "latent_actions", None)
        if lam is not None:
            count = int(getattr(world, "code_count", None) or 0)
            names: dict[int, str] = {}
            if hasattr(world, "action_names"):
                names = {int(v): str(k) for k, v in world.action_names().items()}
            meanings = tuple(names.get(i, f"code {i}") for i in range(count))
            return cls(kind="latent", meanings=meanings, idle=-1, vectors=lam.vectors)
        cfg = world.dynamics.config
        kind = str(getattr(cfg, "action_kind", "none"))
        if kind == "none":
            return cls()
        if kind == "continuous":
            return cls(kind="continuous", dim=int(getattr(cfg, "action_dim", 0)))
        if kind != "discrete":
            raise ConfigError(f"run {world.name}: action kind {kind!r} cannot be played (known: discrete, continuous, none)")
        count = int(getattr(cfg, "action_count", 0))
        meanings = run_action_meanings(world)
        if len(meanings) != count:
            meanings = [f"action {i}" for i in range(count)]
        idle = next((i for i, m in enumerate(meanings) if meaning_parts(m) == frozenset()), -1)
        return cls(kind="discrete", meanings=tuple(meanings), idle=idle)

    def choose(self, codes: Sequence[str]) -> int:
        """The discrete action (or code) for the held keys (``codes`` oldest first); ``idle`` when none applies."""
        if self.kind not in ("discrete", "latent"):
            return -1
        digits = [DIGIT_KEYS[c] for c in codes if c in DIGIT_KEYS and DIGIT_KEYS[c] < len(self.meanings)]
        if digits:
            return digits[-1]
        recency: dict[str, int] = {}
        for i, c in enumerate(codes):
            if c in MOVE_KEYS:
                recency[MOVE_KEYS[c]] = i
        for part, other in _OPPOSITE.items():  # both of a pair held: the later one counts
            if part in recency and other in recency and recency[part] < recency[other]:
                del recency[part]
        if not recency:
            return self.idle
        best, best_key = self.idle, (0, -1)
        for i, m in enumerate(self.meanings):
            parts = meaning_parts(m)
            if not parts or not parts <= recency.keys():
                continue
            key = (len(parts), max(recency[p] for p in parts))
            if key > best_key:
                best, best_key = i, key
        return best

    def label(self, action: int) -> str:
        if self.kind in ("discrete", "latent"):
            return self.meanings[action] if 0 <= action < len(self.meanings) else "no action"
        return "no action" if self.kind == "continuous" else ""

    def tensor(self, action: int, device: torch.device | str = "cpu") -> torch.Tensor | None:
        """The model's input for one frame: (1, 1) int64, (1, 1, A) float (NaN: no action) or None."""
        if self.kind == "discrete":
            return torch.tensor([[action]], dtype=torch.long, device=device)
        if self.kind == "latent" and self.vectors is not None:
            return self.vectors(torch.tensor([[action]], dtype=torch.long)).float().to(device)
        if self.kind == "continuous":
            return torch.full((1, 1, self.dim), float("nan"), device=device)
        return None

    def key_help(self) -> list[dict[str, Any]]:
        """One row per action for the page: its index, meaning and the keys that choose it."""
        names = {"up": "↑/W", "down": "↓/S", "left": "←/A", "right": "→/D", "fire": "space"}
        rows = []
        for i, m in enumerate(self.meanings):
            parts = meaning_parts(m)
            keys = [] if not parts else ["+".join(names[p] for p in ("up", "down", "left", "right", "fire") if p in parts)]
            if i == self.idle:
                keys.append("no key")
            if i < 10:
                keys.append(str(i))
            rows.append({"index": i, "meaning": m, "keys": keys})
        return rows

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "meanings": list(self.meanings), "idle": self.idle,
                "idle_label": self.label(self.idle), "keys": self.key_help()}


def run_action_meanings(world: WorldModel) -> list[str]:
    """The meanings of a run's discrete actions: recorded with the run when it has them, else read from the
    index of the latent set it was trained on (``action_meanings``); [] when neither says."""
    lat = world.info.get("latents") or {}
    found = lat.get("action_meanings")
    if not found:
        meta_lat = _read_json(world.run_dir / "run.json").get("latents") or {}
        found = meta_lat.get("action_meanings")
        path = lat.get("path") or meta_lat.get("path")
        if not found and path:
            found = _read_json(Path(path) / "index.json").get("action_meanings")
    if isinstance(found, str):
        with contextlib.suppress(json.JSONDecodeError):
            found = json.loads(found)
    return [str(m) for m in found] if isinstance(found, list) else []


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}

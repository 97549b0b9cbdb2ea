"""Pictures of a run at each validation (shown in TensorBoard): :func:`picture`, a grid of frames;
:class:`Dream`, the dynamics stage's: one fixed held-out window as context | 4-step prediction | truth at a
few horizons, all decoded with the tokenizer that made the latent set (:func:`find_tokenizer`). The
tokenizer stage's picture is its ``reconstructions.png`` (held-out frames over their reconstructions).

A preview that cannot be made (no tokenizer found for the latent set) raises :class:`PreviewUnavailable`
once; the loop then leaves the pictures out of the run.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

HORIZONS = (1, 2, 4, 8)  # the predicted frames shown (frames after the context), as far as the window allows
CONTEXT_SHOWN = 2  # the last context frames shown
STEPS = 4  # sampling steps per frame (the finest the model has when it was trained without shortcut forcing)


class PreviewUnavailable(Exception):
    """The objective cannot make its pictures in this run (the message says why)."""


def picture(rows: Sequence[Sequence[np.ndarray | None]], gap: int = 2, min_height: int = 96) -> np.ndarray:
    """Frames (H, W, 3) uint8 in rows on a grey background, ``gap`` pixels apart; a column that is None in
    every row is a wider gap that separates groups. Scaled up by a whole factor to at least ``min_height``
    pixels per frame."""
    frame = next(f for row in rows for f in row if f is not None)
    h, w = frame.shape[:2]
    cols = max(len(r) for r in rows)
    widths = [w if any(j < len(r) and r[j] is not None for r in rows) else 2 * gap for j in range(cols)]
    xs = np.cumsum([gap] + [cw + gap for cw in widths])
    out = np.full((len(rows) * (h + gap) + gap, int(xs[-1]), 3), 96, dtype=np.uint8)
    for i, row in enumerate(rows):
        for j, f in enumerate(row):
            if f is not None:
                y = gap + i * (h + gap)
                out[y : y + h, xs[j] : xs[j] + w] = f
    k = max(1, -(-min_height // h))
    return out.repeat(k, axis=0).repeat(k, axis=1) if k > 1 else out


def find_tokenizer(latent_info: dict[str, Any], tokenizer_id: str, runs_dir: Path | None) -> Path:
    """The tokenizer (weights file or run directory) that made a latent set: the one its index names, else
    the run named by its tokenizer id in ``runs_dir`` (a workspace's runs folder; None: not looked for)."""
    from ..inference.world import _tokenizer_candidates
    from ..workspace import Workspace

    ws = Workspace(runs_dir.parent if runs_dir is not None else Path())
    tid = tokenizer_id if runs_dir is not None else ""
    cands = _tokenizer_candidates({"latents": {**latent_info, "tokenizer_id": tid}, "tokenizer_id": tid}, ws)
    found = next((c for c in cands if c.exists()), None)
    if found is None:
        tried = ", ".join(str(c) for c in cands) or "the latent set names none"
        raise PreviewUnavailable(f"the latent set's tokenizer was not found (tried {tried})")
    return found


def _window(videos: Sequence[Any], max_frames: int | None) -> tuple[int, int, int, tuple[int, ...]] | None:
    """(video, start, context, horizons) of the fixed preview window: the longest held-out video, the
    context the model's window holds, the horizons of :data:`HORIZONS` that fit; None if no video has 2 frames."""
    if not videos:
        return None
    vi = max(range(len(videos)), key=lambda i: (videos[i].frames, -i))
    n = videos[vi].frames
    if n < 2:
        return None
    context = max(1, min((max_frames or 17) - 1, n - 1))
    horizons = tuple(h for h in HORIZONS if context + h <= n) or (1,)
    while context + horizons[-1] > n:  # fewer context frames so that the largest horizon fits
        context -= 1
    if context < 1:
        return None
    return vi, (n - context - horizons[-1]) // 2, context, horizons


class Dream:
    """The dynamics preview: a fixed held-out window rolled out by the model and decoded by the tokenizer."""

    def __init__(self, videos: Sequence[Any], traits: Any, tokenizer_path: Path, tokens: int, channels: int,
                 device: torch.device) -> None:
        from ..inference.sampler import check_steps
        from ..inference.world import _load_tokenizer_file

        try:
            self.tokenizer = _load_tokenizer_file(tokenizer_path, device)
        except Exception as e:  # noqa: BLE001 - any unreadable tokenizer only costs the pictures
            raise PreviewUnavailable(f"the tokenizer {tokenizer_path} does not load ({e})") from None
        cfg = self.tokenizer.cfg
        if (cfg.tokens, cfg.channels) != (tokens, channels):
            raise PreviewUnavailable(f"the tokenizer {tokenizer_path} makes latents {cfg.tokens}x{cfg.channels}, "
                                     f"not the run's {tokens}x{channels}")
        found = _window(videos, traits.max_frames)
        if found is None:
            raise PreviewUnavailable("no held-out video is long enough")
        vi, start, self.context, self.horizons = found
        self.traits, self.device = traits, device
        self.steps = STEPS if STEPS <= traits.k_max else traits.k_max
        try:
            check_steps(self.steps, traits)
        except Exception:  # noqa: BLE001 - a model without shortcut forcing samples with its finest steps
            self.steps = traits.k_max
        span = self.context + self.horizons[-1]
        v = videos[vi]
        self.latents = v.latents[start : start + span].float()[None]  # (1, span, N, C)
        self.actions = None if v.actions is None else v.actions[start : start + span][None]
        self.truth = self._decode(self.latents[0, list(self._shown_context()) + self._at_horizons()])

    def _shown_context(self) -> range:
        return range(max(0, self.context - CONTEXT_SHOWN), self.context)

    def _at_horizons(self) -> list[int]:
        return [self.context + h - 1 for h in self.horizons]

    def _decode(self, latents: torch.Tensor) -> np.ndarray:
        from ..data.frames import to_uint8
        from ..models.tokenizer import decode_latents

        return to_uint8(decode_latents(self.tokenizer, latents, device=self.device, precision="fp32"))

    @torch.no_grad()
    def __call__(self, model: torch.nn.Module, precision: str) -> np.ndarray:
        """Two rows: the last context frames, then the prediction at each horizon (top) and the truth (bottom)."""
        from ..inference.sampler import Sampler

        was = model.training
        model.eval()
        try:
            x = self.latents.to(self.device)
            actions = None if self.actions is None else self.actions.to(self.device)
            if hasattr(model, "latent_actions") and hasattr(model, "action_model"):
                actions = model.latent_actions(x)  # a latent-action model: the codes of the true window
            sampler = Sampler(model, self.traits, steps=self.steps, precision=precision)
            res = sampler.rollout(x[:, : self.context], self.horizons[-1], actions=actions,
                                  generator=torch.Generator().manual_seed(0))
        finally:
            model.train(was)
        pred = self._decode(res.latents[0, [h - 1 for h in self.horizons]].float().cpu())
        c = len(self._shown_context())
        ctx = list(self.truth[:c])
        return picture([[*ctx, None, *pred], [*ctx, None, *self.truth[c:]]])

"""The live dream of ``ahri play`` (:class:`LiveDream`): the sampler one frame at a time, the action of each
frame chosen when it is made.
"""

from __future__ import annotations

import torch

from ..errors import ConfigError, DataError
from ..inference.sampler import Stream
from ..inference.world import WorldModel

__all__ = [
    "LiveDream",
]


def _takes_actions(world: WorldModel) -> bool:
    return getattr(world.dynamics.config, "action_kind", "none") != "none"


class LiveDream:
    """:class:`~ahri_core.inference.sampler.Sampler` one frame at a time, each frame's action given when it is made.

    The same steps as the sampler's cached rollout, in the same order and with the same noise: the context
    is corrupted and committed to the KV cache (frames older than the model's window are skipped), then each
    new frame is denoised in ``steps`` Euler steps from pure noise and committed, corrupted, for the frames
    after it. The cache is a ring of the model's window, so every frame costs the same however long the
    session runs. :meth:`next` returns as soon as the frame is denoised; its commit runs at the start of the
    following call (or :meth:`settle`), so a caller can show the frame first.
    """

    def __init__(self, world: WorldModel, steps: int = 4, tau_ctx: float = 0.1, precision: str = "fp32",
                 seed: int = 0) -> None:
        self.world = world
        self.sampler = world.sampler(steps, tau_ctx, precision=precision)
        self.seed = int(seed)
        self._stream: Stream | None = None
        self._pending: tuple[torch.Tensor, torch.Tensor | None] | None = None

    @property
    def frames(self) -> int:
        """Frames committed (context included)."""
        return 0 if self._stream is None else self._stream.frames

    def start(self, latents: torch.Tensor, actions: torch.Tensor | None = None) -> None:
        """Begin from ``latents`` (C, N, Ch) with their ``actions`` ((C,) / (C, A) / None), noise seeded afresh."""
        if latents.shape[0] < 1:
            raise DataError("a live dream needs at least one context frame")
        act = None if actions is None or not _takes_actions(self.world) else actions[None]
        mf = self.sampler.traits.max_frames
        self._pending = None
        # a model without a window limit still gets one: memory must not grow with the session
        self._stream = self.sampler.stream(latents[None], act, torch.Generator().manual_seed(self.seed),
                                           cache_frames=mf if mf is not None else max(latents.shape[0] + 1, 64))

    def next(self, action: torch.Tensor | None) -> torch.Tensor:
        """The next frame's clean latents (N, Ch) given the action that makes it ((1, 1) / (1, 1, A) / None)."""
        if self._stream is None:
            raise ConfigError("LiveDream.next before start")
        self.settle()
        a = action if action is not None and _takes_actions(self.world) else None
        x = self._stream.denoise(a)
        self.world.check_finite(x)
        self._pending = (x, a)
        return x[0, 0].float().cpu()

    def settle(self) -> bool:
        """Commit the last frame made (corrupted as context), if not done yet; returns whether it did."""
        if self._pending is None or self._stream is None:
            return False
        x, a = self._pending
        self._pending = None
        self._stream.commit(x, a)
        return True

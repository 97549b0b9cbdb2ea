"""The trained world model: a dynamics run bundled with the tokenizer that made its latents, ready to sample.

- :class:`WorldModel` bundles what sampling from a trained run needs: the dynamics model and its
  :class:`~ahri_core.inference.sampler.ModelTraits`, the tokenizer that made its latents, the frame rate and size.
  :func:`load_world_model` builds it from a run directory (or the latest finished dynamics run,
  :func:`latest_dynamics_run`; :func:`resolve_run` turns a name or a path into a run directory).
- the dynamics model samples in the precision ``auto`` resolves to for this machine, model and batch
  shape (:meth:`WorldModel.choose_precision`, measured once and cached in the workspace). The tokenizer
  encodes and decodes in fp32.

``ahri rollout`` (:mod:`ahri_core.inference.rollout`), ``ahri eval`` (:mod:`ahri_core.eval.evaluate`) and
``ahri play`` sample from it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import CheckpointError, ConfigError
from ..runtime import PrecisionChoice
from ..workspace import Workspace, read_run_meta, run_status
from .sampler import ModelTraits, Sampler, traits_of

__all__ = [
    "WorldModel",
    "latest_dynamics_run",
    "load_world_model",
    "resolve_run",
]


SAMPLING_CALL_FRAMES = 2  # frames in one cached sampler call: the frame being denoised and the one it commits


@dataclass
class WorldModel:
    """A trained dynamics run with its tokenizer, ready to sample."""

    dynamics: torch.nn.Module
    traits: ModelTraits
    tokenizer: torch.nn.Module
    fps: float
    size: tuple[int, int]  # (height, width) of the tokenizer's frames
    run_dir: Path
    info: dict[str, Any] = field(default_factory=dict)
    tokenizer_path: Path | None = None
    fit: str = "pad"  # how the tokenizer brings a frame of another aspect to its size
    workspace: Workspace | None = None  # where the run was found (its cache holds precision measurements)

    @property
    def name(self) -> str:
        return self.run_dir.name

    @property
    def device(self) -> torch.device:
        return next(self.dynamics.parameters()).device

    def check_finite(self, latents: torch.Tensor) -> torch.Tensor:
        """Predicted latents, or an error naming the weights file when they hold NaN or inf (damaged or
        diverged weights that still load) -- before anything is decoded or written."""
        if not bool(torch.isfinite(latents).all()):
            path = self.info.get("path") or self.run_dir
            raise CheckpointError(
                f"dynamics model {path} produced non-finite latents; the weights are damaged or the training "
                "diverged: retrain, or evaluate another checkpoint (best.safetensors)"
            )
        return latents

    def encode(self, frames: torch.Tensor | np.ndarray, batch: int = 64) -> torch.Tensor:
        """Frames (T, 3, H, W) float in [0, 1] or (T, H, W, 3) uint8 -> latents (T, N, C) float32.

        The same encoder path as ``ahri tokenize`` (:func:`~ahri_core.models.tokenizer.encode_frames`), so
        rollout context latents match the latents the dynamics model was trained on; here in fp32 (tokenize
        may have run in bf16, which changes the latents by bf16 rounding only).
        """
        from ..models.tokenizer import encode_frames

        out = [encode_frames(self.tokenizer, frames[i : i + batch], self.device) for i in range(0, len(frames), batch)]
        return torch.cat(out) if out else torch.zeros(0)

    def decode(self, latents: torch.Tensor, batch: int = 64) -> torch.Tensor:
        """Latents (..., N, C) -> frames (..., 3, H, W) in [0, 1], decoded in float32 for the metrics."""
        from ..models.tokenizer import decode_latents

        lead = latents.shape[:-2]
        flat = latents.reshape(-1, *latents.shape[-2:]).float()
        x = decode_latents(self.tokenizer, flat, batch_size=batch, device=self.device, precision="fp32")
        return x.reshape(*lead, *x.shape[1:])

    def sampler(self, steps: int, tau_ctx: float, cache: bool = True, precision: str = "fp32") -> Sampler:
        """A :class:`~ahri_core.inference.sampler.Sampler` of this model in a resolved precision ("bf16" or "fp32")."""
        if precision == "auto":
            raise ConfigError("precision 'auto' must be resolved first (WorldModel.choose_precision)")
        return Sampler(self.dynamics, self.traits, steps=steps, tau_ctx=tau_ctx, cache=cache, precision=precision)

    def precision_key(self, batch: int, frames: int) -> str:
        """The model and the batch shape in a few words: what a cached precision measurement is valid for."""
        import hashlib

        cfg = self.dynamics.config
        fields = cfg.weights_fields() if hasattr(cfg, "weights_fields") else dict(getattr(cfg, "__dict__", {}))
        digest = hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()[:10]
        shape = f"{getattr(cfg, 'tokens', '?')}x{getattr(cfg, 'channels', '?')}"
        return f"dynamics {type(self.dynamics).__name__} {digest} latents {shape} batch {batch}x{frames}"

    def choose_precision(
        self, requested: str, batch: int, frames: int, cache_dir: str | os.PathLike | None = None
    ) -> PrecisionChoice:
        """Resolve ``requested`` ("auto", "bf16", "fp32") for sampling this model on its device.

        ``auto`` goes through :func:`ahri_core.runtime.choose_precision`; where it must measure (a CPU with
        native bf16), the step it times is one forward call of the dynamics model on ``batch`` clips of at most
        ``SAMPLING_CALL_FRAMES`` frames under ``runtime.autocast``, inside ``torch.inference_mode()``: the shape of
        the sampler's calls, which with the KV cache compute one or two frames (a frame being denoised, and the
        finished one committed with it), not the whole window. A whole-window forward favours bf16 (large matrix
        products), and chose it where one-frame sampling is slower in bf16: on a 2-core AMD EPYC with AVX-512,
        batch-1 rollouts ran at 37-51 frames/s in fp32 against 30-36 in bf16 (``benchmarks/bench_sampling.py``).
        The result is cached in ``<cache_dir>/precision.json`` per machine and per :meth:`precision_key`.
        """
        from .. import runtime

        dev = self.device
        cfg = self.dynamics.config
        if self.traits.max_frames is not None:
            frames = min(frames, self.traits.max_frames)
        batch, frames = max(1, int(batch)), max(1, min(int(frames), SAMPLING_CALL_FRAMES))

        def step(p: str) -> None:
            g = torch.Generator().manual_seed(0)
            z = torch.randn((batch, frames, cfg.tokens, cfg.channels), generator=g).to(dev)
            tau = torch.full((batch, frames), 0.5, device=dev)
            d = torch.full((batch, frames), self.traits.d_min, device=dev)
            with torch.inference_mode(), runtime.autocast(dev, p):
                self.dynamics(z, tau, d)

        return runtime.choose_precision(
            requested, dev, step=step, key=self.precision_key(batch, frames), cache_dir=cache_dir
        )

    def actions_usable(self) -> bool:
        """Whether the model takes the real actions of a clip (a latent-action model takes its own codes)."""
        return self.latent_actions is None and getattr(self.dynamics.config, "action_kind", "none") != "none"

    @property
    def latent_actions(self) -> torch.nn.Module | None:
        """The run's latent action encoder (:class:`~ahri_core.models.latent_actions.LatentActionModel`), if any."""
        return getattr(self.dynamics, "action_model", None)

    @property
    def code_count(self) -> int | None:
        """Latent codes (quantised latent-action runs) or real discrete actions the model takes; else None."""
        lam = self.latent_actions
        if lam is not None:
            return int(lam.config.codes) if lam.config.quantize else None
        cfg = self.dynamics.config
        return int(cfg.action_count) if getattr(cfg, "action_kind", "none") == "discrete" else None

    @torch.no_grad()
    def infer_codes(self, latents: torch.Tensor) -> torch.Tensor:
        """Latent codes of a clip's latents (T, N, C) -> (T,) int64, frame 0 = -1 (latent-action runs)."""
        from ..models.latent_actions import video_codes

        if self.latent_actions is None:
            raise ConfigError(f"run {self.name} has no latent actions (train with ahri train --latent-actions)")
        return video_codes(self.dynamics, latents)

    def action_names(self) -> dict[str, int]:
        """Names usable in ``--actions``: the few-label map of a latent-action run (name -> code), or the
        real action names of a discrete-action run (name -> id)."""
        if self.latent_actions is not None:
            amap = self.info.get("action_map") or {}
            return {str(k): int(v) for k, v in (amap.get("names") or {}).items()}
        meanings = (self.info.get("latents") or {}).get("action_meanings") or []
        return {str(m): i for i, m in enumerate(meanings)}


def latest_dynamics_run(workspace: Workspace) -> Path:
    """The most recently finished dynamics run in the workspace (by its weights' modification time)."""
    best: tuple[float, Path] | None = None
    if workspace.runs.is_dir():
        for d in workspace.runs.iterdir():
            meta = read_run_meta(d)
            w = d / "model.safetensors"
            if meta.get("stage") == "dynamics" and run_status(meta)[0] == "finished" and w.is_file():
                t = w.stat().st_mtime
                if best is None or t > best[0]:
                    best = (t, d)
    if best is None:
        raise ConfigError(
            f"no finished dynamics run in {workspace.runs}; train one (ahri train) or name a run (ahri eval RUN, ahri rollout CLIP --run RUN)"
        )
    return best[1]


def resolve_run(run: str | os.PathLike | None, workspace: Workspace) -> Path:
    """A run given as a path or a name in the workspace; None = the latest finished dynamics run."""
    if run is None:
        return latest_dynamics_run(workspace)
    p = Path(run)
    if p.exists():
        return p
    q = workspace.run_dir(str(run))
    if q.exists():
        return q
    raise ConfigError(f"run {run!r} not found (neither a path nor a run in {workspace.runs})")


def _tokenizer_candidates(info: dict[str, Any], workspace: Workspace) -> list[Path]:
    """Where the tokenizer of a dynamics run may be: named by the latent set's index, or runs/<tokenizer-id>."""
    cands: list[Path] = []
    lat = info.get("latents") or {}
    tid = info.get("tokenizer_id") or lat.get("tokenizer_id") or ""
    lpath = lat.get("path")
    if lpath:
        idx = Path(lpath) / "index.json"
        if idx.is_file():
            try:
                index = json.loads(idx.read_text())
            except (json.JSONDecodeError, OSError, UnicodeDecodeError):
                index = {}
            if not isinstance(index, dict):  # a damaged index names no tokenizer (loading the set reports it)
                index = {}
            for key in ("tokenizer_path", "tokenizer_weights", "tokenizer_run", "tokenizer"):
                v = index.get(key)
                if isinstance(v, str) and v:
                    cands.append(Path(v))
    if tid:
        cands.append(workspace.run_dir(tid))
    return cands


def _load_tokenizer_file(path: Path, device: torch.device) -> torch.nn.Module:
    """A tokenizer from a run directory (its inference weights: EMA when present) or a weights file."""
    from ..models.tokenizer import load_tokenizer, weights_for_inference

    w = weights_for_inference(path) if path.is_dir() else path
    tok, _ = load_tokenizer(w, device=device)
    return tok.eval()


def load_world_model(
    run: str | os.PathLike | None,
    workspace: Workspace | None = None,
    tokenizer: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
) -> WorldModel:
    """Load a dynamics run (path or name; None = the latest finished one) and the tokenizer it was trained on."""
    from ..models.latent_actions import load_world_dynamics

    ws = workspace or Workspace.resolve()
    run_dir = resolve_run(run, ws)
    model, info = load_world_dynamics(run_dir, device=device)  # plain and latent-action runs
    traits = traits_of(model, info)
    cands = [Path(tokenizer)] if tokenizer is not None else _tokenizer_candidates(info, ws)
    tok_path = next((c for c in cands if c.exists()), None)
    if tok_path is None:
        tried = ", ".join(str(c) for c in cands) or "nothing recorded in the run"
        raise CheckpointError(
            f"cannot find the tokenizer of run {run_dir.name} (tried {tried}); pass it with --tokenizer RUN"
        )
    tok = _load_tokenizer_file(tok_path, torch.device(device))
    cfg = getattr(tok, "cfg", None) or getattr(tok, "config", None)
    size = (int(cfg.height), int(cfg.width))
    # the rate the dynamics model was trained at: its latent set's (videos slower than the tokenizer's rate
    # keep their own), else the tokenizer's
    fps = float((info.get("latents") or {}).get("fps") or getattr(cfg, "fps", 0) or 20.0)
    tok_tokens, tok_channels = int(getattr(cfg, "tokens", 0)), int(getattr(cfg, "channels", 0))
    dcfg = model.config
    if (tok_tokens, tok_channels) != (dcfg.tokens, dcfg.channels):
        raise CheckpointError(
            f"tokenizer {tok_path} makes latents {tok_tokens}x{tok_channels} but run {run_dir.name} was trained on "
            f"{dcfg.tokens}x{dcfg.channels}"
        )
    return WorldModel(
        dynamics=model, traits=traits, tokenizer=tok, fps=fps, size=size, run_dir=Path(run_dir), info=info,
        tokenizer_path=tok_path, workspace=ws, fit=str(cfg.fit),
    )

"""The dynamics stage's objective: diffusion forcing (+ shortcut forcing) on windows of latents, as the
training loop sees it (:class:`DynamicsObjective`), and its held-out validation (:func:`validate`). The loss
lives in :mod:`ahri_core.diffusion`, the windows and the batch sampler in :mod:`ahri_core.data.windows`, the
model in :mod:`ahri_core.models.dynamics`; the stage's entry point is :func:`ahri_core.train.dynamics.train_dynamics`.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ...config.settings import DataSettings, DiffusionSettings, LatentActionSettings, TrainSettings
from ...data.windows import LatentSet, LatentVideo, make_loader, validation_windows
from ...diffusion import add_noise, forcing_loss, sample_noise_levels
from ...eval.metrics import memorising_gap
from ...models.dynamics import KIND, DynamicsModel
from ...models.dynamics_config import DynamicsConfig
from ...models.latent_actions import KIND as LAM_KIND
from ...models.latent_actions import LatentActionConfig, LatentActionDynamics, latent_action_config
from ...runtime import autocast
from .. import distributed
from ..common import RunningRMS
from ..compiling import compile_regions
from ..preview import PreviewUnavailable
from .base import Objective, StepOut

STAGE = "dynamics"
VAL_TAUS = (0.1, 0.5, 0.9)  # validation: every frame noised to each of these levels
VAL_TAU_CTX = 0.1  # validation of next-frame prediction: context noised (and labelled) like the sampler does
VAL_WINDOWS = 32


def uses_latent_settings(s: LatentActionSettings | None) -> bool:
    """Whether a run's actions differ from the latent set's: latent actions, or real actions ignored. Runs that
    use neither keep the settings (and run.json) they always had."""
    return s is not None and (s.enabled or s.ignore_actions)


def _loader_shapes(train: TrainSettings, data: DataSettings) -> tuple[tuple[int, int], tuple[int, int] | None, float]:
    if data.alternating:
        return (data.seq_len_short, data.batch_size_short), (data.seq_len_long, data.batch_size_long), data.long_ratio
    return (data.seq_len, train.batch_size), None, 0.0


def _val_length(data: DataSettings) -> int:
    return data.seq_len_short if data.alternating else data.seq_len


@torch.no_grad()
def validate(
    model: DynamicsModel,
    videos: list[LatentVideo],
    keys: list[tuple[int, int, int]],
    device: torch.device,
    precision: str = "fp32",
    shortcut: bool = False,
    batch_size: int = 8,
    seed: int = 12345,
    ignore_actions: bool = False,
    next_only: bool = False,
) -> dict[str, float]:
    """Held-out losses with fixed noise (the same at every call).

    ``tau=<v>``: x-space MSE with every frame at noise level v (d = d_min);
    ``next``: next-frame MSE of a one-step prediction, context frames at tau_ctx = 0.1 and the last frame
    pure noise (d = 1 for shortcut models, d_min otherwise) -- the rollout's first frame in one step;
    ``copy_last``: MSE of repeating the last context frame (the baseline ``next`` must beat).
    A latent-action model is conditioned on the actions its encoder infers from the window itself (frame t's
    from frames t - 1 and t), and also reports ``next_no_action``: ``next`` with "no action" everywhere (what
    the inferred codes are worth; see docs/actions.md). ``next_only``: only ``next`` and ``copy_last`` (one
    model call per batch).
    """
    was_training = model.training
    model.eval()
    g = torch.Generator().manual_seed(seed)
    d_min = 1.0 / model.config.k_max
    taus = () if next_only else VAL_TAUS
    sums: dict[str, float] = {f"tau={t:g}": 0.0 for t in taus}
    sums.update(next=0.0, copy_last=0.0)
    lam = isinstance(model, LatentActionDynamics)
    if lam and not next_only:
        sums["next_no_action"] = 0.0
    n = 0
    kind = "none" if lam or ignore_actions else model.config.action_kind
    for i in range(0, len(keys), batch_size):
        chunk = keys[i : i + batch_size]
        x = torch.stack([videos[v].latents[s : s + L] for v, s, L in chunk]).float()
        B, T = x.shape[:2]
        acts = None
        if kind != "none":
            rows = []
            for v, s, L in chunk:
                a = videos[v].actions
                if a is None:
                    a = torch.full((L,), -1, dtype=torch.long) if kind == "discrete" else torch.full(
                        (L, model.config.action_dim), float("nan")
                    )
                else:
                    a = a[s : s + L]
                rows.append(a)
            acts = torch.stack(rows).to(device)
        noise = torch.randn(x.shape, generator=g)
        x, noise = x.to(device), noise.to(device)
        if lam:
            acts = model.latent_actions(x)
        step = torch.full((B, T), d_min, device=device)
        with autocast(device, precision):
            for t in taus:
                tau = torch.full((B, T), t, device=device)
                xh = model(add_noise(x, noise, tau), tau, step, actions=acts)
                sums[f"tau={t:g}"] += float((xh.float() - x).pow(2).mean()) * B
            tau = torch.full((B, T), VAL_TAU_CTX, device=device)
            tau[:, -1] = 1.0
            st = step.clone()
            st[:, -1] = 1.0 if shortcut else d_min
            xh = model(add_noise(x, noise, tau), tau, st, actions=acts)
            if lam and not next_only:
                xn = model(add_noise(x, noise, tau), tau, st, actions=None)
                sums["next_no_action"] += float((xn[:, -1].float() - x[:, -1]).pow(2).mean()) * B
        sums["next"] += float((xh[:, -1].float() - x[:, -1]).pow(2).mean()) * B
        sums["copy_last"] += float((x[:, -2] - x[:, -1]).pow(2).mean()) * B
        n += B
    model.train(was_training)
    out = {k: v / max(n, 1) for k, v in sums.items()}
    if taus:
        out["mean"] = sum(out[f"tau={t:g}"] for t in taus) / len(taus)
    return out


# ---------------------------------------------------------------------------------------------- the objective
class _Windows:
    """The loader's batches with an exact position: (epoch, batches consumed in it)."""

    def __init__(self, loader: Any, sampler: Any) -> None:
        self.loader, self.sampler = loader, sampler
        self.per_epoch = len(sampler)
        self.epoch, self.position = 0, 0
        self._it: Any = None

    def next(self) -> Any:
        while True:
            if self._it is None:
                self.sampler.set_position(self.epoch, self.position)
                self._it = iter(self.loader)
            try:
                batch = next(self._it)
            except StopIteration:
                self._it = None
                self.epoch, self.position = self.epoch + 1, 0
                continue
            self.position += 1
            if self.position >= self.per_epoch:  # the epoch's last batch: the next call starts a new epoch
                self._it = None
                self.epoch, self.position = self.epoch + 1, 0
            return batch

    @property
    def epochs_done(self) -> float:
        return self.epoch + self.position / self.per_epoch

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.position, self._it = int(state["epoch"]), int(state["position"]), None


class _Student:
    """The student's forward with latent actions: the codes are inferred from the clean latents inside the
    model's forward (gradients reach the encoder, through DDP), which also returns the forward head's loss;
    ``forward_loss`` keeps it for :meth:`DynamicsObjective.compute` (None without a forward head)."""

    def __init__(self, net: Any, clean: torch.Tensor, keep: torch.Tensor) -> None:
        self.net, self.clean, self.keep = net, clean, keep
        self.forward_loss: torch.Tensor | None = None

    def __call__(self, z: torch.Tensor, tau: torch.Tensor, step: torch.Tensor, actions: torch.Tensor | None = None,
                 isolated: torch.Tensor | None = None) -> torch.Tensor:
        x_hat, self.forward_loss = self.net(z, tau, step, actions=actions, isolated=isolated, clean=self.clean,
                                            keep=self.keep, with_forward_loss=True)
        return x_hat


class DynamicsObjective(Objective):
    stage = STAGE
    kind = KIND
    task = "train"
    best_metric = "val_next"
    best_mode = "min"
    reduce = {"tau_min": "min", "tau_max": "max", "short_batches": "sum", "long_batches": "sum", "T": "last", "B": "last"}

    def __init__(self, cfg: DynamicsConfig, lset: LatentSet, train: TrainSettings, data: DataSettings,
                 diffusion: DiffusionSettings, settings: dict[str, Any], device: torch.device,
                 latent_actions: LatentActionSettings | None = None, model: DynamicsModel | None = None) -> None:
        """``model``: one already built from ``cfg`` (on ``device``) instead of a new one."""
        self.cfg, self.lset, self.train, self.data, self.diffusion = cfg, lset, train, data, diffusion
        self.settings, self.device = settings, device
        la = latent_actions if uses_latent_settings(latent_actions) else None
        self.latent_settings = la
        # latent actions: the encoder is a part of the model, so the loop's optimizer, EMA, checkpoints and
        # DDP see it; the real actions of the set (if any) are never read
        self.lam_cfg: LatentActionConfig | None = (
            latent_action_config(la.codes, lset.tokens, lset.channels, la.quantize, forward_head=la.forward_weight > 0,
                                 head_mixing=la.forward_mixing, history=la.history)
            if la is not None and la.enabled else None
        )
        if self.lam_cfg is not None:
            self.kind = LAM_KIND
        self.model = model if model is not None else self._build().to(device)
        self.model.train()
        self.normalizer = RunningRMS().to(device)
        self.gen = torch.Generator().manual_seed(train.seed + 1)  # tau, d, item flags (CPU)
        self.noise_gen = torch.Generator(device=device).manual_seed(train.seed + 2)  # the noise tensors
        short, long, ratio = _loader_shapes(train, data)
        self.dist = distributed.current()
        action_kind = "none" if la is not None else lset.action_kind  # latent or ignored: no real actions loaded
        loader, sampler = make_loader(lset.train, short, long, ratio, data.stride, train.seed, action_kind,
                                      lset.action_dim, data.num_workers, rank=self.dist.rank, world=self.dist.world,
                                      pin_memory=device.type == "cuda")
        self.windows = _Windows(loader, sampler)
        self.short, self.long = short, long
        self.teacher = copy.deepcopy(self.model) if (diffusion.ema_teacher and diffusion.shortcut) else None
        # whether the teacher copy takes the model's raw weights (the FSDP copy without an EMA teacher) or the EMA's
        self.raw_teacher = False
        self.val_keys = validation_windows(lset.val, _val_length(data), data.stride, VAL_WINDOWS) if lset.val else []
        # the same prediction on fixed windows of the training videos: held-out against seen video (memorising)
        self.fit_keys = (validation_windows(lset.train, _val_length(data), data.stride, VAL_WINDOWS)
                         if lset.val and lset.train else [])
        self.runs_dir: Path | None = None  # the workspace's runs folder (the preview looks for the tokenizer there)
        self.dream: Any = None  # the preview (built at the first one)

    def _build(self) -> DynamicsModel:
        return DynamicsModel(self.cfg) if self.lam_cfg is None else LatentActionDynamics(self.cfg, self.lam_cfg)

    def model_config(self) -> dict[str, Any]:
        if self.lam_cfg is not None:
            return {"dynamics": self.cfg.model_dump(mode="json"), "latent_actions": self.lam_cfg.model_dump(mode="json")}
        return self.cfg.model_dump(mode="json")

    def weights_extra(self) -> dict[str, Any]:
        extra = {"settings": self.settings, "latents": self.lset.describe(), "tokenizer_id": self.lset.tokenizer_id,
                 "shortcut": self.diffusion.shortcut, "k_max": self.diffusion.k_max, "max_frames": self.cfg.max_frames}
        if self.latent_settings is not None:
            extra["real_actions"] = "ignored"
        return extra

    def steps_per_epoch(self) -> int:
        return self.windows.per_epoch

    def epochs_done(self) -> float:
        return self.windows.epochs_done

    def next_batch(self) -> Any:
        return self.windows.next().to(self.device)

    def _global_size(self, batch: Any) -> int:
        """The size of the batch all ranks share (this rank holds every ``world``-th item of it)."""
        if not self.dist.enabled:
            return batch.size
        return self.long[1] if batch.kind == "L" and self.long is not None else self.short[1]

    def compute(self, batch: Any, step: int, precision: str) -> StepOut:
        d = self.diffusion
        B, T = batch.size, batch.frames
        Bg = self._global_size(batch)
        # noise levels and noise are drawn for the global batch, then each rank keeps its items: any number of
        # ranks trains on the same numbers a single process would
        levels = sample_noise_levels(
            Bg, T, k_max=d.k_max, shortcut=d.shortcut, step_sampling=d.step_sampling,
            bootstrap_fraction=d.bootstrap_fraction, single_image_fraction=d.single_image_fraction,
            context_fraction=d.context_fraction, context_tau_max=d.context_tau_max,
            bootstrap=step >= d.bootstrap_warmup, generator=self.gen,
        ).to(self.device)
        noise = torch.randn((Bg, *batch.latents.shape[1:]), generator=self.noise_gen, device=self.device)
        any_bootstrap = bool(levels.bootstrap.any())
        if Bg != B:
            mine = slice(self.dist.rank, None, self.dist.world)
            levels, noise = levels.select(mine), noise[mine]
        teacher = self._teacher(any_bootstrap)
        net: Any = self.train_net
        actions = batch.actions
        code_logs: dict[str, float] = {}
        student: _Student | None = None
        if self.lam_cfg is not None:
            # items that train with "no action" instead of their codes, drawn for the global batch like the levels
            keep = torch.rand(Bg, generator=self.gen) >= self.latent_settings.dropout
            if Bg != B:
                keep = keep[self.dist.rank :: self.dist.world]
            keep = keep.to(self.device)
            # The student infers the codes inside its own forward (gradients reach the encoder, through DDP);
            # the shortcut teacher is given the same codes, detached.
            with torch.no_grad():
                actions = self.model.latent_actions(batch.latents, keep, levels.isolated)
            net = student = _Student(net, batch.latents, keep)
            code_logs = self._code_stats(actions)
        elif self.latent_settings is not None:
            actions = None  # real actions ignored
        with autocast(self.device, precision):
            parts = forcing_loss(net, batch.latents, levels, noise, actions, self.normalizer, teacher=teacher,
                                 weighting=d.loss_weight)
        loss = parts.loss
        fwd = student.forward_loss if student is not None else None
        if fwd is not None:
            # LAPO-style: the encoder also trains through a small forward model that sees nothing of frame t but
            # the action (computed inside the student's forward above)
            loss = loss + self.latent_settings.forward_weight * fwd
            code_logs["forward_loss"] = float(fwd.detach())
        logs = {"loss": parts.raw, "flow_loss": parts.flow, "bootstrap_loss": parts.bootstrap,
                "tau_min": parts.tau_min, "tau_max": parts.tau_max, "short_batches": float(batch.kind == "S"),
                "long_batches": float(batch.kind == "L"), "batch": batch.kind, "T": T, "B": Bg, **code_logs}
        # the items whose target the shortcut teacher made (its two extra forwards): what benchmarks count
        stats = {"bootstrap_items": float(levels.bootstrap.any(dim=1).float().mean())}
        return StepOut(loss, logs, B * T, stats)

    def _code_stats(self, actions: torch.Tensor) -> dict[str, float]:
        """How many codes a batch uses: the perplexity of its codes (anti-collapse watch; at most the code count)."""
        if self.lam_cfg is None or not self.lam_cfg.quantize:
            return {}
        idx = self.model.action_model.fsq.to_index(actions).flatten()
        idx = idx[idx >= 0]
        if not idx.numel():
            return {}
        p = torch.bincount(idx, minlength=self.lam_cfg.codes).float() / idx.numel()
        ent = -(p[p > 0] * p[p > 0].log()).sum()
        return {"code_perplexity": float(ent.exp()), "codes_used": float((p > 0).sum())}

    def _teacher(self, needed: bool) -> torch.nn.Module:
        """The model that makes the shortcut targets (run without gradient): the EMA teacher, or the model itself.
        Under FSDP a whole (unsharded) copy does it, so that no rank runs a sharded forward the others skip."""
        if self.fsdp and self.diffusion.shortcut and self.teacher is None:
            self.teacher = self._build().to(self.device)
            self.raw_teacher = not self.diffusion.ema_teacher
        if self.teacher is not None and needed:  # the same on every rank: decided on the global batch
            if self.raw_teacher:
                self.teacher.load_state_dict(distributed.full_tensors(self.model.state_dict()))
            else:
                self.teacher.load_state_dict(distributed.full_tensors(self.ema.averaged(self.model)))
        return self.teacher if self.teacher is not None else self.model

    def set_compiled(self, on: bool) -> None:
        """The student's blocks and the shortcut teacher's: the model itself (run without gradient) shares the
        student's compiled blocks; an EMA teacher has blocks of its own, compiled the same way. Under FSDP the
        teacher is a whole copy built at its first use; it stays eager."""
        super().set_compiled(on)
        if self.teacher is not None and not self.fsdp:
            compile_regions(self.teacher, on)

    def compile_key(self) -> str:
        d = self.diffusion
        long = f"{self.long[1]}x{self.long[0]}" if self.long is not None else "none"
        return (f"{self.shape_key()} long {long} shortcut {d.shortcut} ema_teacher {d.ema_teacher} "
                f"grad_checkpointing {self.train.grad_checkpointing}")

    def timing_step(self, precision: str) -> None:
        (T, B) = self.short
        c = self.cfg
        x = torch.randn(B, T, self.lset.tokens, self.lset.channels, device=self.device)
        tau = torch.rand(B, T, device=self.device)
        step = torch.full((B, T), 1.0 / c.k_max, device=self.device)
        kw = {"clean": x} if self.lam_cfg is not None else {}
        with autocast(self.device, precision):
            out = self.model(x, tau, step, **kw)
        out.float().pow(2).mean().backward()

    def shape_key(self) -> str:
        T, B = self.short
        return f"{json.dumps(self.cfg.weights_fields(), sort_keys=True, default=str)} batch {B}x{T}"

    def validate(self, step: int, precision: str) -> dict[str, float]:
        if not self.val_keys:
            return {}
        v = validate(self.model, self.lset.val, self.val_keys, self.device, precision, self.diffusion.shortcut,
                     ignore_actions=self.latent_settings is not None)
        out = {f"val_{k}": x for k, x in v.items()}
        if self.fit_keys:
            f = validate(self.model, self.lset.train, self.fit_keys, self.device, precision, self.diffusion.shortcut,
                         ignore_actions=self.latent_settings is not None, next_only=True)
            out["val_train_next"], out["val_train_copy_last"] = f["next"], f["copy_last"]
            gap = memorising_gap(v["next"], v["copy_last"], f["next"], f["copy_last"])
            if gap is not None:  # undefined when copy-last or the fit is exact
                out["val_memorising"] = gap
        return out

    def preview(self, step: int, precision: str) -> dict[str, np.ndarray] | None:
        """The dream: one fixed held-out window as context | 4-step prediction | truth at a few horizons,
        decoded with the latent set's tokenizer (:class:`~..preview.Dream`, found and loaded once)."""
        if not self.lset.val:
            return None
        if self.fsdp:  # rank 0 alone makes the picture, and a sharded model needs every rank for a forward
            raise PreviewUnavailable("the model is sharded across processes (--fsdp)")
        if self.dream is None:
            from ...inference.sampler import ModelTraits
            from ..preview import Dream, find_tokenizer

            path = find_tokenizer(self.lset.describe(), self.lset.tokenizer_id, self.runs_dir)
            traits = ModelTraits(self.diffusion.k_max, self.diffusion.shortcut, self.cfg.max_frames)
            self.dream = Dream(self.lset.val, traits, path, self.lset.tokens, self.lset.channels, self.device)
        return {"dream": self.dream(self.model, precision)}

    def val_line(self, v: dict[str, Any]) -> str:
        taus = " ".join(f"tau{t:g}={v[f'val_tau={t:g}']:.4f}" for t in VAL_TAUS)
        line = f"val @ step {v['step']}: {taus}  next={v['val_next']:.4f} (copy-last {v['val_copy_last']:.4f}"
        if "val_next_no_action" in v:
            line += f", no action {v['val_next_no_action']:.4f}"
        line += ")"
        if v.get("val_memorising") is not None:
            line += f"  memorising {v['val_memorising']:.1f}x"
        return line

    def interval(self, frames: int, seconds: float) -> dict[str, Any]:
        return {"tokens_per_s": frames * self.lset.tokens / max(seconds, 1e-9)}

    def display(self, rec: dict[str, Any]) -> dict[str, Any]:
        """The progress line: epoch [batch/of], batch kind and length, loss, tau range, batches/s."""
        w = self.windows
        out = {
            "epoch": f"{w.epoch + 1} [{w.position}/{w.per_epoch}]",
            "batch": f"{rec.get('batch', 'S')} T={rec.get('T', 0)}",
            "loss": rec["loss"],
            "tau": f"[{rec.get('tau_min', 0):.2f}-{rec.get('tau_max', 1):.2f}]",
            "batch/s": round(rec["batches_per_s"], 2),
        }
        if rec.get("bootstrap_loss") is not None:
            out["boot"] = rec["bootstrap_loss"]
        if rec.get("code_perplexity") is not None:
            out["codes"] = round(rec["code_perplexity"], 1)
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"normalizer": self.normalizer.state_dict(), "gen": self.gen.get_state(),
                "noise_gen": self.noise_gen.get_state().cpu(), "windows": self.windows.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.normalizer.load_state_dict(state["normalizer"])
        self.gen.set_state(state["gen"])
        self.noise_gen.set_state(state["noise_gen"].to(self.noise_gen.get_state().device))
        self.windows.load_state_dict(state["windows"])

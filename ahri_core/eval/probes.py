"""The probes of ``ahri eval``: does the model predict from its context, its actions, or from memory?

- context: :func:`context_probe` samples the h = 1 prediction of every clip with its true context and with
  another clip's (:func:`other_clip`), same noise; :func:`sensitivity` turns that into ratios;
- teacher forcing: :func:`teacher_forced_next`, the one-step next-frame latent error from true frames, next
  to copy-last and to one mean latent (:func:`mean_latent`) as guesses;
- memorisation: :func:`memorisation_probe`, the same error on training windows against held-out ones;
- actions over a rollout: :func:`action_rollout_probe` rolls every clip out again with another clip's actions for
  the predicted frames (same context, same noise): how far the actions move the rollout;
- latent actions: :func:`latent_action_conditions` rolls a latent-action run out under random
  (:func:`random_actions`) and "no action" conditions next to its inferred codes (Genie's controllability).

:func:`run_probes` runs the context, teacher-forced, memorisation and action probes on the evaluation's
clips. The probes work on latents and take any model in the dynamics interface (the tests use stand-ins).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..inference.sampler import ModelTraits, RolloutResult, Sampler
from ..inference.world import WorldModel
from ..progress import Progress
from .clips import clip_latents, select_clips
from .metrics import (
    memorising_gap,
    mse_per_image,
    psnr_average_over,
    psnr_over_clips,
    psnr_per_image,
    summarize,
)

if TYPE_CHECKING:
    from ..config.settings import SamplingSettings
    from ..data.windows import LatentSet, LatentVideo
    from ..models.latent_actions import LatentActionModel

__all__ = [
    "action_rollout_probe",
    "batch_generator",
    "context_probe",
    "latent_action_conditions",
    "mean_latent",
    "memorisation_probe",
    "other_clip",
    "random_actions",
    "rollout_batches",
    "run_probes",
    "sensitivity",
    "teacher_forced_next",
]


def batch_generator(seed: int, start: int) -> torch.Generator:
    """The sampling noise of the rollout batch that starts at clip ``start``: the same in every rollout of an
    evaluation, so two rollouts of a clip differ only by what they were given."""
    return torch.Generator().manual_seed(seed * 1_000_003 + start)


def rollout_batches(
    sampler: Sampler, context: torch.Tensor, horizon: int, actions: torch.Tensor | None, seed: int, batch_size: int
) -> Iterator[RolloutResult]:
    """Roll the clips of ``context`` (clips, C, N, Ch) out ``horizon`` frames, ``batch_size`` clips at a time, each
    batch with its :func:`batch_generator` noise; yields each batch's result. ``actions``: (clips, ...) or None."""
    for i in range(0, len(context), batch_size):
        a = None if actions is None else actions[i : i + batch_size]
        yield sampler.rollout(context[i : i + batch_size], horizon, actions=a, generator=batch_generator(seed, i))


# ---------------------------------------------------------------------------------------------- context

def other_clip(n: int) -> list[int]:
    """The clip whose context replaces clip i's in the context-sensitivity probe: i + 1 (mod n), never i itself."""
    if n < 2:
        raise ValueError("the context-sensitivity probe needs at least two clips")
    return [(i + 1) % n for i in range(n)]


def _swap_context(context: torch.Tensor, donor: list[int], keep_last: bool) -> torch.Tensor:
    """Each clip's context replaced by the donor clip's; ``keep_last`` keeps the clip's own last frame."""
    out = context[donor].clone()
    if keep_last:
        out[:, -1] = context[:, -1]
    return out


def _swap_actions(actions: torch.Tensor | None, donor: list[int], context: int, keep_last: bool) -> torch.Tensor | None:
    """Actions that go with :func:`_swap_context`: the donor's for the replaced frames, the clip's own after."""
    if actions is None:
        return None
    out = actions.clone()
    upto = context - 1 if keep_last else context
    out[:, :upto] = actions[donor, :upto]
    return out


@torch.no_grad()
def context_probe(
    sampler: Sampler,
    context: torch.Tensor,
    actions: torch.Tensor | None = None,
    seed: int = 0,
    batch_size: int = 8,
) -> dict[str, Any]:
    """The h = 1 prediction of every clip with its true context and with two corrupted ones, same noise.

    ``context`` (n, C, N, Ch): the clips' clean context latents, n >= 2. ``actions``: (n, >= C + 1) or None.
    Variants (donor = :func:`other_clip`, the next clip):

    * ``true``: the clip's own context;
    * ``swap``: the donor's whole context (its C frames, and its actions for them);
    * ``history``: the donor's frames except the last one, which stays the clip's own.

    Every variant of a batch is sampled from the same generator seed, so the noise (context corruption and
    the new frame's initial noise) is identical and only the context differs. Returns the three predictions
    (n, N, Ch) and per-clip latent MSEs (numpy (n,)): ``pred_change_swap`` = mse(true, swap),
    ``pred_change_history`` = mse(true, history), ``context_change`` = mse of the two contexts' last frames.
    """
    n, c = context.shape[:2]
    donor = other_clip(n)
    variants = {
        "true": (context, actions),
        "swap": (_swap_context(context, donor, False), _swap_actions(actions, donor, c, False)),
        "history": (_swap_context(context, donor, True), _swap_actions(actions, donor, c, True)),
    }
    preds: dict[str, torch.Tensor] = {}
    for name, (ctx, act) in variants.items():
        a = None if act is None else act[:, : c + 1]
        preds[name] = torch.cat([r.latents[:, 0].cpu() for r in rollout_batches(sampler, ctx, 1, a, seed, batch_size)])

    def mse(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
        return (a.float() - b.float()).pow(2).mean(dim=(-2, -1)).numpy()

    return {
        "donor": donor,
        "pred": preds["true"],
        "pred_swap": preds["swap"],
        "pred_history": preds["history"],
        "pred_change_swap": mse(preds["true"], preds["swap"]),
        "pred_change_history": mse(preds["true"], preds["history"]),
        "context_change": mse(context[:, -1], context[donor, -1]),
    }


def sensitivity(probe: dict[str, Any]) -> dict[str, float]:
    """Context sensitivity from :func:`context_probe`: ratios of means over clips.

    ``sensitivity`` = mean mse(pred_true, pred_swap) / mean mse(last_true, last_donor): 0 when the prediction
    ignores the context, 1 when it moves exactly as much as the last context frame does (copy-last scores 1).
    ``history_share`` = mean mse(pred_true, pred_history) / mean mse(pred_true, pred_swap): the part of that
    change caused by the frames before the last one (0: only the last frame matters).
    """
    swap = float(np.mean(probe["pred_change_swap"]))
    hist = float(np.mean(probe["pred_change_history"]))
    ctx = float(np.mean(probe["context_change"]))
    return {
        "sensitivity": swap / ctx if ctx > 0 else float("nan"),
        "history_share": hist / swap if swap > 0 else float("nan"),
        "pred_change_mse": swap,
        "pred_change_history_mse": hist,
        "context_change_mse": ctx,
    }


def mean_latent(videos: list[LatentVideo], max_frames: int = 20_000) -> torch.Tensor:
    """The mean latent (N, Ch) over the frames of ``videos`` (LatentVideo), from at most ``max_frames`` of them,
    taken evenly from every video."""
    total = sum(v.frames for v in videos)
    if total == 0:
        raise ValueError("no frames to average")
    every = max(1, -(-total // max_frames))
    acc, count = None, 0
    for v in videos:
        x = v.latents[::every].double()
        acc = x.sum(0) if acc is None else acc + x.sum(0)
        count += len(x)
    return (acc / count).float()


@torch.no_grad()
def teacher_forced_next(
    model: torch.nn.Module,
    traits: ModelTraits,
    latents: torch.Tensor,
    context: int,
    tau_ctx: float,
    actions: torch.Tensor | None = None,
    mean: torch.Tensor | None = None,
    seed: int = 0,
    batch_size: int = 8,
    precision: str = "fp32",
) -> dict[str, np.ndarray]:
    """One-step next-frame prediction from true frames, for every frame after the context (no compounding).

    ``latents`` (n, C + H, N, Ch) clean. Frame t (t = C .. C + H - 1) is predicted from the true frames before
    it (the last ``max_frames - 1`` of them), noised to ``tau_ctx`` and labelled so with step d_min, as the
    sampler does; frame t itself is pure noise (tau = 1) with step 1 for a shortcut model (d_min otherwise):
    the prediction a 1-step sampler makes, and the training validation's ``val_next``. Returns per-clip,
    per-horizon latent MSEs (numpy (n, H)): ``model``, ``copy_last`` (frame t - 1 as the guess) and, with
    ``mean`` (N, Ch), ``mean_latent`` (that one latent as the guess for every frame).
    """
    from ..diffusion import add_noise
    from ..runtime import autocast

    x_all = latents.float()
    n, total = x_all.shape[:2]
    window = traits.max_frames - 1 if traits.max_frames else total
    dev = next(model.parameters()).device
    d_min = 1.0 / traits.k_max
    g = torch.Generator().manual_seed(seed)
    errs, copy = [], []
    for t in range(context, total):
        lo = max(0, t - window)
        x = x_all[:, lo : t + 1]
        noise = torch.randn(x.shape, generator=g)
        T = x.shape[1]
        tau = torch.full((n, T), float(tau_ctx))
        tau[:, -1] = 1.0
        step = torch.full((n, T), d_min)
        step[:, -1] = 1.0 if traits.shortcut else d_min
        z = add_noise(x, noise, tau) if tau_ctx > 0 else torch.cat([x[:, :-1], noise[:, -1:]], 1)
        out = []
        for i in range(0, n, batch_size):
            a = None if actions is None else actions[i : i + batch_size, lo : t + 1].to(dev)
            with autocast(dev, precision):
                xh = model(z[i : i + batch_size].to(dev), tau[i : i + batch_size].to(dev),
                           step[i : i + batch_size].to(dev), actions=a)
            out.append(xh[:, -1].float().cpu())
        pred = torch.cat(out)
        errs.append((pred - x_all[:, t]).pow(2).mean(dim=(-2, -1)))
        copy.append((x_all[:, t - 1] - x_all[:, t]).pow(2).mean(dim=(-2, -1)))
    res = {"model": torch.stack(errs, 1).numpy(), "copy_last": torch.stack(copy, 1).numpy()}
    if mean is not None:
        res["mean_latent"] = (x_all[:, context:] - mean.float()).pow(2).mean(dim=(-2, -1)).numpy()
    return res


# ---------------------------------------------------------------------------------------------- memorisation


def _not_the_training_split(world: WorldModel, lset: LatentSet) -> str | None:
    """Why the set's training split may not be the videos the run trained on (None when it is): another latent
    set, or a split with other video counts (e.g. a run trained with its own ``val_fraction``)."""
    rec = (getattr(world, "info", None) or {}).get("latents") or {}
    path = rec.get("path")
    if path and lset.path and Path(path).resolve() != Path(lset.path).resolve():
        return f"the run trained on {path}, not on {lset.path}"
    counts = (rec.get("train_videos"), rec.get("val_videos"))
    if None not in counts and counts != (len(lset.train), len(lset.val)):
        return (f"the run trained on {counts[0]} videos and held out {counts[1]}; this split has {len(lset.train)} "
                f"and {len(lset.val)}")
    return None


def memorisation_probe(
    world: WorldModel,
    s: SamplingSettings,
    train_videos: list[LatentVideo],
    held_out: dict[str, np.ndarray],
    precision: str,
) -> dict[str, Any]:
    """Teacher-forced next-frame error on windows of the *training* videos against the held-out one.

    Each split's error is divided by copy-last's on the same windows (so a split with more motion does not
    look worse); ``gap`` is the held-out ratio over the training ratio: about 1 when the model predicts new
    video as well as the video it trained on, well above 1 when it has memorised its training clips.
    ``held_out``: :func:`teacher_forced_next`'s result on the evaluation's clips.
    """
    C, H = s.context, s.horizon
    refs = select_clips({v.id: v.frames for v in train_videos}, C, H, s.clips, s.seed)
    if not refs:
        return {"skipped": f"no training video has context + horizon = {C + H} frames"}
    z, actions = clip_latents(world, train_videos, refs, C + H)
    tf = teacher_forced_next(world.dynamics, world.traits, z, C, s.tau_ctx, actions, seed=s.seed,
                             batch_size=s.batch_size, precision=precision)

    def ratio(res: dict[str, np.ndarray]) -> dict[str, float]:
        m, c = float(res["model"].mean()), float(res["copy_last"].mean())
        return {"model": m, "copy_last": c, "relative": m / c if c > 0 else float("nan")}

    train, val = ratio(tf), ratio(held_out)
    gap = memorising_gap(val["model"], val["copy_last"], train["model"], train["copy_last"])
    return {"train_clips": len(refs), "train": train, "held_out": val, "gap": float("nan") if gap is None else gap}


# ---------------------------------------------------------------------------------------------- latent actions


def random_actions(lam: LatentActionModel, shape: tuple[int, int], generator: torch.Generator) -> torch.Tensor:
    """Random latent actions (clips, frames, dims): uniform codes of a quantised encoder, uniform vectors in
    [-1, 1] of a continuous one."""
    if lam.config.quantize:
        return lam.vectors(torch.randint(0, lam.config.codes, shape, generator=generator))
    return torch.rand((*shape, lam.config.dims), generator=generator) * 2 - 1


def latent_action_conditions(
    world: WorldModel,
    s: SamplingSettings,
    *,
    z_true: torch.Tensor,
    inferred: torch.Tensor,
    context: int,
    horizon: int,
    precision: str,
    decode: Callable[[torch.Tensor], torch.Tensor],
    target: torch.Tensor,
    scores_inferred: dict[str, np.ndarray],
    prog: Progress,
) -> dict[str, Any]:
    """Rollouts of a latent-action run from the same windows under two more conditions for the predicted
    frames: random latent actions (Genie's controllability: delta PSNR = inferred - random) and "no action".
    The context frames keep their inferred actions in every condition. PSNRs are those of the mean error over
    clips, like the other curves; a gain is the difference of two such PSNRs, its 95% interval that of the
    per-clip (paired) PSNR differences. ``scores_inferred``: the inferred condition's per-image "psnr" and
    "mse" (clips, H). ``z_true`` (clips, context + horizon, N, Ch): the clips' true latents; ``inferred``: the
    latent actions the encoder inferred from them; ``target`` (clips, horizon, 3, h, w): the real frames;
    ``decode``: latents to the scored frames."""
    C, H = context, horizon
    lam = world.latent_actions
    k = s.steps[0]
    sampler = world.sampler(k, s.tau_ctx, precision=precision)
    g_codes = torch.Generator().manual_seed(s.seed + 7)
    conds = {"random": inferred.clone(), "no_action": inferred.clone()}
    conds["random"][:, C:] = random_actions(lam, (len(z_true), H), g_codes)
    conds["no_action"][:, C:] = float("nan")
    out_curves: dict[str, np.ndarray] = {}
    block: dict[str, Any] = {"steps": k, "codes": int(lam.config.codes) if lam.config.quantize else None,
                             "bits_per_frame": float(np.log2(lam.config.codes)) if lam.config.quantize else None}
    for name, acts in conds.items():
        prog.start(f"eval: {name} actions", total=len(z_true))
        out = []
        # the same noise as the inferred condition
        for res in rollout_batches(sampler, z_true[:, :C], H, acts, s.seed, s.batch_size):
            out.append(world.check_finite(res.latents))
            prog.advance(f"eval: {name} actions", len(res.latents))
        prog.finish(f"eval: {name} actions")
        frames = decode(torch.cat(out))
        psnr, mse = psnr_per_image(frames, target).numpy(), mse_per_image(frames, target).numpy()
        out_curves[f"steps_{k}_{name}_actions"] = psnr
        block[f"psnr_{name}"] = psnr_over_clips(mse)
        gain = np.asarray(psnr_over_clips(scores_inferred["mse"])["mean"]) - np.asarray(block[f"psnr_{name}"]["mean"])
        paired = summarize(np.asarray(scores_inferred["psnr"]) - psnr)  # per horizon step, over clips
        block[f"gain_over_{name}_db"] = {"mean": [float(x) for x in gain], "ci95": paired["ci95"]}
        near = min(8, H)
        block[f"gain_over_{name}_db_h1_{near}"] = (psnr_average_over(scores_inferred["mse"], 1, near)
                                                  - psnr_average_over(mse, 1, near))
    block["psnr_inferred"] = psnr_over_clips(scores_inferred["mse"])
    block["curves"] = out_curves
    return block


# ---------------------------------------------------------------------------------------------- all probes


def action_rollout_probe(
    sampler: Sampler,
    z_true: torch.Tensor,
    actions: torch.Tensor,
    context: int,
    horizon: int,
    seed: int,
    batch_size: int,
    decode: Callable[[torch.Tensor], torch.Tensor],
    target: torch.Tensor,
    own: torch.Tensor,
) -> dict[str, Any]:
    """Does the rollout follow its actions? Every clip rolled out again with the actions of another clip
    (:func:`other_clip`) for the ``horizon`` predicted frames, its own for the context, with the same noise as
    ``own`` (the decoded rollout with the clip's own actions, (clips, H, 3, h, w)). The one-frame probe of
    :func:`run_probes` reads the action's effect on the next frame only, where the context's motion already
    tells most of it; over a rollout the actions decide where the scene goes.

    Returns per horizon step the PSNR (of the mean error over clips) of both rollouts against ``target`` and
    of one against the other (high: the actions change little), ``gain_db_h1_16`` (own minus other, averaged
    over the horizon: what the right actions are worth) and ``changed_share`` (how many given actions differ)."""
    donor = other_clip(len(z_true))
    swapped = actions.clone()
    swapped[:, context:] = actions[donor, context:]
    batches = rollout_batches(sampler, z_true[:, :context], horizon, swapped, seed, batch_size)
    other = decode(torch.cat([r.latents for r in batches]))
    m_own, m_other = mse_per_image(own, target).numpy(), mse_per_image(other, target).numpy()
    m_between = mse_per_image(other, own.clamp(0, 1)).numpy()
    fut_own, fut_other = actions[:, context : context + horizon], swapped[:, context : context + horizon]
    changed = fut_own != fut_other
    if changed.dim() > 2:  # continuous actions: a frame changed when any of its values did
        changed = changed.any(-1)
    return {
        "steps": sampler.steps,
        "donor": "the next clip in the list (i + 1 mod n), for the predicted frames only",
        "psnr_own": psnr_over_clips(m_own)["mean"],
        "psnr_other": psnr_over_clips(m_other)["mean"],
        "psnr_own_vs_other": psnr_over_clips(m_between)["mean"],
        "gain_db_h1_16": psnr_average_over(m_own, 1, 16) - psnr_average_over(m_other, 1, 16),
        "changed_share": float(changed.float().mean()),
    }


def run_probes(
    world: WorldModel,
    s: SamplingSettings,
    *,
    z_true: torch.Tensor,
    actions: torch.Tensor | None,
    target: torch.Tensor,
    precision: str,
    lset: LatentSet,
    prog: Progress,
    decode: Callable[[torch.Tensor], torch.Tensor] | None = None,
    split: str = "val",
) -> dict[str, Any]:
    """The context probes of :func:`~ahri_core.eval.evaluate.evaluate` on its clips: context sensitivity and teacher-forced next-frame MSE."""
    C = s.context
    n = len(z_true)
    k = s.steps[0]
    out: dict[str, Any] = {}
    prog.start("eval: context probes", total=2)
    if n >= 2:
        pr = context_probe(world.sampler(k, s.tau_ctx, precision=precision), z_true[:, :C], actions, s.seed,
                           s.batch_size)
        sens = sensitivity(pr)
        first = target[:, 0]
        decode = decode or world.decode
        def psnr_h1(pred: torch.Tensor) -> float:  # the PSNR of the mean error over clips, as the curves
            return psnr_average_over(mse_per_image(decode(pred), first).numpy()[:, None], 1, 1)

        p_true, p_swap, p_hist = psnr_h1(pr["pred"]), psnr_h1(pr["pred_swap"]), psnr_h1(pr["pred_history"])
        out["context"] = {
            "steps": k,
            "donor": "the next clip in the list (i + 1 mod n)",
            **sens,
            "psnr_h1": p_true,
            "psnr_h1_swapped": p_swap,
            "psnr_h1_history_swapped": p_hist,
            "psnr_drop_db": p_true - p_swap,
            "psnr_drop_history_db": p_true - p_hist,
            "per_clip": {
                "pred_change_mse": pr["pred_change_swap"].tolist(),
                "pred_change_history_mse": pr["pred_change_history"].tolist(),
                "context_change_mse": pr["context_change"].tolist(),
            },
        }
    else:
        out["context"] = {"skipped": "the context-sensitivity probe needs at least two clips"}
    prog.advance("eval: context probes", 1)
    src = lset.train if lset.train else lset.val
    mean = mean_latent(src)
    tf = teacher_forced_next(world.dynamics, world.traits, z_true, C, s.tau_ctx, actions, mean=mean, seed=s.seed,
                             batch_size=s.batch_size, precision=precision)
    avg = {name: float(v.mean()) for name, v in tf.items()}
    out["teacher_forced"] = {
        "tau_ctx": s.tau_ctx,
        "mean_latent_from": f"{'train' if lset.train else 'val'} split ({sum(v.frames for v in src)} frames, "
        f"{len(src)} videos)",
        "h1": {name: float(v[:, 0].mean()) for name, v in tf.items()},
        "all_h": avg,
        "skill_vs_copy_last": 1.0 - avg["model"] / avg["copy_last"] if avg["copy_last"] > 0 else float("nan"),
        "skill_vs_mean_latent": 1.0 - avg["model"] / avg["mean_latent"] if avg["mean_latent"] > 0 else float("nan"),
        "per_h": {name: summarize(v) for name, v in tf.items()},
    }
    if split == "val" and lset.train:
        why = _not_the_training_split(world, lset)
        out["memorisation"] = {"skipped": why} if why else memorisation_probe(world, s, lset.train, tf, precision)
    if actions is not None and n >= 2:
        # The same prediction with the actions of another clip (the next in the list), same frames, same noise:
        # how much the model's next frame depends on the actions it is given.
        other = teacher_forced_next(world.dynamics, world.traits, z_true, C, s.tau_ctx, torch.roll(actions, 1, 0),
                                    seed=s.seed, batch_size=s.batch_size, precision=precision)
        own, swapped = avg["model"], float(other["model"].mean())
        out["actions"] = {
            "mse_own_actions": own,
            "mse_other_clip_actions": swapped,
            "use": 1.0 - own / swapped if swapped > 0 else float("nan"),
        }
    prog.advance("eval: context probes", 1)
    prog.finish("eval: context probes")
    return out

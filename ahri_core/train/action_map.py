"""The few-label action map of a latent-action run: each real action -> the latent code that most reliably
means it (:func:`action_map_from_counts`), fitted from a share of the training videos' actions and written to
``<run>/action_map.json`` (:func:`fit_action_map`, ``ahri train --stage action-map``); and the parsing of
``--actions`` lists, whose names come from that map (:func:`parse_action_tokens`)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError, DataError
from ..eval.action_probe import pair_counts, probe_accuracy
from ..models.latent_actions import ACTION_MAP_FILE, LatentActionDynamics, load_world_dynamics, video_codes

MAP_PRIOR_FRAMES = 5.0  # pseudo-frames that pull a rarely used code's action shares towards the overall ones


def action_map_from_counts(counts: torch.Tensor, meanings: list[str] | None = None) -> dict[str, Any]:
    """Each real action -> the latent code that most reliably means it (actions never seen are left out).

    A code is scored by the share of its frames that carried the action, ``P(action | code)``, smoothed with
    :data:`MAP_PRIOR_FRAMES` frames of the overall action shares so that a code seen a handful of times does not
    win on luck. Taking the code an action most often came with instead sends every action to the "nothing
    moved" code wherever most frames look alike whatever was pressed (Atari Breakout: all four actions).
    """
    counts = counts.double()
    prior = counts.sum(1) / counts.sum().clamp_min(1)  # (actions,)
    per_code = counts.sum(0)  # (codes,)
    share = (counts + MAP_PRIOR_FRAMES * prior[:, None]) / (per_code + MAP_PRIOR_FRAMES)[None]
    share = share.masked_fill(counts == 0, -1.0)  # an action maps only to a code it was seen with
    out: dict[str, Any] = {"codes": {}, "names": {}}
    for a in range(counts.shape[0]):
        if int(counts[a].sum()) == 0:
            continue
        code = int(share[a].argmax())
        out["codes"][str(a)] = code
        if meanings and a < len(meanings):
            out["names"][meanings[a]] = code
    return out


def fit_action_map(
    run_dir: str | os.PathLike,
    latents: str | os.PathLike | None = None,
    label_share: float = 0.1,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> dict[str, Any]:
    """Fit the few-label map of a latent-action run and write it to ``<run>/action_map.json``.

    Only ``label_share`` of the run's training videos (at least one, chosen by ``seed``) lend their real
    actions; each real action maps to the code that most reliably means it there (:func:`action_map_from_counts`).
    The held-out videos with actions score the map's code-to-action probe against guessing the most frequent
    action.
    """
    from ..locking import WriterLock

    # the run's one writer: a training still writing its weights would change the codes being mapped
    with WriterLock(Path(run_dir), "run"):
        return _fit_action_map(run_dir, latents, label_share, seed, device)


def _fit_action_map(run_dir: str | os.PathLike, latents: str | os.PathLike | None, label_share: float, seed: int,
                    device: str | torch.device) -> dict[str, Any]:
    from ..data.windows import load_latent_set
    from ..fileio import write_json_atomic

    model, info = load_world_dynamics(run_dir, device=device)
    if not isinstance(model, LatentActionDynamics):
        raise ConfigError(f"run {run_dir} was not trained with latent actions (ahri train --latent-actions)")
    if not model.lam_config.quantize:
        raise ConfigError(f"run {run_dir} has continuous latent actions: there are no codes to map")
    lat = Path(latents) if latents is not None else Path((info.get("latents") or {}).get("path") or "")
    if not str(lat) or not (lat / "index.json").is_file():
        raise DataError(f"latent set {lat or '(none recorded in the run)'} not found; pass --latents DIR")
    lset = load_latent_set(lat)
    if lset.action_kind != "discrete":
        raise DataError(f"latent set {lat} has no discrete real actions to map (action kind {lset.action_kind!r})")
    labelled = [v for v in lset.train if v.actions is not None]
    if not labelled:
        raise DataError(f"no training video of {lat} has real actions")
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(labelled), generator=g).tolist()
    chosen = [labelled[i] for i in order[: max(1, round(label_share * len(labelled)))]]
    K, A = model.lam_config.codes, lset.action_count
    counts = pair_counts([video_codes(model, v.latents) for v in chosen], [v.actions for v in chosen], K, A)
    held = [v for v in lset.val if v.actions is not None]
    test = pair_counts([video_codes(model, v.latents) for v in held], [v.actions for v in held], K, A)
    result = {
        **action_map_from_counts(counts, lset.action_meanings),
        "meanings": list(lset.action_meanings),
        "label_share": label_share,
        "labelled_videos": sorted(v.id for v in chosen),
        "labelled_frames": int(counts.sum()),
        "counts": counts.tolist(),
        "held_out_probe": probe_accuracy(counts, test),
        "latents": str(lat),
        "seed": seed,
    }
    write_json_atomic(Path(info["run_dir"]) / ACTION_MAP_FILE, result)
    return result


def parse_action_tokens(text: str, code_count: int | None, names: dict[str, int] | None = None) -> list[int]:
    """``--actions 3,3,right,0`` -> ids: integers as given (``-1`` = no action), names through ``names``."""
    out: list[int] = []
    for tok in (t.strip() for t in text.split(",")):
        if not tok:
            continue
        try:
            v = int(tok)
        except ValueError:
            if not names or tok not in names:
                known = ", ".join(sorted(names)) if names else "none (fit an action map: ahri train --stage action-map)"
                raise ConfigError(f"--actions: {tok!r} is neither a number nor a known action name; names: {known}") from None
            v = int(names[tok])
        if v < -1 or (code_count is not None and v >= code_count):
            raise ConfigError(f"--actions: {v} is out of range; accepted -1 (no action) to {(code_count or 1) - 1}")
        out.append(v)
    if not out:
        raise ConfigError("--actions: give a comma-separated list, e.g. 3,3,0")
    return out

"""Where does the error on pixels that did not move come from: the dynamics model's tokens, or the decoder?

``ahri eval``'s static-region probe scores predictions on the pixels that are unchanged between the last context
frame and the true frame (a HUD, a held weapon, a still background). When a prediction loses there against the
tokenizer ceiling, two causes are possible, and they call for different remedies:

1. the dynamics model does not keep the latent tokens over those pixels (it redraws them);
2. the tokenizer's decoder, which attends over every latent token of the frame, lets errors in the moving
   tokens spoil the pixels of still ones.

This script rolls held-out clips of a trained run out (the eval's clips, sampler and seed) and decodes mixtures
of predicted and true latents, scoring each on the static pixels at every horizon step asked for:

- ``prediction``: what ``ahri eval`` scores;
- ``prediction, still tokens true``: the tokens whose true latent did not change since the last context frame
  replaced by the truth (the moving ones stay predicted). What this closes of the gap to the ceiling is cause 1;
- ``prediction, still tokens from the last context frame``: the same with the copy that a model could make;
- ``tokenizer ceiling``: the decoded true latents.

Each is scored on the whole frame (the still tokens made exact: what keeping them is worth), on all static pixels,
and apart on those inside still tokens' squares (where, with the still tokens
true, any loss left is the decoder carrying moving-token errors over: cause 2) and those inside moving tokens (a
token half over a HUD: there the moving token's own prediction decides). The latent MSE of the prediction on still
and on moving tokens is printed too.

A token counts as still when its true latent moved less than ``--still`` (mean squared change per value) since the
last context frame: the encoder is local enough for that to follow the pixels (measured: latent tokens over
unchanged pixels change ~150x less than others on Super Mario Bros).

    python benchmarks/bench_static_region.py RUN --clips 32 --horizons 1 2 4
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

from ahri_core.config.settings import SamplingSettings
from ahri_core.eval.evaluate import _check_and_load, _load_truth, _pick_clips
from ahri_core.eval.metrics import masked_squared_error, pooled_psnr, static_mask
from ahri_core.inference.world import load_world_model
from ahri_core.progress import ensure
from ahri_core.runtime import cpu_name
from ahri_core.visual import crop_box
from ahri_core.workspace import Workspace


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", help="a dynamics run (name in the workspace or a directory)")
    ap.add_argument("--clips", type=int, default=32)
    ap.add_argument("--context", type=int, default=16)
    ap.add_argument("--horizons", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--tau-ctx", type=float, default=None, help="noise level of the context (default: the eval's)")
    ap.add_argument("--still", type=float, default=1e-3, help="mean squared latent change under which a token is still")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", default=None, help="also write the figures here")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    ws = Workspace.resolve()
    world = load_world_model(a.run, ws)
    H = max(a.horizons)
    s = SamplingSettings(steps=[a.steps], context=a.context, horizon=H, clips=a.clips)
    if a.tau_ctx is not None:
        s = s.model_copy(update={"tau_ctx": a.tau_ctx})
    lat_path, _lset, pool = _check_and_load(world, None, s, "val")
    refs = _pick_clips(pool, s, "val")
    truth = _load_truth(world, pool, refs, a.context + H, lat_path, ws, ensure(None))
    C = a.context
    z_true = truth.latents
    sampler = world.sampler(a.steps, s.tau_ctx, precision="fp32")
    out = []
    for i in range(0, len(z_true), s.batch_size):
        g = torch.Generator().manual_seed(s.seed * 1_000_003 + i)
        acts = None if truth.actions is None else truth.actions[i : i + s.batch_size]
        out.append(sampler.rollout(z_true[i : i + s.batch_size, :C], H, actions=acts, generator=g).latents)
    z_pred = torch.cat(out)  # (clips, H, N, Ch)
    last_z = z_true[:, C - 1 : C]
    fut = z_true[:, C:]
    still = (fut - last_z).pow(2).mean(-1) < a.still  # (clips, H, N)
    mixes = {
        "prediction": z_pred,
        "prediction, still tokens true": torch.where(still[..., None], fut, z_pred),
        "prediction, still tokens from the last context frame": torch.where(still[..., None], last_z.expand_as(fut), z_pred),
        "tokenizer ceiling": fut,
    }
    target = truth.frames[:, C:]
    last = truth.frames[:, C - 1 : C].expand_as(target)
    mask = static_mask(last, target)  # (clips, H, h, w)
    # each still token's square of pixels in the tokenizer's frame, cut to the scored box like the frames
    cfg = world.tokenizer.cfg
    rows, cols = cfg.grid[0] // cfg.region, cfg.grid[1] // cfg.region
    px = cfg.patch_size * cfg.region
    tok_px = still.reshape(*still.shape[:2], rows, cols).repeat_interleave(px, -2).repeat_interleave(px, -1)
    tok_px = crop_box(tok_px[:, :, None].float(), truth.box)[:, :, 0] > 0.5
    regions = {"all pixels (what exact still tokens are worth)": torch.ones_like(mask), "static pixels": mask,
               "  of them in still tokens": mask & tok_px, "  of them in moving tokens": mask & ~tok_px}
    res: dict[str, dict[str, dict[str, float | None]]] = {}
    for name, z in mixes.items():
        frames = crop_box(world.decode(z), truth.box)
        for rname, m in regions.items():
            psnr = pooled_psnr(*(t.numpy() for t in masked_squared_error(frames, target, m)))  # as ahri eval pools
            res.setdefault(rname, {})[name] = {f"h{h}": psnr[h - 1] for h in a.horizons}
    lat = {}
    for h in a.horizons:
        m = still[:, h - 1]
        d = (z_pred[:, h - 1] - fut[:, h - 1]).pow(2).mean(-1)
        lat[f"h{h}"] = {
            "still token share": float(m.float().mean()),
            "static pixel share": float(mask[:, h - 1].float().mean()),
            "prediction latent mse on still tokens": float(d[m].mean()) if m.any() else None,
            "prediction latent mse on moving tokens": float(d[~m].mean()) if (~m).any() else None,
            "copy-last latent mse on moving tokens": float((last_z[:, 0] - fut[:, h - 1]).pow(2).mean(-1)[~m].mean())
            if (~m).any() else None,
            "share of static pixels in still tokens": float(
                regions["  of them in still tokens"][:, h - 1].float().sum() / mask[:, h - 1].float().sum().clamp(min=1)
            ),
        }
    print(f"{world.name}: {len(z_true)} held-out clips, {a.steps}-step rollouts; PSNR (dB)")
    for rname, rows_ in res.items():
        print(f"{rname:56s}" + "".join(f"{'h=' + str(h):>9s}" for h in a.horizons))
        for name, row in rows_.items():
            print(f"  {name:54s}" + "".join("        -" if row[f"h{h}"] is None else f"{row[f'h{h}']:9.2f}"
                                              for h in a.horizons))
    for h in a.horizons:
        print(f"h={h}: " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} -" for k, v in lat[f"h{h}"].items()))
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"run": world.name, "cpu": cpu_name(), "clips": len(z_true),
                       "steps": a.steps, "static_pixel_psnr": res, "latent": lat}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())

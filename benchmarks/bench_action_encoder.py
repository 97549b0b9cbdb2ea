"""The latent-action encoder and its forward head alone, on a latent set with real actions: do its codes name
the action, and do they stay in use?

For each arm and seed, a ``LatentActionModel`` (encoder, FSQ bottleneck, forward head; no dynamics model) is
trained on random pairs of consecutive frames of the training videos (``forward_loss``: the head predicts the
change from the previous frame and the code). Reported per run: the forward head's relative error on the
held-out videos (1 = no better than "nothing changes"), the probe from code to real action on the held-out
videos against guessing the most frequent action (the probe fitted on the training videos, as in
``bench_latent_actions.py``), and how many of the codes the training videos use (1 = collapsed).

Arms: ``token`` (the per-token forward head), ``mix`` (the token-mixing head, 4 groups), each with the range loss
and without it (``-free``), so the effect of each is measured on the same pairs.

    python benchmarks/bench_action_encoder.py --latents /tmp/lamws/latents/tok --steps 1500 --seeds 4

One thread, about 25-30 seconds a run on a 64-token latent set.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from ahri_core.data.windows import load_latent_set
from ahri_core.eval.action_probe import pair_counts, probe_accuracy
from ahri_core.models.latent_actions import LatentActionModel, latent_action_config
from ahri_core.runtime import cpu_name

ARMS = {"token": (0, True), "mix": (4, True), "token-free": (0, False), "mix-free": (4, False)}


def train_one(lset, mixing: int, bounded: bool, codes: int, steps: int, seed: int, batch: int = 32) -> dict:
    torch.manual_seed(seed)
    m = LatentActionModel(latent_action_config(codes, lset.tokens, lset.channels, head_mixing=mixing))
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3, weight_decay=0.01)
    g = torch.Generator().manual_seed(seed)
    vids = [torch.as_tensor(v.latents[:]).float() for v in lset.train]
    t0 = time.time()
    for _ in range(steps):
        pairs = []
        for k in torch.randint(0, len(vids), (batch,), generator=g).tolist():
            t = int(torch.randint(1, vids[k].shape[0], (1,), generator=g))
            pairs.append(vids[k][t - 1 : t + 1])
        x = torch.stack(pairs)
        # given the codes (and not the encoder's values before the bound), forward_loss leaves the range loss out
        loss = m.forward_loss(x) if bounded else m.forward_loss(x, m(x)[:, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
    seconds = time.time() - t0
    m.eval()
    with torch.no_grad():
        held = [torch.as_tensor(v.latents[:]).float()[None] for v in lset.val]
        fwd = statistics.mean(m.forward_loss(x, m(x)[:, 1:]).item() for x in held)  # the head alone
        train_counts = pair_counts([m.codes(x[None])[0] for x in vids], [v.actions for v in lset.train],
                                   m.config.codes, lset.action_count)
        test_counts = pair_counts([m.codes(x)[0] for x in held], [v.actions for v in lset.val], m.config.codes,
                                  lset.action_count)
    probe = probe_accuracy(train_counts, test_counts)
    return {"seed": seed, "held_out_forward": fwd, "probe_ratio": probe["ratio"], "probe_accuracy": probe["accuracy"],
            "majority": probe["majority"], "codes_used": int((train_counts.sum(0) > 0).sum()), "seconds": seconds}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--latents", type=Path, required=True, help="a latent set with real discrete actions")
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--codes", type=int, default=16)
    ap.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    lset = load_latent_set(args.latents)
    if lset.action_kind != "discrete":
        raise SystemExit(f"error: {args.latents} has no discrete real actions to probe against")
    out = {"cpu": cpu_name(), "threads": 1, "latents": str(args.latents), "steps": args.steps, "codes": args.codes,
           "train_videos": len(lset.train), "val_videos": len(lset.val), "arms": {}}
    print(f"| arm | held-out forward error | probe / majority | codes used (of {args.codes}) | collapsed runs |")
    print("|---|---:|---:|---:|---:|")
    for arm in args.arms:
        mixing, bounded = ARMS[arm]
        runs = [train_one(lset, mixing, bounded, args.codes, args.steps, s) for s in range(args.seeds)]
        out["arms"][arm] = runs
        fw = [r["held_out_forward"] for r in runs]
        pr = [r["probe_ratio"] for r in runs]
        used = [r["codes_used"] for r in runs]
        print(f"| {arm} | {' '.join(f'{v:.2f}' for v in fw)} | {' '.join(f'{v:.1f}' for v in pr)} | "
              f"{' '.join(map(str, used))} | {sum(u == 1 for u in used)} of {len(runs)} |", flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()

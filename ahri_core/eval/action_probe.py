"""How well latent action codes tell the real actions: :func:`pair_counts` (real action x inferred code counts)
and :func:`probe_accuracy` (a code-to-action probe scored on held-out counts)."""

from __future__ import annotations

import torch


def pair_counts(codes: list[torch.Tensor], actions: list[torch.Tensor], code_count: int, action_count: int,
                lag: int = 0) -> torch.Tensor:
    """(action_count, code_count) counts of (real action, inferred code) over frames where both exist.
    ``lag``: pair the code of frame t with the action of frame t - lag (0: the same frame; a code that lags its
    action scores best at a positive lag)."""
    m = torch.zeros(action_count, code_count, dtype=torch.long)
    for c, a in zip(codes, actions, strict=True):
        k = max(min(len(c), len(a)) - abs(lag), 0)  # pairs left once shifted (none when the lag outruns the video)
        c, a = c[max(lag, 0) :][:k], a[max(-lag, 0) :][:k]
        ok = (c >= 0) & (a >= 0)
        m.view(-1).index_add_(0, a[ok].long() * code_count + c[ok].long(), torch.ones(int(ok.sum()), dtype=torch.long))
    return m


def probe_accuracy(train: torch.Tensor, test: torch.Tensor) -> dict[str, float]:
    """A probe from latent code to real action, fitted on ``train`` counts and scored on ``test`` counts
    (both (actions, codes) from :func:`pair_counts`): each code predicts the action it most often came with
    in ``train`` (on a one-hot code this is what a linear softmax probe converges to). Returns its accuracy,
    the accuracy of always guessing the most frequent training action (``majority``), and their ratio; and,
    as a stricter yardstick where the held-out videos mix the actions differently, the accuracy of the best
    single guess on ``test`` itself (``best_constant``, an oracle) and the ratio to it."""
    predict = train.argmax(0)  # (codes,) the action each code predicts
    total = int(test.sum())
    if total == 0:
        nan = float("nan")
        return {"accuracy": nan, "majority": nan, "ratio": nan, "best_constant": nan, "ratio_best_constant": nan,
                "frames": 0}
    hits = int(test[predict, torch.arange(test.shape[1])].sum())
    majority = int(test[int(train.sum(1).argmax())].sum())
    acc, base, best = hits / total, majority / total, int(test.sum(1).max()) / total
    return {"accuracy": acc, "majority": base, "ratio": acc / base if base > 0 else float("inf"),
            "best_constant": best, "ratio_best_constant": acc / best, "frames": total}

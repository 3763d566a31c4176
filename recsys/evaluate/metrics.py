"""HR / NDCG / Recall / MRR / coverage from top-K arrays; pure numpy, one held-out item per user."""

from __future__ import annotations

import numpy as np

KS = (10, 20)


def hit_ranks(topk: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """1-based rank of each user's target in its top-K list, 0 when absent."""
    hits = topk == targets[:, None]
    found = hits.any(axis=1)
    return np.where(found, hits.argmax(axis=1) + 1, 0)


def _mean_and_se(values: np.ndarray) -> tuple[float, float]:
    n = len(values)
    if n == 0:
        return 0.0, 0.0
    se = float(values.std(ddof=1) / np.sqrt(n)) if n > 1 else 0.0
    return float(values.mean()), se


def topk_metrics(topk: np.ndarray, targets: np.ndarray, n_items: int, ks=KS) -> dict[str, float]:
    """Metrics averaged over users; ``topk`` is [users, >=max(ks)] item indices (-1 = empty slot)."""
    topk = np.asarray(topk)
    targets = np.asarray(targets)
    if topk.ndim != 2 or len(topk) != len(targets):
        raise ValueError(f"topk must be [users, K] aligned with targets, got {topk.shape} vs {targets.shape}")
    if topk.shape[1] < max(ks):
        raise ValueError(f"topk has {topk.shape[1]} columns, metrics need {max(ks)}")
    ranks = hit_ranks(topk[:, : max(ks)], targets)
    out: dict[str, float] = {"users": int(len(targets))}
    for k in ks:
        inside = (ranks > 0) & (ranks <= k)
        per_user = {
            f"HR@{k}": inside.astype(np.float64),
            f"NDCG@{k}": np.where(inside, 1.0 / np.log2(np.maximum(ranks, 1) + 1.0), 0.0),
            f"MRR@{k}": np.where(inside, 1.0 / np.maximum(ranks, 1), 0.0),
        }
        for name, values in per_user.items():
            out[name], out[f"{name}_se"] = _mean_and_se(values)
        out[f"Recall@{k}"] = out[f"HR@{k}"]
        listed = topk[:, :k]
        out[f"coverage@{k}"] = float(np.unique(listed[listed >= 0]).size / n_items)
    return out

"""Top-K lists for the held-out interactions, and the protocol's metrics over them.

Every number the project reports goes through `score_topk` so models, bundles and the HTTP server
are scored by the same code.
"""

from __future__ import annotations

import logging
from dataclasses import replace

import numpy as np
import pandas as pd

from recsys.evaluate.metrics import topk_metrics
from recsys.pipeline.contract import Recommender
from recsys.split import Split

log = logging.getLogger(__name__)

TOPK = 20


def score_topk(topk: np.ndarray, split: Split, stage: str = "test") -> dict[str, float]:
    """Protocol metrics for top-K lists aligned with ``split.targets(stage)``'s users."""
    _, targets = split.targets(stage)
    return topk_metrics(topk, targets, split.n_items)


def recommend_for_stage(model: Recommender, split: Split, stage: str = "test", k: int = TOPK) -> np.ndarray:
    """Top-k lists for every user with a held-out item, seen items excluded.

    Models that declare ``accepts_context`` (the two-stage pipeline) also get each request's
    context: the held-out interaction's time and, on Instacart, its order's day/hour/gap.
    """
    users, _ = split.targets(stage)
    extra = {}
    if getattr(model, "accepts_context", False):
        from recsys.pipeline.ranker_features import request_context

        extra["context"] = request_context(split, stage)
    ids, _ = model.recommend(users, k, split.user_history(stage), exclude_seen=True, **extra)
    return ids


def evaluate_model(model: Recommender, split: Split, stage: str = "test") -> tuple[dict, np.ndarray]:
    topk = recommend_for_stage(model, split, stage)
    return score_topk(topk, split, stage), topk


def topk_to_frame(topk: np.ndarray, split: Split, stage: str = "test") -> pd.DataFrame:
    users, _ = split.targets(stage)
    n, k = topk.shape
    frame = pd.DataFrame({
        "user_id": np.repeat(split.users.to_external(users), k),
        "rank": np.tile(np.arange(1, k + 1), n),
        "item_id": topk.ravel(),
    })
    frame = frame[frame["item_id"] >= 0]
    return frame.assign(item_id=split.items.to_external(frame["item_id"].to_numpy()))


def frame_to_topk(frame: pd.DataFrame, split: Split, stage: str = "test", k: int = TOPK) -> np.ndarray:
    """External-id lists (user_id, rank, item_id) -> [users, k] indices aligned with the targets."""
    users, _ = split.targets(stage)
    row_of_user = pd.Series(np.arange(len(users)), index=users)
    user_idx = split.users.to_index(frame["user_id"].to_numpy(), missing=-1)
    item_idx = split.items.to_index(frame["item_id"].to_numpy(), missing=-1)
    rank = frame["rank"].to_numpy(np.int64)
    keep = (user_idx >= 0) & np.isin(user_idx, users) & (rank >= 1) & (rank <= k)
    topk = np.full((len(users), k), -1, dtype=np.int64)
    topk[row_of_user.loc[user_idx[keep]].to_numpy(), rank[keep] - 1] = item_idx[keep]
    return topk


def sample_users(split: Split, n: int, seed: int) -> Split:
    """The same split restricted to a seeded sample of validation users (history intact)."""
    rng = np.random.default_rng(seed)
    keep = np.sort(rng.choice(split.n_users, size=n, replace=False))
    valid = split.valid[split.valid["u"].isin(keep)].reset_index(drop=True)
    return replace(split, valid=valid)


def held_out_requests(split: Split, stage: str = "test") -> list[dict]:
    """Each held-out user's request as an HTTP caller sends it to ``POST /recommend``: external
    ids, the evaluation's history (oldest first, with times), ``at`` the held-out time and the
    held-out row's context; aligned with ``split.targets(stage)``."""
    from recsys.pipeline.ranker_features import request_context

    users, _ = split.targets(stage)
    context = request_context(split, stage)
    times = split.stage_frame(stage)["t"].to_numpy()
    by_user = dict(list(split.history_frame(stage).groupby("u", sort=False)))
    requests = []
    for row, user in enumerate(users):
        frame = by_user.get(user, split.train.iloc[:0])
        items = split.items.to_external(frame["i"].to_numpy())
        requests.append({"user": str(split.users.ids[user]),
                         "history": [{"item": str(item), "timestamp": int(t)}
                                     for item, t in zip(items, frame["t"], strict=True)],
                         "at": int(times[row]),
                         # A missing value (NaN) is left out: the server reads an absent column as missing.
                         "context": {name: float(context[name][row]) for name in split.context_columns
                                     if not np.isnan(context[name][row])}})
    return requests

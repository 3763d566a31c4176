"""`python -m recsys.evaluate`: model -> top-K lists -> protocol metrics (table, JSON, CSV).

Every number the project reports goes through `score_topk` so models, bundles and the HTTP server
are scored by the same code.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from recsys.baselines import BASELINES, fit_baseline
from recsys.data.datasets import DEFAULT_DATA_DIR, load_dataset
from recsys.data.schema import DataError
from recsys.metrics import topk_metrics
from recsys.recommender import ModelSpecError, Recommender
from recsys.split import Split, temporal_split

log = logging.getLogger(__name__)

TOPK = 20
TABLE_COLUMNS = ("HR@10", "NDCG@10", "Recall@20", "NDCG@20", "MRR@10", "coverage@10")
MODEL_STAGES = ("full", "retrieval")  # what of a two-stage model to score: retrieve -> rank, or retrieve only

# Directory-model loaders register here (checkpoints, bundles): (predicate, loader(path, split, model_stage)).
DIRECTORY_LOADERS: list[tuple[Callable[[Path], bool], Callable[[Path, Split, str], Recommender]]] = []


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
        from recsys.ranking_features import request_context

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


def _load_model_dir(path: Path, split: Split, model_stage: str = "full") -> Recommender:
    from recsys.model_dir import check_same_data, load_trained
    from recsys.pipeline import PipelineRecommender
    from recsys.pipeline_torch import pipeline_from_trained

    trained = load_trained(path)
    check_same_data(trained, split.users, split.items, path)
    pipeline = pipeline_from_trained(trained, path, with_ranker=model_stage == "full")
    recommender = PipelineRecommender(pipeline)
    what = "two-tower + ranker" if pipeline.has_ranker else "two-tower"
    recommender.display_name = f"{what} ({path.name})"
    return recommender


def _is_model_dir(path: Path) -> bool:
    from recsys.model_dir import is_model_dir

    return is_model_dir(path)


def _is_bundle(path: Path) -> bool:
    return (path / "manifest.json").exists() or (path / "current" / "manifest.json").exists()


def _load_bundle(path: Path, split: Split, model_stage: str = "full") -> Recommender:
    """A bundle scored through ONNX Runtime + FAISS: the code path serving runs."""
    from recsys.model_dir import ModelDirError
    from recsys.runtime import load_serving_model

    served = load_serving_model(path, precompute_users=False)
    if served.content.users != split.users or served.content.items != split.items:
        raise ModelDirError(f"bundle {served.version} at {path} was built from other data "
                            f"(fingerprint {served.manifest.data_fingerprint}); its id maps do not match this dataset")
    recommender = served.recommender()
    if model_stage == "retrieval":
        recommender.pipeline.score_candidates = None
    recommender.display_name = f"bundle {served.manifest.kind} {served.version}"
    return recommender


DIRECTORY_LOADERS.append((_is_model_dir, _load_model_dir))
DIRECTORY_LOADERS.append((_is_bundle, _load_bundle))


def load_model(spec: str, split: Split, model_stage: str = "full") -> Recommender:
    """A baseline by name, or a model/bundle directory (``model_stage`` "retrieval": towers only)."""
    if spec in BASELINES:
        return fit_baseline(spec, split)
    path = Path(spec)
    if path.is_dir():
        for matches, loader in DIRECTORY_LOADERS:
            if matches(path):
                return loader(path, split, model_stage)
        raise ModelSpecError(f"{path} is not a model directory or bundle (no config.json / manifest.json)")
    raise ModelSpecError(f"unknown model {spec!r}: use one of {sorted(BASELINES)} or a model/bundle directory")


def format_table(rows: dict[str, dict], columns=TABLE_COLUMNS) -> str:
    header = "| model | " + " | ".join(columns) + " |"
    lines = [header, "|" + "---|" * (len(columns) + 1)]
    for name, metrics in rows.items():
        cells = [f"{metrics[c]:.4f}" if c in metrics else "" for c in columns]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m recsys.evaluate", description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True, help="ml-100k, instacart, synthetic[-1m] or a log path")
    parser.add_argument("--model", required=True, help=f"{'|'.join(sorted(BASELINES))} or a model/bundle dir")
    parser.add_argument("--items", help="item catalog for a user log (CSV/Parquet)")
    parser.add_argument("--users", help="user table for a user log (CSV/Parquet)")
    parser.add_argument("--data-dir", default=str(DEFAULT_DATA_DIR), help="dataset cache (default: data/)")
    parser.add_argument("--split", choices=("test", "valid"), default="test", help="held-out interactions to score")
    parser.add_argument("--stage", choices=MODEL_STAGES, default="full",
                        help="for a model dir: the full retrieve -> rank pipeline, or retrieval alone")
    parser.add_argument("--topk-out", help="write the top-20 lists as CSV user_id,rank,item_id")
    parser.add_argument("--topk-in", help="score an existing top-K CSV instead of a model")
    parser.add_argument("--json", help="write the metrics as JSON here")
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> dict:
    split = temporal_split(load_dataset(args.dataset, args.data_dir, args.items, args.users))
    started = time.perf_counter()
    if args.topk_in:
        topk = frame_to_topk(pd.read_csv(args.topk_in), split, args.split)
        name = Path(args.topk_in).name
    else:
        model = load_model(args.model, split, args.stage)
        topk = recommend_for_stage(model, split, args.split)
        name = getattr(model, "display_name", args.model)
    metrics = score_topk(topk, split, args.split)
    metrics["seconds"] = round(time.perf_counter() - started, 3)
    sys.stdout.write(format_table({name: metrics}) + "\n")
    if args.topk_out:
        topk_to_frame(topk, split, args.split).to_csv(args.topk_out, index=False)
    if args.json:
        payload = {"dataset": args.dataset, "model": args.model, "split": args.split, "stage": args.stage,
                   **metrics}
        Path(args.json).write_text(json.dumps(payload, indent=2))
    return metrics


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    try:
        run(args)
    except (DataError, ModelSpecError) as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

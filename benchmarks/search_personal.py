"""Does the user's order earn its place? /search with and without the user, paired over users.

    python -m benchmarks.search_personal --bundle artifacts/ml-100k/bundles/holdout/compressed \\
        --dataset ml-100k --out reports/search/ml-100k/personal

Each user's next interaction after the bundle's history (the first of the events the measured
bundle was built without) becomes one query: its genre and year, as a shopper browsing
"comedy 1995" would type it (a genre drawn with a fixed seed when it has several). The label is
that item; many items match the words, so only taste can tell which one this user wants. Every
query runs through `ServingModel.search_many` as the server calls it, once anonymous and once
with the user; MRR@10 and HR@10 are compared paired over the same users.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from recsys.bundle.load import load_serving_model
from recsys.data.datasets import DEFAULT_DATA_DIR, load_dataset
from recsys.search.quality import markdown_table, query_scores, summarise
from recsys.search.queries import Query
from recsys.split import temporal_split

HELD_OUT = 5  # what `recsys.train` holds out by default, and so what the holdout bundles lack


def next_item_queries(items: pd.DataFrame, users: np.ndarray, targets: np.ndarray, seed: int) -> list[Query]:
    """One "genre year" query per (user, next item); users whose item has no genre are skipped."""
    rng = np.random.default_rng(seed)
    by_id = items.set_index(items["item_id"].astype(str))
    queries = []
    for user, item in zip(users, targets, strict=True):
        row = by_id.loc[item] if item in by_id.index else None
        labels = [] if row is None else [g for g in str(row.get("genres", "")).split() if g != "unknown"]
        if not labels:
            continue
        year = row.get("year")
        words = [str(labels[int(rng.integers(len(labels)))]).lower()]
        if year is not None and not pd.isna(year):
            words.append(str(int(year)))
        queries.append(Query(str(user), "attribute", " ".join(words), [item], "next interaction"))
    return queries


def run(bundle: Path, dataset_name: str, data_dir: Path, seed: int) -> dict:
    dataset = load_dataset(dataset_name, data_dir)
    split = temporal_split(dataset).holding_out(HELD_OUT)
    users, items = split.targets("test")
    queries = next_item_queries(dataset.items, split.users.to_external(users).astype(str),
                                split.items.to_external(items).astype(str), seed)
    model = load_serving_model(bundle)
    if not model.has_search:
        raise SystemExit(f"error: {bundle} has no search index")
    results = {}
    for name, with_user in (("anonymous", False), ("with the user", True)):
        asks = [model.search_ask(q.text, q.qid if with_user else None, 10) for q in queries]
        answers = [rec.items for start in range(0, len(asks), 64) for rec in model.search_many(asks[start:start + 64])]
        results[name] = query_scores([[str(i) for i in answer] for answer in answers], queries)
    rows = {metric: summarise({name: scores[metric] for name, scores in results.items()}, "anonymous", seed=seed)
            for metric in ("MRR@10", "HR@10")}
    return {"bundle": str(bundle), "dataset": dataset_name, "users": len(queries), "seed": seed,
            "examples": [q.text for q in queries[:5]], "rows": rows}


def markdown(result: dict) -> str:
    lines = [f"# Personal search: {result['dataset']}", "", __doc__.split("\n\n")[2].replace("\n", " "), "",
             f"{result['users']} users; bundle `{result['bundle']}`; queries e.g. "
             + ", ".join(f"`{q}`" for q in result["examples"]) + ".", ""]
    for metric, rows in result["rows"].items():
        lines += [markdown_table(rows, metric), ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.search_personal", description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", required=True, help="a measured (holdout) bundle with a search index")
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--data-dir", default=str(DEFAULT_DATA_DIR))
    parser.add_argument("--out", required=True, help="writes OUT.json and OUT.md")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    result = run(Path(args.bundle), args.dataset, Path(args.data_dir), args.seed)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2, default=float))
    out.with_suffix(".md").write_text(markdown(result))
    sys.stdout.write(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Quality as the HTTP service delivers it: a shop's own log scored on its next events, and
POST /recommend against `recsys.evaluate` on the same bundle.

The own-log flow, as a new user would run it (build from the log, serve, score the next events):

    python -m benchmarks.http_quality prepare --out /tmp/own-log        # ml-100k minus each user's last row
    python -m recsys.train --dataset /tmp/own-log/log.csv --items /tmp/own-log/items.csv \\
        --users /tmp/own-log/users.csv --out /tmp/own-log/model
    python -m compression --model /tmp/own-log/model --dataset /tmp/own-log/log.csv \\
        --items /tmp/own-log/items.csv --users /tmp/own-log/users.csv --out /tmp/own-log/bundles
    python -m benchmarks.http_quality score --bundle /tmp/own-log/bundles/compressed --later /tmp/own-log/later.csv \
        --log /tmp/own-log/log.csv

``prepare`` writes ml-100k's rows without each user's last interaction (the protocol's test rows)
as ``log.csv`` (with the item and user tables), and those last interactions as ``later.csv``: the
events that happen after the shop built its bundle. ``score`` starts ``python -m serving`` on the
published bundle, asks ``GET /recommend?user=U&k=20`` (no history, no time: what a shop's page
asks) for every user with a later event, and reports the protocol's metrics of those answers
against the later events, plus how many users were recommended an item from their own log.

Served is measured (``parity``): for every test user of a dataset, ``POST /recommend`` to a
hold-out bundle with the protocol's train + valid history, ``at=`` the held-out time and the
held-out row's context (and ``GET /recommend?user=&at=`` with the bundle's stored history),
re-scored under the protocol, beside `recsys.evaluate` on that bundle:

    python -m benchmarks.http_quality parity --dataset ml-100k --bundle artifacts/ml-100k/bundles/holdout/compressed
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from loadtest.harness import running_server
from recsys.data.datasets import DEFAULT_DATA_DIR, load_dataset
from recsys.evaluate.metrics import topk_metrics
from recsys.evaluate.models import load_model
from recsys.evaluate.scoring import held_out_requests, recommend_for_stage, score_topk
from recsys.split import temporal_split

log = logging.getLogger("benchmarks.http_quality")

K = 20


def prepare(out: Path, data_dir: Path) -> None:
    dataset = load_dataset("ml-100k", data_dir)
    split = temporal_split(dataset)
    rows = dataset.interactions
    last = split.test.assign(user_id=split.users.to_external(split.test["u"].to_numpy()),
                             item_id=split.items.to_external(split.test["i"].to_numpy()),
                             timestamp=split.test["t"].to_numpy())
    held = pd.MultiIndex.from_frame(last[["user_id", "item_id"]].astype(str))
    keep = ~pd.MultiIndex.from_frame(rows[["user_id", "item_id"]].astype(str)).isin(held)
    out.mkdir(parents=True, exist_ok=True)
    rows[keep].to_csv(out / "log.csv", index=False)
    last[["user_id", "item_id", "timestamp"]].to_csv(out / "later.csv", index=False)
    dataset.items.to_csv(out / "items.csv", index=False)
    dataset.users.to_csv(out / "users.csv", index=False)
    log.info("log.csv: %d rows; later.csv: %d rows (each user's last)", int(keep.sum()), len(last))


def score(bundle: str, later_path: Path, log_path: Path | None) -> dict:
    later = pd.read_csv(later_path, dtype={"user_id": str, "item_id": str})
    own = None
    if log_path is not None:
        logged = pd.read_csv(log_path, usecols=["user_id", "item_id"], dtype=str)
        own = logged.groupby("user_id")["item_id"].agg(set).to_dict()
    items = sorted(set(later["item_id"]))
    item_pos = {item: i + 1 for i, item in enumerate(items)}  # 0 = an answer that is not a later item
    topk = np.zeros((len(later), K), dtype=np.int64)
    recommended_own = 0
    command = [sys.executable, "-m", "serving", "--bundle", bundle, "--host", "127.0.0.1", "--port", "0"]
    with tempfile.TemporaryDirectory() as scratch, \
            running_server(command, Path(scratch) / "server.log") as (_, url), \
            httpx.Client(base_url=url, timeout=30) as client:
        for row, user in enumerate(tqdm(later["user_id"], desc="GET /recommend", unit="user")):
            answer = client.get("/recommend", params={"user": user, "k": K}).json()
            ids = [entry["item_id"] for entry in answer["items"]]
            topk[row, :len(ids)] = [item_pos.get(item, 0) for item in ids]
            if own is not None and own.get(user, set()).intersection(ids[:10]):
                recommended_own += 1
    # Item positions stand in for ids: 0 never matches a target, and a later item's position is
    # the same on both sides, so ranks (hence the metrics but coverage) are the protocol's.
    targets = later["item_id"].map(item_pos).to_numpy()
    metrics = topk_metrics(np.where(topk > 0, topk, -1), targets, n_items=len(items) + 1)
    result = {"bundle": bundle, "users": len(later), "NDCG@10": metrics["NDCG@10"], "HR@10": metrics["HR@10"],
              "NDCG@10_se": metrics.get("NDCG@10_se"), "users_recommended_own_item_in_top10": recommended_own}
    sys.stdout.write(json.dumps(result, indent=2) + "\n")
    return result


def parity(dataset_name: str, bundle: str, data_dir: Path) -> dict:
    split = temporal_split(load_dataset(dataset_name, data_dir))
    model = load_model(bundle, split)
    evaluated = score_topk(recommend_for_stage(model, split, "test"), split)
    requests = held_out_requests(split, "test")
    post = np.full((len(requests), K), -1, dtype=np.int64)
    get = post.copy()
    command = [sys.executable, "-m", "serving", "--bundle", bundle, "--host", "127.0.0.1", "--port", "0"]
    with tempfile.TemporaryDirectory() as scratch, \
            running_server(command, Path(scratch) / "server.log") as (_, url), \
            httpx.Client(base_url=url, timeout=30) as client:
        for row, body in enumerate(tqdm(requests, desc="POST + GET /recommend", unit="user")):
            # POST: the caller sends the evaluation's history; GET: the bundle's stored history.
            answers = (client.post("/recommend", json={**body, "k": K}),
                       client.get("/recommend", params={"user": body["user"], "k": K, "at": body["at"],
                                                        **body["context"]}))
            for topk, answer in zip((post, get), answers, strict=True):
                answer.raise_for_status()
                ids = [entry["item_id"] for entry in answer.json()["items"]]
                topk[row, :len(ids)] = split.items.to_index(ids, missing=-1)
    served = score_topk(post, split)
    stored = score_topk(get, split)
    result = {"dataset": dataset_name, "bundle": bundle, "users": len(requests),
              "evaluate_NDCG@10": evaluated["NDCG@10"], "post_NDCG@10": served["NDCG@10"],
              "post_difference": served["NDCG@10"] - evaluated["NDCG@10"], "get_NDCG@10": stored["NDCG@10"],
              "get_difference": stored["NDCG@10"] - evaluated["NDCG@10"],
              "evaluate_HR@10": evaluated["HR@10"], "post_HR@10": served["HR@10"],
              "get_HR@10": stored["HR@10"]}
    sys.stdout.write(json.dumps(result, indent=2) + "\n")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.http_quality", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    prep = commands.add_parser("prepare", help="write log.csv, later.csv, items.csv, users.csv")
    prep.add_argument("--out", type=Path, required=True)
    prep.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    scoring = commands.add_parser("score", help="serve a bundle and score its answers on the later events")
    scoring.add_argument("--bundle", required=True)
    scoring.add_argument("--later", type=Path, required=True)
    scoring.add_argument("--log", type=Path, help="the log the bundle was built from (to count own items)")
    check = commands.add_parser("parity", help="POST /recommend vs recsys.evaluate on a hold-out bundle")
    check.add_argument("--dataset", required=True)
    check.add_argument("--bundle", required=True)
    check.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    if args.command == "prepare":
        prepare(args.out, args.data_dir)
    elif args.command == "parity":
        parity(args.dataset, args.bundle, args.data_dir)
    else:
        score(args.bundle, args.later, args.log)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`python -m recsys.evaluate`: model -> top-K lists -> protocol metrics (table, JSON, CSV).

With ``--events LATER_LOG`` it backtests a bundle instead: every later event is a request at its
own time (`recsys.evaluate.backtest`), so ``--dataset`` is not needed."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import pandas as pd

from recsys.data.datasets import DEFAULT_DATA_DIR, load_dataset
from recsys.data.schema import DataError
from recsys.evaluate.backtest import run_backtest
from recsys.evaluate.baselines import BASELINES
from recsys.evaluate.models import MODEL_STAGES, load_model
from recsys.evaluate.scoring import frame_to_topk, recommend_for_stage, score_topk, topk_to_frame
from recsys.pipeline.contract import ModelSpecError
from recsys.split import temporal_split

TABLE_COLUMNS = ("HR@10", "NDCG@10", "Recall@20", "NDCG@20", "MRR@10", "coverage@10")


def format_table(rows: dict[str, dict], columns=TABLE_COLUMNS) -> str:
    header = "| model | " + " | ".join(columns) + " |"
    lines = [header, "|" + "---|" * (len(columns) + 1)]
    for name, metrics in rows.items():
        cells = [f"{metrics[c]:.4f}" if c in metrics else "" for c in columns]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m recsys.evaluate", description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", help="ml-100k, instacart, synthetic[-1m] or a log path (not needed with --events)")
    parser.add_argument("--model", required=True, help=f"{'|'.join(sorted(BASELINES))} or a model/bundle dir")
    parser.add_argument("--items", help="item catalog for a user log (CSV/Parquet)")
    parser.add_argument("--users", help="user table for a user log (CSV/Parquet)")
    parser.add_argument("--data-dir", default=str(DEFAULT_DATA_DIR), help="dataset cache (default: data/)")
    parser.add_argument("--split", choices=("test", "valid"), default="test", help="held-out interactions to score")
    parser.add_argument("--held-out", type=int, default=1, metavar="K",
                        help="split with each user's last K interactions held out, as `recsys.train --held-out K` "
                             "trains (valid: the model-selection score; test: the first gate event); "
                             "default 1, the protocol's split, comparable with peers")
    parser.add_argument("--allow-seen", action="store_true",
                        help="score a bundle published from the whole log on rows it was built from (labelled)")
    parser.add_argument("--stage", choices=MODEL_STAGES, default="full",
                        help="for a model dir: the full retrieve -> rank pipeline, or retrieval alone")
    parser.add_argument("--topk-out", help="write the top-20 lists as CSV user_id,rank,item_id")
    parser.add_argument("--topk-in", help="score an existing top-K CSV instead of a model")
    parser.add_argument("--json", help="write the metrics as JSON here")
    parser.add_argument("--events", help="backtest: score a bundle (--model) on this later log of user_id, item_id, "
                                         "timestamp (CSV/Parquet), each event a request at its own time")
    args = parser.parse_args(argv)
    if args.events is None and args.dataset is None:
        parser.error("the following arguments are required: --dataset")
    if args.held_out < 1:
        parser.error(f"--held-out must be >= 1, got {args.held_out}")
    return args


def run(args: argparse.Namespace) -> dict:
    if args.events:
        return run_events(args)
    split = temporal_split(load_dataset(args.dataset, args.data_dir, args.items, args.users), args.held_out)
    started = time.perf_counter()
    if args.topk_in:
        topk = frame_to_topk(pd.read_csv(args.topk_in), split, args.split)
        name = Path(args.topk_in).name
    else:
        model = load_model(args.model, split, args.stage, args.allow_seen)
        topk = recommend_for_stage(model, split, args.split)
        name = getattr(model, "display_name", args.model)
    metrics = score_topk(topk, split, args.split)
    metrics["seconds"] = round(time.perf_counter() - started, 3)
    sys.stdout.write(format_table({name: metrics}) + "\n")
    if args.topk_out:
        topk_to_frame(topk, split, args.split).to_csv(args.topk_out, index=False)
    if args.json:
        payload = {"dataset": args.dataset, "model": args.model, "split": args.split, "held_out": args.held_out,
                   "stage": args.stage,
                   "allow_seen": args.allow_seen, "label": name, **metrics}
        Path(args.json).write_text(json.dumps(payload, indent=2))
    return metrics


def run_events(args: argparse.Namespace) -> dict:
    """The backtest: ``--model`` (a bundle) on the later log ``--events``."""
    if args.topk_in or args.topk_out:
        raise ModelSpecError("--topk-in / --topk-out score the held-out rows of --dataset; they do not combine "
                             "with --events")
    started = time.perf_counter()
    label, result = run_backtest(args.model, args.events, args.stage)
    metrics = {**result.metrics, "seconds": round(time.perf_counter() - started, 3)}
    sys.stdout.write(format_table({label: metrics}) + "\n")
    if args.json:
        payload = {"events_file": args.events, "model": args.model, "stage": args.stage, "label": label, **metrics}
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

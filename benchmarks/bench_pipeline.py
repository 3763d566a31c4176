"""Per-stage latency of the retrieve -> rank pipeline, one request at a time (batch 1).

    python -m benchmarks.bench_pipeline --dataset ml-100k --model artifacts/ml-100k/model \
        --out reports/bench/pipeline.md

Requests are the test split's users (seeded sample) with their protocol history and context,
run through `Pipeline.recommend` with one torch / FAISS thread, as a serving worker runs. Each
stage's time comes from the pipeline's own `timings`; "request" is the wall time of the whole
call. Writes a Markdown table (and the same numbers as JSON beside it).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from recsys.data.datasets import DEFAULT_DATA_DIR, load_dataset
from recsys.index import set_faiss_threads
from recsys.pipeline.ranker_features import request_context, slice_context
from recsys.pipeline.recommend import N_CANDIDATES, STAGES
from recsys.split import temporal_split
from recsys.train.torch_pipeline import load_pipeline

log = logging.getLogger("benchmarks.bench_pipeline")

WARMUP = 10


def measure(pipeline, split, n_requests: int, k: int, n_candidates: int, seed: int) -> dict[str, np.ndarray]:
    users, _ = split.targets("test")
    history = split.user_history("test")
    context = request_context(split, "test")
    rows = np.random.default_rng(seed).choice(len(users), size=n_requests, replace=len(users) < n_requests)
    times: dict[str, list[float]] = {name: [] for name in (*STAGES, "request")}
    for step, row in enumerate(np.r_[rows[:WARMUP], rows]):
        timings: dict[str, float] = {}
        started = time.perf_counter()
        pipeline.recommend(users[row:row + 1], k, history, n_candidates=n_candidates,
                           context=slice_context(context, slice(row, row + 1)), timings=timings)
        elapsed = time.perf_counter() - started
        if step < WARMUP:
            continue
        times["request"].append(elapsed)
        for name in STAGES:
            times[name].append(timings.get(name, 0.0))
    return {name: np.asarray(values) * 1e3 for name, values in times.items()}


def to_markdown(summary: dict) -> str:
    lines = [f"# Pipeline latency per request (batch 1): {summary['dataset']}", "",
             f"Model `{summary['model']}` ({'two-tower + ranker' if summary['ranker'] else 'two-tower only'}), "
             f"index `{summary['index']}` over {summary['n_items']:,} items, {summary['n_candidates']} candidates, "
             f"top-{summary['k']}, {summary['requests']} requests after {WARMUP} warm-up, "
             f"{summary['threads']} thread(s); {summary['machine']}.", "",
             "| stage | p50 ms | p99 ms | mean ms |", "|---|---|---|---|"]
    for name, stats in summary["stages"].items():
        lines.append(f"| {name} | {stats['p50_ms']:.3f} | {stats['p99_ms']:.3f} | {stats['mean_ms']:.3f} |")
    lines += ["", "`total` is the pipeline's own time for the batch (stages + filtering and top-k); `request` adds "
              "looking up the user's history rows.", f"\nCommand: `{summary['command']}`", ""]
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_pipeline", description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--model", required=True, help="model directory written by `python -m recsys.train`")
    parser.add_argument("--data-dir", default=str(DEFAULT_DATA_DIR))
    parser.add_argument("--index", default="Flat", help="FAISS factory string for the item index")
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--n-candidates", type=int, default=N_CANDIDATES)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="reports/bench/pipeline.md")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    set_faiss_threads(args.threads)
    split = temporal_split(load_dataset(args.dataset, args.data_dir))
    pipeline = load_pipeline(args.model, index_factory=args.index)
    times = measure(pipeline, split, args.requests, args.k, args.n_candidates, args.seed)
    summary = {
        "dataset": args.dataset, "model": str(args.model), "ranker": pipeline.has_ranker, "index": args.index,
        "n_items": pipeline.n_items, "n_candidates": args.n_candidates, "k": args.k, "requests": args.requests,
        "threads": args.threads, "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
        "command": "python -m benchmarks.bench_pipeline " + " ".join(argv if argv is not None else sys.argv[1:]),
        "stages": {name: {"p50_ms": float(np.percentile(v, 50)), "p99_ms": float(np.percentile(v, 99)),
                          "mean_ms": float(v.mean())} for name, v in times.items()},
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(to_markdown(summary))
    out.with_suffix(".json").write_text(json.dumps(summary, indent=2))
    log.info("wrote %s", out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

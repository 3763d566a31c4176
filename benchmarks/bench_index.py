"""Benchmark FAISS candidate indexes: build time, size, tuned recall@100 and batch-1 latency.

    python -m benchmarks.bench_index --n 1000000 --dim 64 --out reports/bench/index

Item vectors are a seeded mixture of Gaussians on the unit sphere (clusters of uneven popularity
and width), so IVF cells behave roughly as they do on trained embeddings; queries are drawn from
the same mixture. Half the queries tune the query knobs, the other half measure recall and
latency, so the reported recall is not the one the tuner optimised. Writes ``index_bench.json``
and ``index_bench.md`` under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import time
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from recsys.index import (
    MIN_POINTS_PER_CENTROID,
    build_index,
    exact_topk,
    index_bytes,
    measure_latency,
    recall_at_k,
    search,
    set_faiss_threads,
    tune_query_params,
)

log = logging.getLogger("benchmarks.bench_index")

# "np" skips polysemous training: it only helps the unused "ht" knob and costs ~a minute per PQ.
DEFAULT_FACTORIES = (
    "Flat",
    "HNSW32",
    "IVF{nlist},SQ8",
    "IVF{nlist},PQ16np",
    "IVF{nlist},PQ32np",
    "IVF{nlist},PQ32x4fs,Refine(SQ8)",
)
TUNE_K = 100
LATENCY_KS = (100, 500)
_CHUNK_ROWS = 100_000


def default_nlist(n: int) -> int:
    """Power of two nearest 4 * sqrt(n) (low end of FAISS's IVF guideline), within what n can train."""
    trainable = 2 ** int(math.log2(max(1, n // MIN_POINTS_PER_CENTROID)))
    return min(2 ** round(math.log2(4 * math.sqrt(n))), trainable)


def make_mixture(n_clusters: int, dim: int, spread: float, seed: int) -> dict[str, np.ndarray]:
    """Cluster centres on the unit sphere with Zipf-like popularity and varied widths."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_clusters, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    # Catalogues have head and tail categories; uneven clusters give uneven inverted lists.
    weights = 1.0 / np.sqrt(np.arange(1, n_clusters + 1))
    widths = spread * rng.uniform(0.75, 1.25, n_clusters).astype(np.float32)
    return {"centres": centres, "weights": weights / weights.sum(), "widths": widths}


def sample_mixture(mixture: dict[str, np.ndarray], n: int, seed: int) -> np.ndarray:
    """``n`` unit vectors from ``mixture``, generated in chunks to bound temporary memory."""
    rng = np.random.default_rng(seed)
    centres, widths = mixture["centres"], mixture["widths"]
    dim = centres.shape[1]
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, _CHUNK_ROWS):
        stop = min(n, start + _CHUNK_ROWS)
        labels = rng.choice(len(centres), size=stop - start, p=mixture["weights"])
        noise = rng.standard_normal((stop - start, dim), dtype=np.float32)
        chunk = centres[labels] + noise * (widths[labels, None] / np.sqrt(dim))
        out[start:stop] = chunk / np.linalg.norm(chunk, axis=1, keepdims=True)
    return out


def _timed_latency(index: faiss.Index, queries: np.ndarray, k: int, n_queries: int) -> dict[str, float]:
    # One query at a time on one thread, as a serving worker runs it.
    previous = set_faiss_threads(1)
    try:
        return measure_latency(index, queries, k, n_queries=n_queries)
    finally:
        set_faiss_threads(previous)


def bench_factory(
    factory: str, vectors: np.ndarray, queries: dict[str, np.ndarray], args: argparse.Namespace
) -> dict[str, Any]:
    """Build, tune, and measure one factory string; the index is dropped before returning."""
    start = time.perf_counter()
    index = build_index(vectors, factory, seed=args.seed)
    build_s = time.perf_counter() - start
    tuned = tune_query_params(index, queries["tune"], queries["tune_exact"], TUNE_K, target_recall=args.target_recall)
    row: dict[str, Any] = {
        "factory": factory,
        "build_s": round(build_s, 2),
        "bytes": index_bytes(index),
        "query_params": tuned.params,
        "reached_target": tuned.reached_target,
        "tune_recall_at_100": round(tuned.recall, 4),
    }
    row["bytes_per_vector"] = round(row["bytes"] / len(vectors), 1)
    for k in LATENCY_KS:
        _, ids = search(index, queries["eval"], k)
        row[f"recall_at_{k}"] = round(recall_at_k(ids, queries["eval_exact"][:, :k]), 4)
        latency = _timed_latency(index, queries["eval"], k, args.latency_queries)
        row[f"latency_k{k}"] = {name: round(value, 3) for name, value in latency.items()}
    log.info("%s: %s", factory, row)
    return row


def _markdown_table(rows: list[dict[str, Any]], config: dict[str, Any]) -> str:
    header = (
        "| factory | build s | MB | B/vec | query params | recall@100 | recall@500 "
        "| p50 ms k=100 | p99 ms k=100 | p50 ms k=500 | p99 ms k=500 |"
    )
    lines = [
        f"# FAISS index benchmark: {config['n']:,} x {config['dim']}",
        "",
        f"Query params tuned for recall@100 >= {config['target_recall']} on {config['n_queries']} queries, "
        f"recall measured on {config['n_queries']} others with the same params (also for k=500). "
        f"Latency: batch size 1, 1 FAISS thread, {config['latency_queries']} queries. "
        f"Built with {config['build_threads']} threads; faiss {config['faiss_version']}.",
        "A `*` marks an index that cannot reach the target; it shows the cheapest setting within "
        "0.005 of its best recall.",
        "",
        header,
        "|" + "---|" * header.count(" | ") + "---|",
    ]
    for row in rows:
        params = ", ".join(f"{name}={value}" for name, value in row["query_params"].items()) or "-"
        miss = "" if row["reached_target"] else "*"
        lines.append(
            f"| `{row['factory']}` | {row['build_s']:.1f} | {row['bytes'] / 1e6:.1f} | "
            f"{row['bytes_per_vector']:.0f} | {params} | {row['recall_at_100']:.4f}{miss} | "
            f"{row['recall_at_500']:.4f} | {row['latency_k100']['p50_ms']:.2f} | "
            f"{row['latency_k100']['p99_ms']:.2f} | {row['latency_k500']['p50_ms']:.2f} | "
            f"{row['latency_k500']['p99_ms']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def write_reports(rows: list[dict[str, Any]], config: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    report = {"config": config, "results": rows}
    (out / "index_bench.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "index_bench.md").write_text(_markdown_table(rows, config))
    log.info("wrote %s and %s", out / "index_bench.json", out / "index_bench.md")


def make_queries(mixture: dict[str, np.ndarray], vectors: np.ndarray, args: argparse.Namespace) -> dict:
    """Held-out queries (a seed the items never use), split into tuning and evaluation halves."""
    queries = sample_mixture(mixture, 2 * args.queries, seed=args.seed + 1)
    _, exact = exact_topk(vectors, queries, max(LATENCY_KS))
    tune, evaluate = np.split(queries, 2)
    tune_exact, eval_exact = np.split(exact, 2)
    return {"tune": tune, "tune_exact": tune_exact, "eval": evaluate, "eval_exact": eval_exact}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="number of item vectors")
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument(
        "--factories",
        nargs="+",
        default=list(DEFAULT_FACTORIES),
        help="FAISS factory strings; {nlist} becomes the power of two nearest 4*sqrt(n)",
    )
    parser.add_argument("--clusters", type=int, default=1000, help="mixture components")
    parser.add_argument("--spread", type=float, default=1.0, help="mean noise norm around a centre")
    parser.add_argument("--queries", type=int, default=1000, help="tuning queries (as many again for eval)")
    parser.add_argument("--latency-queries", type=int, default=500)
    parser.add_argument("--target-recall", type=float, default=0.95)
    parser.add_argument("--build-threads", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("reports/bench/index"))
    parser.add_argument(
        "--resume",
        action="store_true",
        help="keep results already in --out from a run with the same settings; measure only the rest",
    )
    return parser.parse_args(argv)


def _run_config(args: argparse.Namespace, nlist: int, factories: list[str]) -> dict[str, Any]:
    settings = {name: value for name, value in vars(args).items() if name not in {"out", "factories", "resume"}}
    return {
        **settings,
        "n_queries": args.queries,
        "nlist": nlist,
        "faiss_version": faiss.__version__,
        "numpy_version": np.__version__,
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "factories": factories,
    }


def _previous_rows(out: Path, config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Rows of an earlier run on the same data and settings, by factory (for ``--resume``)."""
    path = out / "index_bench.json"
    if not path.is_file():
        return {}
    report = json.loads(path.read_text())
    if {**report["config"], "factories": None} != {**config, "factories": None}:
        log.warning("not resuming from %s: it was made with different settings", path)
        return {}
    return {row["factory"]: row for row in report["results"]}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    set_faiss_threads(args.build_threads)
    nlist = default_nlist(args.n)
    factories = [factory.format(nlist=nlist) for factory in args.factories]
    config = _run_config(args, nlist, factories)
    done = _previous_rows(args.out, config) if args.resume else {}
    if done:
        log.info("resuming: keeping earlier results for %s", sorted(set(done) & set(factories)))
    mixture = make_mixture(args.clusters, args.dim, args.spread, seed=args.seed)
    vectors = sample_mixture(mixture, args.n, seed=args.seed)
    queries = make_queries(mixture, vectors, args)
    rows = []
    for factory in factories:
        rows.append(done.get(factory) or bench_factory(factory, vectors, queries, args))
        # Rewrite after every factory so a run cut short (time limit) leaves its results for --resume.
        write_reports(rows, config, args.out)


if __name__ == "__main__":
    main()

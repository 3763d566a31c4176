"""What is inside a bundle besides the manifest: file names and the arrays the request path needs.

    user_tower.onnx           (users1 int64 [B], history1 int64 [B, L]) -> user_vec float32 [B, D]
    ranker.onnx               optional re-ranker over the retrieved candidates
    index.faiss, index.json   FAISS index over item vectors (positions = item indices)
    item_vectors.npy          float32 [items, D]   | item_vectors_int8.npy + item_scales.npy
    users.json, items.json    id maps (external ids, exact round trip)
    history.npz               recent [users, L] item indices (left-padded -1) + seen CSR + last_time [users]
    popularity.npy            interaction counts of what the bundle knows: fallback order for unknown users
    user_vectors.npy          float32 [users, D] the user tower over each stored history (precomputed)
    ranking_features.npz      arrays the ranker's feature builder reads (optional)
    catalog.parquet           item_id, title (optional)
    runtime.json              how to run it: history_len, dim, n_candidates, quantisation, ...; and
                              `data`: the last interaction time it knows and what was held out of it
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from recsys.bundle.manifest import MANIFEST_NAME
from recsys.data.history import History
from recsys.data.idmap import IdMap
from recsys.index import INDEX_FILE


@dataclass(frozen=True)
class BundleFiles:
    """Where each file of a bundle lives under ``root``: the one place that names them.

    Writers (compression) export models to these paths; readers (serving, load test, tools) ask
    for them here, so the layout can change in one file."""

    root: Path

    @property
    def user_tower(self) -> Path:
        return self.root / "user_tower.onnx"

    @property
    def ranker(self) -> Path:
        return self.root / "ranker.onnx"

    @property
    def index_dir(self) -> Path:
        return self.root / "index"

    @property
    def runtime(self) -> Path:
        return self.root / "runtime.json"

    @property
    def users(self) -> Path:
        return self.root / "users.json"

    @property
    def items(self) -> Path:
        return self.root / "items.json"

    @property
    def history(self) -> Path:
        return self.root / "history.npz"

    @property
    def user_vectors(self) -> Path:
        return self.root / "user_vectors.npy"

    @property
    def popularity(self) -> Path:
        return self.root / "popularity.npy"

    @property
    def item_vectors(self) -> Path:
        return self.root / "item_vectors.npy"

    @property
    def item_vectors_int8(self) -> Path:
        return self.root / "item_vectors_int8.npy"

    @property
    def item_scales(self) -> Path:
        return self.root / "item_scales.npy"

    @property
    def ranking_features(self) -> Path:
        return self.root / "ranking_features.npz"

    @property
    def catalog(self) -> Path:
        return self.root / "catalog.parquet"

    def served_files(self) -> list[Path]:
        """The files whose size a variant's card counts: models, item vectors, the index itself."""
        candidates = [self.user_tower, self.ranker, self.item_vectors, self.item_vectors_int8, self.item_scales,
                      self.index_dir / INDEX_FILE]
        return [path for path in candidates if path.exists()]


@dataclass
class BundleContent:
    users: IdMap
    items: IdMap
    history: History
    popularity: np.ndarray
    item_vectors: np.ndarray | None = None  # float32, or None when int8 rows are given
    item_vectors_int8: np.ndarray | None = None
    item_scales: np.ndarray | None = None
    ranking_arrays: dict[str, np.ndarray] = field(default_factory=dict)
    titles: pd.Series | None = None  # indexed by item index
    runtime: dict = field(default_factory=dict)
    # [n_users] time of each user's latest interaction the bundle holds (-1: none): a request's
    # ``last_timestamp``, as evaluation and ranker training give it.
    last_time: np.ndarray | None = None
    # [n_users, D] the user tower over each stored history, computed when the bundle is built and
    # mapped read-only by every worker (None: computed at load, as bundles before it was stored).
    user_vectors: np.ndarray | None = None

    def dense_item_vectors(self) -> np.ndarray:
        if self.item_vectors is not None:
            return self.item_vectors
        return (self.item_vectors_int8.astype(np.float32) * self.item_scales[:, None]).astype(np.float32)


def save_content(content: BundleContent, out: Path) -> None:
    """Write the arrays into a staging directory (ONNX files and the index are written by the caller)."""
    out.mkdir(parents=True, exist_ok=True)
    files = BundleFiles(out)
    content.users.save(files.users)
    content.items.save(files.items)
    seen = content.history.seen.tocsr()
    last_time = content.last_time if content.last_time is not None else np.full(seen.shape[0], -1, np.int64)
    np.savez(files.history, recent=content.history.recent.astype(np.int32), indptr=seen.indptr,
             indices=seen.indices, shape=np.array(seen.shape), last_time=last_time.astype(np.int64))
    np.save(files.popularity, content.popularity.astype(np.float32))
    if content.user_vectors is not None:
        np.save(files.user_vectors, np.asarray(content.user_vectors, dtype=np.float32))
    if content.item_vectors_int8 is not None:
        np.save(files.item_vectors_int8, content.item_vectors_int8)
        np.save(files.item_scales, content.item_scales.astype(np.float32))
    else:
        np.save(files.item_vectors, content.item_vectors.astype(np.float32))
    if content.ranking_arrays:
        np.savez(files.ranking_features, **content.ranking_arrays)
    if content.titles is not None:
        frame = pd.DataFrame({"item": np.asarray(content.titles.index, dtype=np.int64),
                              "title": content.titles.astype(str).to_numpy()})
        frame.to_parquet(files.catalog, index=False)
    files.runtime.write_text(json.dumps(content.runtime, indent=2, default=str))


def load_history(files: BundleFiles) -> History:
    with np.load(files.history) as stored:
        shape = tuple(int(x) for x in stored["shape"])
        seen = sp.csr_matrix((np.ones(len(stored["indices"]), dtype=np.float32), stored["indices"],
                              stored["indptr"]), shape=shape)
        return History(seen, stored["recent"])


def load_last_time(files: BundleFiles, n_users: int) -> np.ndarray:
    """Each user's latest interaction time (-1: none; bundles written before it was stored: all -1)."""
    with np.load(files.history) as stored:
        return stored["last_time"] if "last_time" in stored.files else np.full(n_users, -1, np.int64)


def load_titles(files: BundleFiles) -> pd.Series | None:
    """Catalogue titles indexed by item index, or None when the bundle has no catalogue."""
    if not files.catalog.exists():
        return None
    frame = pd.read_parquet(files.catalog)
    return pd.Series(frame["title"].to_numpy(), index=frame["item"].to_numpy())


def load_content(bundle_dir: Path) -> BundleContent:
    files = BundleFiles(Path(bundle_dir))
    content = BundleContent(IdMap.load(files.users), IdMap.load(files.items), load_history(files),
                            np.load(files.popularity), runtime=json.loads(files.runtime.read_text()))
    content.last_time = load_last_time(files, len(content.users))
    if files.user_vectors.exists():
        content.user_vectors = np.load(files.user_vectors, mmap_mode="r")
    if files.item_vectors_int8.exists():
        content.item_vectors_int8 = np.load(files.item_vectors_int8)
        content.item_scales = np.load(files.item_scales)
    else:
        content.item_vectors = np.load(files.item_vectors)
    if files.ranking_features.exists():
        with np.load(files.ranking_features) as arrays:
            content.ranking_arrays = {name: arrays[name] for name in arrays.files}
    content.titles = load_titles(files)
    return content


def last_times(known: pd.DataFrame, n_users: int) -> np.ndarray:
    """[n_users] each user's latest time in ``known`` (split frame: columns ``u``, ``t``), -1 for none."""
    out = np.full(n_users, -1, dtype=np.int64)
    latest = known.groupby("u")["t"].max()
    out[latest.index.to_numpy()] = latest.to_numpy()
    return out


def data_record(known: pd.DataFrame, holdout: str | None) -> dict:
    """What a bundle knows (``runtime["data"]``): the time of the last interaction it holds, and
    what was held out of it to measure it (None: nothing, it was published from the whole log)."""
    return {"cutoff": int(known["t"].max()) if len(known) else None, "holdout": holdout, "interactions": len(known)}


def knows_everything(content: BundleContent) -> bool:
    """True for a bundle published from the whole log: scoring it on that log's held-out rows
    would count interactions it has already seen."""
    data = content.runtime.get("data")
    return data is not None and data.get("holdout") is None


def restage(source: Path, staging: Path, change: Callable[[BundleContent, BundleFiles], None]) -> None:
    """Copy a bundle's files (not its manifest) into ``staging`` and rewrite its arrays through
    ``change(content, files)``: the same models and index, other histories / counts."""
    shutil.copytree(source, staging, dirs_exist_ok=True, ignore=shutil.ignore_patterns(MANIFEST_NAME))
    content = load_content(staging)
    if content.user_vectors is not None:
        content.user_vectors = np.array(content.user_vectors)  # off the file it is about to replace
    change(content, BundleFiles(staging))
    save_content(content, staging)

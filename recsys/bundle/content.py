"""What is inside a bundle besides the manifest: file names and the arrays the request path needs.

Every array is a plain .npy file, read with ``np.load(mmap_mode="r")``: a server's workers map the
same pages instead of each holding a copy (`recsys.index.load_index` maps the index the same way).

    user_tower.onnx           (users1 int64 [B], history1 int64 [B, L]) -> user_vec float32 [B, D]
    ranker.onnx               optional re-ranker over the retrieved candidates
    index/index.faiss, .json  FAISS index over item vectors (positions = item indices)
    item_vectors_int8.npy + item_scales.npy, or item_vectors.npy (float32 [items, D])
                              the item rows the ranker reads, only beside a lossy index (SQ, PQ,
                              IVF): an exact (flat) index holds them, and they are read from it
    users.json, items.json    id maps (external ids, exact round trip)
    history/                  recent.npy [users, L] item indices (left-padded -1); the seen CSR:
                              seen_indptr.npy, seen_indices.npy, seen_shape.npy; last_time.npy [users]
    popularity.npy            interaction counts of what the bundle knows: fallback order for unknown users
    user_vectors.npy          float32 [users, D] the user tower over each stored history (precomputed)
    ranking_features/         NAME.npy per array the ranker's feature builder reads (optional)
    catalog.parquet           item_id, title (optional)
    runtime.json              how to run it: history_len, dim, n_candidates, quantisation, ...; and
                              `data`: the last interaction time it knows and what was held out of it

Format 1 bundles (history.npz, ranking_features.npz, an item-vector table beside any index) still
load, their zipped arrays into each worker's memory.
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
        return self.root / "history"

    @property
    def legacy_history(self) -> Path:
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
        return self.root / "ranking_features"

    @property
    def legacy_ranking_features(self) -> Path:
        return self.root / "ranking_features.npz"

    @property
    def catalog(self) -> Path:
        return self.root / "catalog.parquet"

    @property
    def search(self) -> Path:
        """The search index (`recsys.search.engine.SearchFiles`), when the catalogue has text."""
        return self.root / "search"

    def content_names(self) -> set[str]:
        """What `save_content` writes (and format 1 wrote): everything but the models and the index."""
        return {path.name for path in (
            self.users, self.items, self.history, self.legacy_history, self.popularity, self.user_vectors,
            self.item_vectors, self.item_vectors_int8, self.item_scales, self.ranking_features,
            self.legacy_ranking_features, self.catalog, self.runtime)}

    def total_bytes(self) -> int:
        """Size of the bundle on disk: every file under the root, the manifest included."""
        return sum(path.stat().st_size for path in self.root.rglob("*") if path.is_file())


class DequantizedRows:
    """int8 item rows times their row scales, dequantised per gather (``rows[items]``), so that no
    worker holds a float32 copy of the whole table."""

    def __init__(self, codes: np.ndarray, scales: np.ndarray):
        self.codes = codes
        self.scales = scales

    def __len__(self) -> int:
        return len(self.codes)

    @property
    def shape(self) -> tuple[int, ...]:
        return self.codes.shape

    def __getitem__(self, rows) -> np.ndarray:
        return (self.codes[rows].astype(np.float32) * self.scales[rows][..., None]).astype(np.float32)


@dataclass
class BundleContent:
    users: IdMap
    items: IdMap
    history: History
    popularity: np.ndarray
    # The item rows the ranker reads: float32, or int8 rows + scales, or neither when the index
    # holds them exactly (a flat index: `recsys.index.exact_vectors`).
    item_vectors: np.ndarray | None = None
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
        """Every stored item row as one float32 array (what the writer indexes)."""
        return self.item_rows()[:]

    def item_rows(self) -> np.ndarray | DequantizedRows | None:
        """The stored item rows as the pipeline gathers them, None when the index holds them."""
        if self.item_vectors_int8 is not None:
            return DequantizedRows(self.item_vectors_int8, self.item_scales)
        return self.item_vectors

    def drop_item_vectors(self) -> None:
        """Store no item-vector table: the bundle's index holds the same vectors exactly."""
        self.item_vectors = self.item_vectors_int8 = self.item_scales = None


def _save(path: Path, array: np.ndarray) -> None:
    path.unlink(missing_ok=True)  # a new file, never rewritten in place: a reader may map the old one
    np.save(path, array)


def _save_arrays(directory: Path, arrays: dict[str, np.ndarray]) -> None:
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir()
    for name, array in arrays.items():
        np.save(directory / f"{name}.npy", array)


def _map(path: Path) -> np.ndarray:
    return np.load(path, mmap_mode="r")


def _map_arrays(directory: Path) -> dict[str, np.ndarray]:
    return {path.stem: _map(path) for path in sorted(directory.glob("*.npy"))}


def save_content(content: BundleContent, out: Path) -> None:
    """Write the arrays into a staging directory (ONNX files and the index are written by the caller)."""
    out.mkdir(parents=True, exist_ok=True)
    files = BundleFiles(out)
    content.users.save(files.users)
    content.items.save(files.items)
    seen = content.history.seen.tocsr()
    last_time = content.last_time if content.last_time is not None else np.full(seen.shape[0], -1, np.int64)
    _save_arrays(files.history, {"recent": content.history.recent.astype(np.int32), "seen_indptr": seen.indptr,
                                 "seen_indices": seen.indices, "seen_shape": np.array(seen.shape, np.int64),
                                 "last_time": last_time.astype(np.int64)})
    _save(files.popularity, content.popularity.astype(np.float32))
    if content.user_vectors is not None:
        _save(files.user_vectors, np.asarray(content.user_vectors, dtype=np.float32))
    if content.item_vectors_int8 is not None:
        _save(files.item_vectors_int8, content.item_vectors_int8)
        _save(files.item_scales, content.item_scales.astype(np.float32))
    elif content.item_vectors is not None:
        _save(files.item_vectors, content.item_vectors.astype(np.float32))
    if content.ranking_arrays:
        _save_arrays(files.ranking_features, content.ranking_arrays)
    if content.titles is not None:
        frame = pd.DataFrame({"item": np.asarray(content.titles.index, dtype=np.int64),
                              "title": content.titles.astype(str).to_numpy()})
        frame.to_parquet(files.catalog, index=False)
    files.runtime.write_text(json.dumps(content.runtime, indent=2, default=str))


def _history_arrays(files: BundleFiles) -> dict[str, np.ndarray]:
    if files.history.is_dir():
        return _map_arrays(files.history)
    with np.load(files.legacy_history) as stored:  # format 1
        arrays = {name: stored[name] for name in stored.files}
    return {"recent": arrays["recent"], "seen_indptr": arrays["indptr"], "seen_indices": arrays["indices"],
            "seen_shape": arrays["shape"], **({"last_time": arrays["last_time"]} if "last_time" in arrays else {})}


def _history(arrays: dict[str, np.ndarray]) -> History:
    indices = arrays["seen_indices"]
    # Every stored pair is one seen item: a broadcast 1, so no worker allocates a value per pair.
    ones = np.broadcast_to(np.float32(1), indices.shape)
    seen = sp.csr_matrix((ones, indices, arrays["seen_indptr"]),
                         shape=tuple(int(x) for x in arrays["seen_shape"]), copy=False)
    return History(seen, arrays["recent"])


def load_history(files: BundleFiles) -> History:
    return _history(_history_arrays(files))


def load_titles(files: BundleFiles) -> pd.Series | None:
    """Catalogue titles indexed by item index, or None when the bundle has no catalogue."""
    if not files.catalog.exists():
        return None
    frame = pd.read_parquet(files.catalog)
    return pd.Series(frame["title"].to_numpy(), index=frame["item"].to_numpy())


def _ranking_arrays(files: BundleFiles) -> dict[str, np.ndarray]:
    if files.ranking_features.is_dir():
        return _map_arrays(files.ranking_features)
    if files.legacy_ranking_features.exists():  # format 1
        with np.load(files.legacy_ranking_features) as arrays:
            return {name: arrays[name] for name in arrays.files}
    return {}


def load_content(bundle_dir: Path) -> BundleContent:
    """The bundle's arrays, mapped read-only (format 1's zipped ones read into memory)."""
    files = BundleFiles(Path(bundle_dir))
    history = _history_arrays(files)
    content = BundleContent(IdMap.load(files.users), IdMap.load(files.items), _history(history),
                            _map(files.popularity), runtime=json.loads(files.runtime.read_text()))
    # Format 1 bundles written before it was stored know no user's latest time: all -1.
    content.last_time = history.get("last_time", np.full(len(content.users), -1, np.int64))
    if files.user_vectors.exists():
        content.user_vectors = _map(files.user_vectors)
    if files.item_vectors_int8.exists():
        content.item_vectors_int8 = _map(files.item_vectors_int8)
        content.item_scales = _map(files.item_scales)
    elif files.item_vectors.exists():
        content.item_vectors = _map(files.item_vectors)
    content.ranking_arrays = _ranking_arrays(files)
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
    """Copy a bundle's models and index into ``staging`` and write its arrays there through
    ``change(content, files)``: the same models and index, other histories / counts."""
    owned = BundleFiles(source).content_names() | {MANIFEST_NAME}
    shutil.copytree(source, staging, dirs_exist_ok=True,
                    ignore=lambda directory, names: [name for name in names
                                                     if Path(directory) == Path(source) and name in owned])
    content = load_content(source)
    change(content, BundleFiles(staging))
    save_content(content, staging)

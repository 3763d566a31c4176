"""What is inside a bundle besides the manifest: file names and the arrays the request path needs.

    user_tower.onnx           (users1 int64 [B], history1 int64 [B, L]) -> user_vec float32 [B, D]
    ranker.onnx               optional re-ranker over the retrieved candidates
    index.faiss, index.json   FAISS index over item vectors (positions = item indices)
    item_vectors.npy          float32 [items, D]   | item_vectors_int8.npy + item_scales.npy
    users.json, items.json    id maps (external ids, exact round trip)
    history.npz               recent [users, L] item indices (left-padded -1) + seen CSR
    popularity.npy            train counts: fallback order for unknown users
    ranking_features.npz      arrays the ranker's feature builder reads (optional)
    catalog.parquet           item_id, title (optional)
    runtime.json              how to run it: history_len, dim, n_candidates, quantisation, ...
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from recsys.data.idmap import IdMap
from recsys.recommender import History

USER_TOWER = "user_tower.onnx"
RANKER = "ranker.onnx"
INDEX_DIR = "index"
RUNTIME = "runtime.json"


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

    def dense_item_vectors(self) -> np.ndarray:
        if self.item_vectors is not None:
            return self.item_vectors
        return (self.item_vectors_int8.astype(np.float32) * self.item_scales[:, None]).astype(np.float32)


def save_content(content: BundleContent, out: Path) -> None:
    """Write the arrays into a staging directory (ONNX files and the index are written by the caller)."""
    out.mkdir(parents=True, exist_ok=True)
    content.users.save(out / "users.json")
    content.items.save(out / "items.json")
    seen = content.history.seen.tocsr()
    np.savez(out / "history.npz", recent=content.history.recent.astype(np.int32), indptr=seen.indptr,
             indices=seen.indices, shape=np.array(seen.shape))
    np.save(out / "popularity.npy", content.popularity.astype(np.float32))
    if content.item_vectors_int8 is not None:
        np.save(out / "item_vectors_int8.npy", content.item_vectors_int8)
        np.save(out / "item_scales.npy", content.item_scales.astype(np.float32))
    else:
        np.save(out / "item_vectors.npy", content.item_vectors.astype(np.float32))
    if content.ranking_arrays:
        np.savez(out / "ranking_features.npz", **content.ranking_arrays)
    if content.titles is not None:
        frame = pd.DataFrame({"item": np.asarray(content.titles.index, dtype=np.int64),
                              "title": content.titles.astype(str).to_numpy()})
        frame.to_parquet(out / "catalog.parquet", index=False)
    (out / RUNTIME).write_text(json.dumps(content.runtime, indent=2, default=str))


def load_content(bundle_dir: Path) -> BundleContent:
    bundle_dir = Path(bundle_dir)
    stored = np.load(bundle_dir / "history.npz")
    shape = tuple(int(x) for x in stored["shape"])
    seen = sp.csr_matrix((np.ones(len(stored["indices"]), dtype=np.float32), stored["indices"], stored["indptr"]),
                         shape=shape)
    content = BundleContent(IdMap.load(bundle_dir / "users.json"), IdMap.load(bundle_dir / "items.json"),
                            History(seen, stored["recent"]), np.load(bundle_dir / "popularity.npy"),
                            runtime=json.loads((bundle_dir / RUNTIME).read_text()))
    if (bundle_dir / "item_vectors_int8.npy").exists():
        content.item_vectors_int8 = np.load(bundle_dir / "item_vectors_int8.npy")
        content.item_scales = np.load(bundle_dir / "item_scales.npy")
    else:
        content.item_vectors = np.load(bundle_dir / "item_vectors.npy")
    if (bundle_dir / "ranking_features.npz").exists():
        with np.load(bundle_dir / "ranking_features.npz") as arrays:
            content.ranking_arrays = {name: arrays[name] for name in arrays.files}
    if (bundle_dir / "catalog.parquet").exists():
        frame = pd.read_parquet(bundle_dir / "catalog.parquet")
        content.titles = pd.Series(frame["title"].to_numpy(), index=frame["item"].to_numpy())
    return content

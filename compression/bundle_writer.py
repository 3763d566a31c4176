"""Write a servable bundle (recsys.bundle_content layout) from trained towers (+ optional ranker)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from compression.export import export_onnx, validate_onnx
from recsys.bundle_content import INDEX_DIR, USER_TOWER, BundleContent, save_content
from recsys.data.datasets import Dataset
from recsys.index import build_index, save_index
from recsys.models.two_tower import TwoTower, UserTower
from recsys.recommender import History
from recsys.retrieval import all_item_vectors
from recsys.split import Split

log = logging.getLogger(__name__)

ONNX_ATOL = 1e-4


@dataclass
class BundleSpec:
    """How to pack one variant: which index, whether item rows are int8, extra runtime settings."""

    kind: str
    index_factory: str = "Flat"
    index_params: dict = field(default_factory=dict)
    int8_item_rows: bool = False
    n_candidates: int = 200


def serving_history(split: Split, history_len: int) -> History:
    """Everything the model may know when serving: train + valid (test stays held out to measure it)."""
    return split.user_history("test", max_len=history_len)


def export_user_tower(towers: TwoTower, path: Path, sample: History) -> float:
    """Export and check the user tower against PyTorch on real rows (a different batch size)."""
    view = UserTower(towers).eval()
    hist_len = towers.cfg.history_len
    example = {"users1": torch.arange(1, 3, dtype=torch.int64),
               "history1": torch.as_tensor(sample.recent[:2, -hist_len:] + 1, dtype=torch.int64)}
    export_onnx(view, example, ["user_vec"], path)
    n = min(7, sample.recent.shape[0])
    check = {"users1": torch.arange(1, n + 1, dtype=torch.int64),
             "history1": torch.as_tensor(sample.recent[:n, -hist_len:] + 1, dtype=torch.int64)}
    return validate_onnx(view, path, check, atol=ONNX_ATOL)


def item_titles(dataset: Dataset, split: Split) -> pd.Series | None:
    if dataset.items is None or "title" not in dataset.items.columns:
        return None
    idx = split.items.to_index(dataset.items["item_id"].to_numpy(), missing=-1)
    keep = idx >= 0
    return pd.Series(dataset.items["title"].to_numpy()[keep], index=idx[keep])


def int8_rows(vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from compression.quantize import int8_embedding_table

    return int8_embedding_table(vectors)


def write_retrieval_bundle(staging: Path, towers: TwoTower, dataset: Dataset, split: Split, spec: BundleSpec,
                           ranking_arrays: dict | None = None, runtime_extra: dict | None = None) -> dict:
    """Export the user tower, index the item vectors, and save the arrays; returns runtime info."""
    history = serving_history(split, towers.cfg.history_len)
    max_diff = export_user_tower(towers, staging / USER_TOWER, history)
    vectors = all_item_vectors(towers)
    content = BundleContent(split.users, split.items, history,
                            np.bincount(split.train["i"], minlength=split.n_items).astype(np.float32),
                            ranking_arrays=ranking_arrays or {}, titles=item_titles(dataset, split))
    if spec.int8_item_rows:
        content.item_vectors_int8, content.item_scales = int8_rows(vectors)
    else:
        content.item_vectors = vectors
    index = build_index(content.dense_item_vectors(), spec.index_factory)
    save_index(index, staging / INDEX_DIR, {"factory": spec.index_factory, **spec.index_params})
    content.runtime = {"kind": spec.kind, "history_len": towers.cfg.history_len, "dim": towers.cfg.dim,
                       "n_candidates": spec.n_candidates, "index_factory": spec.index_factory,
                       "int8_item_rows": spec.int8_item_rows, "user_tower_max_abs_diff": max_diff,
                       **(runtime_extra or {})}
    save_content(content, staging)
    return content.runtime


def publish_bundle(staging: Path, bundles_root: Path, *, kind: str, dataset: Dataset, config: dict,
                   metrics: dict, make_current: bool = True) -> Path:
    """Manifest (sha256 of every file) + atomic publish into ``bundles_root/versions/``."""
    from recsys.bundle import publish, write_manifest

    write_manifest(staging, kind=kind, data_fingerprint=dataset.fingerprint(), config=config, metrics=metrics)
    return publish(staging, bundles_root, make_current=make_current)

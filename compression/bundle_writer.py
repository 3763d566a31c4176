"""Write a servable bundle (the `recsys.bundle.content` layout) from towers (+ ranker), fp32 or int8."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from compression.export import count_params, export_onnx, sidecar_path, validate_onnx
from compression.int8 import choose_int8, int8_user_tower
from compression.quantize import int8_embedding_table
from compression.techniques import to_fp16
from recsys.bundle.content import BundleContent, BundleFiles, data_record, last_times, restage, save_content
from recsys.bundle.publish import new_staging_dir
from recsys.data.datasets import Dataset
from recsys.data.history import History
from recsys.data.tokens import TokenTable
from recsys.index import build_index, exact_topk, exact_vectors, resolve_factory, save_index, tune_query_params
from recsys.models.two_tower import TwoTower, UserTower
from recsys.pipeline.feature_tables import FeatureTables, build_feature_tables, has_global_time
from recsys.pipeline.retrieve import history_inputs
from recsys.pipeline.served import tower_outputs
from recsys.split import MAX_RECENT, Split
from recsys.train.torch_pipeline import all_item_vectors

log = logging.getLogger(__name__)

ONNX_ATOL = 1e-4
FP16_ATOL = 5e-2  # float16 keeps ~3 significant digits
RECALL_K = 100


@dataclass
class BundleSpec:
    """How to pack one variant: which index, whether models and item rows are int8."""

    kind: str
    index_factory: str = "Flat"
    int8: bool = False
    fp16: bool = False  # float16 ONNX models (ignored with int8)
    target_recall: float = 0.95
    n_candidates: int = 200
    extra: dict = field(default_factory=dict)


def holdout_label(split: Split) -> str:
    """What a measured bundle leaves out of what it knows (``runtime["data"]["holdout"]``)."""
    k = split.held_out_events
    return ("each user's last interaction (the protocol's test rows)" if k == 1
            else f"each user's last {k} interactions (the gate's events)")


def serving_history(split: Split) -> History:
    """What a measured bundle knows: train + valid (test and later stay held out to measure it), as wide
    as its widest reader (the ranker features read MAX_RECENT items; the tower its last L)."""
    return split.user_history("test", max_len=MAX_RECENT)


def tower_feed(towers: TwoTower, history: History, users: np.ndarray) -> dict[str, np.ndarray]:
    users1, history1 = history_inputs(users, history.recent[users], towers.cfg.history_len, towers.cfg.n_users)
    return {"users1": users1, "history1": history1}


def export_user_tower(view: UserTower, path: Path, history: History, check_users: np.ndarray) -> float:
    """Export and check the user tower against PyTorch on real rows (a different batch size)."""
    towers = view.model
    example = {name: torch.from_numpy(v) for name, v in tower_feed(towers, history, check_users[:2]).items()}
    export_onnx(view, example, ["user_vec"], path)
    return validate_onnx(view, path, tower_feed(towers, history, check_users[:7]), atol=ONNX_ATOL)


def export_ranker(ranker: torch.nn.Module, path: Path, feeds: list[dict[str, np.ndarray]]) -> float:
    example = {name: torch.from_numpy(v[:1]) for name, v in feeds[0].items()}
    axes = {"item_vec": {1: "candidates"}, "dense": {1: "candidates"}, "score": {1: "candidates"}}
    export_onnx(ranker.eval(), example, ["score"], path, extra_dynamic_axes=axes)
    check = {name: v[:3] for name, v in feeds[-1].items()}
    return validate_onnx(ranker, path, check, atol=ONNX_ATOL)


def item_titles(dataset: Dataset, split: Split) -> pd.Series | None:
    if dataset.items is None or "title" not in dataset.items.columns:
        return None
    idx = split.items.to_index(dataset.items["item_id"].to_numpy(), missing=-1)
    keep = idx >= 0
    return pd.Series(dataset.items["title"].to_numpy()[keep], index=idx[keep])


def build_tuned_index(vectors: np.ndarray, factory: str, queries: np.ndarray, target: float):
    """Build, then set nprobe/efSearch to the smallest value reaching ``target`` recall@100."""
    index = build_index(vectors, factory)
    k = min(RECALL_K, len(vectors))
    _, exact_ids = exact_topk(vectors, queries, k)
    tuned = tune_query_params(index, queries, exact_ids, k, target_recall=target)
    return index, {"factory": factory, "query_params": tuned.params, "recall@100": round(tuned.recall, 4),
                   "reached_target": tuned.reached_target}


def write_bundle(staging: Path, towers: TwoTower, dataset: Dataset, split: Split, spec: BundleSpec,
                 ranker: torch.nn.Module | None = None, ranking_arrays: dict | None = None,
                 requests: np.ndarray | None = None, ranker_feeds: list[dict] | None = None) -> dict:
    """Export models, index the item vectors, save the arrays; returns the runtime record.

    ``requests`` are real users whose rows calibrate int8 and tune the index; ``ranker_feeds``
    are real ranker inputs (captured from the fp32 pipeline) for the ranker's export check and
    calibration."""
    history = serving_history(split)
    requests = np.arange(min(split.n_users, 256)) if requests is None else requests
    runtime = {"kind": spec.kind, "history_len": towers.cfg.history_len, "dim": towers.cfg.dim,
               "n_candidates": spec.n_candidates, "int8": spec.int8, **spec.extra}
    runtime["user_tower"] = _write_user_tower(staging, towers, history, requests, spec)
    if ranker is not None and ranker_feeds:
        runtime["ranker"] = _write_ranker(staging, ranker, ranker_feeds, spec)
    vectors = all_item_vectors(towers)
    content = BundleContent(split.users, split.items, history,
                            np.bincount(split.train["i"], minlength=split.n_items).astype(np.float32),
                            ranking_arrays=ranking_arrays if ranker is not None else {},
                            titles=item_titles(dataset, split))
    if spec.int8:
        content.item_vectors_int8, content.item_scales = int8_embedding_table(vectors)
    else:
        content.item_vectors = vectors
    queries = _query_vectors(staging, history, towers, requests)
    factory = resolve_factory(spec.index_factory, split.n_items)
    index, runtime["index"] = build_tuned_index(content.dense_item_vectors(), factory, queries, spec.target_recall)
    if exact_vectors(index) is not None:  # a flat index holds the rows exactly: stored once, read from it
        content.drop_item_vectors()
    save_index(index, BundleFiles(staging).index_dir, {"factory": factory, **runtime["index"]})
    runtime["params"] = count_params(towers) + (count_params(ranker) if ranker is not None else 0)
    known = split.history_frame("test")
    runtime["data"] = data_record(known, holdout_label(split))
    runtime["real_time"] = has_global_time(split)  # unix seconds, not a per-user pseudo-time
    content.last_time = last_times(known, split.n_users)
    content.user_vectors = stored_user_vectors(BundleFiles(staging), history, towers.cfg.history_len)
    content.runtime = runtime
    save_content(content, staging)
    return runtime


def _write_user_tower(staging: Path, towers: TwoTower, history: History, requests: np.ndarray,
                      spec: BundleSpec) -> dict:
    path = BundleFiles(staging).user_tower
    if not spec.int8:
        view = UserTower(towers).eval()
        diff = export_user_tower(view, path, history, requests)
        if spec.fp16:
            return _as_fp16(view, path, tower_feed(towers, history, requests[:7]), diff)
        return {"precision": "fp32", "max_abs_diff": diff}
    fp32_dense = path.with_suffix(".fp32.onnx")
    diff = export_user_tower(int8_user_tower(towers), fp32_dense, history, requests)
    calibration = [tower_feed(towers, history, batch) for batch in np.array_split(requests, 8) if len(batch)]
    check = tower_feed(towers, history, requests[:64])
    choice = choose_int8(fp32_dense, path, calibration, check, topk=None)
    fp32_dense.unlink()
    sidecar_path(fp32_dense).unlink(missing_ok=True)
    return {"precision": "int8", "embeddings": "row-wise int8", "dense_layers": choice["chosen"],
            "export_max_abs_diff": diff, "candidates": choice["candidates"]}


def _write_ranker(staging: Path, ranker: torch.nn.Module, feeds: list[dict], spec: BundleSpec) -> dict:
    path = BundleFiles(staging).ranker
    if not spec.int8:
        diff = export_ranker(ranker, path, feeds)
        if spec.fp16:
            return _as_fp16(ranker.eval(), path, {name: v[:3] for name, v in feeds[-1].items()}, diff)
        return {"precision": "fp32", "max_abs_diff": diff}
    fp32_path = path.with_suffix(".fp32.onnx")
    diff = export_ranker(ranker, fp32_path, feeds)
    check = {name: np.concatenate([f[name] for f in feeds[-4:]]) for name in feeds[0]}
    choice = choose_int8(fp32_path, path, feeds, check, topk=10)
    fp32_path.unlink()
    sidecar_path(fp32_path).unlink(missing_ok=True)
    return {"precision": "int8", "dense_layers": choice["chosen"], "export_max_abs_diff": diff,
            "candidates": choice["candidates"]}


def _as_fp16(module: torch.nn.Module, path: Path, check: dict[str, np.ndarray], fp32_diff: float) -> dict:
    to_fp16(path)
    return {"precision": "fp16", "fp32_max_abs_diff": fp32_diff,
            "max_abs_diff": validate_onnx(module, path, check, atol=FP16_ATOL, rtol=FP16_ATOL)}


def stored_user_vectors(files: BundleFiles, history: History, history_len: int) -> np.ndarray:
    """What the server answers a known user from: the exported tower over their stored history."""
    from recsys.pipeline.onnx import OnnxUserEncoder

    return tower_outputs(OnnxUserEncoder(files.user_tower), history.recent, history_len, history.seen.shape[0])


def _query_vectors(staging: Path, history: History, towers: TwoTower, users: np.ndarray) -> np.ndarray:
    """User vectors of held-out requests, from the exported (possibly int8) tower itself."""
    from recsys.pipeline.onnx import OnnxUserEncoder

    feed = tower_feed(towers, history, users)
    return OnnxUserEncoder(BundleFiles(staging).user_tower)(feed["users1"], feed["history1"])


@dataclass
class WholeLog:
    """What a bundle published for serving knows: every interaction of the log. Built once and
    shared by the teacher and compressed bundles (the arrays do not depend on the model)."""

    split: Split  # `Split.whole()`: every row as train
    item_tokens: TokenTable
    _tables: dict[bool, FeatureTables] = field(default_factory=dict)  # by time_features

    @classmethod
    def of(cls, split: Split, item_tokens: TokenTable) -> WholeLog:
        return cls(split.whole(), item_tokens)

    @cached_property
    def history(self) -> History:
        return self.split.user_history("valid", max_len=MAX_RECENT)

    @cached_property
    def last_time(self) -> np.ndarray:
        return last_times(self.split.train, self.split.n_users)

    @cached_property
    def popularity(self) -> np.ndarray:
        return np.bincount(self.split.train["i"], minlength=self.split.n_items).astype(np.float32)

    def feature_tables(self, time_features: bool, ease: bool) -> FeatureTables:
        """The whole log's tables with the measured ones' feature set (built once per set)."""
        if (time_features, ease) not in self._tables:
            self._tables[time_features, ease] = build_feature_tables(self.split, self.item_tokens,
                                                                     time_features=time_features, ease=ease)
        return self._tables[time_features, ease]


def publish_whole_log(measured: Path, bundles_root: Path, *, kind: str, dataset: Dataset, whole: WholeLog,
                      config: dict, metrics: dict) -> Path:
    """The measured bundle's models and index, filled with every interaction of the log.

    A bundle published for serving must know each user's latest interaction: it is the best
    clue to the next one, and a seen item must never be recommended back. Seen sets, recent
    items, popularity and the ranker's feature tables are rebuilt from the whole log; the
    models, the index and their quantisation stay those the card measured."""

    def fill(content: BundleContent, files: BundleFiles) -> None:
        content.history = whole.history
        content.user_vectors = stored_user_vectors(files, content.history, content.runtime["history_len"])
        content.last_time = whole.last_time
        content.popularity = whole.popularity
        if content.ranking_arrays:
            measured_tables = FeatureTables.from_arrays(content.ranking_arrays)
            tables = whole.feature_tables(measured_tables.has_time, measured_tables.has_ease)
            content.ranking_arrays = tables.without(measured_tables.disabled).to_arrays()
        content.runtime["data"] = data_record(whole.split.train, holdout=None)

    staging = new_staging_dir(bundles_root)
    restage(measured, staging, fill)
    return publish_bundle(staging, bundles_root, kind=kind, dataset=dataset,
                          config={**config, "measured_bundle": str(measured)}, metrics=metrics)


def publish_bundle(staging: Path, bundles_root: Path, *, kind: str, dataset: Dataset, config: dict,
                   metrics: dict, make_current: bool = True) -> Path:
    """Manifest (sha256 of every file) + atomic publish into ``bundles_root/versions/``."""
    from recsys.bundle.manifest import write_manifest
    from recsys.bundle.publish import publish

    write_manifest(staging, kind=kind, data_fingerprint=dataset.fingerprint(), config=config, metrics=metrics)
    return publish(staging, bundles_root, make_current=make_current)

"""Real tiny bundles with a ranker: arrays and index are mapped read-only, item vectors stored once,
and a bundle in the previous format (zipped arrays, an item-vector table beside a flat index)
serves the same answers."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from compression.bundle_writer import BundleSpec, publish_bundle, write_bundle
from compression.variants import ranker_feeds
from recsys.bundle.content import BundleFiles, DequantizedRows, load_content, restage
from recsys.bundle.load import load_serving_model
from recsys.bundle.manifest import MANIFEST_NAME, load_manifest, write_manifest
from recsys.bundle.publish import new_staging_dir
from recsys.data.tokens import build_token_table
from recsys.index import load_index
from recsys.models.ranker import Ranker, RankerConfig
from recsys.pipeline.feature_tables import build_feature_tables
from recsys.split import temporal_split
from tests.fixtures.data import checkerboard_dataset
from tests.fixtures.models import train_tiny

SPECS = {"flat": BundleSpec(kind="teacher", index_factory="Flat"),
         "sq8-int8": BundleSpec(kind="compressed", index_factory="SQ8", int8=True)}


@pytest.fixture(scope="module")
def bundles(tmp_path_factory) -> dict[str, Path]:
    """One published bundle per spec, each with an (untrained) ranker and its feature tables."""
    dataset = checkerboard_dataset()
    split = temporal_split(dataset)
    towers = train_tiny(split, dataset).model
    tables = build_feature_tables(split, build_token_table(dataset.items, "item_id", split.items))
    torch.manual_seed(0)
    ranker = Ranker(RankerConfig(dim=towers.cfg.dim, n_dense=len(tables.feature_names()), width=16,
                                 feature_names=tables.feature_names())).eval()
    requests = np.arange(split.n_users)
    feeds = ranker_feeds(SimpleNamespace(towers=towers, tables=tables, ranker=ranker), split, requests)
    published = {}
    for name, spec in SPECS.items():
        root = tmp_path_factory.mktemp(name)
        staging = new_staging_dir(root)
        write_bundle(staging, towers, dataset, split, spec, ranker, tables.to_arrays(), requests, feeds)
        published[name] = publish_bundle(staging, root, kind=spec.kind, dataset=dataset, config={}, metrics={})
    return published


def answers(path: Path) -> dict:
    """Every user's top 5 (a fixed request time) and every item's similar 3, scores included."""
    model = load_serving_model(path)
    at = float(model.runtime["data"]["cutoff"]) + 1
    recommend = {user: model.recommend(user, 5, at=at) for user in model.content.users.ids.tolist()}
    similar = {item: model.similar(item, 3) for item in model.content.items.ids.tolist()}
    return {key: (answer.items, answer.scores) for key, answer in {**recommend, **similar}.items()}


def as_format_1(bundle: Path, out: Path) -> Path:
    """``bundle`` laid out as format 1 wrote it: zipped history and ranking arrays, and an item-vector
    table beside every index (the rows the served pipeline read)."""
    shutil.copytree(bundle, out)
    files = BundleFiles(out)
    stored = {path.stem: np.load(path) for path in files.history.glob("*.npy")}
    np.savez(files.legacy_history, recent=stored["recent"], indptr=stored["seen_indptr"],
             indices=stored["seen_indices"], shape=stored["seen_shape"], last_time=stored["last_time"])
    np.savez(files.legacy_ranking_features, **{path.stem: np.load(path) for path in files.ranking_features.glob("*")})
    shutil.rmtree(files.history)
    shutil.rmtree(files.ranking_features)
    if not files.item_vectors_int8.exists():
        index, _ = load_index(files.index_dir, mmap=False)
        np.save(files.item_vectors, index.reconstruct_n(0, index.ntotal))
    old = load_manifest(bundle, verify=False)
    write_manifest(out, kind=old.kind, data_fingerprint=old.data_fingerprint, config={}, metrics={},
                   bundle_version=old.bundle_version)
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    (out / MANIFEST_NAME).write_text(json.dumps({**manifest, "format_version": 1}))
    return out


def _maps_a_file(array: np.ndarray) -> bool:
    while array is not None and not isinstance(array, np.memmap):
        array = array.base if isinstance(array.base, np.ndarray) else None
    return array is not None


@pytest.mark.parametrize("name", SPECS)
def test_a_loaded_bundle_maps_its_arrays_read_only(bundles, name):
    model = load_serving_model(bundles[name])
    content = model.content
    arrays = {"recent": content.history.recent, "seen_indices": content.history.seen.indices,
              "seen_indptr": content.history.seen.indptr, "last_time": content.last_time,
              "popularity": content.popularity, "user_vectors": content.user_vectors, **content.ranking_arrays}
    if name == "sq8-int8":
        arrays |= {"item_vectors_int8": content.item_vectors_int8, "item_scales": content.item_scales}
    assert content.ranking_arrays
    for key, array in arrays.items():
        assert _maps_a_file(array) and not array.flags.writeable, key
    # The cached user vectors are the mapped ones, not a per-worker copy.
    assert model.pipeline.encode_users.vectors is content.user_vectors
    index_file = str(BundleFiles(bundles[name]).index_dir / "index.faiss")
    assert index_file in Path("/proc/self/maps").read_text()  # the index's codes are mapped too


def test_a_flat_bundle_reads_its_item_vectors_from_the_index(bundles):
    files = BundleFiles(bundles["flat"])
    assert not any(path.exists() for path in (files.item_vectors, files.item_vectors_int8, files.item_scales))
    model = load_serving_model(bundles["flat"])
    index = model.pipeline.index
    vectors = model.pipeline.item_vectors
    assert not vectors.flags.writeable
    np.testing.assert_array_equal(vectors, index.reconstruct_n(0, index.ntotal))


def test_a_lossy_bundle_keeps_its_int8_rows_and_dequantises_each_gather(bundles):
    content = load_content(bundles["sq8-int8"])
    rows = load_serving_model(bundles["sq8-int8"]).pipeline.item_vectors
    assert isinstance(rows, DequantizedRows) and len(rows) == len(content.items)
    dense = content.dense_item_vectors()
    for picked in (np.array([3, 0, 3]), np.array([[1, 2], [0, 19]]), 5):
        np.testing.assert_array_equal(rows[picked], dense[picked])
        assert rows[picked].dtype == np.float32


@pytest.mark.parametrize("name", SPECS)
def test_a_format_1_bundle_serves_the_same_answers(bundles, name, tmp_path):
    old = as_format_1(bundles[name], tmp_path / "old")
    assert load_serving_model(old).manifest.format_version == 1
    assert answers(old) == answers(bundles[name])


@pytest.mark.parametrize("name", SPECS)
def test_restaging_copies_models_and_index_and_rewrites_the_arrays(bundles, name, tmp_path):
    source = bundles[name]
    staging = tmp_path / "restaged"
    restage(source, staging, lambda content, files: None)
    files = {path.relative_to(staging) for path in staging.rglob("*") if path.is_file()}
    assert files == {path.relative_to(source) for path in source.rglob("*") if path.is_file()} - {Path(MANIFEST_NAME)}
    # From a format 1 bundle: its arrays in this format, none of its zipped files left behind.
    upgraded = tmp_path / "upgraded"
    restage(as_format_1(source, tmp_path / "old"), upgraded, lambda content, files: None)
    layout = BundleFiles(upgraded)
    assert layout.history.is_dir() and layout.ranking_features.is_dir()
    assert not layout.legacy_history.exists() and not layout.legacy_ranking_features.exists()


def test_bundle_bytes_count_every_file(bundles):
    path = bundles["flat"]
    on_disk = sum(file.stat().st_size for file in path.rglob("*") if file.is_file())
    listed = sum(entry["bytes"] for entry in load_manifest(path).files.values())
    assert BundleFiles(path).total_bytes() == on_disk == listed + (path / MANIFEST_NAME).stat().st_size

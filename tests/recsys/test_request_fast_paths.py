"""The single-request shortcuts give the same answers as the batch code they bypass."""

from __future__ import annotations

import faiss
import numpy as np
import pytest
import scipy.sparse as sp

import recsys.pipeline.ranker_features as rf
import recsys.pipeline.topk as rec
from recsys.data.history import History, stack_csr
from recsys.index import search, search_one_without
from recsys.pipeline.recommend import items_csr
from recsys.pipeline.request import stack_rows
from recsys.pipeline.retrieve import DenseScan, drop_seen, search_excluding
from recsys.pipeline.topk import topk_from_scores
from tests.fixtures.tables import hand_tables, one_user


def _vectors(n: int = 300, d: int = 16, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)


def _indexes(vectors: np.ndarray) -> list[faiss.Index]:
    flat = faiss.IndexFlatIP(vectors.shape[1])
    sq8 = faiss.index_factory(vectors.shape[1], "SQ8", faiss.METRIC_INNER_PRODUCT)
    sq8.train(vectors)
    for index in (flat, sq8):
        index.add(vectors)
    return [flat, sq8]


@pytest.mark.parametrize("which", [0, 1], ids=["Flat", "SQ8"])
def test_search_skipping_banned_items_inside_faiss_equals_over_fetch_and_filter(which):
    vectors = _vectors()
    index = _indexes(vectors)[which]
    query = _vectors(1, seed=1)
    seen = items_csr([[3, 17, 250, 299, 0]], len(vectors))
    scores, ids = search(index, query, 50 + seen.nnz)
    expected_ids, expected_scores = drop_seen(ids, scores, seen, 50)
    got_ids, got_scores = search_excluding(index, query, 50, seen)
    assert got_ids.tolist() == expected_ids.tolist()
    np.testing.assert_allclose(got_scores, expected_scores, rtol=1e-6)


@pytest.mark.parametrize("which", [0, 1], ids=["Flat", "SQ8"])
def test_a_dense_scan_finds_what_faiss_finds_and_each_row_alone_gets_the_same(which):
    vectors = _vectors()
    index = _indexes(vectors)[which]
    queries = _vectors(5, seed=3)
    seen = items_csr([[3, 17, 250], [], [0, 1, 2, 3, 4, 5, 6, 7], [299], [42, 43]], len(vectors))
    scan = DenseScan.of(index)
    ids, scores = search_excluding(index, queries, 50, seen, scan)
    expected_ids, expected_scores = search_excluding(index, queries, 50, seen)
    assert ids.tolist() == expected_ids.tolist()
    np.testing.assert_allclose(scores, expected_scores, rtol=1e-5)
    for row in range(len(queries)):  # bit for bit, whatever the batch
        alone_ids, alone_scores = scan.search(queries[row:row + 1], 50, seen[row])
        assert alone_ids[0].tolist() == ids[row].tolist() and alone_scores[0].tobytes() == scores[row].tobytes()


def test_a_dense_scan_pads_when_fewer_items_remain_and_is_only_for_small_exhaustive_ip_indexes():
    vectors = _vectors(6)
    ids, scores = DenseScan.of(_indexes(vectors)[1]).search(_vectors(1, seed=2), 5, items_csr([[0, 1, 2]], 6))
    assert sorted(ids[0, :3].tolist()) == [3, 4, 5] and ids[0, 3:].tolist() == [-1, -1]
    assert np.isneginf(scores[0, 3:]).all() and np.isfinite(scores[0, :3]).all()
    l2 = faiss.IndexFlatL2(vectors.shape[1])
    l2.add(vectors)
    ivf = faiss.index_factory(vectors.shape[1], "IVF1,Flat", faiss.METRIC_INNER_PRODUCT)
    ivf.train(vectors)
    assert DenseScan.of(l2) is None and DenseScan.of(ivf) is None


def test_a_selector_search_pads_when_fewer_items_remain():
    vectors = _vectors(6)
    index = _indexes(vectors)[0]
    ids, scores = search_excluding(index, _vectors(1, seed=2), 5, items_csr([[0, 1, 2]], 6))
    assert sorted(ids[0, :3].tolist()) == [3, 4, 5] and ids[0, 3:].tolist() == [-1, -1]
    assert np.isneginf(scores[0, 3:]).all() and np.isfinite(scores[0, :3]).all()


def test_ivf_indexes_keep_the_filter_path():
    vectors = _vectors(400)
    ivf = faiss.index_factory(vectors.shape[1], "IVF4,Flat", faiss.METRIC_INNER_PRODUCT)
    ivf.train(vectors)
    ivf.add(vectors)
    assert search_one_without(ivf, vectors[:1], 10, np.array([0])) is None


def test_one_row_drop_seen_equals_the_batch_version():
    rng = np.random.default_rng(3)
    ids = np.stack([rng.permutation(100)[:60] for _ in range(2)])
    ids[1, 5] = -1
    scores = np.sort(rng.random((2, 60)).astype(np.float32), axis=1)[:, ::-1].copy()
    seen = items_csr([rng.choice(100, 30, replace=False), rng.choice(100, 30, replace=False)], 100)
    batch_ids, batch_scores = drop_seen(ids, scores, seen, 40)
    for row in range(2):
        one_ids, one_scores = drop_seen(ids[row:row + 1], scores[row:row + 1], seen[row], 40)
        assert one_ids.tolist() == batch_ids[row:row + 1].tolist()
        np.testing.assert_array_equal(one_scores, batch_scores[row:row + 1])


def test_sorting_narrow_rows_equals_partitioning_them(monkeypatch):
    rng = np.random.default_rng(4)
    scores = rng.integers(0, 4, (5, 300)).astype(np.float32)  # many ties
    scores[1, :] = -np.inf
    scores[1, [7, 9]] = 1.0
    sorted_ids, sorted_top = topk_from_scores(scores, 20)
    monkeypatch.setattr(rec, "SORT_WIDTH", 0)
    part_ids, part_top = topk_from_scores(scores, 20)
    assert sorted_ids.tolist() == part_ids.tolist()
    np.testing.assert_array_equal(sorted_top, part_top)
    assert sorted_ids[1, :3].tolist() == [7, 9, -1]


def test_sum_by_key_equals_unique_and_bincount():
    rng = np.random.default_rng(5)
    keys = rng.integers(0, 40, 500)
    weights = rng.random(500).astype(np.float32)
    expected_keys, inverse = np.unique(keys, return_inverse=True)
    got_keys, sums = rf._sum_by_key(keys, weights)
    assert got_keys.tolist() == expected_keys.tolist()
    np.testing.assert_allclose(sums, np.bincount(inverse, weights=weights), rtol=1e-12)
    empty_keys, empty_sums = rf._sum_by_key(np.zeros(0, np.int64), np.zeros(0, np.float32))
    assert len(empty_keys) == 0 and len(empty_sums) == 0


def test_token_overlap_by_mask_equals_binary_search(monkeypatch):
    tables = hand_tables()
    history = one_user([0, 2])
    user = rf.user_side(tables, history, np.eye(5, 4, dtype=np.float32))
    cands = np.array([[1, 3, 4, 0]])
    by_mask = rf._token_overlap(tables, user.token_keys, cands)
    monkeypatch.setattr(rf, "TOKEN_MASK_CELLS", 0)
    by_search = rf._token_overlap(tables, user.token_keys, cands)
    np.testing.assert_array_equal(by_mask, by_search)
    # item 1 (a, y): a is among the recent items' tokens; item 3 (b, x, y): b and x are.
    np.testing.assert_allclose(by_mask[0], [0.5, 2 / 3, 0.0, 1.0])


def test_serving_time_features_equal_the_latest_time_column():
    edges = np.array([0, 10, 20, 30], dtype=np.int64)
    counts = np.cumsum(np.array([[0, 1, 2, 3], [0, 0, 0, 4], [0, 2, 0, 0], [0, 0, 1, 1], [0, 0, 0, 0]],
                                dtype=np.uint32), axis=1, dtype=np.uint32)
    tables = hand_tables(time_edges=edges, item_time_counts=counts)
    cands = np.array([[0, 1, 2, 3]])
    history_len = np.array([2.0])
    serving = rf._time_features(tables, cands, {}, history_len)
    explicit = rf._time_features(tables, cands, {rf.TIMESTAMP: np.array([30])}, history_len)
    for got, want in zip(serving, explicit, strict=True):
        np.testing.assert_array_equal(np.broadcast_to(got, cands.shape), np.broadcast_to(want, cands.shape))


def test_a_seen_matrix_without_entries_skips_the_selector():
    vectors = _vectors(50)
    index = _indexes(vectors)[0]
    query = _vectors(1, seed=6)
    ids, _ = search_excluding(index, query, 10, sp.csr_matrix((1, 50), dtype=np.float32))
    assert ids.tolist() == search(index, query, 10)[1].tolist()


def test_stacking_csr_rows_equals_scipy_vstack_and_stacked_history_rows_are_left_padded():
    parts = [items_csr([[3, 1]], 8), items_csr([[], [7]], 8), items_csr([[0, 2, 4, 6]], 8)]
    stacked = stack_csr(parts)
    assert stacked.shape == (4, 8) and (stacked != sp.vstack(parts, format="csr")).nnz == 0
    rows = stack_rows([History(parts[0], np.array([[1, 3]], np.int32)),
                       History(parts[2], np.array([[0, 2, 4, 6]], np.int32))])
    assert rows.recent.tolist() == [[-1, -1, 1, 3], [0, 2, 4, 6]] and rows.seen.shape == (2, 8)

"""The ranking feature builder on hand-made data whose values are known."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from recsys.data.history import History
from recsys.pipeline.feature_tables import FeatureTables, build_feature_tables, cooccurrence_neighbors, time_count_table
from recsys.pipeline.ranker_features import build_features, request_context
from tests.fixtures.tables import hand_tables, one_user


def features_for(tables: FeatureTables, history: History, cands: list[int], context=None) -> dict[str, np.ndarray]:
    cands = np.array([cands])
    vectors = np.eye(5, 4, dtype=np.float32)
    scores = np.linspace(1.0, 0.5, cands.shape[1])[None, :].astype(np.float32)
    dense = build_features(tables, history, cands, scores, vectors[np.maximum(cands, 0)], vectors, context)
    assert dense.shape == (1, cands.shape[1], len(tables.feature_names()))
    return {name: dense[0, :, j] for j, name in enumerate(tables.feature_names())}


def test_category_and_genre_affinity_are_history_shares():
    got = features_for(hand_tables(), one_user([0, 1, 2]), [3, 0, 4])
    # History: categories a, a, b; genres {x}, {y}, {x}.
    assert got["affinity:category"] == pytest.approx([1 / 3, 2 / 3, 0.0])
    # Item 3 has genres x (2/3 of history) and y (1/3): their mean.
    assert got["affinity:genres"] == pytest.approx([0.5, 2 / 3, 0.0])


def test_token_overlap_cooccurrence_and_popularity():
    got = features_for(hand_tables(), one_user([0, 1, 2]), [3, 4, 0])
    assert got["token_overlap"] == pytest.approx([1.0, 0.0, 1.0])
    # Neighbours of the last items: 2 -> 3 (0.5, most recent, weight 1) and 1 -> 3 (0.2, weight 0.7).
    assert got["cooc_recent"] == pytest.approx([0.5 + 0.7 * 0.2, 0.7 * 1.0, 0.0])
    assert got["item_log_count"] == pytest.approx(np.log1p([1, 0, 4]))
    assert got["user_history_len"] == pytest.approx(np.log1p([3, 3, 3]))
    assert got["retrieval_rank"] == pytest.approx(np.log1p([0, 1, 2]))
    assert got["score_gap"] == pytest.approx([0.0, -0.25, -0.5])
    # Item vectors are one-hot: item 0 equals no recent vector but itself; the last item is 2.
    assert got["sim_last"] == pytest.approx([0.0, 0.0, 0.0])
    assert got["sim_recent_max"] == pytest.approx([0.0, 0.0, 1.0])


def test_empty_history_and_empty_slots_are_zero():
    got = features_for(hand_tables(), one_user([]), [3, -1])
    for name in ("affinity:category", "token_overlap", "cooc_recent", "sim_last"):
        assert got[name] == pytest.approx([0.0, 0.0]), name
    assert all(values[1] == 0.0 for values in got.values())


def test_disabled_features_are_zeroed_and_unknown_names_refused():
    tables = hand_tables().without(("cooc_recent",))
    assert features_for(tables, one_user([0, 1, 2]), [3])["cooc_recent"] == pytest.approx([0.0])
    with pytest.raises(ValueError, match="unknown features"):
        hand_tables().without(("nonsense",))


def test_time_features_only_count_interactions_before_the_request():
    frame = pd.DataFrame({"u": [0, 0, 1, 1, 2], "i": [3, 3, 3, 0, 1], "t": [0, 10, 20, 30, 95]})
    edges, counts = time_count_table(frame, 5, n_bins=10)
    assert counts.dtype == np.uint8 and counts[3, -1] == 3  # the smallest type that holds the counts
    tables = hand_tables(time_edges=edges, item_time_counts=counts)
    early = features_for(tables, one_user([1]), [3, 0], {"timestamp": 25, "last_timestamp": 5})
    late = features_for(tables, one_user([1]), [3, 0], {"timestamp": 99})
    # At t=25 only item 3's interactions at 0, 10 and 20 exist; item 0 (t=30) is not yet seen.
    assert early["item_age"][1] == -1 and early["item_age"][0] > 0
    assert early["item_pop_asof"][0] > early["item_pop_asof"][1]
    assert late["item_age"][1] >= 0
    assert early["user_gap"] == pytest.approx(np.log1p([20, 20]))
    assert late["user_gap"] == pytest.approx([0.0, 0.0])  # no previous time given


def test_cooccurrence_neighbors_follow_sequences():
    frame = pd.DataFrame({"u": [0, 0, 0, 1, 1], "i": [0, 1, 2, 0, 1]})
    neighbors, weights = cooccurrence_neighbors(frame, 4, window=1, n_neighbors=2)
    assert neighbors[0].tolist() == [1, -1]  # 0 -> 1 twice; nothing else follows 0 within one step
    assert weights[0, 0] == pytest.approx(2 / np.sqrt(2 * 2))
    assert neighbors[2].tolist() == [-1, -1]


def test_tables_round_trip_and_context(tmp_path, checkerboard, checkerboard_split):
    from recsys.data.tokens import build_token_table

    tokens = build_token_table(checkerboard.items, "item_id", checkerboard_split.items)
    tables = build_feature_tables(checkerboard_split, tokens)
    assert not tables.has_time  # checkerboard times are small integers, not unix seconds
    tables.save(tmp_path / "t.npz")
    again = FeatureTables.load(tmp_path / "t.npz")
    assert again.feature_names() == tables.feature_names() and "affinity:category" in tables.feature_names()
    assert np.array_equal(again.neighbors, tables.neighbors)
    context = request_context(checkerboard_split, "test")
    users, _ = checkerboard_split.targets("test")
    assert len(context["timestamp"]) == len(users)
    assert (context["last_timestamp"] < context["timestamp"]).all()


def test_a_student_without_costly_features_skips_their_user_side_and_keeps_the_rest():
    from recsys.pipeline.ranker_features import user_side

    dropped = ("cooc_recent", "affinity:category", "affinity:genres", "token_overlap")
    full, lean = hand_tables(), hand_tables().without(dropped)
    history = one_user([0, 1, 2])
    side = user_side(lean, history, np.eye(5, 4, dtype=np.float32))
    assert side.affinity_profile is None and side.token_keys is None and len(side.cooc_keys) == 0
    assert user_side(full, history, np.eye(5, 4, dtype=np.float32)).token_keys is not None
    got, expected = features_for(lean, history, [3, 4, 0]), features_for(full, history, [3, 4, 0])
    assert expected["token_overlap"].any() and expected["cooc_recent"].any()  # what is dropped was not zero
    for name in full.feature_names():
        assert got[name] == pytest.approx(0.0 if name in dropped else expected[name]), name
    # ... and does not ship the arrays only those features read
    arrays = lean.to_arrays()
    for name in ("item_tokens", "affinity_labels", "neighbors", "neighbor_weights"):
        assert arrays[name].shape == (full.n_items, 0), name
    assert features_for(FeatureTables.from_arrays(arrays), history, [3, 4, 0]).keys() == got.keys()


def test_the_ease_feature_is_the_ease_score_over_each_items_strongest_weights(checkerboard, checkerboard_split):
    from recsys.data.tokens import build_token_table
    from recsys.models.ease import ease_weights

    tokens = build_token_table(checkerboard.items, "item_id", checkerboard_split.items)
    tables = build_feature_tables(checkerboard_split, tokens)
    assert tables.has_ease and "ease_score" in tables.feature_names()
    weights = ease_weights(checkerboard_split.history("valid"), dtype=np.float32)
    kept = np.zeros_like(weights)  # each row's strongest positive weights, as the tables keep them
    rows = np.repeat(np.arange(len(weights)), tables.ease_neighbors.shape[1])
    valid = tables.ease_neighbors.ravel() >= 0
    kept[rows[valid], tables.ease_neighbors.ravel()[valid]] = weights[rows[valid], tables.ease_neighbors.ravel()[valid]]
    history = checkerboard_split.user_history("test")
    cands = np.tile(np.arange(checkerboard_split.n_items), (checkerboard_split.n_users, 1))
    item_vectors = np.zeros((checkerboard_split.n_items, 4), np.float32)
    features = build_features(tables, history, cands, np.zeros(cands.shape), item_vectors[cands], item_vectors)
    got = features[..., tables.feature_names().index("ease_score")]
    expected = np.asarray(history.seen @ kept)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    assert (expected > 0).any()


def test_stacked_one_row_user_sides_equal_the_batchs_user_side(checkerboard, checkerboard_split):
    """The server's batches stack cached one-row sides: features must not change with the batch."""
    from recsys.data.tokens import build_token_table
    from recsys.pipeline.ranker_features import stack_user_sides, user_side
    from recsys.pipeline.request import stack_rows

    tokens = build_token_table(checkerboard.items, "item_id", checkerboard_split.items)
    tables = build_feature_tables(checkerboard_split, tokens)
    history = checkerboard_split.user_history("test")
    vectors = np.random.default_rng(0).normal(size=(tables.n_items, 4)).astype(np.float32)
    rows = [history.rows(np.array([user])) for user in range(6)]
    stacked = stack_rows(rows)
    cands = np.tile(np.arange(tables.n_items), (6, 1))
    scores = np.linspace(1, 0, tables.n_items)[None].repeat(6, 0).astype(np.float32)
    alone = build_features(tables, stacked, cands, scores, vectors[cands], vectors)
    sides = stack_user_sides([user_side(tables, one, vectors) for one in rows], tables)
    together = build_features(tables, stacked, cands, scores, vectors[cands], vectors, user=sides)
    assert len(sides.cooc_keys) and len(sides.ease_keys) and sides.token_keys is not None
    np.testing.assert_array_equal(together, alone)

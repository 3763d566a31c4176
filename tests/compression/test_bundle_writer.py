"""A real bundle from real (tiny) towers: written, verified, loaded, and answering like the model."""

from __future__ import annotations

import numpy as np
import pytest

from compression.bundle_writer import BundleSpec, publish_bundle, write_bundle
from recsys.bundle.load import load_serving_model
from recsys.bundle.manifest import BundleChecksumError
from recsys.bundle.publish import new_staging_dir
from recsys.evaluate.scoring import evaluate_model
from recsys.pipeline.served import UnknownItemError
from recsys.train.torch_pipeline import TwoTowerRecommender
from tests.fixtures.models import train_tiny


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory):
    from recsys.split import temporal_split
    from tests.fixtures.data import checkerboard_dataset

    dataset = checkerboard_dataset()
    split = temporal_split(dataset)
    towers = train_tiny(split, dataset).model
    root = tmp_path_factory.mktemp("bundles")
    staging = new_staging_dir(root)
    write_bundle(staging, towers, dataset, split, BundleSpec(kind="teacher"))
    path = publish_bundle(staging, root, kind="teacher", dataset=dataset, config={}, metrics={})
    return root, path, towers, dataset, split


def test_bundle_answers_like_the_model(tiny_bundle):
    root, path, towers, dataset, split = tiny_bundle
    served = load_serving_model(root)
    model_ids, _ = TwoTowerRecommender(towers).recommend(np.arange(split.n_users), 5, split.user_history("test"))
    for user in range(split.n_users):
        result = served.recommend(split.users.to_external([user])[0], 5)
        assert result.fallback is None
        assert result.items == split.items.to_external(model_ids[user]).tolist()
    metrics, _ = evaluate_model(TwoTowerRecommender(towers), split, "test")
    assert metrics["MRR@10"] == 1.0


def test_unknown_user_falls_back_and_exclude_is_honoured(tiny_bundle):
    root, *_ = tiny_bundle
    served = load_serving_model(root)
    first = served.recommend("nobody", 3)
    assert first.fallback == "popular" and len(first.items) == 3
    again = served.recommend("nobody", 3, exclude=[first.items[0]])
    assert first.items[0] not in again.items
    assert served.recommend("u0", 3).titles[0].startswith("item ")


def test_similar_and_unknown_item(tiny_bundle):
    root, *_ = tiny_bundle
    served = load_serving_model(root)
    result = served.similar("i0", 4)
    assert "i0" not in result.items and len(result.items) == 4
    with pytest.raises(UnknownItemError):
        served.similar("nope", 4)
    served.smoke_test()


def test_tampered_bundle_is_refused(tiny_bundle, tmp_path):
    import shutil

    _, path, *_ = tiny_bundle
    copy = tmp_path / "copy"
    shutil.copytree(path, copy)
    with open(copy / "popularity.npy", "r+b") as handle:
        handle.seek(-1, 2)
        handle.write(b"\x01")
    with pytest.raises(BundleChecksumError):
        load_serving_model(copy)


def test_card_latency_is_timed_in_turns_cold_then_served(tiny_bundle):
    from compression.variants import request_latencies
    from recsys.pipeline.served import CachedUserEncoder

    root, *_ = tiny_bundle
    calls = []

    class Recording:
        """A loaded bundle that notes which variant answered each request."""

        def __init__(self, name):
            self.name, self.model = name, load_serving_model(root, precompute_users=False)

        def recommend(self, user, k):
            calls.append(self.name)
            return self.model.recommend(user, k)

        def cache_known_users(self):
            self.model.cache_known_users()

    models = {"a": Recording("a"), "b": Recording("b")}
    users = list(models["a"].model.content.users.ids[:30])
    got = request_latencies(models, users)
    for name in models:
        assert set(got[name]) == {"latency_p50_ms", "latency_p99_ms", "served_p50_ms", "served_p99_ms"}
        assert 0 < got[name]["latency_p50_ms"] <= got[name]["latency_p99_ms"]
        assert isinstance(models[name].model.pipeline.encode_users, CachedUserEncoder)  # served: the server's caches
    # The served pass, after its warm-up: blocks of 20 (the first one untimed) in turn.
    served = calls[-2 * (len(users) + 2):]
    assert served == (["a"] * 21 + ["b"] * 21 + ["a"] * 11 + ["b"] * 11)


def test_large_catalogues_time_variants_a_few_at_a_time_with_the_compared_pair_together():
    from compression.variants import ALL_AT_ONCE_MAX_ITEMS, latency_groups

    names = ["teacher-fp32", "student-fp32-nokd", "student-fp32", "compressed", "compressed-pq"]
    assert latency_groups(names, ("teacher-fp32", "compressed"), ALL_AT_ONCE_MAX_ITEMS) == [names]
    groups = latency_groups(names, ("teacher-fp32", "compressed"), ALL_AT_ONCE_MAX_ITEMS + 1)
    assert groups == [["teacher-fp32", "compressed"], ["student-fp32-nokd", "student-fp32"], ["compressed-pq"]]

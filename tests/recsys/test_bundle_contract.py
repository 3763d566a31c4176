"""The recommender contract against ONNX bundles: the fp32 teacher kind and the int8 + SQ8 compressed kind.

Each bundle is trained on the checkerboard, written the way compression writes it, loaded through
ONNX Runtime + FAISS and scored through the evaluation contract (the serving code path).
"""

from __future__ import annotations

import pytest

from compression.bundle_writer import BundleSpec
from recsys.bundle.load import load_serving_model
from recsys.bundle.publish import version_dir
from tests.fixtures.bundles import publish_tiny_bundle
from tests.fixtures.contract import RecommenderContract


class TestTeacherBundleContract(RecommenderContract):
    spec = BundleSpec(kind="teacher", index_factory="Flat")

    @pytest.fixture(autouse=True)
    def _bundle_root(self, checkerboard, tmp_path):
        self.dataset, self.root = checkerboard, tmp_path / "bundles"

    def make_model(self, split):
        version = publish_tiny_bundle(self.root, self.dataset, split, seed=0, make_current=True, spec=self.spec)
        served = load_serving_model(version_dir(self.root, version), precompute_users=False)
        assert served.runtime["int8"] == self.spec.int8
        return served.recommender()


class TestCompressedBundleContract(TestTeacherBundleContract):
    spec = BundleSpec(kind="compressed", index_factory="SQ8", int8=True)

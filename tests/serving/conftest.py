"""Two real tiny bundles (checkerboard data, towers trained with different seeds), one more with a
search index, and app/server helpers."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from recsys.bundle.publish import current_version
from recsys.data.datasets import Dataset
from recsys.split import Split, temporal_split
from serving.app import create_app
from serving.settings import Settings
from tests.fixtures.bundles import publish_tiny_bundle, tiny_search_dir
from tests.fixtures.data import checkerboard_dataset
from tests.fixtures.servers import ADMIN_TOKEN


@dataclass(frozen=True)
class Bundles:
    root: Path  # `current` -> v1
    v1: str
    v2: str  # published, not current
    dataset: Dataset
    split: Split

    def copy_root(self, destination: Path) -> Path:
        """A private copy of the root, for tests that move `current`."""
        shutil.copytree(self.root, destination, symlinks=True)
        return destination

    def version_dir(self, version: str) -> Path:
        return self.root / "versions" / version


@pytest.fixture(scope="session")
def bundles(tmp_path_factory) -> Bundles:
    dataset = checkerboard_dataset()
    split = temporal_split(dataset)
    root = tmp_path_factory.mktemp("bundles")
    v1 = publish_tiny_bundle(root, dataset, split, seed=0, make_current=True)
    v2 = publish_tiny_bundle(root, dataset, split, seed=1, make_current=False)
    assert current_version(root) == v1
    return Bundles(root, v1, v2, dataset, split)


@dataclass(frozen=True)
class SearchBundle:
    root: Path  # `current` -> version, a bundle with search/
    version: str
    dataset: Dataset


@pytest.fixture(scope="session")
def search_bundle(tmp_path_factory) -> SearchBundle:
    """The checkerboard bundle (seed 0) with a search index over its titles ("item 3. a")."""
    dataset = checkerboard_dataset()
    split = temporal_split(dataset)
    search = tiny_search_dir(dataset, split, tmp_path_factory.mktemp("search-build"))
    root = tmp_path_factory.mktemp("search-bundles")
    version = publish_tiny_bundle(root, dataset, split, seed=0, make_current=True, search=search)
    return SearchBundle(root, version, dataset)


@pytest.fixture
def settings(bundles, tmp_path) -> Settings:
    # No load shedding in functional tests: a busy test machine may stall the event loop for a
    # while (tests/serving/test_batcher.py and the overload benchmark cover shedding).
    return Settings(bundle=bundles.root, events_db=tmp_path / "events.sqlite", admin_token=ADMIN_TOKEN,
                    queue_deadline_s=60.0, max_queue=10_000)


@pytest.fixture
def client(settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as test_client:
        yield test_client



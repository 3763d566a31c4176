"""Two real tiny bundles (checkerboard data, towers trained with different seeds) and app helpers."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from compression.bundle_writer import BundleSpec, publish_bundle, write_bundle
from recsys.bundle import current_version, new_staging_dir
from recsys.data.datasets import Dataset
from recsys.split import Split, temporal_split
from serving.settings import Settings
from tests.conftest import checkerboard_dataset
from tests.recsys.test_two_tower import train_tiny

ADMIN_TOKEN = "test-admin-token"


@dataclass(frozen=True)
class Bundles:
    root: Path  # `current` -> v1
    v1: str
    v2: str  # published, not current
    dataset: Dataset
    split: Split

    def copy_root(self, destination: Path) -> Path:
        """A private copy of the root, for tests that move `current` or damage files."""
        shutil.copytree(self.root, destination, symlinks=True)
        return destination


def _publish(root: Path, dataset: Dataset, split: Split, seed: int, make_current: bool) -> str:
    towers = train_tiny(split, dataset, seed=seed).model
    staging = new_staging_dir(root)
    write_bundle(staging, towers, dataset, split, BundleSpec(kind="teacher"))
    path = publish_bundle(staging, root, kind="teacher", dataset=dataset, config={"seed": seed},
                          metrics={"MRR@10": 1.0}, make_current=make_current)
    return path.name


@pytest.fixture(scope="session")
def bundles(tmp_path_factory) -> Bundles:
    dataset = checkerboard_dataset()
    split = temporal_split(dataset)
    root = tmp_path_factory.mktemp("bundles")
    v1 = _publish(root, dataset, split, seed=0, make_current=True)
    v2 = _publish(root, dataset, split, seed=1, make_current=False)
    assert current_version(root) == v1
    return Bundles(root, v1, v2, dataset, split)


@pytest.fixture
def settings(bundles, tmp_path) -> Settings:
    return Settings(bundle=bundles.root, events_db=tmp_path / "events.sqlite", admin_token=ADMIN_TOKEN)


def admin_headers(token: str = ADMIN_TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}

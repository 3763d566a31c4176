"""Shared fixtures: the real datasets (fetched once into the cache) and known-answer data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from recsys.data.datasets import load_dataset
from recsys.split import temporal_split
from tests.fixtures.data import ROOT, checkerboard_dataset
from tests.fixtures.postgres import postgres, postgres_url  # noqa: F401  (session server, per-test database)

# Tests that read a real dataset or the trained tiny bundles are end to end: `make test-fast` skips them.
SLOW_FIXTURES = {"data_dir", "ml100k", "ml100k_split", "tiny"}


def pytest_collection_modifyitems(items):
    for item in items:
        if SLOW_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return Path(os.environ.get("RECSYS_DATA_DIR", ROOT / "data"))


@pytest.fixture(scope="session")
def ml100k(data_dir):
    return load_dataset("ml-100k", data_dir)


@pytest.fixture(scope="session")
def ml100k_split(ml100k):
    return temporal_split(ml100k)


@pytest.fixture
def checkerboard():
    return checkerboard_dataset()


@pytest.fixture
def checkerboard_split(checkerboard):
    return temporal_split(checkerboard)


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """One trained + compressed tiny bundle pair per session (tests/loadtest, tests/ops)."""
    # Imported here: it pulls in training and compression (torch, onnx), which the pytest-xdist
    # controller process, loading only this file, never needs.
    from tests.fixtures.tiny import tiny_bundles

    return tiny_bundles(tmp_path_factory)

"""Shared fixtures: the real datasets (fetched once into the cache) and known-answer data."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recsys.data.datasets import Dataset, load_dataset
from recsys.split import temporal_split

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return Path(os.environ.get("RECSYS_DATA_DIR", ROOT / "data"))


@pytest.fixture(scope="session")
def ml100k(data_dir):
    return load_dataset("ml-100k", data_dir)


@pytest.fixture(scope="session")
def ml100k_split(ml100k):
    return temporal_split(ml100k)


def checkerboard_dataset(n_users: int = 40, items_per_group: int = 10, seed: int = 0) -> Dataset:
    """Two user groups liking disjoint item sets; each user's last item is a known group item.

    Every user sees all but one of their group's items in train, so the right recommendation is
    exactly the group's remaining items (implicit's "checkerboard", made temporal).
    """
    rng = np.random.default_rng(seed)
    rows = []
    for user in range(n_users):
        group = user % 2
        items = np.arange(items_per_group) + group * items_per_group
        order = rng.permutation(items)
        for t, item in enumerate(order):
            rows.append((f"u{user}", f"i{item}", 1_000 + t))
    frame = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"])
    items = pd.DataFrame({"item_id": [f"i{i}" for i in range(2 * items_per_group)],
                          "title": [f"item {i}" for i in range(2 * items_per_group)],
                          "category": ["a" if i < items_per_group else "b" for i in range(2 * items_per_group)],
                          "price": np.linspace(1, 20, 2 * items_per_group)})
    from recsys.data.loaders import validate_interactions, validate_items

    return Dataset("checkerboard", validate_interactions(frame), validate_items(items))


@pytest.fixture
def checkerboard():
    return checkerboard_dataset()


@pytest.fixture
def checkerboard_split(checkerboard):
    return temporal_split(checkerboard)

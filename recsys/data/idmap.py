"""Maps external ids (int64 or str) to contiguous indices and back, exactly."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd


class IdMap:
    """Sorted unique external ids; index i <-> ids[i]."""

    def __init__(self, ids: np.ndarray):
        self.ids = np.asarray(ids)
        self._index = pd.Index(self.ids)
        if not self._index.is_unique:
            raise ValueError("IdMap ids must be unique")

    @classmethod
    def from_values(cls, values) -> IdMap:
        return cls(np.sort(pd.unique(np.asarray(values))))

    @property
    def is_integer(self) -> bool:
        return self.ids.dtype.kind in "iu"

    def __len__(self) -> int:
        return len(self.ids)

    def to_index(self, values, missing: int | None = None) -> np.ndarray:
        """External ids -> indices; unknown ids raise KeyError unless ``missing`` is given."""
        idx = self._index.get_indexer(np.asarray(self.coerce(values)))
        if missing is None:
            if (idx < 0).any():
                bad = np.asarray(values)[idx < 0][:3]
                raise KeyError(f"unknown ids: {list(bad)}")
            return idx
        return np.where(idx < 0, missing, idx)

    def coerce(self, values):
        """Convert request-side ids (often strings) to this map's id type where possible."""
        arr = np.asarray(values)
        if self.is_integer and arr.dtype.kind not in "iu":
            return pd.to_numeric(pd.Series(arr, dtype=object), errors="coerce").fillna(-(2**62)).astype(
                np.int64).to_numpy()
        if not self.is_integer and arr.dtype.kind != "U" and arr.dtype != object:
            return arr.astype(str)
        return arr

    def to_external(self, indices) -> np.ndarray:
        return self.ids[np.asarray(indices)]

    def save(self, path: Path) -> None:
        kind = "int" if self.is_integer else "str"
        payload = {"kind": kind, "ids": self.ids.tolist()}
        Path(path).write_text(json.dumps(payload))

    @classmethod
    def load(cls, path: Path) -> IdMap:
        payload = json.loads(Path(path).read_text())
        dtype = np.int64 if payload["kind"] == "int" else object
        ids = np.asarray(payload["ids"], dtype=dtype)
        if dtype is object:
            ids = ids.astype(str)
        return cls(ids)

    def __eq__(self, other) -> bool:
        return isinstance(other, IdMap) and np.array_equal(self.ids, other.ids)

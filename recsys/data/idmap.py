"""Maps external ids (int64 or str) to contiguous indices and back, exactly."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd

_INT_ID = re.compile(r"^-?[0-9]{1,18}$")
_NO_ID = np.iinfo(np.int64).min


def _strict_int(value) -> int | None:
    """An int id from an int or a plain decimal string; None for anything else."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return int(value)
    text = str(value)
    return int(text) if _INT_ID.match(text) else None


class IdMap:
    """Sorted unique external ids; index i <-> ids[i]."""

    def __init__(self, ids: np.ndarray):
        self.ids = np.asarray(ids)
        self._index = pd.Index(self.ids)
        self._lookup: dict | None = None
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
        idx = self._index.get_indexer(self.coerce(values))
        if missing is None:
            if (idx < 0).any():
                bad = np.asarray(values)[idx < 0][:3]
                raise KeyError(f"unknown ids: {list(bad)}")
            return idx
        return np.where(idx < 0, missing, idx)

    def index_of(self, value) -> int:
        """One id -> index, or -1: the per-request path (a dict lookup, no arrays)."""
        if self._lookup is None:
            self._lookup = {key: i for i, key in enumerate(self.ids.tolist())}
        key = _strict_int(value) if self.is_integer else str(value)
        return -1 if key is None else self._lookup.get(key, -1)

    def coerce(self, values) -> np.ndarray:
        """Request-side ids (often strings) in this map's type; anything that is not exactly an id
        of that type (e.g. "1.5" or "1e3" for integer ids) becomes a value no map contains."""
        arr = np.asarray(values)
        if self.is_integer:
            if arr.dtype.kind in "iu":
                return arr.astype(np.int64)
            parsed = [_strict_int(v) for v in arr.tolist()]
            return np.array([_NO_ID if v is None else v for v in parsed], dtype=np.int64)
        return arr.astype(str) if arr.dtype.kind != "U" and arr.dtype != object else arr

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

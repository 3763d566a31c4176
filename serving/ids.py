"""Request ids (always strings on the wire) -> values a bundle's id maps look up exactly.

String-id bundles take the string as is. Integer-id bundles (e.g. ml-100k) take only a plain
decimal integer in int64 range; anything else cannot be a known id. Checking that here keeps
``IdMap.coerce``'s lenient numeric parsing off the request path, where "1.5" would be served as
user 1 and "inf" would raise.
"""

from __future__ import annotations

import re

import numpy as np

from recsys.data.idmap import IdMap

_DECIMAL = re.compile(r"-?[0-9]+")
_INT64 = np.iinfo(np.int64)


def _as_int64(raw: str) -> int | None:
    if not _DECIMAL.fullmatch(raw):
        return None
    value = int(raw)
    return value if _INT64.min <= value <= _INT64.max else None


def _absent_id(ids: np.ndarray) -> int:
    """An int64 id that is not in ``ids``: looking it up is a guaranteed miss."""
    if len(ids) == 0:
        return 0
    lowest = int(ids.min())
    return lowest - 1 if lowest > _INT64.min else int(ids.max()) + 1


class RequestIds:
    def __init__(self, users: IdMap, items: IdMap):
        self._int_users = users.is_integer
        self._int_items = items.is_integer
        self._absent_user = _absent_id(users.ids) if users.is_integer else None

    def user(self, raw: str) -> str | int:
        """The value to look up; an impossible id becomes one that is certainly unknown (-> fallback)."""
        if not self._int_users:
            return raw
        value = _as_int64(raw)
        return self._absent_user if value is None else value

    def item(self, raw: str) -> str | int | None:
        """The value to look up, or None when ``raw`` cannot name an item of this bundle."""
        return _as_int64(raw) if self._int_items else raw

    def items(self, raws: list[str]) -> list[str | int]:
        looked_up = (self.item(raw) for raw in raws)
        return [value for value in looked_up if value is not None]

"""The interaction-log schema and the one error type users see for bad input.

Interactions: ``user_id``, ``item_id``, ``timestamp`` (+ optional ``event``, ``weight``).
Items (optional catalog): ``item_id`` (+ ``title``, ``category``, ``price``, any other columns).
Users (optional table): ``user_id`` (+ any feature columns).

Ids may be integers or strings; integer columns stay int64, anything else becomes str, so the
id maps round-trip the exact values a user gave us. Timestamps may be integers (unix seconds or
any monotone integer clock), integral floats, or date-time strings (converted to unix seconds).
"""

from __future__ import annotations

from dataclasses import dataclass

USER = "user_id"
ITEM = "item_id"
TIME = "timestamp"
EVENT = "event"
WEIGHT = "weight"

INTERACTION_REQUIRED = (USER, ITEM, TIME)
INTERACTION_OPTIONAL = (EVENT, WEIGHT)
ITEM_REQUIRED = (ITEM,)
USER_REQUIRED = (USER,)

MAX_ID_LENGTH = 256


@dataclass
class DataError(Exception):
    """A user's data is unusable; the message names the file, the column and a sample row."""

    path: str
    problem: str
    column: str | None = None
    sample: str | None = None

    def __str__(self) -> str:
        where = f"{self.path}" + (f", column '{self.column}'" if self.column else "")
        text = f"{where}: {self.problem}"
        if self.sample:
            text += f"\n  e.g. {self.sample}"
        return text

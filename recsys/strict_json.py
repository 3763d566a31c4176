"""JSON that every reader parses: Python's json writes NaN and Infinity, which JSON (and a
browser's JSON.parse) does not have."""

from __future__ import annotations

import math
from typing import Any


def without_nan(value: Any) -> Any:
    """``value`` with every non-finite float (a run with no samples, a ratio over zero) as None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: without_nan(item) for key, item in value.items()}
    if isinstance(value, list):
        return [without_nan(item) for item in value]
    return value

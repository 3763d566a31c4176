"""Read, validate and normalise interaction logs, item catalogs and user tables (CSV or Parquet)."""

from __future__ import annotations

import difflib
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from recsys.data.schema import (
    EVENT,
    INTERACTION_REQUIRED,
    ITEM,
    ITEM_REQUIRED,
    MAX_ID_LENGTH,
    TIME,
    USER,
    USER_REQUIRED,
    WEIGHT,
    DataError,
)

log = logging.getLogger(__name__)

CSV_SUFFIXES = {".csv": ",", ".tsv": "\t", ".txt": None, ".inter": "\t"}
PARQUET_SUFFIXES = {".parquet", ".pq"}


def table_suffix(path: Path) -> str:
    """The lower-cased suffix of a readable CSV/TSV/Parquet file; a DataError naming the file otherwise."""
    if not path.exists():
        raise DataError(str(path), "file not found")
    if path.is_dir():
        raise DataError(str(path), "is a directory, expected a CSV or Parquet file")
    suffix = path.suffix.lower()
    if suffix not in PARQUET_SUFFIXES and suffix not in CSV_SUFFIXES:
        raise DataError(str(path), f"unsupported file type '{suffix}': use .csv, .tsv or .parquet")
    return suffix


def read_table(path: str | Path) -> pd.DataFrame:
    """Read a CSV/TSV/Parquet file as-is; every failure becomes a DataError naming the file."""
    path = Path(path)
    suffix = table_suffix(path)
    try:
        if suffix in PARQUET_SUFFIXES:
            return pd.read_parquet(path)
        if suffix in CSV_SUFFIXES:
            sep = CSV_SUFFIXES[suffix]
            return pd.read_csv(path, sep=sep, engine="python" if sep is None else "c")
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError, ValueError) as exc:
        raise DataError(str(path), f"cannot be parsed: {exc}") from None


def _sample_row(frame: pd.DataFrame, mask: np.ndarray) -> str:
    pos = int(np.flatnonzero(mask)[0])
    row = frame.iloc[pos].to_dict()
    return f"row {pos + 1}: {row}"


def _require_columns(frame: pd.DataFrame, required: tuple[str, ...], path: str) -> None:
    for column in required:
        if column in frame.columns:
            continue
        close = difflib.get_close_matches(column, [str(c) for c in frame.columns], n=1, cutoff=0.5)
        hint = f" (did you mean '{close[0]}'? rename it to '{column}')" if close else ""
        raise DataError(path, f"missing required column; found {list(frame.columns)}{hint}", column)


def normalise_ids(frame: pd.DataFrame, column: str, path: str) -> pd.Series:
    """Integer ids stay int64, everything else becomes a stripped, non-empty string."""
    values = frame[column]
    missing = values.isna().to_numpy()
    if missing.any():
        raise DataError(path, f"{int(missing.sum())} missing (NaN) ids", column, _sample_row(frame, missing))
    if pd.api.types.is_integer_dtype(values):
        return values.astype(np.int64)
    if pd.api.types.is_float_dtype(values):
        integral = np.mod(values.to_numpy(), 1) == 0
        if integral.all():
            return values.astype(np.int64)
    text = values.astype(str).str.strip()
    bad = ((text == "") | (text.str.len() > MAX_ID_LENGTH)).to_numpy()
    if bad.any():
        raise DataError(path, f"ids must be 1..{MAX_ID_LENGTH} characters", column, _sample_row(frame, bad))
    return text.astype(object)


def normalise_timestamps(frame: pd.DataFrame, path: str) -> pd.Series:
    """Integer unix seconds (or any integer clock) stay as they are; date-time strings become seconds."""
    values = frame[TIME]
    missing = values.isna().to_numpy()
    if missing.any():
        raise DataError(path, f"{int(missing.sum())} missing timestamps", TIME, _sample_row(frame, missing))
    if pd.api.types.is_integer_dtype(values):
        return values.astype(np.int64)
    if not pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_datetime64_any_dtype(values):
        numeric = pd.to_numeric(values, errors="coerce")
        # A mostly numeric column with a few bad cells is a numeric clock with typos, not dates.
        if numeric.notna().mean() >= 0.5:
            bad = numeric.isna().to_numpy()
            if bad.any():
                raise DataError(path, "unparsable timestamp (expected unix seconds or ISO-8601)", TIME,
                                _sample_row(frame, bad))
            values = numeric
    if pd.api.types.is_float_dtype(values):
        fractional = (np.mod(values.to_numpy(), 1) != 0)
        if fractional.any():
            raise DataError(path, "fractional timestamps: give integer unix seconds or date-time strings",
                            TIME, _sample_row(frame, fractional))
        return values.astype(np.int64)
    if pd.api.types.is_datetime64_any_dtype(values):
        parsed = pd.to_datetime(values, utc=True)
    else:
        parsed = pd.to_datetime(values.astype(str), utc=True, errors="coerce", format="mixed")
    bad = parsed.isna().to_numpy()
    if bad.any():
        raise DataError(path, "unparsable timestamp (expected unix seconds or ISO-8601)", TIME,
                        _sample_row(frame, bad))
    epoch = pd.Timestamp(0, tz="UTC")
    return ((parsed - epoch) // pd.Timedelta(seconds=1)).astype(np.int64)


def _normalise_weight(frame: pd.DataFrame, path: str) -> pd.Series:
    weights = pd.to_numeric(frame[WEIGHT], errors="coerce")
    bad = (weights.isna() | (weights < 0)).to_numpy()
    if bad.any():
        raise DataError(path, "weights must be non-negative numbers", WEIGHT, _sample_row(frame, bad))
    return weights.astype(np.float32)


def validate_interactions(frame: pd.DataFrame, path: str = "<interactions>") -> pd.DataFrame:
    """Check and normalise an interaction frame; keeps extra columns (e.g. order context)."""
    if len(frame) == 0:
        raise DataError(path, "the interaction log is empty")
    _require_columns(frame, INTERACTION_REQUIRED, path)
    out = frame.copy()
    out[USER] = normalise_ids(frame, USER, path)
    out[ITEM] = normalise_ids(frame, ITEM, path)
    out[TIME] = normalise_timestamps(frame, path)
    if WEIGHT in frame.columns:
        out[WEIGHT] = _normalise_weight(frame, path)
    if EVENT in frame.columns:
        out[EVENT] = frame[EVENT].fillna("interaction").astype(str)
    return out.reset_index(drop=True)


def _validate_keyed_table(frame: pd.DataFrame, key: str, required: tuple[str, ...], path: str,
                          what: str) -> pd.DataFrame:
    if len(frame) == 0:
        raise DataError(path, f"the {what} table is empty")
    _require_columns(frame, required, path)
    out = frame.copy()
    out[key] = normalise_ids(frame, key, path)
    dup = out[key].duplicated().to_numpy()
    if dup.any():
        raise DataError(path, f"duplicate {key} in the {what} table", key, _sample_row(frame, dup))
    return out.reset_index(drop=True)


def validate_items(frame: pd.DataFrame, path: str = "<items>") -> pd.DataFrame:
    out = _validate_keyed_table(frame, ITEM, ITEM_REQUIRED, path, "item")
    if "price" in out.columns:
        out["price"] = pd.to_numeric(out["price"], errors="coerce")
    return out


def validate_users(frame: pd.DataFrame, path: str = "<users>") -> pd.DataFrame:
    return _validate_keyed_table(frame, USER, USER_REQUIRED, path, "user")


def check_coverage(log_frame: pd.DataFrame, table: pd.DataFrame, key: str, path: str) -> None:
    """Every id in the log must appear in the side table, or features would be silently missing."""
    if log_frame[key].dtype != table[key].dtype:
        raise DataError(path, f"{key} types differ between log ({log_frame[key].dtype}) and table "
                              f"({table[key].dtype})", key)
    missing = ~log_frame[key].isin(table[key]).to_numpy()
    if missing.any():
        n = int(pd.unique(log_frame[key][missing]).size)
        raise DataError(path, f"does not cover the log: {n} {key}s in the log are absent here", key,
                        f"log {_sample_row(log_frame, missing)}")


def load_log(interactions: str | Path, items: str | Path | None = None,
             users: str | Path | None = None) -> tuple[pd.DataFrame, pd.DataFrame | None, pd.DataFrame | None]:
    """Load a user's own log (+ optional catalog and user table), validated and normalised."""
    inter = validate_interactions(read_table(interactions), str(interactions))
    item_table = user_table = None
    if items is not None:
        item_table = validate_items(read_table(items), str(items))
        check_coverage(inter, item_table, ITEM, str(items))
    if users is not None:
        user_table = validate_users(read_table(users), str(users))
        check_coverage(inter, user_table, USER, str(users))
    log.info("loaded %d interactions from %s", len(inter), interactions)
    return inter, item_table, user_table

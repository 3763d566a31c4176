"""An interaction log (and item catalog) checked and normalised in DuckDB, with loaders' messages.

The checks, their order and their messages are `recsys.data.loaders.validate_interactions`',
`validate_items`' and `check_coverage`'s: a missing column (with the did-you-mean hint), an empty
log, missing or over-long ids, missing, unparsable or fractional timestamps, bad weights,
duplicate catalog ids, a catalog that does not cover the log. Each scan counts every fault at
once; the first in loaders' order is raised with the first offending row in file order.

Where this reads a file differently from pandas: a CSV is read as text and typed column by column
the way pandas infers (integer, else float, else string; pandas' NA strings are nulls);
date-time strings must be ISO-8601 (pandas' ``format="mixed"`` reads more); a text column of
integer clocks is read as integers (pandas rejects it); a sample row shows a CSV's cells as text.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path

import duckdb

from recsys.data.loaders import CSV_SUFFIXES, table_suffix
from recsys.data.schema import INTERACTION_REQUIRED, ITEM, MAX_ID_LENGTH, TIME, USER, WEIGHT, DataError
from recsys.outofcore.engine import ident, quote

ROW = "__row"  # 0-based position in the file: the protocol's tie-break
# pandas.read_csv's default NA strings: the same cells are nulls here.
PANDAS_NA = ("", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN", "<NA>",
             "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null")
# What str.strip() strips, so string ids normalise exactly as in normalise_ids.
WHITESPACE = "".join(chr(code) for code in range(0x110000) if chr(code).isspace())
INT_TEXT = r"\s*[+-]?[0-9]+\s*"
INTEGER_TYPES = {"TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "UTINYINT", "USMALLINT", "UINTEGER",
                 "UBIGINT", "UHUGEINT"}


@dataclass(frozen=True)
class ValidatedLog:
    """A DuckDB view of the normalised log: ``user_id``, ``item_id`` (BIGINT or VARCHAR, as
    loaders makes them), ``timestamp`` (BIGINT) and ``row`` (position in the file)."""

    path: str
    view: str
    rows: int
    user_kind: str  # "int" | "str": the IdMap's type
    item_kind: str


@dataclass(frozen=True)
class _Table:
    path: str
    view: str  # the file's columns + ROW
    columns: dict[str, str]  # name -> DuckDB type
    text: bool  # a CSV read as text: column types are inferred here, as pandas does


def open_table(con: duckdb.DuckDBPyConnection, path: str | Path, work_dir: Path, view: str) -> _Table:
    """Register ``view`` over a CSV/TSV/Parquet file plus its row positions; read_table's errors."""
    path = Path(path)
    suffix = table_suffix(path)
    source = path
    try:
        if suffix in CSV_SUFFIXES:
            if path.stat().st_size == 0:
                raise DataError(str(path), "cannot be parsed: No columns to parse from file")
            # A text copy as Parquet, in file order (preserve_insertion_order), so every row gets
            # its file position from the Parquet reader, however many threads scan it.
            source = Path(work_dir) / f"{view}.parquet"
            delim = CSV_SUFFIXES[suffix]
            nulls = ", ".join(map(quote, PANDAS_NA))
            options = ", ".join(["header = true", "all_varchar = true", f"nullstr = [{nulls}]",
                                 *([f"delim = {quote(delim)}"] if delim else [])])
            con.execute(f"COPY (SELECT * FROM read_csv({quote(str(path))}, {options})) "
                        f"TO {quote(str(source))} (FORMAT parquet)")
        con.execute(f"CREATE OR REPLACE TEMP VIEW {view} AS SELECT * EXCLUDE (file_row_number), "
                    f"file_row_number AS {ROW} FROM read_parquet({quote(str(source))}, file_row_number = true)")
        described = con.execute(f"DESCRIBE {view}").fetchall()
    except duckdb.Error as exc:
        raise DataError(str(path), f"cannot be parsed: {exc}") from None
    columns = {name: kind for name, kind, *_ in described if name != ROW}
    return _Table(str(path), view, columns, source != path)


def _require_columns(table: _Table, required: tuple[str, ...]) -> None:
    found = list(table.columns)
    for column in required:
        if column in table.columns:
            continue
        close = difflib.get_close_matches(column, found, n=1, cutoff=0.5)
        hint = f" (did you mean '{close[0]}'? rename it to '{column}')" if close else ""
        raise DataError(table.path, f"missing required column; found {found}{hint}", column)


def _type_kind(duck_type: str) -> str:
    if duck_type in INTEGER_TYPES:
        return "int"
    if duck_type in ("FLOAT", "DOUBLE") or duck_type.startswith("DECIMAL"):
        return "float"
    if duck_type.startswith(("TIMESTAMP", "DATE")):
        return "time"
    return "str"


def _kinds(con, table: _Table, columns: list[str]) -> dict[str, str]:
    """Each column's kind: its Parquet type, or for CSV text what pandas would infer."""
    if not table.text:
        return {column: _type_kind(table.columns[column]) for column in columns}
    parts = []
    for column in columns:
        value = ident(column)
        parts += [f"bool_and(regexp_full_match({value}, {quote(INT_TEXT)}) "
                  f"AND TRY_CAST({value} AS BIGINT) IS NOT NULL)",
                  f"bool_and(TRY_CAST({value} AS DOUBLE) IS NOT NULL)"]
    found = con.execute(f"SELECT {', '.join(parts)} FROM {table.view}").fetchone()
    kinds = {}
    for n, column in enumerate(columns):
        is_int, is_float = found[2 * n], found[2 * n + 1]
        # An all-null column is float in pandas (NaN): the missing-value check then names it.
        kinds[column] = "int" if is_int else "float" if is_float or is_int is None else "str"
    return kinds


def _typed(table: _Table, column: str, kind: str) -> str:
    value = ident(column)
    if not table.text:
        return value
    return {"int": f"CAST({value} AS BIGINT)", "float": f"CAST({value} AS DOUBLE)"}.get(kind, value)


def _missing(value: str, kind: str) -> str:
    return f"({value} IS NULL OR isnan({value}))" if kind == "float" else f"({value} IS NULL)"


def _integral(value: str) -> str:
    return f"(isfinite({value}) AND {value} = floor({value}))"


def _text(value: str) -> str:
    return f"trim(CAST({value} AS VARCHAR), {quote(WHITESPACE)})"


def _epoch_seconds(value: str) -> str:
    """Whole seconds since 1970 of a date-time, rounded down (pandas' ``// Timedelta(seconds=1)``)."""
    micros = f"epoch_us(CAST({value} AS TIMESTAMPTZ))"
    return f"({micros} // 1000000 - CASE WHEN {micros} % 1000000 < 0 THEN 1 ELSE 0 END)"


class _Checks:
    """Fault conditions in loaders' order, counted in one scan; the first found is raised."""

    def __init__(self, con, table: _Table):
        self.con, self.table = con, table
        self.faults: list[tuple[str, str, str]] = []  # (column, problem with {n}, SQL condition)
        self.facts: dict[str, str] = {}  # name -> SQL aggregate, for decisions after the scan

    def fault(self, column: str, problem: str, condition: str) -> None:
        self.faults.append((column, problem, condition))

    def run(self) -> dict:
        """Counts every fault and computes the facts in one scan; raises the first fault found."""
        aggregates = [f"count_if({condition})" for _, _, condition in self.faults] + list(self.facts.values())
        if not aggregates:
            return {}
        found = self.con.execute(f"SELECT {', '.join(aggregates)} FROM {self.table.view}").fetchone()
        n_faults = len(self.faults)
        for (column, problem, condition), count in zip(self.faults, found[:n_faults], strict=True):
            if count:
                raise DataError(self.table.path, problem.format(n=count), column,
                                sample_row(self.con, self.table.view, condition))
        return dict(zip(self.facts, found[n_faults:], strict=True))


def sample_row(con, view: str, condition: str, prefix: str = "") -> str:
    """loaders' ``row N: {...}`` for the first row (in file order) where ``condition`` holds."""
    cursor = con.execute(f"SELECT * FROM {view} WHERE {condition} ORDER BY {ROW} LIMIT 1")
    names = [d[0] for d in cursor.description]
    values = dict(zip(names, cursor.fetchone(), strict=True))
    position = values.pop(ROW)
    return f"{prefix}row {position + 1}: {values}"


def _id_checks(checks: _Checks, column: str, kind: str, value: str) -> None:
    checks.fault(column, "{n} missing (NaN) ids", _missing(value, kind))
    if kind == "str":
        checks.fault(column, f"ids must be 1..{MAX_ID_LENGTH} characters",
                     f"length({_text(value)}) NOT BETWEEN 1 AND {MAX_ID_LENGTH}")
    if kind == "float":
        checks.facts[f"{column}_integral"] = f"coalesce(bool_and({_integral(value)}), true)"


def _id_expression(value: str, kind: str, integral: bool) -> tuple[str, str]:
    """(SQL, kind) of a normalised id: integers (and integral floats) as BIGINT, the rest as text."""
    if kind == "int" or (kind == "float" and integral):
        return f"CAST({value} AS BIGINT)", "int"
    return _text(value), "str"


UNPARSABLE_TIME = "unparsable timestamp (expected unix seconds or ISO-8601)"
FRACTIONAL_TIME = "fractional timestamps: give integer unix seconds or date-time strings"


def validate_log(con: duckdb.DuckDBPyConnection, path: str | Path, work_dir: Path,
                 view: str = "log") -> ValidatedLog:
    """Check the log as `validate_interactions` does; register ``view``, the normalised log."""
    table = open_table(con, path, work_dir, f"raw_{view}")
    rows = con.execute(f"SELECT count(*) FROM {table.view}").fetchone()[0]
    if rows == 0:
        raise DataError(table.path, "the interaction log is empty")
    _require_columns(table, INTERACTION_REQUIRED)
    checked = [USER, ITEM, TIME, *([WEIGHT] if WEIGHT in table.columns else [])]
    kinds = _kinds(con, table, checked)
    values = {column: _typed(table, column, kinds[column]) for column in checked}
    checks = _Checks(con, table)
    for column in (USER, ITEM):
        _id_checks(checks, column, kinds[column], values[column])
    time, time_kind = values[TIME], kinds[TIME]
    checks.fault(TIME, "{n} missing timestamps", _missing(time, time_kind))
    number = f"TRY_CAST({time} AS DOUBLE)"
    if time_kind == "float":
        checks.fault(TIME, FRACTIONAL_TIME, f"NOT {_integral(time)}")
    elif time_kind == "str":
        # loaders: a mostly numeric text column is a numeric clock with typos, not dates.
        checks.facts["numeric_share"] = f"avg(CASE WHEN {number} IS NULL THEN 0 ELSE 1 END)"
    facts = checks.run()
    # The text-clock faults depend on the numeric share, so they (and the weights, after them in
    # loaders' order) are counted in a second scan.
    later = _Checks(con, table)
    numeric = time_kind == "str" and facts["numeric_share"] >= 0.5
    if numeric:
        later.fault(TIME, UNPARSABLE_TIME, f"{number} IS NULL")
        later.fault(TIME, FRACTIONAL_TIME, f"NOT {_integral(number)}")
    elif time_kind == "str":
        later.fault(TIME, UNPARSABLE_TIME, f"TRY_CAST({time} AS TIMESTAMPTZ) IS NULL")
    if WEIGHT in values:
        weight = f"TRY_CAST({values[WEIGHT]} AS DOUBLE)"
        later.fault(WEIGHT, "weights must be non-negative numbers",
                    f"({weight} IS NULL OR isnan({weight}) OR {weight} < 0)")
    later.run()
    if numeric:
        time_sql = (f"CASE WHEN regexp_full_match({time}, {quote(INT_TEXT)}) THEN CAST({time} AS BIGINT) "
                    f"ELSE CAST({number} AS BIGINT) END")
    elif time_kind in ("str", "time"):
        time_sql = _epoch_seconds(time)
    else:
        time_sql = f"CAST({time} AS BIGINT)"
    user_sql, user_kind = _id_expression(values[USER], kinds[USER], facts.get(f"{USER}_integral", False))
    item_sql, item_kind = _id_expression(values[ITEM], kinds[ITEM], facts.get(f"{ITEM}_integral", False))
    con.execute(f"CREATE OR REPLACE TEMP VIEW {view} AS SELECT {user_sql} AS {USER}, {item_sql} AS {ITEM}, "
                f"{time_sql} AS {TIME}, {ROW} AS row FROM {table.view}")
    return ValidatedLog(table.path, view, rows, user_kind, item_kind)


def validate_catalog(con: duckdb.DuckDBPyConnection, path: str | Path, log: ValidatedLog, work_dir: Path,
                     view: str = "catalog") -> str:
    """Check an item catalog as `validate_items` + `check_coverage` do; register ``view`` (its
    normalised ``item_id``s) and return it."""
    table = open_table(con, path, work_dir, f"raw_{view}")
    if con.execute(f"SELECT count(*) FROM {table.view}").fetchone()[0] == 0:
        raise DataError(table.path, "the item table is empty")
    _require_columns(table, (ITEM,))
    kind = _kinds(con, table, [ITEM])[ITEM]
    value = _typed(table, ITEM, kind)
    checks = _Checks(con, table)
    _id_checks(checks, ITEM, kind, value)
    facts = checks.run()
    item_sql, item_kind = _id_expression(value, kind, facts.get(f"{ITEM}_integral", False))
    con.execute(f"CREATE OR REPLACE TEMP VIEW {view} AS SELECT {item_sql} AS {ITEM}, {ROW} FROM {table.view}")
    duplicate = con.execute(f"SELECT min({ROW}) FROM (SELECT {ROW}, row_number() OVER (PARTITION BY {ITEM} "
                            f"ORDER BY {ROW}) AS seen FROM {view}) WHERE seen > 1").fetchone()[0]
    if duplicate is not None:
        raise DataError(table.path, f"duplicate {ITEM} in the item table", ITEM,
                        sample_row(con, table.view, f"{ROW} = {duplicate}"))
    if item_kind != log.item_kind:
        dtype = {"int": "int64", "str": "object"}
        raise DataError(table.path, f"{ITEM} types differ between log ({dtype[log.item_kind]}) and table "
                                    f"({dtype[item_kind]})", ITEM)
    absent = f"{ITEM} NOT IN (SELECT {ITEM} FROM {view})"
    missing = con.execute(f"SELECT count(DISTINCT {ITEM}) FROM {log.view} WHERE {absent}").fetchone()[0]
    if missing:
        first = con.execute(f"SELECT min(row) FROM {log.view} WHERE {absent}").fetchone()[0]
        normalised = f"(SELECT * EXCLUDE (row), row AS {ROW} FROM {log.view})"
        raise DataError(table.path, f"does not cover the log: {missing} {ITEM}s in the log are absent here", ITEM,
                        sample_row(con, normalised, f"{ROW} = {first}", prefix="log "))
    return view

"""One DuckDB connection configured for out-of-core work: a memory cap and a place to spill."""

from __future__ import annotations

from pathlib import Path

import duckdb


def connect(temp_dir: Path, memory_limit: str = "6GB", threads: int = 2, progress: bool = False):
    """An in-memory DuckDB that spills to ``temp_dir`` past ``memory_limit`` (its temporary files
    go when the connection closes)."""
    Path(temp_dir).mkdir(parents=True, exist_ok=True)
    con = duckdb.connect()
    con.execute(f"SET memory_limit = {quote(memory_limit)}")
    con.execute(f"SET threads = {int(threads)}")
    con.execute(f"SET temp_directory = {quote(str(temp_dir))}")
    # Scans and COPYs return rows in insertion order: the split's files stay in canonical order.
    con.execute("SET preserve_insertion_order = true")
    # Date-time strings without a zone are UTC, as pandas.to_datetime(utc=True) reads them.
    con.execute("SET TimeZone = 'UTC'")
    con.execute(f"SET enable_progress_bar = {'true' if progress else 'false'}")
    return con


def quote(text: str) -> str:
    """A SQL string literal."""
    return "'" + text.replace("'", "''") + "'"


def ident(name: str) -> str:
    """A SQL identifier."""
    return '"' + name.replace('"', '""') + '"'

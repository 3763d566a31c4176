"""The protocol's temporal split (`recsys.split.protocol_split`) out of core, in DuckDB.

Step by step as PROTOCOL.md and split.py do it, each one a query that spills past the memory
limit: every row carries its file position (``row``); each (user, item) pair keeps its first row
in (time, row) order (an arg-min over a struct compares time, then row); users with fewer than
`MIN_INTERACTIONS` distinct items go; the id maps are the sorted distinct ids that remain (plus
the catalog's items); a window per user, in (time, row) order, counts rows from the end: 0 is
test, 1 validation, the rest train. The files are written in canonical order, (u, t, row).
"""

from __future__ import annotations

import logging
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd

from recsys.data.idmap import IdMap
from recsys.data.schema import DataError
from recsys.outofcore.engine import quote
from recsys.outofcore.validate import ValidatedLog
from recsys.split import MIN_INTERACTIONS, ROW, Split

log = logging.getLogger(__name__)

SPLIT_DIR = "split"
PARTS = {"train": "from_end >= 2", "valid": "from_end = 1", "test": "from_end = 0"}


def split_log(con: duckdb.DuckDBPyConnection, log_view: ValidatedLog, out_dir: Path, catalog: str | None = None,
              name: str | None = None) -> dict:
    """Write OUT/split/{train,valid,test,users,items}.parquet; returns the row and id counts."""
    split_dir = Path(out_dir) / SPLIT_DIR
    split_dir.mkdir(parents=True, exist_ok=True)
    name = name or Path(log_view.path).stem

    def count(sql: str) -> int:
        return con.execute(sql).fetchone()[0]

    log.info("split: first occurrence of each (user, item) in (time, file row) order")
    con.execute(f"CREATE OR REPLACE TEMP TABLE first_seen AS SELECT user_id, item_id, "
                f"min({{'t': timestamp, 'r': row}}) AS first FROM {log_view.view} GROUP BY user_id, item_id")
    log.info("split: users with %d or more distinct items, and the id maps", MIN_INTERACTIONS)
    con.execute("CREATE OR REPLACE TEMP TABLE user_map AS SELECT user_id, "
                "(row_number() OVER (ORDER BY user_id) - 1)::INTEGER AS u, n FROM (SELECT user_id, count(*) AS n "
                f"FROM first_seen GROUP BY user_id HAVING count(*) >= {MIN_INTERACTIONS})")
    n_users = count("SELECT count(*) FROM user_map")
    if n_users == 0:
        raise DataError(name, f"no user has {MIN_INTERACTIONS} or more distinct items; nothing to split")
    kept_items = "SELECT item_id FROM first_seen SEMI JOIN user_map USING (user_id)"
    if catalog is not None:
        kept_items += f" UNION SELECT item_id FROM {catalog}"
    con.execute("CREATE OR REPLACE TEMP TABLE item_map AS SELECT item_id, (row_number() OVER (ORDER BY item_id) "
                f"- 1)::INTEGER AS i FROM (SELECT DISTINCT item_id FROM ({kept_items}))")
    summary = {"rows": log_view.rows, "deduplicated": count("SELECT count(*) FROM first_seen"),
               "users_in_log": count("SELECT count(DISTINCT user_id) FROM first_seen"), "users": n_users,
               "items": count("SELECT count(*) FROM item_map")}
    log.info("split: each user's rows counted from the end, in canonical order (%d users)", n_users)
    con.execute("CREATE OR REPLACE TEMP TABLE mapped AS SELECT u, i, first.t AS t, first.r AS row, "
                "n - row_number() OVER (PARTITION BY u ORDER BY first.t, first.r) AS from_end "
                "FROM first_seen JOIN user_map USING (user_id) JOIN item_map USING (item_id) ORDER BY u, t, row")
    con.execute("DROP TABLE first_seen")
    log.info("split: writing %s", split_dir)
    con.execute(f"COPY (SELECT user_id FROM user_map ORDER BY u) TO {quote(str(split_dir / 'users.parquet'))} "
                "(FORMAT parquet)")
    con.execute(f"COPY (SELECT item_id FROM item_map ORDER BY i) TO {quote(str(split_dir / 'items.parquet'))} "
                "(FORMAT parquet)")
    for part, condition in PARTS.items():
        # The table is in canonical order and scans keep insertion order: no second sort.
        con.execute(f"COPY (SELECT u, i, t, row FROM mapped WHERE {condition}) "
                    f"TO {quote(str(split_dir / f'{part}.parquet'))} (FORMAT parquet)")
        summary[part] = count(f"SELECT count(*) FROM mapped WHERE {condition}")
    con.execute("DROP TABLE mapped")
    summary["kept"] = summary["train"] + summary["valid"] + summary["test"]
    summary["dropped_users"] = summary["users_in_log"] - n_users
    return summary


def _ids(path: Path, column: str) -> IdMap:
    values = pd.read_parquet(path)[column]
    if pd.api.types.is_integer_dtype(values):
        return IdMap(values.to_numpy(np.int64))
    return IdMap(values.to_numpy(dtype=object))


def read_split(out_dir: Path) -> Split:
    """The split written by `split_log` as an in-memory `Split` (for logs that fit, and tests)."""
    split_dir = Path(out_dir) / SPLIT_DIR
    frames = {part: pd.read_parquet(split_dir / f"{part}.parquet", columns=["u", "i", "t", ROW]) for part in PARTS}
    return Split(_ids(split_dir / "users.parquet", "user_id"), _ids(split_dir / "items.parquet", "item_id"),
                 **frames)

"""Logs bigger than memory: validate, split and build training examples out of core, in DuckDB.

The in-memory path (`recsys.data.loaders` -> `recsys.split.temporal_split` -> the towers'
`NextItemExamples` / `SequenceWindows`) holds the whole log in pandas. This package does the
same three steps on a Parquet or CSV log of any size in bounded memory, with the same answers:
the split's train / valid / test rows equal `temporal_split`'s row for row (tests/recsys/
test_outofcore.py), and the examples equal the trainer's.

    python -m recsys.outofcore --log LOG.parquet --out DIR [--items CATALOG] [--memory-limit 6GB] [--threads 2]

Why DuckDB rather than Polars' streaming engine: the split is a de-duplication keyed by
(user, item) keeping the first row in (time, file row) order, a per-user count, a join onto
the id maps and a per-user "position from the end" in that order: a 100M-group aggregate, joins,
a window partitioned by user and a sort, none of which fits in 8 GB at 100M rows. DuckDB's hash
aggregate, hash join, window operator and ORDER BY all spill to ``temp_directory`` under a hard
``memory_limit``. Polars' streaming engine processes batches, but its tracking issue
(pola-rs/polars#20947, when read for this) lists out-of-core group-by, equi-join and sort as not
done yet, and an operation without a streaming node falls back to the in-memory engine: exactly
the steps that do not fit. DuckDB's ``read_parquet(file_row_number=true)`` also gives each row its position in
the file, which the protocol's tie-break needs (PROTOCOL.md, split step 2), whatever order a
parallel scan reads the row groups in.

Artifacts, written by `recsys.outofcore.split` and `recsys.outofcore.examples`, read by them:

    DIR/split/{train,valid,test}.parquet   u, i (int32), t, row (int64), canonical order
    DIR/split/{users,items}.parquet        external ids in index order (the IdMaps)
    DIR/examples/*.npy + examples.json      the towers' training examples, memory-mappable
    DIR/outofcore.json                     what was done: rows, seconds per step, peak RSS, versions
"""

from recsys.outofcore.engine import connect
from recsys.outofcore.examples import build_examples, load_examples
from recsys.outofcore.split import read_split, split_log
from recsys.outofcore.validate import ValidatedLog, validate_catalog, validate_log

__all__ = ["ValidatedLog", "build_examples", "connect", "load_examples", "read_split", "split_log",
           "validate_catalog", "validate_log"]

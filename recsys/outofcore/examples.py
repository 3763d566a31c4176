"""The towers' training examples from an out-of-core split, streamed chunk by chunk into .npy files.

`recsys.train.towers.NextItemExamples` makes every train interaction an example: its user, its
item, its position in the user's train history (the items before it are its history), and
log Q(item) from the train counts; `SequenceWindows` adds the rows where windows end. Here the
same arrays are built from ``split/train.parquet`` (canonical order) in two streamed passes, so
memory is O(users + items + one chunk), never O(interactions): pass one counts rows per user and
per item, pass two writes each chunk into memory-mapped .npy files. ``users``, ``items`` and
``position`` are int32 (the trainer's are int64, same values) to halve the disk and page cache.

    OUT/examples/users.npy, items.npy, position.npy   one row per train interaction
    OUT/examples/item_counts.npy, log_q.npy           per item
    OUT/examples/window_ends.npy                      train rows where a sequence window ends
    OUT/examples/examples.json                        history_len, stride, counts
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from recsys.outofcore.split import SPLIT_DIR

log = logging.getLogger(__name__)

EXAMPLES_DIR = "examples"
DEFAULT_HISTORY_LEN = 20  # recsys.models.two_tower.TwoTowerConfig.history_len (a test keeps them equal)
BATCH_ROWS = 1 << 20
ROW_ARRAYS = ("users", "items", "position")
ARRAYS = (*ROW_ARRAYS, "item_counts", "log_q", "window_ends")


def window_stride(history_len: int) -> int:
    """SequenceWindows' stride: windows end every ``stride`` rows back from a user's last one."""
    return max(1, history_len // 2)


def _batches(train: pq.ParquetFile, columns: list[str], batch_rows: int, desc: str, progress: bool):
    bar = tqdm(total=train.metadata.num_rows, desc=desc, unit="row", unit_scale=True, disable=not progress,
               mininterval=1.0)
    for batch in train.iter_batches(batch_size=batch_rows, columns=columns):
        yield [batch.column(name).to_numpy() for name in columns]
        bar.update(batch.num_rows)
    bar.close()


def _check_canonical(previous: tuple | None, u: np.ndarray, t: np.ndarray, row: np.ndarray) -> None:
    """The examples assume (u, t, row) strictly increases down the file; say so if it does not."""
    if previous is not None:
        u, t, row = (np.r_[previous[k], column] for k, column in enumerate((u, t, row)))
    du, dt, drow = np.diff(u), np.diff(t), np.diff(row)
    if not ((du > 0) | ((du == 0) & ((dt > 0) | ((dt == 0) & (drow > 0))))).all():
        raise ValueError("split/train.parquet is not in canonical (u, t, row) order: write it with split_log")


def build_examples(out_dir: Path, history_len: int = DEFAULT_HISTORY_LEN, batch_rows: int = BATCH_ROWS,
                   progress: bool = False) -> dict:
    """Write OUT/examples/ from OUT/split/; returns what examples.json records."""
    split_dir, examples_dir = Path(out_dir) / SPLIT_DIR, Path(out_dir) / EXAMPLES_DIR
    examples_dir.mkdir(parents=True, exist_ok=True)
    n_users = pq.read_metadata(split_dir / "users.parquet").num_rows
    n_items = pq.read_metadata(split_dir / "items.parquet").num_rows
    train = pq.ParquetFile(split_dir / "train.parquet")
    n_rows = train.metadata.num_rows

    sizes = np.zeros(n_users, dtype=np.int64)
    counts = np.zeros(n_items, dtype=np.int64)
    previous = None
    for u, i, t, row in _batches(train, ["u", "i", "t", "row"], batch_rows, "examples: counts", progress):
        _check_canonical(previous, u, t, row)
        previous = (u[-1], t[-1], row[-1])
        sizes += np.bincount(u, minlength=n_users)
        counts += np.bincount(i, minlength=n_items)

    stride = window_stride(history_len)
    first_row = np.cumsum(sizes) - sizes
    # Positions 1..size-1 whose distance to the user's last row is a multiple of the stride.
    n_windows = int(((sizes[sizes >= 2] - 2) // stride + 1).sum())
    arrays = {name: np.lib.format.open_memmap(examples_dir / f"{name}.npy", mode="w+", dtype=np.int32,
                                              shape=(n_rows,)) for name in ROW_ARRAYS}
    ends = np.lib.format.open_memmap(examples_dir / "window_ends.npy", mode="w+", dtype=np.int64,
                                     shape=(n_windows,))
    start = n_ends = 0
    for u, i in _batches(train, ["u", "i"], batch_rows, "examples: arrays", progress):
        chunk = slice(start, start + len(u))
        rows = np.arange(chunk.start, chunk.stop, dtype=np.int64)
        position = rows - first_row[u]
        arrays["users"][chunk], arrays["items"][chunk], arrays["position"][chunk] = u, i, position
        remaining = sizes[u] - 1 - position
        batch_ends = rows[(remaining % stride == 0) & (position >= 1)]
        ends[n_ends:n_ends + len(batch_ends)] = batch_ends
        start, n_ends = start + len(u), n_ends + len(batch_ends)
    if (start, n_ends) != (n_rows, n_windows):
        raise RuntimeError(f"wrote {start} rows and {n_ends} windows, expected {n_rows} and {n_windows}")
    for array in (*arrays.values(), ends):
        array.flush()
    del arrays, ends
    np.save(examples_dir / "item_counts.npy", counts)
    totals = counts.astype(np.float64)
    np.save(examples_dir / "log_q.npy", np.log(np.maximum(totals, 1.0) / totals.sum()).astype(np.float32))
    summary = {"history_len": history_len, "stride": stride, "rows": n_rows, "windows": n_windows,
               "users": n_users, "items": n_items}
    (examples_dir / "examples.json").write_text(json.dumps(summary, indent=2) + "\n")
    log.info("examples: %d train rows, %d sequence windows in %s", n_rows, n_windows, examples_dir)
    return summary


def load_examples(out_dir: Path) -> dict:
    """The arrays `build_examples` wrote, memory-mapped, and its summary under ``"meta"``."""
    examples_dir = Path(out_dir) / EXAMPLES_DIR
    loaded: dict = {name: np.load(examples_dir / f"{name}.npy", mmap_mode="r") for name in ARRAYS}
    loaded["meta"] = json.loads((examples_dir / "examples.json").read_text())
    return loaded

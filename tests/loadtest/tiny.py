"""One tiny real trained + compressed bundle pair per test session, shared by tests/loadtest and tests/ops.

Built the way `make bundles` builds the real ones (recsys.train, then compression), on a small
synthetic log. The first fixture to ask builds it under the session's base temp directory; later
ones (other test directories) find it there. Tests that publish into it must copy it first.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from compression.__main__ import main as compress_main
from loadtest.harness import running_server
from recsys.data.synthetic import SyntheticConfig, generate
from recsys.train import main as train_main

ROOT = Path(__file__).resolve().parents[2]
ADMIN_TOKEN = "tiny-admin-token"
TRAIN_FAST = ["--epochs", "2", "--dim", "16", "--hidden", "32", "--ranker-epochs", "1"]
# Students narrower than the tiny teacher (dim 16), as compression's default (64) is for real teachers.
COMPRESS_FAST = ["--student-dim", "8", "--tower-epochs", "2", "--ranker-epochs", "1",
                 "--latency-requests", "20",
                 "--threshold", "0.3", "--reports-dir", ""]


@dataclass(frozen=True)
class Tiny:
    root: Path
    interactions: Path
    items: Path

    @property
    def bundles(self) -> Path:
        return self.root / "bundles"

    def data_args(self) -> list[str]:
        return ["--dataset", str(self.interactions), "--items", str(self.items), "--data-dir", str(self.root)]

    def copy_bundles(self, destination: Path) -> Path:
        """A private copy of both bundle roots (symlinks kept), for tests that publish or reload."""
        shutil.copytree(self.bundles, destination, symlinks=True, ignore=shutil.ignore_patterns("variants"))
        return destination


def tiny_bundles(tmp_path_factory: pytest.TempPathFactory) -> Tiny:
    root = tmp_path_factory.getbasetemp() / "tiny-bundles"
    root.mkdir(exist_ok=True)
    with open(root / ".lock", "w") as lock:  # pytest-xdist workers would race otherwise
        fcntl.flock(lock, fcntl.LOCK_EX)
        tiny = Tiny(root, root / "data" / "interactions.parquet", root / "data" / "items.parquet")
        if not (root / "done").exists():
            generate(SyntheticConfig(n_users=300, n_items=200, n_interactions=6000, seed=1), root / "data",
                     progress=False)
            assert train_main([*tiny.data_args(), "--out", str(root / "model"), *TRAIN_FAST]) == 0
            assert compress_main(["--model", str(root / "model"), *tiny.data_args(), "--out", str(tiny.bundles),
                                  *COMPRESS_FAST]) == 0
            (root / "done").touch()
    return tiny


@contextmanager
def serving(bundle: Path, events_db: Path, log_path: Path) -> Iterator[tuple[subprocess.Popen, str]]:
    """A real ``python -m serving`` on 127.0.0.1 (free port), admin token set."""
    command = [sys.executable, "-m", "serving", "--bundle", str(bundle), "--host", "127.0.0.1", "--port", "0",
               "--events-db", str(events_db)]
    env = {"RECSYS_ADMIN_TOKEN": ADMIN_TOKEN}
    with running_server(command, log_path, env=env) as (process, url):
        yield process, url
    assert process.returncode in (0, -signal.SIGTERM), f"server exited with {process.returncode}"


def locust_env(bundle: Path, **extra: str) -> dict[str, str]:
    """The environment for a Locust subprocess sampling ids from ``bundle``."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("RECSYS_LOADTEST_")}
    env["RECSYS_LOADTEST_BUNDLE"] = str(bundle)
    env.update({f"RECSYS_LOADTEST_{key.upper()}": value for key, value in extra.items()})
    return env

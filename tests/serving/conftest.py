"""Two real tiny bundles (checkerboard data, towers trained with different seeds) and app/server helpers."""

from __future__ import annotations

import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from recsys.bundle import current_version
from recsys.data.datasets import Dataset
from recsys.split import Split, temporal_split
from serving.app import create_app
from serving.settings import Settings
from tests.conftest import ROOT, checkerboard_dataset
from tests.serving.bundles import publish_tiny_bundle

ADMIN_TOKEN = "test-admin-token"
SERVER_START_TIMEOUT_S = 90
_LISTENING = re.compile(r"Uvicorn running on (http://127\.0\.0\.1:\d+)")


@dataclass(frozen=True)
class Bundles:
    root: Path  # `current` -> v1
    v1: str
    v2: str  # published, not current
    dataset: Dataset
    split: Split

    def copy_root(self, destination: Path) -> Path:
        """A private copy of the root, for tests that move `current`."""
        shutil.copytree(self.root, destination, symlinks=True)
        return destination

    def version_dir(self, version: str) -> Path:
        return self.root / "versions" / version


@pytest.fixture(scope="session")
def bundles(tmp_path_factory) -> Bundles:
    dataset = checkerboard_dataset()
    split = temporal_split(dataset)
    root = tmp_path_factory.mktemp("bundles")
    v1 = publish_tiny_bundle(root, dataset, split, seed=0, make_current=True)
    v2 = publish_tiny_bundle(root, dataset, split, seed=1, make_current=False)
    assert current_version(root) == v1
    return Bundles(root, v1, v2, dataset, split)


@pytest.fixture
def settings(bundles, tmp_path) -> Settings:
    return Settings(bundle=bundles.root, events_db=tmp_path / "events.sqlite", admin_token=ADMIN_TOKEN)


@pytest.fixture
def client(settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def admin_headers(token: str = ADMIN_TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def running_server(*args: str, port: int = 0) -> Iterator[tuple[subprocess.Popen, str]]:
    """``python -m serving ARGS`` on 127.0.0.1; yields the process and its base URL.

    With the default ``port=0`` the OS picks a free port and the URL is read from uvicorn's log
    (no race); with several workers uvicorn logs port 0 itself, so pass ``port=free_port()``.
    """
    command = [sys.executable, "-m", "serving", "--host", "127.0.0.1", "--port", str(port), *args]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    lines: queue.Queue[str | None] = queue.Queue()

    def drain() -> None:  # keep reading so the server never blocks on a full pipe
        for line in process.stderr:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=drain, daemon=True).start()
    try:
        yield process, _wait_listening(process, lines, port)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _wait_listening(process: subprocess.Popen, lines: queue.Queue, port: int) -> str:
    seen = []
    while True:
        try:
            line = lines.get(timeout=SERVER_START_TIMEOUT_S)
        except queue.Empty:
            raise AssertionError(f"server did not start in {SERVER_START_TIMEOUT_S} s:\n{''.join(seen)}") from None
        if line is None:
            process.wait()
            raise AssertionError(f"server exited with {process.returncode}:\n{''.join(seen)}")
        seen.append(line)
        if match := _LISTENING.search(line):
            url = match.group(1) if port == 0 else f"http://127.0.0.1:{port}"
            _wait_ready(process, url)
            return url


def _wait_ready(process: subprocess.Popen, url: str) -> None:
    # With several workers uvicorn logs "running" before the workers have loaded the model.
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if httpx.get(f"{url}/readyz", timeout=10).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"server at {url} never became ready (exit code {process.poll()})")

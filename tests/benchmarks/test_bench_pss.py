"""The PSS benchmark's readings of /proc, on this test process (no server started)."""

from __future__ import annotations

import os

import numpy as np

from benchmarks.bench_pss import markdown, process_memory, worker_pids


def test_memory_of_a_process_counts_the_mapped_files_under_a_directory(tmp_path):
    np.save(tmp_path / "big.npy", np.ones(1 << 20, np.float32))
    mapped = np.load(tmp_path / "big.npy", mmap_mode="r")
    assert mapped.sum() == 1 << 20  # every page read
    memory = process_memory(os.getpid(), tmp_path)
    assert 3.9 < memory["bundle_rss"] <= 4.1 and 0 < memory["bundle_pss"] <= memory["bundle_rss"]
    assert memory["pss"] <= memory["rss"] and memory["shared"] + memory["private"] <= memory["rss"] + 0.01
    assert process_memory(os.getpid(), tmp_path / "elsewhere")["bundle_rss"] == 0


def test_a_process_without_uvicorn_workers_is_its_own_worker():
    assert worker_pids(os.getpid()) == ([os.getpid()], None)


def test_the_report_puts_before_and_after_side_by_side():
    worker = {"pss": 100.0, "rss": 150.0, "shared": 60.0, "anonymous": 80.0, "bundle_pss": 1.0}

    def run(code: str, adds: float) -> dict:
        bundle = {"label": "teacher", "bundle": f"/{code}/teacher", "bundle_bytes": 8_000_000, "files": ["a.npy"],
                  "runs": {"1": {"workers": [worker]}, "2": {"workers": [worker, worker], "master": worker}},
                  "second_worker_adds": adds}
        return {"command": "python -m benchmarks.bench_pss", "code": f"/{code}", "requests": 3, "bundles": [bundle]}

    text = markdown(run("after", 0.5), run("before", 0.8))
    assert "| teacher | before | 8.00 |" in text and "**80.0%**" in text
    assert "| teacher | after | 8.00 |" in text and "**50.0%**" in text

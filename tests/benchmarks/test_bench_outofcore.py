"""The out-of-core benchmark runs the pipeline on a ladder log and reports time, memory and disk."""

from __future__ import annotations

import json

import pytest

from benchmarks.bench_outofcore import main


@pytest.mark.slow
def test_bench_reports_time_memory_disk_and_the_in_memory_check(tmp_path):
    out = tmp_path / "report"
    argv = ["--interactions", "6000", "--items", "300", "--data-dir", str(tmp_path / "data"),
            "--work-dir", str(tmp_path / "work"), "--out", str(out), "--memory-limit", "256MB", "--check-in-memory"]
    assert main(argv) == 0
    assert main([*argv[:1], "12000", *argv[2:]]) == 0  # a second size joins the first in bench.json
    runs = json.loads((out / "bench.json").read_text())
    assert list(runs) == ["6000 @ 256MB", "12000 @ 256MB"]
    for row in runs.values():
        assert row["check"] == {**row["check"], "split_equal": True, "examples_equal": True}
        assert row["peak_rss_mb"] > 50 and row["disk_bytes"]["peak_work_dir"] > 0
        assert row["seconds"]["split"] >= 0 and row["rows"]["train"] > 0
    assert not (tmp_path / "work" / "6000").exists()  # the pipeline's output is deleted
    text = (out / "README.md").read_text()
    assert "| 12,000 |" in text and "Extrapolated linearly" in text
    assert (out / "12000_256MB" / "memory.md").exists()

"""The training ladder runs recsys.train on growing synthetic logs and reports throughput and memory."""

from __future__ import annotations

import json

import pytest

from benchmarks.bench_train import main


@pytest.mark.slow
def test_ladder_reports_tower_throughput_ranker_lists_and_peak_memory(tmp_path):
    out = tmp_path / "report"
    argv = ["--ladder", "--items", "300", "--interactions", "6000,12000", "--data-dir", str(tmp_path / "data"),
            "--model-dir", str(tmp_path / "models"), "--out", str(out), "--",
            "--max-steps-per-epoch", "2", "--batch-size", "64", "--eval-users", "50", "--ranker-eval-users", "50"]
    assert main(argv) == 0
    rows = json.loads((out / "train_ladder.json").read_text())
    assert [row["interactions"] for row in rows] == [6000, 12000]
    for row in rows:
        towers = row["towers"]
        assert towers["examples_per_s"] > 0
        # 2 steps of 64 out of the epoch: the full epoch is larger and its projected time positive
        assert towers["epoch_examples"] > 2 * 64 and towers["full_epoch_minutes"] >= 0
        assert row["ranker"]["lists"] > 0 and row["ranker"]["lists_per_s"] > 0
        assert row["peak_rss_mb"] > 50
    assert rows[1]["towers"]["epoch_examples"] > rows[0]["towers"]["epoch_examples"]  # the log grew
    assert "| 12,000 |" in (out / "train_ladder.md").read_text()

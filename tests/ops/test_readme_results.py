"""README results: the scale table reads each rung's card and load test; only the 1M card is shown in full."""

from __future__ import annotations

import json

from ops.readme_results import results_block, scale_rows


def _variant(name: str, bytes_: int, p50: float, notes: str) -> dict:
    return {"name": name, "bytes": bytes_, "served_p50_ms": p50, "notes": notes, "params": 1, "NDCG@10": 0.1,
            "HR@10": 0.2}


def _write_rung(reports, name: str, with_loadtest: bool) -> None:
    card = {"dataset": name, "published_variant": "compressed", "variants": [
        _variant("teacher-fp32", 80_000_000, 1.5, "index Flat; user_tower fp32; ranker fp32"),
        _variant("compressed", 9_000_000, 0.4, "index SQ8; user_tower int8")]}
    (reports / "compression" / name).mkdir(parents=True)
    (reports / "compression" / name / "card.json").write_text(json.dumps(card))
    if with_loadtest:
        runs = [{"bundle": "teacher", "mode": "max", "rps": 100.4},
                {"bundle": "compressed", "mode": "max", "rps": 2500.0},
                {"bundle": "compressed-unbatched", "mode": "max", "rps": 900.0},
                {"bundle": "compressed", "mode": "fixed", "rps": 60.0}]
        (reports / "loadtest" / name).mkdir(parents=True)
        (reports / "loadtest" / name / "summary.json").write_text(json.dumps({"dataset": name, "runs": runs}))


def test_scale_rows_follow_the_ladder_and_skip_missing_rungs(tmp_path):
    _write_rung(tmp_path, "synthetic-1m", with_loadtest=True)
    _write_rung(tmp_path, "synthetic-10k", with_loadtest=False)
    rows = scale_rows(tmp_path)
    assert [(row["items"], row["bundle"]) for row in rows] == [
        ("10,000", "teacher"), ("10,000", "compressed"), ("1,000,000", "teacher"), ("1,000,000", "compressed")]
    big_teacher, big_compressed = rows[2], rows[3]
    assert (big_teacher["MB"], big_teacher["ranker"], big_teacher["max_rps_batched"]) == ("80.0", "yes", "100")
    assert (big_compressed["ranker"], big_compressed["max_rps_batched"], big_compressed["max_rps_max_batch_1"]) == (
        "no", "2,500", "900")
    assert rows[0]["max_rps_batched"] == "-"  # no load test for that rung


def test_the_smaller_rungs_appear_in_the_scale_table_not_as_full_cards(tmp_path):
    _write_rung(tmp_path, "synthetic-10k", with_loadtest=True)
    block = results_block(tmp_path)
    assert "### Scale" in block and "| 10,000 |" in block
    assert "Compression report card: synthetic-10k" not in block
    assert "Load test: synthetic-10k" not in block


def test_the_replica_drill_is_shown_with_its_chart_path_from_the_readme(tmp_path):
    drill = tmp_path / "bench" / "replicas" / "ml-100k"
    drill.mkdir(parents=True)
    (drill / "summary.md").write_text("# 2 replicas behind HAProxy\n\n| bar | passed |\n\n![timeline](timeline.png)\n")
    block = results_block(tmp_path)
    assert "### 2 replicas behind HAProxy" in block.splitlines()  # under "## Results"
    assert f"![timeline]({(drill / 'timeline.png').as_posix()})" in block

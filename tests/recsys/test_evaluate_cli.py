"""The evaluation CLI: table, JSON keys, top-K CSV that re-scores identically, clear errors."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from recsys.evaluate.cli import main

JSON_KEYS = {"HR@10", "NDCG@10", "Recall@20", "NDCG@20", "MRR@10", "coverage@10", "users"}


def test_ease_json_topk_and_rescore(tmp_path, data_dir, capsys):
    out_json, topk_csv, rescored = tmp_path / "m.json", tmp_path / "topk.csv", tmp_path / "r.json"
    args = ["--dataset", "ml-100k", "--data-dir", str(data_dir), "--model", "ease"]
    assert main([*args, "--json", str(out_json), "--topk-out", str(topk_csv)]) == 0
    assert "| ease |" in capsys.readouterr().out
    metrics = json.loads(out_json.read_text())
    assert metrics.keys() >= JSON_KEYS and metrics["users"] == 943
    lists = pd.read_csv(topk_csv)
    assert list(lists.columns) == ["user_id", "rank", "item_id"] and lists["rank"].max() == 20
    assert main([*args, "--topk-in", str(topk_csv), "--json", str(rescored)]) == 0
    again = json.loads(rescored.read_text())
    for key in JSON_KEYS:
        assert again[key] == pytest.approx(metrics[key])


def test_user_log_path_works(tmp_path, capsys):
    rows = [(u, i, t) for u in range(30) for t, i in enumerate(range(u % 5, u % 5 + 6))]
    path = tmp_path / "log.csv"
    pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"]).to_csv(path, index=False)
    assert main(["--dataset", str(path), "--model", "pop", "--data-dir", str(tmp_path)]) == 0
    assert "| pop |" in capsys.readouterr().out


@pytest.mark.parametrize(("model", "needle"), [("nonsense", "unknown model 'nonsense'"),
                                                ("/", "not a model directory")])
def test_bad_model_is_a_clear_error(data_dir, capsys, model, needle):
    assert main(["--dataset", "ml-100k", "--data-dir", str(data_dir), "--model", model]) == 2
    assert needle in capsys.readouterr().err


def test_bad_dataset_is_a_clear_error(tmp_path, capsys):
    assert main(["--dataset", str(tmp_path / "missing.csv"), "--model", "pop"]) == 2
    assert "not a built-in dataset" in capsys.readouterr().err

"""Both stages end to end through the CLIs on a tiny log: model dir, evaluation, determinism."""

from __future__ import annotations

import json

import faiss
import numpy as np
import pytest
import scipy.sparse as sp
import torch

from recsys.evaluate.cli import main as evaluate_main
from recsys.index import build_index
from recsys.pipeline.recommend import Pipeline
from recsys.split import GATE_EVENTS
from recsys.train.cli import main as train_main
from recsys.train.model_dir import RANKING_FEATURES, load_trained
from recsys.train.ranker import (
    RankerTrainConfig,
    example_pipeline,
    holdout_split,
    in_sorted,
    list_distillation_loss,
    list_loss,
    prefix_requests,
)
from tests.fixtures.data import checkerboard_dataset

TINY = ["--epochs", "2", "--dim", "8", "--hidden", "16", "--batch-size", "64", "--history-len", "8",
        "--ranker-epochs", "2", "--ranker-width", "16", "--ranker-depth", "1", "--ranker-positives-per-user", "3",
        "--ranker-hard-negatives", "5", "--ranker-random-negatives", "2", "--ranker-batch-size", "16"]


@pytest.fixture(scope="module")
def log_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("log")
    dataset = checkerboard_dataset()
    dataset.interactions.to_csv(root / "log.csv", index=False)
    dataset.items.to_csv(root / "items.csv", index=False)
    return root


def train_and_evaluate(root, name, *extra):
    out = root / name
    common = ["--dataset", str(root / "log.csv"), "--items", str(root / "items.csv"), "--data-dir", str(root)]
    assert train_main([*common, "--out", str(out), *TINY, *extra]) == 0
    metrics = {}
    for stage in ("full", "retrieval"):
        path = root / f"{name}-{stage}.json"
        # The split the model was trained on (recsys.train holds out GATE_EVENTS by default).
        assert evaluate_main([*common, "--model", str(out), "--stage", stage, "--split", "valid",
                              "--held-out", str(GATE_EVENTS), "--json", str(path)]) == 0
        metrics[stage] = json.loads(path.read_text())
    return out, metrics


def test_two_stage_training_writes_a_model_dir_evaluate_loads(log_files, capsys):
    out, metrics = train_and_evaluate(log_files, "model", "--ranker-loss", "auto")
    config = json.loads((out / "config.json").read_text())
    result = config["ranker_result"]
    assert config["ranker"]["n_dense"] == len(config["ranker"]["feature_names"])
    assert result["loss"] in ("softmax", "bce") and set(result["runs"]) == {"softmax", "bce"}
    assert all(len(run["curve"]) >= 1 for run in result["runs"].values())
    assert (out / "ranker.pt").exists() and (out / RANKING_FEATURES).exists()
    assert load_trained(out).ranker is not None
    assert metrics["full"]["stage"] == "full" and metrics["full"]["split"] == "valid"
    assert metrics["full"]["users"] == metrics["retrieval"]["users"] == 40
    # The model selection metric is exactly what evaluation reports for the full pipeline.
    assert metrics["full"]["NDCG@10"] == pytest.approx(result["valid_NDCG@10"])
    assert metrics["retrieval"]["NDCG@10"] == pytest.approx(result["retrieval_valid_NDCG@10"])
    assert "two-tower + ranker" in capsys.readouterr().out


def test_same_seed_same_metrics(log_files):
    extra = ["--ranker-loss", "softmax", "--seed", "5"]
    first_dir, first = train_and_evaluate(log_files, "seed-a", *extra)
    second_dir, second = train_and_evaluate(log_files, "seed-b", *extra)
    assert first["full"]["NDCG@10"] == second["full"]["NDCG@10"]
    curves = [json.loads((d / "config.json").read_text())["ranker_result"]["runs"] for d in (first_dir, second_dir)]
    assert curves[0]["softmax"]["curve"] == curves[1]["softmax"]["curve"]


def test_skip_ranker_trains_towers_only(log_files):
    out = log_files / "towers-only"
    common = ["--dataset", str(log_files / "log.csv"), "--items", str(log_files / "items.csv"),
              "--data-dir", str(log_files)]
    assert train_main([*common, "--out", str(out), *TINY, "--skip-ranker"]) == 0
    assert "ranker" not in json.loads((out / "config.json").read_text())
    assert not (out / "ranker.pt").exists() and (out / RANKING_FEATURES).exists()


def test_prefix_requests_see_only_earlier_items(checkerboard_split):
    cfg = RankerTrainConfig(positives_per_user=2)
    users, targets, history, context = prefix_requests(checkerboard_split, cfg, np.random.default_rng(0))
    train = checkerboard_split.train
    assert len(users) == 2 * checkerboard_split.n_users
    for row in range(len(users)):
        sequence = train[train["u"] == users[row]]
        position = int(np.flatnonzero(sequence["i"].to_numpy() == targets[row])[0])
        earlier = sequence["i"].to_numpy()[:position]
        assert sorted(history.seen[row].indices) == sorted(earlier)
        assert history.recent[row][history.recent[row] >= 0].tolist() == earlier.tolist()
        assert context["timestamp"][row] == sequence["t"].to_numpy()[position]
    prefix = holdout_split(checkerboard_split, 2)
    assert len(prefix.train) == len(train) - 2 * checkerboard_split.n_users


def test_losses_ignore_empty_slots():
    import torch

    logits = torch.tensor([[2.0, 1.0, 50.0]])
    valid = torch.tensor([[True, True, False]])
    for kind in ("softmax", "bce"):
        padded = list_loss(logits, valid, kind)
        assert torch.isclose(padded, list_loss(logits[:, :2], valid[:, :2], kind))


def test_list_distillation_pulls_toward_the_teacher_and_ignores_empty_slots():
    valid = torch.tensor([[True, True, True, False]])
    teacher = torch.tensor([[3.0, 1.0, 0.0, 50.0]])
    same = list_distillation_loss(teacher.clone(), teacher, valid, 2.0)
    assert same.item() == pytest.approx(0.0, abs=1e-6)
    # Only the empty slot differs: still nothing to learn.
    assert list_distillation_loss(torch.tensor([[3.0, 1.0, 0.0, -9.0]]), teacher, valid, 2.0).item() == pytest.approx(
        0.0, abs=1e-6)
    student = torch.zeros(1, 4, requires_grad=True)
    loss = list_distillation_loss(student, teacher, valid, 2.0)
    loss.backward()
    assert loss.item() > 0.1
    assert student.grad[0, 0] < 0 < student.grad[0, 2]  # raise the teacher's favourite, lower its last
    assert student.grad[0, 3] == 0


def test_a_ranker_that_does_not_beat_retrieval_is_not_kept(log_files, monkeypatch, caplog):
    """The teacher follows the students' rule: a ranker no better than retrieval alone on
    validation is dropped, and the model dir serves retrieval alone (and says so)."""
    from recsys.train import ranker

    monkeypatch.setattr(ranker.RankerTrainResult, "kept", property(lambda self: False))
    out, metrics = train_and_evaluate(log_files, "ranker-lost", "--ranker-loss", "softmax")
    config = json.loads((out / "config.json").read_text())
    assert config["ranker_result"]["kept"] is False and "ranker" not in config
    assert not (out / "ranker.pt").exists() and (out / RANKING_FEATURES).exists()
    assert load_trained(out).ranker is None
    assert metrics["full"]["NDCG@10"] == pytest.approx(metrics["retrieval"]["NDCG@10"])
    assert "ranker not kept" in caplog.text


def test_sorted_key_membership_matches_isin():
    rng = np.random.default_rng(0)
    keys = np.sort(rng.choice(10_000, 3_000, replace=False)).astype(np.int64)
    query = rng.integers(-5, 10_005, (40, 30))
    assert np.array_equal(in_sorted(keys, query), np.isin(query, keys))
    assert not in_sorted(keys[:0], query).any()


def test_large_catalogue_lists_come_from_an_ivf_search_close_to_the_exact_one(monkeypatch):
    import recsys.train.ranker as ranker_module

    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((2_000, 8)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    queries = rng.standard_normal((64, 8)).astype(np.float32)
    exact = Pipeline(encode_users=lambda users1, history1: queries[users1 - 1], index=build_index(vectors, "Flat"),
                     item_vectors=vectors, popularity=np.zeros(2_000, np.float32), history_len=4, n_users=64)
    assert example_pipeline(exact) is exact  # small catalogues keep the exact index
    monkeypatch.setattr(ranker_module, "EXACT_EXAMPLES_MAX_ITEMS", 1_000)
    approximate = example_pipeline(exact)
    assert type(faiss.downcast_index(approximate.index)).__name__ == "IndexIVFFlat"
    users = np.arange(64)
    banned = sp.random(64, 2_000, density=0.01, format="csr", random_state=0, dtype=np.float32)
    recent = np.full((64, 4), -1)
    _, want, _ = exact.retrieve(users, recent, banned, 50)
    _, got, _ = approximate.retrieve(users, recent, banned, 50)
    recall = np.mean([len(set(a) & set(b)) / 50 for a, b in zip(want, got, strict=True)])
    assert recall > 0.9
    assert not any(banned[row, got[row]].nnz for row in range(64))

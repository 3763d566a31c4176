"""Two-tower model and training: contract, known answer, determinism, fold-in, CLI round trip."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from recsys.data.tokens import build_token_table
from recsys.evaluate.cli import main as evaluate_main
from recsys.evaluate.scoring import evaluate_model
from recsys.pipeline.retrieve import drop_seen
from recsys.train.cli import main as train_main
from recsys.train.torch_pipeline import TwoTowerRecommender
from recsys.train.towers import sampled_softmax_loss
from tests.fixtures.contract import RecommenderContract
from tests.fixtures.models import train_tiny


class TestTwoTowerContract(RecommenderContract):
    @pytest.fixture(autouse=True)
    def _dataset(self, checkerboard):
        self.dataset = checkerboard

    def make_model(self, split):
        return TwoTowerRecommender(train_tiny(split, self.dataset).model)


def test_same_seed_same_metrics(checkerboard, checkerboard_split):
    runs = [train_tiny(checkerboard_split, checkerboard, seed=3, epochs=3) for _ in range(2)]
    assert runs[0].curve == runs[1].curve
    for a, b in zip(runs[0].model.state_dict().values(), runs[1].model.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_fold_in_user_gets_personal_recommendations(checkerboard, checkerboard_split):
    model = train_tiny(checkerboard_split, checkerboard).model
    recommender = TwoTowerRecommender(model)
    group_b = checkerboard_split.items.to_index([f"i{i}" for i in range(10, 14)])
    history = checkerboard_split.user_history("test")
    recent = np.full((1, history.recent.shape[1]), -1, dtype=np.int32)
    recent[0, -len(group_b):] = group_b
    import scipy.sparse as sp

    from recsys.data.history import History

    seen = sp.csr_matrix((np.ones(len(group_b)), (np.zeros(len(group_b)), group_b)),
                         shape=(1, checkerboard_split.n_items))
    unknown_user = np.array([-1])  # not in the id map: the history alone must carry it
    ids, _ = recommender.recommend(unknown_user, 3, History(seen, recent))
    names = checkerboard_split.items.to_external(ids[0])
    assert all(int(name[1:]) >= 10 for name in names), names


def test_logq_correction_changes_the_loss():
    torch.manual_seed(0)
    user, item = torch.randn(4, 8), torch.randn(4, 8)
    targets = torch.tensor([0, 1, 2, 3])
    flat = sampled_softmax_loss(user, item, targets, torch.zeros(4), torch.tensor(1.0))
    skewed = sampled_softmax_loss(user, item, targets, torch.log(torch.tensor([0.7, 0.1, 0.1, 0.1])),
                                  torch.tensor(1.0))
    assert not torch.isclose(flat, skewed)


def test_duplicate_items_in_batch_are_not_negatives():
    user = torch.eye(2)
    item = torch.eye(2)[[0, 0]]
    targets = torch.tensor([5, 5])
    loss = sampled_softmax_loss(user, item, targets, torch.zeros(10), torch.tensor(10.0))
    # Without masking, row 0's own item would appear as a negative at equal score: loss = log 2.
    assert loss.item() < 0.5


def test_drop_seen_keeps_rank_order_and_pads():
    import scipy.sparse as sp

    ids = np.array([[4, 2, 7, 1]])
    scores = np.array([[0.9, 0.8, 0.7, 0.6]], dtype=np.float32)
    seen = sp.csr_matrix(([1.0, 1.0], ([0, 0], [2, 1])), shape=(1, 8))
    kept, kept_scores = drop_seen(ids, scores, seen, 3)
    assert kept.tolist() == [[4, 7, -1]] and np.isneginf(kept_scores[0, 2])


def test_train_cli_writes_a_model_dir_that_evaluate_loads(tmp_path, capsys):
    rows = [(u, i, t) for u in range(40) for t, i in enumerate(range(u % 6, u % 6 + 8))]
    log_path = tmp_path / "log.csv"
    import pandas as pd

    pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"]).to_csv(log_path, index=False)
    out = tmp_path / "model"
    common = ["--dataset", str(log_path), "--data-dir", str(tmp_path)]
    assert train_main([*common, "--out", str(out), "--epochs", "2", "--dim", "8", "--batch-size", "32",
                       "--skip-ranker", "true"]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["fingerprint"] and config["towers"]["dim"] == 8 and config["library_versions"]["torch"]
    assert evaluate_main([*common, "--model", str(out), "--json", str(tmp_path / "m.json")]) == 0
    assert json.loads((tmp_path / "m.json").read_text())["users"] == 40
    capsys.readouterr()


def test_model_from_other_dataset_is_refused(tmp_path, checkerboard, checkerboard_split, capsys, data_dir):
    from recsys.train.model_dir import save_towers

    result = train_tiny(checkerboard_split, checkerboard, epochs=1)
    item_tokens = build_token_table(checkerboard.items, "item_id", checkerboard_split.items)
    save_towers(tmp_path / "m", result.model, checkerboard_split.users, checkerboard_split.items, item_tokens,
                build_token_table(None, "user_id", checkerboard_split.users), {"dataset": "checkerboard"})
    assert evaluate_main(["--dataset", "ml-100k", "--data-dir", str(data_dir), "--model", str(tmp_path / "m")]) == 2
    assert "id maps do not match" in capsys.readouterr().err


def test_checkerboard_known_answer_through_faiss(checkerboard, checkerboard_split):
    from recsys.index import build_index

    recommender = TwoTowerRecommender(train_tiny(checkerboard_split, checkerboard).model)
    recommender.index = build_index(recommender.item_vectors, "Flat")
    metrics, _ = evaluate_model(recommender, checkerboard_split, "test")
    assert metrics["MRR@10"] == 1.0


def test_export_view_with_folded_tables_answers_like_the_model(checkerboard, checkerboard_split):
    """The user tower's export view precomputes per-item and per-user tables; known users, an
    unknown user (id 0) and a short left-padded history must get the model's own vectors."""
    from recsys.models.two_tower import UserTower

    model = train_tiny(checkerboard_split, checkerboard, epochs=2).model.eval()
    history = checkerboard_split.user_history("test")
    users1 = torch.tensor([1, 2, 0, checkerboard_split.n_users])
    history1 = torch.from_numpy(history.recent[[0, 1, 2, 3], -model.cfg.history_len:].astype(np.int64) + 1)
    history1[2, :-2] = 0  # the unknown user folds in two items
    with torch.no_grad():
        expected = model.user_vectors(users1, history1)
        got = UserTower(model)(users1, history1)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)
    assert not torch.allclose(got[0], got[1])  # a table of identical rows would pass the check above


def _causal_model(n_items: int = 12, history_len: int = 6):
    from recsys.models.two_tower import TwoTower, TwoTowerConfig

    torch.manual_seed(0)
    cfg = TwoTowerConfig(n_users=3, n_items=n_items, dim=8, hidden=16, history_len=history_len, dropout=0.0,
                         encoder="causal", blocks=2, heads=2)
    no_tokens = torch.zeros((n_items, 1), dtype=torch.long)
    return TwoTower(cfg, no_tokens, 1, torch.zeros((3, 1), dtype=torch.long), 1).eval()


def test_causal_encoder_slots_see_only_earlier_items_and_the_last_slot_is_the_user():
    model = _causal_model()
    users1 = torch.tensor([1, 1])
    history1 = torch.tensor([[0, 3, 5, 2, 7, 4], [0, 3, 5, 2, 9, 11]])  # differ from slot 4 on
    with torch.no_grad():
        slots = model.slot_vectors(users1, history1)
        users = model.user_vectors(users1, history1)
    torch.testing.assert_close(slots[0, 1:4], slots[1, 1:4])  # slots before the change are causal
    assert not torch.allclose(slots[0, 4], slots[1, 4])
    torch.testing.assert_close(users, slots[:, -1])


def test_causal_user_tower_exports_to_onnx_and_answers_like_the_model(tmp_path):
    from compression.export import export_onnx, make_session
    from recsys.models.two_tower import UserTower

    model = _causal_model()
    view = UserTower(model).eval()
    users1 = torch.tensor([1, 0, 2])
    history1 = torch.tensor([[0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 3, 5], [1, 2, 3, 4, 5, 6]])  # none, short, full
    path = tmp_path / "user_tower.onnx"
    export_onnx(view, {"users1": users1[:2], "history1": history1[:2]}, ["user_vec"], path)  # another batch size
    got = make_session(path).run(None, {"users1": users1.numpy(), "history1": history1.numpy()})[0]
    with torch.no_grad():
        expected = model.user_vectors(users1, history1).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=1e-4)
    assert np.isfinite(got).all() and not np.allclose(got[1], got[2])


def test_sequence_windows_score_every_later_interaction_once_after_its_own_history(checkerboard_split):
    from recsys.train.towers import SequenceWindows

    windows = SequenceWindows(checkerboard_split, history_len=4)
    users1, history1, targets, scored = windows.batch(np.arange(len(windows)))
    train = checkerboard_split.train
    position = train.groupby("u", sort=False).cumcount().to_numpy()
    expected = sorted(zip(train["u"].to_numpy()[position >= 1], train["i"].to_numpy()[position >= 1], strict=True))
    got = sorted(zip(np.repeat(users1.numpy() - 1, 4).reshape(-1, 4)[scored.numpy()],
                     targets.numpy()[scored.numpy()], strict=True))
    assert got == expected  # each interaction after a user's first, exactly once
    assert (history1.numpy()[scored.numpy()] > 0).all()  # a scored slot holds a real item as its input
    # The slot's input is the interaction right before its target in the user's sequence.
    items = train["i"].to_numpy()
    row_of = {(u, i): row for row, (u, i) in enumerate(zip(train["u"].to_numpy(), items, strict=True))}
    for b, j in zip(*np.nonzero(scored.numpy()), strict=True):
        target_row = row_of[int(users1[b]) - 1, int(targets[b, j])]
        assert int(history1[b, j]) - 1 == items[target_row - 1]


def test_a_causal_teacher_learns_the_checkerboard(checkerboard, checkerboard_split):
    from recsys.index import build_index

    model = train_tiny(checkerboard_split, checkerboard, model={"encoder": "causal", "blocks": 1},
                       windows_per_batch=16).model
    recommender = TwoTowerRecommender(model)
    recommender.index = build_index(recommender.item_vectors, "Flat")
    metrics, _ = evaluate_model(recommender, checkerboard_split, "test")
    assert metrics["HR@10"] == 1.0


def test_the_sequence_objective_needs_the_causal_encoder(checkerboard, checkerboard_split):
    with pytest.raises(ValueError, match="causal encoder"):
        train_tiny(checkerboard_split, checkerboard, objective="sequence")

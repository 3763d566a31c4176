"""The tower distiller's teacher signals, exact and through the IVF index used for big catalogs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import compression.distill as distill
from compression.distill import TowerDistillConfig, TowerDistiller
from recsys.models.two_tower import TwoTower, TwoTowerConfig


def teacher(n_items: int = 3000) -> TwoTower:
    torch.manual_seed(0)
    return TwoTower(TwoTowerConfig(n_users=50, n_items=n_items, dim=16, hidden=32),
                    torch.zeros((n_items, 1), dtype=torch.long), 1, torch.zeros((50, 1), dtype=torch.long), 1).eval()


def test_index_top_k_matches_the_exact_one_and_skips_history(monkeypatch):
    model = teacher()
    exact = TowerDistiller(model, TowerDistillConfig())
    monkeypatch.setattr(distill, "EXACT_TOPK_ITEMS", 100)
    approximate = TowerDistiller(model, TowerDistillConfig())
    assert exact.index is None and approximate.index is not None
    users1, history1 = torch.arange(1, 33), torch.randint(1, 3001, (32, 8))
    with torch.no_grad():
        user_vec = model.user_vectors(users1, history1)
    a, b = (d._teacher_top(user_vec, history1).numpy() for d in (approximate, exact))
    overlap = np.mean([len(set(x) & set(y)) / len(y) for x, y in zip(a, b, strict=True)])
    assert overlap >= 0.8
    for row, history in zip(a, history1.numpy(), strict=True):
        assert not set((row + 1).tolist()) & set(history.tolist())  # items just interacted with are skipped


def test_distillation_loss_is_finite_and_trains_the_student():
    model = teacher(200)
    distiller = TowerDistiller(model, TowerDistillConfig())
    student = TwoTower(TwoTowerConfig(n_users=50, n_items=200, dim=8, hidden=16),
                       torch.zeros((200, 1), dtype=torch.long), 1, torch.zeros((50, 1), dtype=torch.long), 1)
    users1, history1, targets = torch.arange(1, 17), torch.randint(0, 201, (16, 8)), torch.randint(0, 200, (16,))
    user_vec, item_vec = student.user_vectors(users1, history1), student.item_vectors(targets + 1)
    loss = distiller(student, users1, history1, targets, user_vec, item_vec)
    loss.backward()
    assert torch.isfinite(loss) and loss.item() > 0
    assert student.user_mlp[0].weight.grad.abs().sum() > 0


def test_tower_distill_weight_scales_both_signals_and_zero_the_default_turns_them_off():
    from compression.__main__ import config_from, parse_args
    from compression.distill import TowerDistillConfig

    base = ["--model", "m", "--dataset", "ml-100k", "--out", "o"]
    assert config_from(parse_args(base)).distill is None  # measured: it cost the student quality
    assert config_from(parse_args([*base, "--tower-distill-weight", "1"])).distill == TowerDistillConfig()
    half = config_from(parse_args([*base, "--tower-distill-weight", "0.5"])).distill
    assert (half.kl_weight, half.rank_weight) == (0.5 * TowerDistillConfig().kl_weight,
                                                   0.5 * TowerDistillConfig().rank_weight)
    assert config_from(parse_args([*base, "--tower-distill-weight", "0"])).distill is None
    with pytest.raises(SystemExit):
        parse_args([*base, "--tower-distill-weight", "-1"])

"""The ranker module: shapes, per-candidate independence, normaliser, rebuild from config."""

from __future__ import annotations

import torch

from recsys.models.ranker import Ranker, RankerConfig, build_ranker


def small(**overrides) -> Ranker:
    torch.manual_seed(0)
    return Ranker(RankerConfig(**{"dim": 8, "n_dense": 5, "width": 16, "depth": 1, "n_cross": 2, **overrides}))


def inputs(batch=3, cands=7):
    torch.manual_seed(1)
    return torch.randn(batch, 8), torch.randn(batch, cands, 8), torch.randn(batch, cands, 5)


def test_forward_shapes_for_any_width_depth_and_cross():
    for overrides in ({}, {"depth": 0, "n_cross": 0}, {"width": 4, "depth": 3, "n_cross": 3, "vec_proj": 2}):
        out = small(**overrides).eval()(*inputs())
        assert out.shape == (3, 7) and torch.isfinite(out).all()


def test_each_candidate_is_scored_independently_of_the_list():
    model = small().eval()
    user, items, dense = inputs()
    full = model(user, items, dense)
    part = model(user, items[:, 2:4], dense[:, 2:4])
    assert torch.allclose(full[:, 2:4], part, atol=1e-6)


def test_normaliser_standardises_dense_features():
    model = small()
    dense = torch.randn(100, 5) * 10 + 3
    model.fit_normalizer(dense)
    scaled = (dense - model.dense_mean) * model.dense_scale
    assert torch.allclose(scaled.mean(0), torch.zeros(5), atol=1e-4)
    assert torch.allclose(scaled.std(0), torch.ones(5), atol=1e-3)


def test_build_from_config_dict_loads_the_state():
    model = small(feature_names=["a", "b", "c", "d", "e"])
    rebuilt = build_ranker(model.cfg.to_dict())
    rebuilt.load_state_dict(model.state_dict())
    model.eval()
    rebuilt.eval()
    assert torch.equal(model(*inputs()), rebuilt(*inputs()))

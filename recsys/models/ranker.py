"""Candidate ranker: DCN-v2 cross layers then an MLP, over tower vectors and dense features.

The forward takes numeric tensors only, ``(user_vec [B, D], item_vec [B, C, D], dense [B, C, F])
-> scores [B, C]``, so the same graph exports to ONNX and can be fed from numpy. Dense features
arrive raw; the module standardises them with buffers fitted on the training rows, so callers
never carry the statistics around.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import nn


@dataclass
class RankerConfig:
    dim: int  # tower vector size
    n_dense: int  # dense features per candidate
    width: int = 256  # teacher size; compression's student ranker is 64 wide, one cross layer
    depth: int = 2
    n_cross: int = 3
    dropout: float = 0.1
    vec_proj: int = 16  # user and item vectors enter projected to this size (their product enters whole)
    feature_names: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


class CrossLayer(nn.Module):
    """x_{l+1} = x0 * (W x_l + b) + x_l (DCN-v2, full rank)."""

    def __init__(self, width: int):
        super().__init__()
        self.linear = nn.Linear(width, width)
        nn.init.zeros_(self.linear.bias)
        nn.init.normal_(self.linear.weight, std=0.01)

    def forward(self, x0: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return x0 * self.linear(x) + x


class Ranker(nn.Module):
    def __init__(self, cfg: RankerConfig):
        super().__init__()
        self.cfg = cfg
        self.register_buffer("dense_mean", torch.zeros(cfg.n_dense))
        self.register_buffer("dense_scale", torch.ones(cfg.n_dense))
        self.user_proj = nn.Linear(cfg.dim, cfg.vec_proj)
        self.item_proj = nn.Linear(cfg.dim, cfg.vec_proj)
        width_in = cfg.dim + 2 * cfg.vec_proj + cfg.n_dense
        self.cross = nn.ModuleList(CrossLayer(width_in) for _ in range(cfg.n_cross))
        layers: list[nn.Module] = []
        width = width_in
        for _ in range(cfg.depth):
            layers += [nn.Linear(width, cfg.width), nn.ReLU(), nn.Dropout(cfg.dropout)]
            width = cfg.width
        layers.append(nn.Linear(width, 1))
        self.mlp = nn.Sequential(*layers)

    @torch.no_grad()
    def fit_normalizer(self, dense: torch.Tensor) -> None:
        """Standardise each dense feature by the mean/std of ``dense`` ([rows, F])."""
        rows = dense.reshape(-1, self.cfg.n_dense).float()
        self.dense_mean.copy_(rows.mean(0))
        self.dense_scale.copy_(1.0 / rows.std(0).clamp_min(1e-3))

    def forward(self, user_vec: torch.Tensor, item_vec: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        user = user_vec.unsqueeze(1)
        scaled = (dense - self.dense_mean) * self.dense_scale
        projected_user = self.user_proj(user_vec).unsqueeze(1).expand(-1, item_vec.shape[1], -1)
        x0 = torch.cat([user * item_vec, projected_user, self.item_proj(item_vec), scaled], dim=-1)
        x = x0
        for layer in self.cross:
            x = layer(x0, x)
        return self.mlp(x).squeeze(-1)


def build_ranker(config: dict) -> Ranker:
    """A ranker from the ``"ranker"`` entry of a model directory's config.json."""
    return Ranker(RankerConfig(**config))

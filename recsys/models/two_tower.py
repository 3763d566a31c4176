"""Two-tower retrieval model: a history-aware user tower and a feature-aware item tower.

The user tower reads the history one of two ways (``encoder``): ``pool`` (attention pooling +
mean, cheap: the students) or ``causal`` (SASRec-style causal self-attention blocks, whose state
at every slot is the user as of that item, so training scores every position of a window at once:
the teacher).

Index convention inside the module: item/user index + 1, with 0 meaning padding / unknown user, so
the same graph serves known users, fold-in users (id 0 + history) and padded histories.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn import functional as F


@dataclass
class TwoTowerConfig:
    n_users: int
    n_items: int
    # The teacher is deliberately generous; compression distils it into students (dim 64, one layer).
    dim: int = 128
    hidden: int = 256
    depth: int = 2
    history_len: int = 20
    use_user_id: bool = True
    dropout: float = 0.1
    init_temperature: float = 0.07
    learn_temperature: bool = True
    # Sparse id-embedding gradients: with 1M items a dense Adam step over the table costs ~1.5 s.
    sparse_embeddings: bool = True
    encoder: str = "pool"  # pool | causal (module doc)
    blocks: int = 2  # causal: self-attention blocks
    heads: int = 2  # causal: attention heads per block

    def to_dict(self) -> dict:
        return asdict(self)


def mlp(dim_in: int, hidden: int, dim_out: int, depth: int, dropout: float) -> nn.Sequential:
    """``depth`` hidden layers (0 = a single linear map), ReLU, dropout, linear out."""
    layers: list[nn.Module] = []
    width = dim_in
    for _ in range(depth):
        layers += [nn.Linear(width, hidden), nn.ReLU(), nn.Dropout(dropout)]
        width = hidden
    layers.append(nn.Linear(width, dim_out))
    return nn.Sequential(*layers)


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    weights = mask.unsqueeze(-1).to(values.dtype)
    return (values * weights).sum(-2) / weights.sum(-2).clamp_min(1.0)


ENCODERS = ("pool", "causal")


class CausalBlock(nn.Module):
    """Pre-norm self-attention + feed-forward block; slot i attends to valid slots j <= i.

    Plain matmul / softmax ops rather than `nn.MultiheadAttention`, so the exported graph is the
    same few nodes ONNX Runtime's int8 quantiser already handles."""

    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(2 * dim, dim))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        """``x`` [B, L, D]; ``allowed`` [B, 1, L, L] bool (query, key)."""
        b, length, d = x.shape
        qkv = self.qkv(self.norm1(x)).view(b, length, 3, self.heads, d // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        logits = (q @ k.transpose(-1, -2)) / math.sqrt(d // self.heads)
        weights = torch.softmax(logits.masked_fill(~allowed, -1e4), dim=-1)
        attended = (self.dropout(weights) @ v).transpose(1, 2).reshape(b, length, d)
        x = x + self.dropout(self.out(attended))
        return x + self.dropout(self.ffn(self.norm2(x)))


class CausalEncoder(nn.Module):
    """History slots' `item_base` [B, L, D] + mask -> the state at every slot [B, L, D]."""

    def __init__(self, cfg: TwoTowerConfig):
        super().__init__()
        self.blocks = nn.ModuleList(CausalBlock(cfg.dim, cfg.heads, cfg.dropout) for _ in range(cfg.blocks))
        self.norm = nn.LayerNorm(cfg.dim)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, items: torch.Tensor, mask: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
        slots = torch.arange(mask.shape[1], device=mask.device)
        # Comparisons, not tril / eye: ONNX Runtime has no bool EyeLike kernel.
        causal = slots[:, None] >= slots[None, :]
        # A slot always sees itself, so a padding slot's row is never all-masked (its state is unused).
        allowed = (causal & mask[:, None, :]) | (slots[:, None] == slots[None, :])
        x = self.dropout(items + position) * mask.unsqueeze(-1).to(items.dtype)
        for block in self.blocks:
            x = block(x, allowed.unsqueeze(1))
        return self.norm(x)


class TwoTower(nn.Module):
    def __init__(self, cfg: TwoTowerConfig, item_tokens: torch.Tensor, item_vocab: int,
                 user_tokens: torch.Tensor, user_vocab: int):
        super().__init__()
        self.cfg = cfg
        d = cfg.dim
        # Row 0 of each token table is the padding row (index 0 = padding / unknown).
        pad = torch.zeros((1, item_tokens.shape[1]), dtype=torch.long)
        self.register_buffer("item_tokens", torch.cat([pad, item_tokens.long()]), persistent=True)
        upad = torch.zeros((1, user_tokens.shape[1]), dtype=torch.long)
        self.register_buffer("user_tokens", torch.cat([upad, user_tokens.long()]), persistent=True)
        self.item_id = nn.Embedding(cfg.n_items + 1, d, padding_idx=0, sparse=cfg.sparse_embeddings)
        self.item_feature = nn.Embedding(max(item_vocab, 1), d, padding_idx=0)
        self.user_id = nn.Embedding(cfg.n_users + 1, d, padding_idx=0, sparse=cfg.sparse_embeddings)
        self.user_feature = nn.Embedding(max(user_vocab, 1), d, padding_idx=0)
        self.position = nn.Embedding(cfg.history_len, d)
        if cfg.encoder not in ENCODERS:
            raise ValueError(f"encoder must be one of {ENCODERS}, got {cfg.encoder!r}")
        if cfg.encoder == "causal":
            if d % cfg.heads:
                raise ValueError(f"dim {d} is not a multiple of heads {cfg.heads}")
            self.sequence = CausalEncoder(cfg)
            self.user_mlp = mlp(3 * d, cfg.hidden, d, cfg.depth, cfg.dropout)
        else:
            self.attention = nn.Sequential(nn.Linear(d, d), nn.Tanh(), nn.Linear(d, 1))
            self.user_mlp = mlp(4 * d, cfg.hidden, d, cfg.depth, cfg.dropout)
        self.item_mlp = mlp(d, cfg.hidden, d, cfg.depth, cfg.dropout)
        self.log_inv_temperature = nn.Parameter(torch.tensor(math.log(1.0 / cfg.init_temperature)),
                                                requires_grad=cfg.learn_temperature)
        for table in (self.item_id, self.item_feature, self.user_id, self.user_feature, self.position):
            nn.init.normal_(table.weight, std=0.05)
            if table.padding_idx is not None:
                with torch.no_grad():
                    table.weight[table.padding_idx].zero_()

    def sparse_parameters(self) -> list[nn.Parameter]:
        """Parameters with sparse gradients (need SparseAdam); the rest train with AdamW."""
        return [self.item_id.weight, self.user_id.weight] if self.cfg.sparse_embeddings else []

    @property
    def inv_temperature(self) -> torch.Tensor:
        return self.log_inv_temperature.exp().clamp(max=100.0)

    def item_base(self, items1: torch.Tensor) -> torch.Tensor:
        """Id embedding + mean of feature-token embeddings; ``items1`` is index + 1 (0 = pad)."""
        tokens = self.item_tokens[items1]
        return self.item_id(items1) + masked_mean(self.item_feature(tokens), tokens > 0)

    def _history_base(self, history1: torch.Tensor) -> torch.Tensor:
        """`item_base` of every history slot. A training batch repeats the same items many times,
        so embedding each distinct item once and gathering is ~3x faster per step; the exported
        graph keeps the plain gather (no Unique op on the request path)."""
        if torch.onnx.is_in_onnx_export() or history1.numel() < 4096:
            return self.item_base(history1)
        distinct, position = torch.unique(history1, return_inverse=True)
        return self.item_base(distinct)[position]

    def item_vectors(self, items1: torch.Tensor) -> torch.Tensor:
        base = self.item_base(items1)
        return F.normalize(base + self.item_mlp(base), dim=-1)

    def user_static(self, users1: torch.Tensor) -> torch.Tensor:
        """[B, 2 * dim] what the user tower knows of a user apart from the history: the mean of
        the user's feature tokens, then the user id embedding."""
        tokens = self.user_tokens[users1]
        profile = masked_mean(self.user_feature(tokens), tokens > 0)
        identity = self.user_id(users1) if self.cfg.use_user_id else torch.zeros_like(profile)
        return torch.cat([profile, identity], dim=-1)

    def user_vectors(self, users1: torch.Tensor, history1: torch.Tensor) -> torch.Tensor:
        """``history1``: [B, history_len] item index + 1, most recent last, 0 = padding."""
        return self.user_from_parts(self._history_base(history1), history1 > 0, self.user_static(users1))

    def user_from_parts(self, items: torch.Tensor, mask: torch.Tensor, static: torch.Tensor) -> torch.Tensor:
        """User vectors from the history slots' `item_base` [B, L, dim], their mask and `user_static`."""
        if self.cfg.encoder == "causal":
            return self.users_at_slots(items, mask, static)[:, -1]
        positions = torch.arange(mask.shape[1], device=mask.device)
        keyed = items + self.position(positions.flip(0))  # position 0 = most recent
        logits = self.attention(keyed).squeeze(-1).masked_fill(~mask, -1e4)
        weights = torch.softmax(logits, dim=-1) * mask.any(-1, keepdim=True)
        attended = (weights.unsqueeze(-1) * items).sum(-2)
        mean = masked_mean(items, mask)
        features = torch.cat([attended, mean, static], dim=-1)
        return F.normalize(attended + mean + self.user_mlp(features), dim=-1)

    def users_at_slots(self, items: torch.Tensor, mask: torch.Tensor, static: torch.Tensor) -> torch.Tensor:
        """Causal encoder: the user vector as of every history slot [B, L, dim] (the last slot is
        the request's user; training scores each slot against the item that followed it)."""
        positions = torch.arange(mask.shape[1], device=mask.device)
        states = self.sequence(items, mask, self.position(positions.flip(0)))
        states = states * mask.unsqueeze(-1).to(states.dtype)  # no history: the static part alone
        static = static.unsqueeze(1).expand(-1, mask.shape[1], -1)
        return F.normalize(states + self.user_mlp(torch.cat([states, static], dim=-1)), dim=-1)

    def slot_vectors(self, users1: torch.Tensor, history1: torch.Tensor) -> torch.Tensor:
        """`users_at_slots` from ids: [B, L, dim]."""
        return self.users_at_slots(self._history_base(history1), history1 > 0, self.user_static(users1))


class LookupTable(nn.Module):
    """A fixed table of rows (a buffer: exported as a constant, not counted as a parameter)."""

    def __init__(self, weights: torch.Tensor):
        super().__init__()
        self.register_buffer("weights", weights)

    def forward(self, index: torch.Tensor) -> torch.Tensor:
        return self.weights[index]


class UserTower(nn.Module):
    """Export view: (users1, history1) -> user vectors.

    What depends only on the item in a history slot (its id embedding + the mean of its feature
    tokens) is computed once here and exported as one table, so a request's graph does one
    gather per slot instead of ~25 gather / mask / mean nodes: ONNX Runtime pays per node, and
    this cuts the user tower's single-request time by a third or more. The table has as many
    rows as the id embedding it subsumes, so the file does not grow. ``table`` may store it
    differently, e.g. as row-wise int8 (``table(weights) -> module``)."""

    def __init__(self, model: TwoTower, table: Callable[[torch.Tensor], nn.Module] | None = None):
        super().__init__()
        self.model = model
        with torch.no_grad():
            item_base = model.item_base(torch.arange(model.cfg.n_items + 1))
        self.item_table = (table or LookupTable)(item_base)

    def forward(self, users1: torch.Tensor, history1: torch.Tensor) -> torch.Tensor:
        return self.model.user_from_parts(self.item_table(history1), history1 > 0, self.model.user_static(users1))


class ItemTower(nn.Module):
    """Export view: items1 -> item vectors."""

    def __init__(self, model: TwoTower):
        super().__init__()
        self.model = model

    def forward(self, items1: torch.Tensor) -> torch.Tensor:
        return self.model.item_vectors(items1)

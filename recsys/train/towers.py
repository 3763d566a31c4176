"""Two-tower training.

Two objectives, picked by the user tower's encoder (``objective="auto"``):
- ``next`` (pool encoder): every train interaction is one example (its user, the items before
  it), scored by a sampled softmax over the batch's items with log-Q correction.
- ``sequence`` (causal encoder): windows of ``history_len`` consecutive items, the state at every
  slot scored against the item that followed it (SASRec-style), each interaction a target once
  per epoch; a full softmax over the catalogue up to ``full_softmax_items`` items (cheap there and
  clearly better than sampling), the in-batch sampled softmax above that.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch.nn import functional as F
from tqdm.auto import tqdm

from recsys.data.tokens import TokenTable
from recsys.evaluate.scoring import evaluate_model, sample_users
from recsys.models.two_tower import TwoTower, TwoTowerConfig
from recsys.split import Split
from recsys.train.torch_pipeline import TwoTowerRecommender

log = logging.getLogger(__name__)


@dataclass
class TowerTrainConfig:
    epochs: int = 40
    batch_size: int = 512
    lr: float = 2e-3
    weight_decay: float = 1e-4
    patience: int = 4
    seed: int = 0
    uniform_negatives: int = 0
    user_id_dropout: float = 0.5
    eval_users: int = 3000
    # One thread by default: on a shared 2-core box, two OpenMP threads contending with another
    # process run ~10x slower than one (measured); raise it on an idle machine.
    threads: int = 1
    max_steps_per_epoch: int | None = None
    objective: str = "auto"  # auto | next | sequence (module doc)
    windows_per_batch: int = 128  # sequence objective: windows per step
    full_softmax_items: int = 50_000  # sequence objective: full softmax up to this catalogue size

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class TowerTrainResult:
    model: TwoTower
    best_epoch: int
    best_ndcg: float
    curve: list[dict] = field(default_factory=list)  # per epoch: loss, validation (deterministic)
    seconds: float = 0.0
    throughput: list[dict] = field(default_factory=list)  # per epoch: examples, wall-clock seconds, examples/s


class NextItemExamples:
    """Every train interaction as (user, previous items, target), gathered lazily per batch."""

    def __init__(self, split: Split, history_len: int):
        train = split.train
        self.users = train["u"].to_numpy(np.int64)
        self.items = train["i"].to_numpy(np.int64)
        self.position = train.groupby("u", sort=False).cumcount().to_numpy(np.int64)
        self.history_len = history_len
        counts = np.bincount(self.items, minlength=split.n_items).astype(np.float64)
        self.log_q = torch.from_numpy(np.log(np.maximum(counts, 1.0) / counts.sum()).astype(np.float32))

    def __len__(self) -> int:
        return len(self.items)

    def batch(self, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        lags = np.arange(self.history_len, 0, -1)  # oldest first, most recent last
        source = rows[:, None] - lags[None, :]
        valid = lags[None, :] <= self.position[rows][:, None]
        history1 = np.where(valid, self.items[np.maximum(source, 0)] + 1, 0)
        return (torch.from_numpy(self.users[rows] + 1), torch.from_numpy(history1),
                torch.from_numpy(self.items[rows]))


class SequenceWindows(NextItemExamples):
    """Train histories cut into windows of ``history_len`` slots for the sequence objective.

    A window ends at train row r: slot j holds the item ``lag = history_len - j`` rows before r
    and is scored against the item after it. Windows end every ``stride`` rows back from each
    user's last one, and only the last ``stride`` slots of a window are scored, so every
    interaction after a user's first is a target exactly once per epoch, with at least
    ``history_len - stride`` items of context where the user has them."""

    def __init__(self, split: Split, history_len: int):
        super().__init__(split, history_len)
        remaining = split.train.groupby("u", sort=False)["i"].transform("size").to_numpy(np.int64) - 1 - self.position
        self.stride = max(1, history_len // 2)
        self.ends = np.flatnonzero((remaining % self.stride == 0) & (self.position >= 1))

    def __len__(self) -> int:
        return len(self.ends)

    def batch(self, windows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """users1 [B], history1 [B, L], targets [B, L] (item index), scored [B, L] bool."""
        rows = self.ends[windows]
        lags = np.arange(self.history_len, 0, -1)
        valid = lags[None, :] <= self.position[rows][:, None]
        history1 = np.where(valid, self.items[np.maximum(rows[:, None] - lags[None, :], 0)] + 1, 0)
        targets = self.items[np.maximum(rows[:, None] - lags[None, :] + 1, 0)]
        scored = valid & (lags[None, :] <= self.stride)
        return (torch.from_numpy(self.users[rows] + 1), torch.from_numpy(history1), torch.from_numpy(targets),
                torch.from_numpy(scored))


def sequence_loss(model: TwoTower, windows: SequenceWindows, users1, history1, targets, scored,
                  cfg: TowerTrainConfig) -> torch.Tensor:
    """The sequence objective on one batch of windows (module doc)."""
    states = model.slot_vectors(users1, history1)[scored]
    wanted = targets[scored]
    if model.cfg.n_items <= cfg.full_softmax_items:
        catalogue = model.item_vectors(torch.arange(1, model.cfg.n_items + 1))
        return F.cross_entropy(states @ catalogue.T * model.inv_temperature, wanted)
    return sampled_softmax_loss(states, model.item_vectors(wanted + 1), wanted, windows.log_q, model.inv_temperature)


def sampled_softmax_loss(user_vec: torch.Tensor, item_vec: torch.Tensor, targets: torch.Tensor,
                         log_q: torch.Tensor, inv_temperature: torch.Tensor,
                         negatives: torch.Tensor | None = None, negative_log_q: float = 0.0) -> torch.Tensor:
    """In-batch softmax; subtracting log Q(item) undoes the popularity bias of in-batch sampling."""
    logits = user_vec @ item_vec.T * inv_temperature - log_q[targets][None, :]
    same_item = targets[:, None] == targets[None, :]
    logits = logits.masked_fill(same_item & ~torch.eye(len(targets), dtype=torch.bool), -1e4)
    if negatives is not None:
        extra = user_vec @ negatives.T * inv_temperature - negative_log_q
        logits = torch.cat([logits, extra], dim=1)
    return F.cross_entropy(logits, torch.arange(len(targets)))


def build_model(split: Split, cfg: TwoTowerConfig, item_table: TokenTable, user_table: TokenTable) -> TwoTower:
    return TwoTower(cfg, torch.from_numpy(item_table.tokens), len(item_table.vocab),
                    torch.from_numpy(user_table.tokens), len(user_table.vocab))


def validation_ndcg(model: TwoTower, split: Split, max_users: int, seed: int) -> float:
    """Validation NDCG@10 through an exact index (a seeded user sample on large data)."""
    from recsys.index import build_index

    recommender = TwoTowerRecommender(model)
    recommender.index = build_index(recommender.item_vectors, "Flat")
    sample = split if split.n_users <= max_users else sample_users(split, max_users, seed)
    metrics, _ = evaluate_model(recommender, sample, "valid")
    return metrics["NDCG@10"]


# An extra loss term added to the data loss each step, e.g. a teacher's distillation signal:
# extra_loss(model, users1, history1, targets, user_vec, item_vec) -> scalar tensor.
ExtraLoss = Callable[..., torch.Tensor]


def drop_user_ids(users1: torch.Tensor, cfg: TowerTrainConfig) -> torch.Tensor:
    """Trains the history path to stand alone, which is what fold-in users get."""
    if cfg.user_id_dropout <= 0:
        return users1
    return users1.masked_fill(torch.rand(len(users1)) < cfg.user_id_dropout, 0)


def resolve_objective(model_cfg: TwoTowerConfig, cfg: TowerTrainConfig) -> str:
    if cfg.objective == "auto":
        return "sequence" if model_cfg.encoder == "causal" else "next"
    if cfg.objective not in ("next", "sequence"):
        raise ValueError(f"objective must be auto, next or sequence, got {cfg.objective!r}")
    if cfg.objective == "sequence" and model_cfg.encoder != "causal":
        raise ValueError("the sequence objective needs the causal encoder (--encoder causal)")
    return cfg.objective


def _epoch(model, examples, optimizer, cfg, rng, epoch, extra_loss: ExtraLoss | None = None) -> tuple[float, int]:
    """(mean loss, training examples seen) of one epoch."""
    model.train()
    order = rng.permutation(len(examples))
    per_batch = cfg.windows_per_batch if isinstance(examples, SequenceWindows) else cfg.batch_size
    n_batches = math.ceil(len(order) / per_batch)
    if cfg.max_steps_per_epoch:
        n_batches = min(n_batches, cfg.max_steps_per_epoch)
    total = 0.0
    bar = tqdm(range(n_batches), desc=f"towers epoch {epoch}", leave=False, mininterval=1.0)
    for step in bar:
        rows = order[step * per_batch:(step + 1) * per_batch]
        loss = _batch_loss(model, examples, examples.batch(rows), cfg, extra_loss)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += loss.item()
        if step % 20 == 0:
            bar.set_postfix(loss=f"{total / (step + 1):.3f}")
    return total / max(n_batches, 1), min(n_batches * per_batch, len(order))


def _batch_loss(model, examples, batch, cfg: TowerTrainConfig, extra_loss: ExtraLoss | None) -> torch.Tensor:
    if isinstance(examples, SequenceWindows):
        users1, history1, targets, scored = batch
        return sequence_loss(model, examples, drop_user_ids(users1, cfg), history1, targets, scored, cfg)
    users1, history1, targets = batch
    users1 = drop_user_ids(users1, cfg)
    user_vec = model.user_vectors(users1, history1)
    item_vec = model.item_vectors(targets + 1)
    negatives = None
    if cfg.uniform_negatives:
        negatives = model.item_vectors(torch.randint(1, model.cfg.n_items + 1, (cfg.uniform_negatives,)))
    neg_log_q = math.log(max(cfg.uniform_negatives, 1) / model.cfg.n_items)
    loss = sampled_softmax_loss(user_vec, item_vec, targets, examples.log_q, model.inv_temperature,
                                negatives, neg_log_q)
    if extra_loss is not None:
        loss = loss + extra_loss(model, users1, history1, targets, user_vec, item_vec)
    return loss


class JointOptimizer:
    """SparseAdam for the sparse id tables, AdamW for everything else, stepped together."""

    def __init__(self, *optimizers: torch.optim.Optimizer):
        self.optimizers = optimizers

    def zero_grad(self, set_to_none: bool = True) -> None:
        for optimizer in self.optimizers:
            optimizer.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        for optimizer in self.optimizers:
            optimizer.step()


def make_optimizer(model: TwoTower, cfg: TowerTrainConfig) -> JointOptimizer:
    sparse = model.sparse_parameters()
    sparse_ids = {id(p) for p in sparse}
    dense = [p for p in model.parameters() if id(p) not in sparse_ids and p.requires_grad]
    optimizers = [torch.optim.AdamW(dense, lr=cfg.lr, weight_decay=cfg.weight_decay)]
    if sparse:
        optimizers.append(torch.optim.SparseAdam(sparse, lr=cfg.lr))
    return JointOptimizer(*optimizers)


def train_two_tower(split: Split, model_cfg: TwoTowerConfig, cfg: TowerTrainConfig, item_table: TokenTable,
                    user_table: TokenTable, extra_loss: ExtraLoss | None = None,
                    label: str = "two-tower") -> TowerTrainResult:
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.threads)
    rng = np.random.default_rng(cfg.seed)
    started = time.perf_counter()
    model = build_model(split, model_cfg, item_table, user_table)
    objective = resolve_objective(model_cfg, cfg)
    if objective == "sequence" and extra_loss is not None:
        raise ValueError("an extra (distillation) loss needs the next-item objective")
    examples = (SequenceWindows if objective == "sequence" else NextItemExamples)(split, model_cfg.history_len)
    optimizer = make_optimizer(model, cfg)
    best_state, best_ndcg, best_epoch, curve, stale = None, -1.0, 0, [], 0
    throughput = []
    bar = tqdm(range(1, cfg.epochs + 1), desc=label, unit="epoch")
    for epoch in bar:
        epoch_started = time.perf_counter()
        loss, seen = _epoch(model, examples, optimizer, cfg, rng, epoch, extra_loss)
        train_seconds = time.perf_counter() - epoch_started
        ndcg = validation_ndcg(model, split, cfg.eval_users, cfg.seed)
        curve.append({"epoch": epoch, "loss": round(loss, 5), "valid_NDCG@10": round(ndcg, 5),
                      "temperature": round(1.0 / model.inv_temperature.item(), 5)})
        throughput.append({"epoch": epoch, "examples": seen, "of_epoch": round(seen / max(len(examples), 1), 4),
                           "train_seconds": round(train_seconds, 1),
                           "examples_per_s": round(seen / max(train_seconds, 1e-9), 1)})
        bar.set_postfix(loss=f"{loss:.3f}", val_ndcg=f"{ndcg:.4f}", best=f"{max(best_ndcg, ndcg):.4f}")
        log.info("%s epoch %d: loss %.4f, valid NDCG@10 %.4f", label, epoch, loss, ndcg)
        if ndcg > best_ndcg:
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            best_ndcg, best_epoch, stale = ndcg, epoch, 0
        else:
            stale += 1
            if stale >= cfg.patience:
                log.info("early stop at epoch %d (best %d, NDCG@10 %.4f)", epoch, best_epoch, best_ndcg)
                break
    model.load_state_dict(best_state)
    model.eval()
    return TowerTrainResult(model, best_epoch, best_ndcg, curve, time.perf_counter() - started, throughput)

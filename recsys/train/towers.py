"""Two-tower training.

Two objectives, picked by the user tower's encoder (``objective="auto"``):
- ``next`` (pool encoder): every train interaction is one example (its user, the items before
  it), scored by a sampled softmax over the batch's items with log-Q correction.
- ``sequence`` (causal encoder): windows of ``history_len`` consecutive items, the state at every
  slot scored against the item that followed it (SASRec-style), each interaction a target once
  per epoch; a full softmax over the catalogue up to ``full_softmax_items`` items (cheap there and
  clearly better than sampling), the in-batch sampled softmax above that.

Under ``torchrun`` (`recsys.train.distributed`) every rank walks the same global batch order and
takes its own contiguous slice of each batch; item vectors and targets are gathered across ranks
(differentiably), so the in-batch negatives and the loss are the single process's at the same
global batch. Each rank's loss is its rows' summed loss times ``world / global rows``: DDP averages
the gradients over ranks, which makes them the single process's mean-loss gradient. The sparse id
tables go through DDP too (gloo all-reduces sparse gradients; checked in tests/recsys/test_distributed.py).
Every rank seeds torch alike and draws the batch-wide randomness (user-id dropout coin flips,
uniform negatives) for the whole batch, as one process does. Layer dropout (``dropout`` > 0) draws
masks for the rank's own rows, so with it a run is the single process's in distribution, not bit
for bit, and the ranks' random streams drift apart (their parameters stay identical).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from recsys.data.tokens import TokenTable
from recsys.evaluate.scoring import evaluate_model, sample_users
from recsys.models.two_tower import TwoTower, TwoTowerConfig
from recsys.split import Split
from recsys.train.distributed import SINGLE, World, all_sum, broadcast_float, gather_rows, shard
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
                  cfg: TowerTrainConfig, world: World = SINGLE) -> torch.Tensor:
    """The sequence objective on one batch of windows (module doc), scaled for ``world``."""
    states = model.slot_vectors(users1, history1)[scored]
    wanted = targets[scored]
    n_scored = all_sum(torch.tensor(len(wanted), dtype=torch.int64), world).item()
    scale = world.size / max(n_scored, 1)
    if model.cfg.n_items <= cfg.full_softmax_items:
        catalogue = model.item_vectors(torch.arange(1, model.cfg.n_items + 1))
        return F.cross_entropy(states @ catalogue.T * model.inv_temperature, wanted, reduction="sum") * scale
    item_vec, first_row = gather_rows(model.item_vectors(wanted + 1), world)
    all_wanted, _ = gather_rows(wanted, world)
    return sampled_softmax_loss(states, item_vec, all_wanted, windows.log_q, model.inv_temperature,
                                first_row=first_row, reduction="sum") * scale


def sampled_softmax_loss(user_vec: torch.Tensor, item_vec: torch.Tensor, targets: torch.Tensor,
                         log_q: torch.Tensor, inv_temperature: torch.Tensor,
                         negatives: torch.Tensor | None = None, negative_log_q: float = 0.0,
                         first_row: int = 0, reduction: str = "mean") -> torch.Tensor:
    """In-batch softmax; subtracting log Q(item) undoes the popularity bias of in-batch sampling.

    ``item_vec`` / ``targets`` may be a whole (gathered) batch of which ``user_vec`` holds rows
    ``first_row ..``: user row j's positive is item row ``first_row + j``."""
    positive = first_row + torch.arange(len(user_vec))
    logits = user_vec @ item_vec.T * inv_temperature - log_q[targets][None, :]
    same_item = targets[positive][:, None] == targets[None, :]
    own = positive[:, None] == torch.arange(len(targets))[None, :]
    logits = logits.masked_fill(same_item & ~own, -1e4)
    if negatives is not None:
        extra = user_vec @ negatives.T * inv_temperature - negative_log_q
        logits = torch.cat([logits, extra], dim=1)
    return F.cross_entropy(logits, positive, reduction=reduction)


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


def drop_user_ids(users1: torch.Tensor, cfg: TowerTrainConfig, first_row: int = 0,
                  batch_rows: int | None = None) -> torch.Tensor:
    """Trains the history path to stand alone, which is what fold-in users get. A rank holding
    rows ``first_row ..`` of a ``batch_rows`` global batch draws the whole batch's coin flips (the
    same on every rank) and keeps its own, as one process would."""
    if cfg.user_id_dropout <= 0:
        return users1
    flips = torch.rand(batch_rows or len(users1))[first_row:first_row + len(users1)]
    return users1.masked_fill(flips < cfg.user_id_dropout, 0)


def resolve_objective(model_cfg: TwoTowerConfig, cfg: TowerTrainConfig) -> str:
    if cfg.objective == "auto":
        return "sequence" if model_cfg.encoder == "causal" else "next"
    if cfg.objective not in ("next", "sequence"):
        raise ValueError(f"objective must be auto, next or sequence, got {cfg.objective!r}")
    if cfg.objective == "sequence" and model_cfg.encoder != "causal":
        raise ValueError("the sequence objective needs the causal encoder (--encoder causal)")
    return cfg.objective


def _epoch(objective: nn.Module, examples, optimizer, cfg, rng, epoch, world: World = SINGLE) -> tuple[float, int]:
    """(mean loss, training examples seen) of one epoch; every rank draws the same global order."""
    objective.train()
    order = rng.permutation(len(examples))
    per_batch = cfg.windows_per_batch if isinstance(examples, SequenceWindows) else cfg.batch_size
    n_batches = math.ceil(len(order) / per_batch)
    if cfg.max_steps_per_epoch:
        n_batches = min(n_batches, cfg.max_steps_per_epoch)
    total = 0.0
    bar = tqdm(range(n_batches), desc=f"towers epoch {epoch}", leave=False, mininterval=1.0,
               disable=not world.is_main)
    for step in bar:
        rows = order[step * per_batch:(step + 1) * per_batch]
        local, first_row = shard(rows, world)
        loss = objective(examples.batch(local), first_row, len(rows))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += loss.item()
        if step % 20 == 0:
            bar.set_postfix(loss=f"{total / (step + 1):.3f}")
    total = all_sum(torch.tensor(total, dtype=torch.float64), world).item() / world.size
    return total / max(n_batches, 1), min(n_batches * per_batch, len(order))


class TowerObjective(nn.Module):
    """The training loss of one (shard of a) batch as a module, so DistributedDataParallel can wrap
    it: DDP's gradient hooks are armed by its forward, and the towers have none of their own."""

    def __init__(self, model: TwoTower, examples, cfg: TowerTrainConfig, extra_loss: ExtraLoss | None = None,
                 world: World = SINGLE):
        super().__init__()
        self.model = model
        self.examples, self.cfg, self.extra_loss, self.world = examples, cfg, extra_loss, world

    def forward(self, batch, first_row: int, batch_rows: int) -> torch.Tensor:
        """Rows ``first_row ..`` of a ``batch_rows`` global batch."""
        model, cfg, world = self.model, self.cfg, self.world
        if isinstance(self.examples, SequenceWindows):
            users1, history1, targets, scored = batch
            return sequence_loss(model, self.examples, drop_user_ids(users1, cfg, first_row, batch_rows), history1,
                                 targets, scored, cfg, world)
        users1, history1, targets = batch
        users1 = drop_user_ids(users1, cfg, first_row, batch_rows)
        user_vec = model.user_vectors(users1, history1)
        item_vec = model.item_vectors(targets + 1)
        all_items, _ = gather_rows(item_vec, world)
        all_targets, _ = gather_rows(targets, world)
        negatives = None
        if cfg.uniform_negatives:  # the same draw on every rank, as one process makes it for the whole batch
            negatives = model.item_vectors(torch.randint(1, model.cfg.n_items + 1, (cfg.uniform_negatives,)))
        neg_log_q = math.log(max(cfg.uniform_negatives, 1) / model.cfg.n_items)
        share = world.size / batch_rows  # DDP averages over ranks: this makes it the global mean's gradient
        loss = sampled_softmax_loss(user_vec, all_items, all_targets, self.examples.log_q, model.inv_temperature,
                                    negatives, neg_log_q, first_row=first_row, reduction="sum") * share
        if self.extra_loss is not None:  # a mean over this rank's rows
            extra = self.extra_loss(model, users1, history1, targets, user_vec, item_vec)
            loss = loss + extra * (len(users1) * share)
        return loss


def wrap_for(objective: TowerObjective, world: World) -> nn.Module:
    """DDP around the objective under torchrun; the objective itself in one process."""
    if not world.distributed:
        return objective
    # Buffers (token tables) never change: no per-step broadcast. The user-id table is idle
    # without use_user_id, which DDP must be told about.
    return DistributedDataParallel(objective, forward_sync_buffers=False,
                                   find_unused_parameters=not objective.model.cfg.use_user_id)


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
                    label: str = "two-tower", world: World = SINGLE) -> TowerTrainResult:
    """Train with early stopping on validation NDCG@10. Under torchrun (``world``) every rank
    calls this with the same arguments; rank 0 validates and the others follow its decision, so
    every rank returns the same model."""
    # The same seed on every rank: the same initial model, batch order and shared random draws.
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
    step_loss = wrap_for(TowerObjective(model, examples, cfg, extra_loss, world), world)
    best_state, best_ndcg, best_epoch, curve, stale = None, -1.0, 0, [], 0
    throughput = []
    bar = tqdm(range(1, cfg.epochs + 1), desc=label, unit="epoch", disable=not world.is_main)
    for epoch in bar:
        epoch_started = time.perf_counter()
        loss, seen = _epoch(step_loss, examples, optimizer, cfg, rng, epoch, world)
        train_seconds = time.perf_counter() - epoch_started
        ndcg = validation_ndcg(model, split, cfg.eval_users, cfg.seed) if world.is_main else 0.0
        ndcg = broadcast_float(ndcg, world)  # the other ranks wait here for rank 0's validation
        curve.append({"epoch": epoch, "loss": round(loss, 5), "valid_NDCG@10": round(ndcg, 5),
                      "temperature": round(1.0 / model.inv_temperature.item(), 5)})
        throughput.append({"epoch": epoch, "examples": seen, "of_epoch": round(seen / max(len(examples), 1), 4),
                           "train_seconds": round(train_seconds, 1),
                           "examples_per_s": round(seen / max(train_seconds, 1e-9), 1), "processes": world.size})
        bar.set_postfix(loss=f"{loss:.3f}", val_ndcg=f"{ndcg:.4f}", best=f"{max(best_ndcg, ndcg):.4f}")
        if world.is_main:
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

"""Ranker training on retriever candidates, selected by the full pipeline's validation NDCG@10.

Examples: each user's last few train interactions, each seen as a request made just before it
(history = the items before it, context = its time and order context). A retriever proposes
its top ``n_candidates`` for that request; the list to rank is the positive, hard negatives
sampled from those candidates, and random catalogue negatives. Items the user interacts with
later in train are never used as negatives. Losses: listwise softmax over the list, or
pointwise BCE; ``loss="auto"`` trains both and keeps the one with the better validation
NDCG@10 of the whole retrieve -> rank pipeline.

Which retriever proposes the training lists matters. The trained towers (and the
co-occurrence / popularity tables) have already fit these very interactions, so on them the
positive looks easier than any live request's target does: a ranker trained there learns to
over-trust the retrieval score. ``examples="holdout"`` (the default) therefore trains a second
copy of the towers, with the same config and best epoch count, on train minus each user's last
``positives_per_user`` interactions, builds the tables from that prefix too, and generates the
examples there; inference still uses the full towers and tables. ``examples="retriever"`` uses
the trained towers directly (cheaper, worse).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import scipy.sparse as sp
import torch
from torch.nn import functional as F
from tqdm.auto import tqdm

from recsys.data.history import History
from recsys.data.tokens import TokenTable
from recsys.evaluate.scoring import evaluate_model, sample_users
from recsys.index import build_index, resolve_factory, set_query_params
from recsys.models.ranker import Ranker, RankerConfig
from recsys.models.two_tower import TwoTower, TwoTowerConfig
from recsys.pipeline.feature_tables import FeatureTables, build_feature_tables
from recsys.pipeline.ranker_features import LAST_TIMESTAMP, TIMESTAMP, build_features, slice_context
from recsys.pipeline.recommend import N_CANDIDATES, Pipeline, PipelineRecommender
from recsys.split import MAX_RECENT, Split
from recsys.train.torch_pipeline import TorchRankerScorer, towers_pipeline
from recsys.train.towers import TowerTrainConfig, train_two_tower

log = logging.getLogger(__name__)


LOSSES = ("softmax", "bce")


EXAMPLE_SOURCES = ("holdout", "retriever")


EXAMPLE_BATCH = 512
# Past this catalogue size the training lists come from an IVF index over the same vectors: an
# exact index answers one query per FAISS call (it skips seen items inside the scan), ~8 ms at 1M
# items, while a batched IVF search probing EXAMPLE_NPROBE lists is ~100x cheaper. Validation and
# inference keep the pipeline's own index.
EXACT_EXAMPLES_MAX_ITEMS = 200_000
EXAMPLE_INDEX = "IVF{auto},Flat"
EXAMPLE_NPROBE = 32


@dataclass
class RankerTrainConfig:
    # softmax won on ml-100k (0.1493 vs 0.1463 valid NDCG@10); "auto" trains both and keeps the better.
    loss: str = "softmax"  # softmax | bce | auto
    epochs: int = 20
    batch_size: int = 64  # candidate lists per step
    lr: float = 1e-3
    weight_decay: float = 1e-5
    patience: int = 3
    seed: int = 0
    positives_per_user: int = 10
    max_users: int = 20_000  # seeded sample of users that provide examples, for large data
    n_candidates: int = 200  # retrieval depth, in training as at inference
    hard_negatives: int = 50
    random_negatives: int = 10
    only_retrieved: bool = False  # keep only lists whose positive the retriever proposed (as at inference)
    examples: str = "holdout"  # holdout | retriever: which towers propose the training lists (module doc)
    example_user_ids: bool = True  # False: example requests use history only (user id 0)
    eval_users: int = 3000
    disabled_features: str = ""  # comma-separated feature names forced to 0 (ablations)
    # Distillation from a teacher's logits over the same lists (`train_ranker(list_teacher=...)`):
    # loss += weight * T^2 * KL(teacher || student) of the list softmaxes at temperature T.
    distill_weight: float = 0.0
    distill_temperature: float = 2.0

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class RankingExamples:
    user_vec: np.ndarray  # [N, D]
    cands: np.ndarray  # [N, C] column 0 = the positive, -1 = empty slot
    dense: np.ndarray  # [N, C, F]
    retrieved_share: float  # of all requests, the share whose positive the retriever proposed
    teacher_logits: np.ndarray | None = None  # [N, C] a teacher's scores of the same lists

    def __len__(self) -> int:
        return len(self.cands)

    def subset(self, keep: np.ndarray) -> RankingExamples:
        teacher = None if self.teacher_logits is None else self.teacher_logits[keep]
        return RankingExamples(self.user_vec[keep], self.cands[keep], self.dense[keep], self.retrieved_share, teacher)


# A teacher's logits for candidate lists: (users, history rows, listed items [B, C], context) -> [B, C].
ListTeacher = Callable[[np.ndarray, History, np.ndarray, dict | None], np.ndarray]


@dataclass
class RankerTrainResult:
    model: Ranker
    tables: FeatureTables  # with the ablation's disabled features: save these beside the ranker
    loss: str
    best_epoch: int
    best_ndcg: float
    retrieval_ndcg: float
    runs: dict = field(default_factory=dict)  # loss -> {best_epoch, valid_NDCG@10, curve, seconds}
    n_examples: int = 0
    positive_recall: float = 0.0
    seconds: float = 0.0
    examples_seconds: float = 0.0  # building the candidate lists and their features

    @property
    def kept(self) -> bool:
        """Whether the pipeline keeps this ranker: only one that beats retrieval alone on validation
        (the teacher and the students follow the same rule)."""
        return self.best_ndcg > self.retrieval_ndcg


def prefix_requests(split: Split, cfg: RankerTrainConfig, rng: np.random.Generator):
    """Each user's last ``positives_per_user`` train interactions as requests made just before them.

    Returns (users, targets, History of the items before each target, context arrays).
    """
    train = split.train
    users, items, times = (train[c].to_numpy(np.int64) for c in ("u", "i", "t"))
    position = train.groupby("u", sort=False).cumcount().to_numpy(np.int64)
    length = np.bincount(users, minlength=split.n_users)[users]
    chosen = np.unique(users)
    if len(chosen) > cfg.max_users:
        chosen = np.sort(rng.choice(chosen, size=cfg.max_users, replace=False))
    is_chosen = np.zeros(split.n_users, bool)
    is_chosen[chosen] = True
    rows = np.flatnonzero((position >= 1) & (position >= length - cfg.positives_per_user) & is_chosen[users])
    before = position[rows]
    # seen = items at positions 0..p-1 of the same user, i.e. global rows r-p .. r-1
    flat = np.repeat(rows - before, before) + (np.arange(before.sum()) - np.repeat(np.cumsum(before) - before, before))
    seen = sp.csr_matrix((np.ones(len(flat), np.float32), items[flat], np.r_[0, np.cumsum(before)]),
                         shape=(len(rows), split.n_items))
    recent = np.full((len(rows), MAX_RECENT), -1, dtype=np.int32)
    for lag in range(1, MAX_RECENT + 1):
        valid = lag <= before
        recent[valid, MAX_RECENT - lag] = items[rows[valid] - lag]
    context = {TIMESTAMP: times[rows], LAST_TIMESTAMP: times[rows - 1]}
    for column in split.context_columns:
        context[column] = train[column].to_numpy(np.float64)[rows]
    return users[rows], items[rows], History(seen, recent), context


def _row_keys(rows: np.ndarray, items: np.ndarray, n_items: int) -> np.ndarray:
    return rows.astype(np.int64) * n_items + items


def in_sorted(sorted_keys: np.ndarray, query: np.ndarray) -> np.ndarray:
    """``np.isin(query, sorted_keys)`` for keys sorted once: a binary search per query instead of
    a sort of both arrays per call (10M keys: ~1 s per call with np.isin)."""
    if sorted_keys.size == 0:
        return np.zeros(query.shape, bool)
    at = np.minimum(np.searchsorted(sorted_keys, query), sorted_keys.size - 1)
    return sorted_keys[at] == query


def holdout_split(split: Split, n_last: int) -> Split:
    """The split with each user's last ``n_last`` train interactions removed from train."""
    from_end = split.train.groupby("u", sort=False).cumcount(ascending=False).to_numpy()
    return replace(split, train=split.train[from_end >= n_last].reset_index(drop=True))


def holdout_retriever(split: Split, tower_config: dict, tower_training: dict, best_epoch: int,
                      item_tokens: TokenTable, user_tokens: TokenTable, tables: FeatureTables,
                      cfg: RankerTrainConfig) -> tuple[TwoTower, FeatureTables]:
    """Towers and tables fitted without the interactions the ranker examples are built from."""
    prefix = holdout_split(split, cfg.positives_per_user)
    log.info("holdout towers: %d of %d train rows, %d epochs", len(prefix.train), len(split.train), best_epoch)
    train_cfg = TowerTrainConfig(**{**tower_training, "epochs": best_epoch, "patience": best_epoch + 1})
    result = train_two_tower(prefix, TwoTowerConfig(**tower_config), train_cfg, item_tokens, user_tokens)
    prefix_tables = build_feature_tables(prefix, item_tokens, time_features=tables.has_time, ease=tables.has_ease)
    return result.model, prefix_tables.without(tables.disabled)


def _examples(split: Split, pipeline: Pipeline, cfg: RankerTrainConfig, rng: np.random.Generator,
              list_teacher: ListTeacher | None = None) -> RankingExamples:
    """Candidate lists with features, built with the pipeline's own retrieval and feature code
    (and ``list_teacher``'s logits for each list, when given)."""
    users, targets, history, context = prefix_requests(split, cfg, rng)
    n, n_items = len(users), pipeline.n_items
    if n == 0:
        raise ValueError("no ranker examples: every user has a single train interaction")
    user_items = np.sort(_row_keys(split.train["u"].to_numpy(), split.train["i"].to_numpy(), n_items))
    n_list = 1 + cfg.hard_negatives + cfg.random_negatives
    out_vec = np.zeros((n, pipeline.item_vectors.shape[1]), np.float32)
    out_cands = np.full((n, n_list), -1, np.int64)
    out_dense = None
    retrieved = np.zeros(n, bool)
    teacher = np.zeros((n, n_list), np.float32)
    for start in tqdm(range(0, n, EXAMPLE_BATCH), desc="ranker examples", leave=False, mininterval=1.0):
        stop = min(start + EXAMPLE_BATCH, n)
        rows = History(history.seen[start:stop], history.recent[start:stop])
        batch_users = users[start:stop] if cfg.example_user_ids else np.full(stop - start, -1)
        user_vec, cands, cand_scores = pipeline.retrieve(batch_users, rows.recent, rows.seen, cfg.n_candidates)
        target = targets[start:stop]
        # Hard negatives: a uniform sample of the retrieved items that are not the user's.
        theirs = in_sorted(user_items, _row_keys(users[start:stop, None], cands, n_items))
        usable = (cands >= 0) & ~theirs
        priority = np.where(usable, rng.random(cands.shape), np.inf)
        picks = np.argsort(priority, axis=1, kind="stable")[:, :cfg.hard_negatives]
        hard = np.where(np.take_along_axis(usable, picks, 1), np.take_along_axis(cands, picks, 1), -1)
        uniform = rng.integers(0, n_items, (stop - start, cfg.random_negatives))
        uniform = np.where(in_sorted(user_items, _row_keys(users[start:stop, None], uniform, n_items)), -1, uniform)
        listed = np.concatenate([target[:, None], hard, uniform], axis=1)
        batch_context = slice_context(context, slice(start, stop))
        _, _, dense, ranks = list_inputs(pipeline, batch_users, rows, listed, batch_context,
                                         (user_vec, cands, cand_scores), cfg.n_candidates)
        if out_dense is None:
            out_dense = np.zeros((n, n_list, dense.shape[-1]), np.float32)
        out_vec[start:stop], out_cands[start:stop], out_dense[start:stop] = user_vec, listed, dense
        if list_teacher is not None:
            teacher[start:stop] = list_teacher(batch_users, rows, listed, batch_context)
        retrieved[start:stop] = ranks[:, 0] < cfg.n_candidates
    examples = RankingExamples(out_vec, out_cands, out_dense, float(retrieved.mean()),
                               teacher if list_teacher is not None else None)
    return examples.subset(retrieved) if cfg.only_retrieved else examples


def example_pipeline(pipeline: Pipeline) -> Pipeline:
    """The pipeline that proposes (and scores) training lists: ``pipeline`` itself, or past
    EXACT_EXAMPLES_MAX_ITEMS items the same with an IVF index over its item vectors."""
    if pipeline.n_items <= EXACT_EXAMPLES_MAX_ITEMS:
        return pipeline
    index = build_index(pipeline.item_vectors, resolve_factory(EXAMPLE_INDEX, pipeline.n_items))
    set_query_params(index, {"nprobe": EXAMPLE_NPROBE})
    return replace(pipeline, index=index)


def list_inputs(pipeline: Pipeline, users: np.ndarray, rows: History, listed: np.ndarray, context: dict | None,
                retrieved: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
                n_candidates: int = N_CANDIDATES) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(user vectors, item vectors, dense features, retrieval ranks) of ``listed`` items [B, C] as
    ``pipeline`` sees these requests; ``retrieved`` = its (user vectors, candidates, scores) when
    already known. An item the retriever did not propose gets rank ``n_candidates`` and its exact score."""
    user_vec, cands, cand_scores = retrieved if retrieved is not None else pipeline.retrieve(
        users, rows.recent, rows.seen, n_candidates)
    match = listed[:, :, None] == cands[:, None, :]
    ranks = np.where(match.any(-1), match.argmax(-1), n_candidates)
    vecs = pipeline.item_vectors[np.maximum(listed, 0)]
    scores = np.einsum("bcd,bd->bc", vecs, user_vec)
    dense = build_features(pipeline.feature_tables, rows, listed, scores, vecs, pipeline.item_vectors, context,
                           ranks=ranks, top_scores=cand_scores[:, 0])
    return user_vec, vecs, dense, ranks


def list_loss(logits: torch.Tensor, valid: torch.Tensor, kind: str) -> torch.Tensor:
    """Loss for lists whose column 0 is the positive; ``valid`` masks empty slots."""
    if kind == "softmax":
        return F.cross_entropy(logits.masked_fill(~valid, -1e4), torch.zeros(len(logits), dtype=torch.long))
    labels = torch.zeros_like(logits)
    labels[:, 0] = 1.0
    per_item = F.binary_cross_entropy_with_logits(logits, labels, reduction="none")
    return (per_item * valid).sum() / valid.sum().clamp_min(1)


def list_distillation_loss(student: torch.Tensor, teacher: torch.Tensor, valid: torch.Tensor,
                           temperature: float) -> torch.Tensor:
    """T^2 * KL(teacher || student) between the two softmaxes over each list's valid slots."""
    def log_probs(logits: torch.Tensor) -> torch.Tensor:
        return F.log_softmax((logits / temperature).masked_fill(~valid, -1e4), dim=1)

    return F.kl_div(log_probs(student), log_probs(teacher), log_target=True, reduction="batchmean") * temperature ** 2


def fit_ranker(examples: RankingExamples, item_vectors: np.ndarray, ranker_cfg: RankerConfig,
               cfg: RankerTrainConfig, loss: str, validate: Callable[[Ranker], float]) -> tuple[Ranker, dict]:
    """Train one ranker with early stopping on ``validate`` (validation NDCG@10 of the pipeline)."""
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    started = time.perf_counter()
    model = Ranker(ranker_cfg)
    valid_rows = examples.cands >= 0
    model.fit_normalizer(torch.from_numpy(examples.dense[valid_rows]))
    items = torch.from_numpy(item_vectors)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    best_state, best, best_epoch, curve, stale = None, -1.0, 0, [], 0
    n_batches = math.ceil(len(examples) / cfg.batch_size)
    bar = tqdm(range(1, cfg.epochs + 1), desc=f"ranker ({loss})", unit="epoch")
    for epoch in bar:
        model.train()
        order = rng.permutation(len(examples))
        total = 0.0
        for step in range(n_batches):
            rows = order[step * cfg.batch_size:(step + 1) * cfg.batch_size]
            cands = torch.from_numpy(examples.cands[rows])
            logits = model(torch.from_numpy(examples.user_vec[rows]), items[cands.clamp_min(0)],
                           torch.from_numpy(examples.dense[rows]))
            batch_loss = list_loss(logits, cands >= 0, loss)
            if examples.teacher_logits is not None and cfg.distill_weight > 0:
                teacher = torch.from_numpy(examples.teacher_logits[rows])
                batch_loss = batch_loss + cfg.distill_weight * list_distillation_loss(
                    logits, teacher, cands >= 0, cfg.distill_temperature)
            optimizer.zero_grad(set_to_none=True)
            batch_loss.backward()
            optimizer.step()
            total += batch_loss.item()
        model.eval()
        ndcg = validate(model)
        curve.append({"epoch": epoch, "loss": round(total / max(n_batches, 1), 5), "valid_NDCG@10": round(ndcg, 5)})
        bar.set_postfix(loss=f"{total / max(n_batches, 1):.4f}", val_ndcg=f"{ndcg:.4f}", best=f"{max(best, ndcg):.4f}")
        log.info("ranker (%s) epoch %d: loss %.4f, pipeline valid NDCG@10 %.4f", loss, epoch,
                 total / max(n_batches, 1), ndcg)
        if ndcg > best:
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            best, best_epoch, stale = ndcg, epoch, 0
        else:
            stale += 1
            if stale >= cfg.patience:
                break
    model.load_state_dict(best_state)
    model.eval()
    return model, {"best_epoch": best_epoch, "valid_NDCG@10": best, "curve": curve,
                   "seconds": round(time.perf_counter() - started, 1)}


def pipeline_ndcg(pipeline: Pipeline, split: Split, n_candidates: int) -> float:
    metrics, _ = evaluate_model(PipelineRecommender(pipeline, n_candidates), split, "valid")
    return metrics["NDCG@10"]


def train_ranker(split: Split, towers: TwoTower, tables: FeatureTables, cfg: RankerTrainConfig,
                 shape: dict | None = None,
                 example_source: Callable[[FeatureTables], tuple[TwoTower, FeatureTables]] | None = None,
                 list_teacher: ListTeacher | None = None) -> RankerTrainResult:
    """Train the ranker for the pipeline of ``towers`` + ``tables``; ``loss="auto"`` tries both losses.

    ``example_source(tables)`` returns the towers and tables that propose the training lists
    (e.g. `holdout_retriever`); by default the inference ones. ``shape``: RankerConfig width,
    depth, n_cross, dropout, vec_proj. ``list_teacher`` scores every training list for
    distillation (weighted by ``cfg.distill_weight``).
    """
    if cfg.loss not in (*LOSSES, "auto"):
        raise ValueError(f"ranker loss must be one of {LOSSES} or 'auto', got {cfg.loss!r}")
    started = time.perf_counter()
    if cfg.disabled_features:
        tables = tables.without(tuple(name.strip() for name in cfg.disabled_features.split(",") if name.strip()))
    rng = np.random.default_rng(cfg.seed)
    pipeline = towers_pipeline(towers, tables)
    source = pipeline if example_source is None else towers_pipeline(*example_source(tables))
    examples_started = time.perf_counter()  # with the IVF index, when one is built for the lists
    source = example_pipeline(source)
    examples = _examples(split, source, cfg, rng, list_teacher)
    examples_seconds = time.perf_counter() - examples_started
    log.info("ranker examples: %d lists of %d in %.0f s, positive retrieved in %.1f%%", len(examples),
             examples.cands.shape[1], examples_seconds, 100 * examples.retrieved_share)
    if len(examples) == 0:
        raise ValueError("no ranker examples: the retriever proposed no example's positive (only_retrieved)")
    valid_split = split if split.n_users <= cfg.eval_users else sample_users(split, cfg.eval_users, cfg.seed)
    retrieval_ndcg = pipeline_ndcg(pipeline, valid_split, cfg.n_candidates)
    log.info("retrieval alone: valid NDCG@10 %.4f", retrieval_ndcg)
    names = tables.feature_names()
    ranker_cfg = RankerConfig(dim=towers.cfg.dim, n_dense=len(names), feature_names=names, **(shape or {}))

    def validate(model: Ranker) -> float:
        pipeline.score_candidates = TorchRankerScorer(model)
        return pipeline_ndcg(pipeline, valid_split, cfg.n_candidates)

    runs, models = {}, {}
    for loss in LOSSES if cfg.loss == "auto" else (cfg.loss,):
        models[loss], runs[loss] = fit_ranker(examples, source.item_vectors, ranker_cfg, cfg, loss, validate)
    winner = max(runs, key=lambda name: runs[name]["valid_NDCG@10"])
    log.info("ranker: %s loss wins (valid NDCG@10 %s; retrieval alone %.4f)", winner,
             {name: round(run["valid_NDCG@10"], 4) for name, run in runs.items()}, retrieval_ndcg)
    if runs[winner]["valid_NDCG@10"] <= retrieval_ndcg:
        log.warning("the ranker does not beat retrieval alone on validation (%.4f <= %.4f)",
                    runs[winner]["valid_NDCG@10"], retrieval_ndcg)
    return RankerTrainResult(models[winner], tables, winner, runs[winner]["best_epoch"], runs[winner]["valid_NDCG@10"],
                             retrieval_ndcg, runs, len(examples), examples.retrieved_share,
                             time.perf_counter() - started, examples_seconds)

"""Small students for the towers and the ranker, trained with and without their teacher."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, replace
from functools import partial

import numpy as np

from compression.distill import ListTeacher, RankerDistillConfig, TowerDistillConfig, TowerDistiller
from recsys.models.two_tower import TwoTower, TwoTowerConfig
from recsys.pipeline.feature_tables import FeatureTables
from recsys.split import Split
from recsys.train.model_dir import TrainedModel
from recsys.train.ranker import RankerTrainConfig, example_pipeline, holdout_retriever, train_ranker
from recsys.train.torch_pipeline import TorchRankerScorer, towers_pipeline
from recsys.train.towers import TowerTrainConfig, train_two_tower

log = logging.getLogger(__name__)


@dataclass
class StudentConfig:
    dim: int = 64
    hidden: int = 64
    depth: int = 1
    ranker_width: int = 64
    ranker_depth: int = 1
    ranker_cross: int = 1
    tower_epochs: int = 40
    ranker_epochs: int = 20
    seed: int = 0
    max_steps_per_epoch: int | None = None
    # Ranker features the students do without (comma-separated names; "" = the teacher's set;
    # "auto" = its content-overlap features, see `resolve_disabled`): what they cost per request
    # is saved; the teacher's logits still carry their signal.
    disabled_features: str = "auto"

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Student:
    name: str
    towers: TwoTower
    ranker: object | None
    tables: FeatureTables | None
    summary: dict


def student_tower_config(teacher: TwoTowerConfig, cfg: StudentConfig) -> TwoTowerConfig:
    """The teacher's towers made small; a student pools its history (no self-attention blocks to
    run per request), whatever the teacher's encoder."""
    return replace(teacher, dim=cfg.dim, hidden=cfg.hidden, depth=cfg.depth, encoder="pool")


def tower_train_config(trained: TrainedModel, cfg: StudentConfig) -> TowerTrainConfig:
    stored = trained.config.get("tower_training", {})
    known = {k: v for k, v in stored.items() if k in TowerTrainConfig.__dataclass_fields__}
    # The objective follows the student's own (pooling) encoder, not the teacher's.
    return TowerTrainConfig(**{**known, "epochs": cfg.tower_epochs, "seed": cfg.seed, "objective": "auto",
                               "max_steps_per_epoch": cfg.max_steps_per_epoch})


def ranker_train_config(trained: TrainedModel, cfg: StudentConfig) -> RankerTrainConfig:
    stored = trained.config.get("ranker_training", {})
    known = {k: v for k, v in stored.items() if k in RankerTrainConfig.__dataclass_fields__}
    loss = trained.config.get("ranker_result", {}).get("loss", known.get("loss", "softmax"))
    disabled = ",".join(name for name in (known.get("disabled_features", ""), cfg.disabled_features) if name)
    return RankerTrainConfig(**{**known, "loss": loss, "epochs": cfg.ranker_epochs, "seed": cfg.seed,
                                "disabled_features": disabled})


def train_student(name: str, trained: TrainedModel, split: Split, tables: FeatureTables | None, cfg: StudentConfig,
                  distill: TowerDistillConfig | None, ranker_distill: RankerDistillConfig | None = None) -> Student:
    """Train small towers (+ ranker when the teacher has one); ``distill`` / ``ranker_distill``
    None = that part learns without the teacher."""
    model_cfg = student_tower_config(trained.towers.cfg, cfg)
    extra = TowerDistiller(trained.towers, distill) if distill is not None else None
    result = train_two_tower(split, model_cfg, tower_train_config(trained, cfg), trained.item_tokens,
                             trained.user_tokens, extra_loss=extra, label=f"{name} towers")
    summary = {"towers": model_cfg.to_dict(), "tower_valid_NDCG@10": result.best_ndcg,
               "tower_best_epoch": result.best_epoch, "tower_seconds": round(result.seconds, 1),
               "distill": None if distill is None else distill.to_dict()}
    ranker = None
    if trained.ranker is not None and tables is not None:
        ranker, tables = _train_student_ranker(trained, split, tables, cfg, model_cfg, result, summary,
                                               ranker_distill)
    log.info("student %s: towers valid NDCG@10 %.4f", name, result.best_ndcg)
    return Student(name, result.model, ranker, tables, summary)


def _train_student_ranker(trained, split, tables, cfg, model_cfg, towers_result, summary, ranker_distill):
    """The student's ranker learns from lists proposed by held-out student towers (as the teacher's
    did), with the teacher ranker's logits over those lists when distilling; a ranker that does not
    beat the student's retrieval on validation is dropped."""
    ranker_cfg = ranker_train_config(trained, cfg)
    teacher = None
    if ranker_distill is not None:
        ranker_cfg = replace(ranker_cfg, distill_weight=ranker_distill.weight,
                             distill_temperature=ranker_distill.temperature)
        teacher = ListTeacher(holdout_teacher_pipeline(trained, split, tables), ranker_cfg.n_candidates)
    source = partial(holdout_retriever, split, model_cfg.to_dict(), tower_train_config(trained, cfg).to_dict(),
                     towers_result.best_epoch, trained.item_tokens, trained.user_tokens, cfg=ranker_cfg)
    shape = {"width": cfg.ranker_width, "depth": cfg.ranker_depth, "n_cross": cfg.ranker_cross}
    ranked = train_ranker(split, towers_result.model, tables, ranker_cfg, shape, source, list_teacher=teacher)
    summary["ranker_distill"] = None if ranker_distill is None else ranker_distill.to_dict()
    summary.update({"ranker": ranked.model.cfg.to_dict(), "ranker_valid_NDCG@10": ranked.best_ndcg,
                    "retrieval_valid_NDCG@10": ranked.retrieval_ndcg, "ranker_loss": ranked.loss,
                    "ranker_seconds": round(ranked.seconds, 1),
                    "ranker_kept": ranked.kept})
    if not summary["ranker_kept"]:
        log.warning("student ranker dropped: valid NDCG@10 %.4f <= retrieval %.4f", ranked.best_ndcg,
                    ranked.retrieval_ndcg)
        return None, tables
    return ranked.model, ranked.tables


def holdout_teacher_pipeline(trained: TrainedModel, split: Split, tables: FeatureTables):
    """The teacher pipeline its ranker was trained in: towers and tables refitted without each
    user's last train interactions (`holdout_retriever`, the teacher's own config and seed), its
    ranker on top. The student ranker's training lists are built from those very interactions;
    the full teacher's towers and its EASE / co-occurrence tables were fitted on them, so its
    logits would know the positives as no live request's do, and the student would learn to
    trust signals it cannot see (measured on ml-100k: the distilled student fell below the one
    trained alone, 0.964 [0.935, 0.993] of it)."""
    stored = trained.config.get("ranker_training", {})
    cfg = RankerTrainConfig(**{k: v for k, v in stored.items() if k in RankerTrainConfig.__dataclass_fields__})
    towers, prefix_tables = holdout_retriever(split, trained.config["towers"], trained.config["tower_training"],
                                              trained.config["tower_result"]["best_epoch"], trained.item_tokens,
                                              trained.user_tokens, tables, cfg=cfg)
    # Past EXACT_EXAMPLES_MAX_ITEMS its lists were proposed by an IVF search: score them the same way.
    pipeline = example_pipeline(towers_pipeline(towers, prefix_tables))
    pipeline.score_candidates = TorchRankerScorer(trained.ranker)
    return pipeline


def teacher_student(trained: TrainedModel, tables: FeatureTables | None) -> Student:
    return Student("teacher", trained.towers, trained.ranker, tables, {"towers": trained.towers.cfg.to_dict()})


def sample_requests(split: Split, n: int, seed: int) -> np.ndarray:
    """A seeded sample of test users, the requests latency and calibration are measured on."""
    users, _ = split.targets("test")
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(users, size=min(n, len(users)), replace=False))

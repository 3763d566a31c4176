"""`python -m recsys.train --dataset NAME --out DIR`: train the retrieval towers, then the ranker.

A thin CLI over `train_two_tower` and `train_ranker`: loads and splits the data under the
protocol, trains the towers with early stopping on validation NDCG@10, then the ranker on their
candidates with early stopping on the full pipeline's validation NDCG@10, and writes one model
directory (`recsys.train.model_dir`) that records config, seed, data fingerprint, curves and library
versions. ``--skip-ranker`` stops after the towers; ranker flags are prefixed ``--ranker-``.

``torchrun --nproc_per_node=N -m recsys.train ...`` trains the towers data-parallel over N processes
at the same global ``--batch-size`` (`recsys.train.distributed`); rank 0 validates and writes the
model directory, then trains the ranker alone (the ranker is single-process for now).
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import fields
from functools import partial
from pathlib import Path

from recsys.data.datasets import DEFAULT_DATA_DIR, Dataset, load_dataset
from recsys.data.schema import DataError
from recsys.data.tokens import build_token_table
from recsys.models.ranker import RankerConfig
from recsys.models.two_tower import TwoTowerConfig
from recsys.pipeline.feature_tables import build_feature_tables
from recsys.split import GATE_EVENTS, Split, temporal_split
from recsys.train.distributed import SINGLE, World, barrier, cleanup, init_world
from recsys.train.model_dir import (
    CONFIG,
    RANKER,
    RANKING_FEATURES,
    ModelDirError,
    load_config,
    load_trained,
    save_json,
    save_ranker,
    save_towers,
)
from recsys.train.ranker import EXAMPLE_SOURCES, RankerTrainConfig, holdout_retriever, train_ranker
from recsys.train.towers import TowerTrainConfig, train_two_tower

log = logging.getLogger(__name__)


def train_towers_into(out: Path, dataset: Dataset, split: Split, model_cfg: TwoTowerConfig,
                      train_cfg: TowerTrainConfig, held_out: int = 1, world: World = SINGLE) -> dict:
    """Train the towers (on every rank under torchrun) and write them to ``out`` (rank 0 alone;
    the others wait until it has)."""
    item_tokens = build_token_table(dataset.items, "item_id", split.items)
    user_tokens = build_token_table(dataset.users, "user_id", split.users)
    result = train_two_tower(split, model_cfg, train_cfg, item_tokens, user_tokens, world=world)
    config = {"dataset": dataset.name, "fingerprint": dataset.fingerprint(), "source": dataset.source,
              "seed": train_cfg.seed, "held_out": held_out, "tower_training": train_cfg.to_dict(),
              "tower_result": {"best_epoch": result.best_epoch, "valid_NDCG@10": result.best_ndcg,
                               "seconds": round(result.seconds, 1), "curve": result.curve,
                               "throughput": result.throughput}}
    if world.is_main:
        save_towers(out, result.model, split.users, split.items, item_tokens, user_tokens, config)
    barrier(world)
    log.info("saved towers to %s (best epoch %d, valid NDCG@10 %.4f, %.0f s)", out, result.best_epoch,
             result.best_ndcg, result.seconds)
    return config


def train_ranker_into(out: Path, split: Split, cfg: RankerTrainConfig, ranker_shape: dict) -> dict:
    """Train the ranker on the towers saved in ``out`` and add it to the same model directory."""
    trained = load_trained(out)
    tables = build_feature_tables(split, trained.item_tokens)
    source = None
    if cfg.examples == "holdout":
        tower_result = trained.config["tower_result"]
        source = partial(holdout_retriever, split, trained.config["towers"], trained.config["tower_training"],
                         tower_result["best_epoch"], trained.item_tokens, trained.user_tokens, cfg=cfg)
    elif cfg.examples != "retriever":
        raise ValueError(f"--ranker-examples must be one of {EXAMPLE_SOURCES}, got {cfg.examples!r}")
    result = train_ranker(split, trained.towers, tables, cfg, ranker_shape, source)
    result.tables.save(out / RANKING_FEATURES)
    summary = {"loss": result.loss, "best_epoch": result.best_epoch, "valid_NDCG@10": result.best_ndcg,
               "retrieval_valid_NDCG@10": result.retrieval_ndcg, "kept": result.kept, "examples": result.n_examples,
               "positive_retrieved": round(result.positive_recall, 4), "seconds": round(result.seconds, 1),
               "examples_seconds": round(result.examples_seconds, 3),
               "runs": result.runs}
    updates = {"ranker_training": cfg.to_dict(), "ranker_result": summary}
    if not result.kept:
        (out / RANKER).unlink(missing_ok=True)
        save_json(out / CONFIG, {key: value for key, value in {**load_config(out), **updates}.items()
                                 if key != "ranker"})
        log.warning("ranker not kept: valid NDCG@10 %.4f <= retrieval alone %.4f; %s serves retrieval alone",
                    result.best_ndcg, result.retrieval_ndcg, out)
        return summary
    save_ranker(out, result.model, {"ranker": result.model.cfg.to_dict(), **updates})
    log.info("saved ranker to %s (%s loss, valid NDCG@10 %.4f vs retrieval %.4f, %.0f s)", out, result.loss,
             result.best_ndcg, result.retrieval_ndcg, result.seconds)
    return summary


def _parse_bool(text: str) -> bool:
    return text.lower() in ("1", "true", "yes")


def _add_dataclass_flags(parser: argparse.ArgumentParser, cls, skip=(), prefix: str = "") -> None:
    for f in fields(cls):
        if f.name in skip:
            continue
        flag = "--" + prefix + f.name.replace("_", "-")
        dest = prefix.replace("-", "_") + f.name
        if f.type in ("bool", bool, "bool | None"):
            parser.add_argument(flag, dest=dest, type=_parse_bool, default=None, metavar="BOOL")
        elif f.type in ("int", int, "int | None"):
            parser.add_argument(flag, dest=dest, type=int, default=None)
        elif f.type in ("str", str):
            parser.add_argument(flag, dest=dest, type=str, default=None)
        else:
            parser.add_argument(flag, dest=dest, type=float, default=None)


def _pick(args: argparse.Namespace, cls, prefix: str = "", skip=(), **fixed):
    dest = prefix.replace("-", "_")
    values = {f.name: getattr(args, dest + f.name) for f in fields(cls)
              if f.name not in fixed and f.name not in skip and getattr(args, dest + f.name, None) is not None}
    return cls(**fixed, **values)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m recsys.train", description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True, help="ml-100k, instacart, synthetic[-1m] or a log path")
    parser.add_argument("--out", required=True, help="model directory to write")
    parser.add_argument("--items", help="item catalog for a user log")
    parser.add_argument("--users", help="user table for a user log")
    parser.add_argument("--data-dir", default=str(DEFAULT_DATA_DIR))
    parser.add_argument("--skip-ranker", nargs="?", const=True, default=False, type=_parse_bool, metavar="BOOL",
                        help="train the retrieval towers only (under torchrun the ranker trains on rank 0 "
                             "alone, after the towers)")
    parser.add_argument("--held-out", type=int, default=GATE_EVENTS, metavar="K",
                        help=f"train without each user's last K interactions (default {GATE_EVENTS}): the "
                             "compression gate scores them one step at a time; 1 = the protocol's split")
    _add_dataclass_flags(parser, TowerTrainConfig)
    _add_dataclass_flags(parser, TwoTowerConfig, skip=("n_users", "n_items"))
    _add_dataclass_flags(parser, RankerTrainConfig, prefix="ranker-")
    _add_dataclass_flags(parser, RankerConfig, skip=RANKER_FIXED, prefix="ranker-")
    args = parser.parse_args(argv)
    if args.held_out < 1:
        parser.error(f"--held-out must be >= 1, got {args.held_out}")
    return args


RANKER_FIXED = ("dim", "n_dense", "feature_names")  # set from the towers and the feature tables


def run(args: argparse.Namespace, world: World = SINGLE) -> dict:
    """Under torchrun every rank trains the towers; then the group is closed and rank 0 carries on alone."""
    dataset = load_dataset(args.dataset, args.data_dir, args.items, args.users)
    split = temporal_split(dataset, args.held_out)
    model_cfg = _pick(args, TwoTowerConfig, n_users=split.n_users, n_items=split.n_items)
    train_cfg = _pick(args, TowerTrainConfig)
    out = Path(args.out)
    config = train_towers_into(out, dataset, split, model_cfg, train_cfg, args.held_out, world)
    cleanup(world)
    if not world.is_main:
        return config
    if world.distributed and not args.skip_ranker:
        log.info("ranker: single-process, on rank 0 alone (the other ranks have finished)")
    if args.skip_ranker:
        # The feature tables still carry the popularity order unknown users fall back to.
        (out / RANKER).unlink(missing_ok=True)
        build_feature_tables(split, load_trained(out).item_tokens).save(out / RANKING_FEATURES)
        return config
    ranker_cfg = _pick(args, RankerTrainConfig, prefix="ranker-", seed=args.ranker_seed if args.ranker_seed
                       is not None else train_cfg.seed)
    shape = vars(_pick(args, RankerConfig, prefix="ranker-", skip=RANKER_FIXED, dim=0, n_dense=0))
    shape = {name: value for name, value in shape.items() if name not in RANKER_FIXED}
    return {**config, "ranker_result": train_ranker_into(out, split, ranker_cfg, shape)}


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    world = init_world()
    if not world.is_main:  # rank 0 speaks for the run; the others only warn
        logging.getLogger().setLevel(logging.WARNING)
    try:
        run(args, world)
    except (DataError, ModelDirError) as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2
    finally:
        cleanup(world)
    return 0

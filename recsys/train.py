"""`python -m recsys.train --dataset NAME --out DIR`: train the retrieval towers (then the ranker).

A thin CLI over `train_two_tower` (and `train_ranker`): loads and splits the data under the
protocol, trains with early stopping on validation NDCG@10, and writes a model directory
(`recsys.model_dir`) that records config, seed, data fingerprint, curves and library versions.
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import fields
from pathlib import Path

from recsys.data.datasets import DEFAULT_DATA_DIR, Dataset, load_dataset
from recsys.data.schema import DataError
from recsys.features import build_token_table
from recsys.model_dir import ModelDirError, save_towers
from recsys.models.two_tower import TwoTowerConfig
from recsys.split import Split, temporal_split
from recsys.train_towers import TowerTrainConfig, train_two_tower

log = logging.getLogger(__name__)


def train_towers_into(out: Path, dataset: Dataset, split: Split, model_cfg: TwoTowerConfig,
                      train_cfg: TowerTrainConfig) -> dict:
    item_tokens = build_token_table(dataset.items, "item_id", split.items)
    user_tokens = build_token_table(dataset.users, "user_id", split.users)
    result = train_two_tower(split, model_cfg, train_cfg, item_tokens, user_tokens)
    config = {"dataset": dataset.name, "fingerprint": dataset.fingerprint(), "source": dataset.source,
              "seed": train_cfg.seed, "tower_training": train_cfg.to_dict(),
              "tower_result": {"best_epoch": result.best_epoch, "valid_NDCG@10": result.best_ndcg,
                               "seconds": round(result.seconds, 1), "curve": result.curve}}
    save_towers(out, result.model, split.users, split.items, item_tokens, user_tokens, config)
    log.info("saved towers to %s (best epoch %d, valid NDCG@10 %.4f, %.0f s)", out, result.best_epoch,
             result.best_ndcg, result.seconds)
    return config


def _add_dataclass_flags(parser: argparse.ArgumentParser, cls, skip=()) -> None:
    for f in fields(cls):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        if f.type in ("bool", bool):
            parser.add_argument(flag, type=lambda s: s.lower() in ("1", "true", "yes"), default=None,
                                metavar="BOOL")
        elif f.type in ("int", int, "int | None"):
            parser.add_argument(flag, type=int, default=None)
        else:
            parser.add_argument(flag, type=float, default=None)


def _pick(args: argparse.Namespace, cls, **fixed):
    values = {f.name: getattr(args, f.name) for f in fields(cls)
              if f.name not in fixed and getattr(args, f.name, None) is not None}
    return cls(**fixed, **values)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m recsys.train", description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True, help="ml-100k, instacart, synthetic[-1m] or a log path")
    parser.add_argument("--out", required=True, help="model directory to write")
    parser.add_argument("--items", help="item catalog for a user log")
    parser.add_argument("--users", help="user table for a user log")
    parser.add_argument("--data-dir", default=str(DEFAULT_DATA_DIR))
    _add_dataclass_flags(parser, TowerTrainConfig)
    _add_dataclass_flags(parser, TwoTowerConfig, skip=("n_users", "n_items"))
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> dict:
    dataset = load_dataset(args.dataset, args.data_dir, args.items, args.users)
    split = temporal_split(dataset)
    model_cfg = _pick(args, TwoTowerConfig, n_users=split.n_users, n_items=split.n_items)
    train_cfg = _pick(args, TowerTrainConfig)
    return train_towers_into(Path(args.out), dataset, split, model_cfg, train_cfg)


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    try:
        run(args)
    except (DataError, ModelDirError) as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

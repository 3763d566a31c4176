"""The trained-model directory written by `recsys.train` and read by evaluation and compression.

    DIR/config.json   how it was made: dataset + fingerprint, configs, seed, curves, versions
    DIR/towers.pt     two-tower state dict      DIR/ranker.pt  ranker state dict (when trained)
    DIR/users.json, items.json                  id maps (external ids, exact round trip)
    DIR/item_tokens.*, user_tokens.*            feature token tables
    DIR/ranking_features.npz                    arrays the ranker's feature builder reads (+ popularity)
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import torch

from recsys.bundle.manifest import library_versions
from recsys.data.idmap import IdMap
from recsys.data.tokens import TokenTable
from recsys.models.two_tower import TwoTower, TwoTowerConfig
from recsys.pipeline.contract import ModelSpecError

CONFIG = "config.json"


TOWERS = "towers.pt"


RANKER = "ranker.pt"


RANKING_FEATURES = "ranking_features.npz"


class ModelDirError(ModelSpecError):
    """A model directory is missing, incomplete, or belongs to another dataset."""


@dataclass
class TrainedModel:
    towers: TwoTower
    users: IdMap
    items: IdMap
    item_tokens: TokenTable
    user_tokens: TokenTable
    config: dict
    ranker: torch.nn.Module | None = None
    extras: dict = field(default_factory=dict)


def _atomic_write(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def save_json(path: Path, payload: dict) -> None:
    _atomic_write(path, lambda tmp: tmp.write_text(json.dumps(payload, indent=2, default=str)))


def save_towers(out: Path, model: TwoTower, users: IdMap, items: IdMap, item_tokens: TokenTable,
                user_tokens: TokenTable, config: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    _atomic_write(out / TOWERS, lambda tmp: torch.save(model.state_dict(), tmp))
    users.save(out / "users.json")
    items.save(out / "items.json")
    item_tokens.save(out / "item_tokens")
    user_tokens.save(out / "user_tokens")
    config = {**config, "towers": model.cfg.to_dict(), "created_at": datetime.now(UTC).isoformat(),
              "library_versions": library_versions()}
    save_json(out / CONFIG, config)


def save_ranker(out: Path, ranker: torch.nn.Module, config_updates: dict) -> None:
    """Write ``ranker.pt`` and merge ``config_updates`` (``"ranker"`` = its build config) into config.json."""
    _atomic_write(out / RANKER, lambda tmp: torch.save(ranker.state_dict(), tmp))
    save_json(out / CONFIG, {**load_config(out), **config_updates})


def is_model_dir(path: Path) -> bool:
    return (Path(path) / CONFIG).exists() and (Path(path) / TOWERS).exists()


def load_config(path: Path) -> dict:
    path = Path(path)
    if not (path / CONFIG).exists():
        raise ModelDirError(f"{path}: no {CONFIG}; train one with `python -m recsys.train --out {path}`")
    return json.loads((path / CONFIG).read_text())


def load_trained(path: Path) -> TrainedModel:
    path = Path(path)
    config = load_config(path)
    if not (path / TOWERS).exists():
        raise ModelDirError(f"{path}: {TOWERS} is missing; the training run did not finish")
    item_tokens = TokenTable.load(path / "item_tokens")
    user_tokens = TokenTable.load(path / "user_tokens")
    towers = TwoTower(TwoTowerConfig(**config["towers"]), torch.from_numpy(item_tokens.tokens),
                      len(item_tokens.vocab), torch.from_numpy(user_tokens.tokens), len(user_tokens.vocab))
    towers.load_state_dict(torch.load(path / TOWERS, weights_only=True))
    towers.eval()
    trained = TrainedModel(towers, IdMap.load(path / "users.json"), IdMap.load(path / "items.json"),
                           item_tokens, user_tokens, config)
    if (path / RANKER).exists() and "ranker" in config:
        from recsys.models.ranker import build_ranker

        trained.ranker = build_ranker(config["ranker"])
        trained.ranker.load_state_dict(torch.load(path / RANKER, weights_only=True))
        trained.ranker.eval()
    return trained


def check_same_data(trained: TrainedModel, users: IdMap, items: IdMap, where: Path) -> None:
    """Scoring a model on another dataset would silently mis-map ids; refuse by name instead."""
    if trained.users != users or trained.items != items:
        raise ModelDirError(f"{where} was trained on dataset {trained.config.get('dataset')!r} "
                            f"(fingerprint {trained.config.get('fingerprint')}); its id maps do not match this data")

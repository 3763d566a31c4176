"""Data-parallel tower training: 2 gloo ranks on 127.0.0.1 against one process at the same global batch.

Global batches of 45 rows (windows: 15) split 23 / 22 (8 / 7), so every step also exercises the
uneven shards of a gather. The float32 tolerance (see `test_two_ranks_train_what_one_process_trains`)
is for reductions summed in another order, not for any difference in the objective. The tests
on the spawned ranks are marked slow: two processes importing the stack take ~30 s on a busy
2-core box.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from recsys.data.tokens import build_token_table
from recsys.models.two_tower import TwoTowerConfig
from recsys.split import temporal_split
from recsys.train.distributed import SINGLE, shard
from recsys.train.model_dir import load_trained
from recsys.train.towers import (
    NextItemExamples,
    SequenceWindows,
    TowerObjective,
    TowerTrainConfig,
    build_model,
    sampled_softmax_loss,
    train_two_tower,
    wrap_for,
)
from tests.fixtures.data import checkerboard_dataset

WORLD = 2
# next: id dropout and uniform negatives (shared random draws); sequence: the sampled softmax
# (gathers of uneven length) and the full softmax (a global count of scored slots).
RUNS = {
    "next": ({"encoder": "pool"}, {"batch_size": 45, "user_id_dropout": 0.5, "uniform_negatives": 8}),
    "sequence-sampled": ({"encoder": "causal"}, {"windows_per_batch": 15, "full_softmax_items": 0}),
    "sequence-full": ({"encoder": "causal"}, {"windows_per_batch": 15}),
}


def _setup(name: str):
    """(split, model config, train config, token tables) of one run: one epoch of 8 (6) steps."""
    dataset = checkerboard_dataset()
    split = temporal_split(dataset)
    model, train = RUNS[name]
    model_cfg = TwoTowerConfig(n_users=split.n_users, n_items=split.n_items, dim=8, hidden=16, history_len=6,
                               dropout=0.0, blocks=1, **model)
    cfg = TowerTrainConfig(**{"epochs": 1, "lr": 0.01, "patience": 5, "seed": 7, "user_id_dropout": 0.0, **train})
    tokens = (build_token_table(dataset.items, "item_id", split.items), build_token_table(None, "user_id", split.users))
    return split, model_cfg, cfg, tokens


def _train(name: str, world=SINGLE):
    split, model_cfg, cfg, tokens = _setup(name)
    return train_two_tower(split, model_cfg, cfg, *tokens, world=world)


def _first_gradients(name: str, world=SINGLE) -> dict[str, torch.Tensor]:
    """The (dense) gradients of the first global batch, taken through DDP's averaging on ranks."""
    split, model_cfg, cfg, tokens = _setup(name)
    torch.manual_seed(cfg.seed)
    model = build_model(split, model_cfg, *tokens)
    examples = (SequenceWindows if model_cfg.encoder == "causal" else NextItemExamples)(split, model_cfg.history_len)
    rows = np.arange(cfg.windows_per_batch if model_cfg.encoder == "causal" else cfg.batch_size)
    local, first_row = shard(rows, world)
    step_loss = wrap_for(TowerObjective(model, examples, cfg, world=world), world)  # DDP must outlive backward
    step_loss(examples.batch(local), first_row, len(rows)).backward()
    return {key: param.grad.to_dense() for key, param in model.named_parameters() if param.grad is not None}


def _rank_main(rank: int, ports: tuple[int, int], tmp: str) -> None:
    """One torchrun-like rank: the three training runs, then the CLI writing a model directory.
    Each phase makes its own process group, on its own port: a second group on the same port can
    meet the first one's store before it has shut down."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(ports[0]), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(WORLD))
    from recsys.train import cli
    from recsys.train.distributed import cleanup, init_world

    world = init_world()
    try:
        for name in RUNS:
            torch.save(_first_gradients(name, world), Path(tmp) / f"{name}-gradients-rank{rank}.pt")
            result = _train(name, world)
            torch.save(result.model.state_dict(), Path(tmp) / f"{name}-rank{rank}.pt")
    finally:
        cleanup(world)
    real_save = cli.save_towers

    def recording_save(out, *args, **kwargs):
        (Path(tmp) / f"saved-by-rank{rank}").touch()
        return real_save(out, *args, **kwargs)

    cli.save_towers = recording_save
    os.environ["MASTER_PORT"] = str(ports[1])
    assert cli.main(["--dataset", str(Path(tmp) / "log.csv"), "--data-dir", tmp, "--out", str(Path(tmp) / "model"),
                     "--epochs", "2", "--dim", "8", "--hidden", "16", "--batch-size", "45",
                     "--skip-ranker", "true"]) == 0


def _free_ports(n: int) -> tuple[int, ...]:
    probes = [socket.socket() for _ in range(n)]
    for probe in probes:
        probe.bind(("127.0.0.1", 0))
    ports = tuple(probe.getsockname()[1] for probe in probes)
    for probe in probes:
        probe.close()
    return ports


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("ddp")
    checkerboard_dataset().interactions.to_csv(tmp / "log.csv", index=False)
    mp.spawn(_rank_main, args=(_free_ports(2), str(tmp)), nprocs=WORLD, join=True)
    return tmp


def _states(tmp: Path, name: str) -> list[dict]:
    return [torch.load(tmp / f"{name}-rank{rank}.pt", weights_only=True) for rank in range(WORLD)]


@pytest.mark.slow
@pytest.mark.parametrize("name", list(RUNS))
def test_synchronised_gradients_are_the_single_process_gradients(two_ranks, name):
    """Loss scaling and the sparse all-reduce: after DDP's averaging each rank holds the gradient
    one process computes on the whole global batch (float32 sums in another order: 1e-6)."""
    single = _first_gradients(name)
    for rank in range(WORLD):
        synchronised = torch.load(two_ranks / f"{name}-gradients-rank{rank}.pt", weights_only=True)
        assert synchronised.keys() == single.keys()
        for key, value in single.items():
            torch.testing.assert_close(synchronised[key], value, atol=1e-6, rtol=1e-5, msg=key)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(RUNS))
def test_ranks_hold_identical_parameters(two_ranks, name):
    first, second = _states(two_ranks, name)
    for key, value in first.items():
        assert torch.equal(value, second[key]), key  # gloo reduces once and shares the result: bit-identical


def _gradient_free(key: str, value: torch.Tensor) -> torch.Tensor:
    """Entries whose gradient is exactly zero in exact arithmetic: the attention-pooling logit's
    bias and the attention key bias (a softmax ignores a constant added to every logit). Their
    float32 gradient is rounding noise, which Adam scales up to steps of ~lr in either
    direction, so no two summation orders agree on them."""
    mask = torch.zeros_like(value, dtype=torch.bool)
    if key == "attention.2.bias":
        mask[:] = True
    if key.endswith("qkv.bias"):
        mask.view(3, -1)[1] = True
    return mask


@pytest.mark.slow
@pytest.mark.parametrize("name", list(RUNS))
def test_two_ranks_train_what_one_process_trains(two_ranks, name):
    """One process at global batch B against 2 ranks at B/2 for 8 (6) Adam steps: the same
    objective, so the same parameters up to float32 summation order (matmuls over half the rows,
    a sum of two half-batch gradients instead of one). Measured: <= 2e-6 apart (the sparse id
    rows, whose Adam steps see the fewest terms); 1e-5 is 1000x below one step (lr 0.01), so
    a wrong loss scale, a missing gather or unsynchronised rows fail it."""
    single = _train(name).model.state_dict()
    distributed = _states(two_ranks, name)[0]
    for key, value in single.items():
        kept = ~_gradient_free(key, value)
        torch.testing.assert_close(distributed[key][kept], value[kept], atol=1e-5, rtol=1e-5, msg=key)
    split, model_cfg, cfg, tokens = _setup(name)
    torch.manual_seed(cfg.seed)  # the initial weights, seeded as training seeds them
    initial = build_model(split, model_cfg, *tokens).state_dict()
    moved = max((single[key].float() - value.float()).abs().max().item() for key, value in initial.items())
    assert moved > 1e-2  # training moved the parameters far more than the tolerance


@pytest.mark.slow
def test_only_rank_zero_writes_the_model_dir(two_ranks):
    assert (two_ranks / "saved-by-rank0").exists() and not (two_ranks / "saved-by-rank1").exists()
    trained = load_trained(two_ranks / "model")
    config = json.loads((two_ranks / "model" / "config.json").read_text())
    assert trained.towers.cfg.dim == 8 and config["tower_result"]["throughput"][0]["processes"] == WORLD


def test_gathered_rows_score_like_the_whole_batch():
    """Rows 2.. of a batch scored against the whole batch give the whole batch's per-row losses."""
    torch.manual_seed(0)
    user, item = torch.randn(5, 4), torch.randn(5, 4)
    targets = torch.tensor([0, 1, 1, 2, 3])
    log_q = torch.log(torch.tensor([0.4, 0.3, 0.2, 0.1]))
    whole = sampled_softmax_loss(user, item, targets, log_q, torch.tensor(2.0), reduction="none")
    tail = sampled_softmax_loss(user[2:], item, targets, log_q, torch.tensor(2.0), first_row=2, reduction="none")
    np.testing.assert_allclose(tail.numpy(), whole[2:].numpy(), rtol=1e-6)

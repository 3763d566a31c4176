"""Data-parallel training under ``torchrun``: who this process is, and the few collectives training needs.

One machine, two processes::

    torchrun --nproc_per_node=2 -m recsys.train --dataset ml-100k --data-dir data --out models/ddp

Several machines (run the same command on each, ``--node_rank`` 0 .. nnodes-1; ``host:port`` is
a reachable address of one of them, the rendezvous store)::

    torchrun --nnodes=2 --node_rank=0 --nproc_per_node=2 \\
        --rdzv_backend c10d --rdzv_endpoint host:29400 --rdzv_id towers-1 \\
        -m recsys.train --dataset ml-100k --data-dir data --out models/ddp

``torchrun`` sets ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK``; `init_world` reads them (without them,
or with ``WORLD_SIZE=1``, training is the plain single process). Every rank needs the same data
under ``--data-dir``; only rank 0 writes the model directory, so ``--out`` needs to be on rank
0's machine alone.

The backend is gloo on CPU. With CUDA present the group is ``cpu:gloo,cuda:nccl``: the towers
train on CPU tensors today, and the sparse id-embedding gradients need gloo (nccl has no sparse
all-reduce) whatever the device.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class World:
    """This process's place among the training processes (``size == 1``: no group, no collectives)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


SINGLE = World()


def launched() -> bool:
    """True under ``torchrun`` (or any launcher setting ``WORLD_SIZE`` > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def default_backend() -> str:
    return "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"


def init_world(backend: str | None = None, timeout: timedelta = timedelta(minutes=30)) -> World:
    """Join the process group ``torchrun`` describes in the environment; `SINGLE` without one."""
    if not launched():
        return SINGLE
    if not dist.is_initialized():
        dist.init_process_group(backend or default_backend(), timeout=timeout)
    world = World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    log.info("rank %d of %d (local rank %d, backend %s)", world.rank, world.size, world.local_rank,
             dist.get_backend())
    return world


def barrier(world: World) -> None:
    if world.distributed:
        dist.barrier()


def cleanup(world: World) -> None:
    if world.distributed and dist.is_initialized():
        dist.destroy_process_group()


def shard(rows: np.ndarray, world: World) -> tuple[np.ndarray, int]:
    """This rank's contiguous slice of a global batch and its offset in it: concatenating the
    slices in rank order gives the global batch back, so gathered tensors keep the single
    process's row order. Slices differ in length by at most one (a short last batch)."""
    if not world.distributed:
        return rows, 0
    bounds = np.linspace(0, len(rows), world.size + 1).astype(np.int64)
    return rows[bounds[world.rank]:bounds[world.rank + 1]], int(bounds[world.rank])


def all_sum(values: torch.Tensor, world: World) -> torch.Tensor:
    """Sum over ranks (not differentiable; counts and logged losses)."""
    if not world.distributed:
        return values
    values = values.detach().clone()
    dist.all_reduce(values)
    return values


def broadcast_float(value: float, world: World) -> float:
    """Rank 0's ``value`` on every rank (the validation score that drives early stopping)."""
    if not world.distributed:
        return value
    box = torch.tensor([value], dtype=torch.float64)
    dist.broadcast(box, src=0)
    return float(box.item())


def gather_rows(tensor: torch.Tensor, world: World) -> tuple[torch.Tensor, int]:
    """All ranks' ``tensor`` concatenated along dim 0 in rank order, and where this rank's rows
    start in it. Differentiable: the gradient of the gathered rows flows back to the rank that
    owns them, summed over the ranks that used them. Ranks may hold different numbers of rows
    (a short last batch); they are padded for the collective and trimmed after."""
    if not world.distributed:
        return tensor, 0
    sizes = [int(n) for n in all_sum(_one_hot_count(len(tensor), world), world).tolist()]
    longest = max(sizes)
    padded = tensor
    if len(tensor) < longest:
        padded = torch.cat([tensor, tensor.new_zeros((longest - len(tensor), *tensor.shape[1:]))])
    parts = _AllGatherRows.apply(padded).split(longest)
    gathered = torch.cat([part[:n] for part, n in zip(parts, sizes, strict=True)])
    return gathered, sum(sizes[:world.rank])


class _AllGatherRows(torch.autograd.Function):
    """all_gather along dim 0 whose backward sums every rank's gradient for this rank's rows
    (an all-reduce, which gloo has; it has no reduce-scatter). Used in place of
    torch.distributed.nn.functional.all_gather, deprecated in torch 2.13."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        tensor = tensor.contiguous()
        parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, tensor)
        ctx.rows = slice(dist.get_rank() * len(tensor), (dist.get_rank() + 1) * len(tensor))
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad[ctx.rows]


def _one_hot_count(n: int, world: World) -> torch.Tensor:
    counts = torch.zeros(world.size, dtype=torch.int64)
    counts[world.rank] = n
    return counts

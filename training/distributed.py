"""Data-parallel training with torch.distributed: where this process sits, and its share of each batch.

`torchrun --nproc-per-node N -m training train TASK` sets RANK, WORLD_SIZE and LOCAL_RANK; a plain
`python -m training` run is the world of one. Every rank draws the same global batches (same seed,
same sampler) and takes every N-th row of each: the global batch is the single-process batch, so
1 and N processes see the same data in the same order, whatever the task's batch sampler (length
buckets included, which torch's DistributedSampler cannot shard).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.utils.data import Sampler


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def leader(self) -> bool:
        """Rank 0 alone logs, checkpoints, exports and registers."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1


SINGLE = Ranks()  # a plain run: one process


def start(cuda: bool) -> Ranks:
    """Join the process group torchrun describes (nccl on CUDA, gloo on CPU); a world of one otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return SINGLE
    ranks = Ranks(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    return ranks


def stop(ranks: Ranks) -> None:
    if ranks.distributed and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def mean_across(ranks: Ranks, value: float) -> float:
    """The mean of a per-rank number over all ranks (e.g. each rank's training loss)."""
    if not ranks.distributed:
        return value
    total = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(total)
    return float(total.item()) / ranks.world


def leader_says(ranks: Ranks, flag: bool) -> bool:
    """Rank 0's decision on every rank (e.g. early stopping): ranks must never disagree about the next step."""
    if not ranks.distributed:
        return flag
    value = torch.tensor([int(flag)])
    dist.broadcast(value, src=0)
    return bool(value.item())


class ShardedBatches(Sampler[list[int]]):
    """This rank's rows of every global batch: rows rank, rank + world, ... (strided, so length-sorted
    batches split evenly). Batches with fewer rows than ranks are skipped on every rank alike, so all
    ranks take the same number of steps (DistributedDataParallel hangs otherwise)."""

    def __init__(self, batches: Iterable[list[int]], ranks: Ranks):
        self.batches, self.ranks = batches, ranks

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.batches:
            if len(batch) >= self.ranks.world:
                yield list(batch)[self.ranks.rank :: self.ranks.world]

    def __len__(self) -> int:
        return len(self.batches)  # an upper bound: a short last batch may be skipped

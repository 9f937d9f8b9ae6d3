"""torch.distributed for `torchrun --nproc_per_node N -m ltbench train …`.

Every rank builds the same global batches from the same seeded batch sampler and trains on
its own slice of each, so a run on N processes sees exactly the batches of a single-process
run with the same global batch size (and any sampler kind — class-balanced and dual
included — needs no distributed variant of its own). Gradients are averaged by
DistributedDataParallel; rank 0 alone evaluates and writes the registry.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.distributed as dist
from torch.utils.data import Sampler


@dataclass(frozen=True)
class Dist:
    """This process's place in a distributed run (rank 0 of 1 when run alone)."""
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        """True in a multi-process run."""
        return self.world > 1

    @property
    def is_main(self) -> bool:
        """Rank 0, the one process that writes checkpoints, logs and the registry."""
        return self.rank == 0

    def barrier(self) -> None:
        """Wait for every rank; a no-op when run alone."""
        if self.enabled:
            dist.barrier()


def init_distributed(device: torch.device) -> Dist:
    """Join the process group torchrun describes in the environment (no-op when run alone)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        torch.cuda.set_device(local)
    return Dist(dist.get_rank(), dist.get_world_size(), local)


def device_for(device: torch.device, d: Dist) -> torch.device:
    """Each rank of a GPU job gets its own GPU (LOCAL_RANK)."""
    return torch.device("cuda", d.local_rank) if device.type == "cuda" and d.enabled else device


class ShardedBatchSampler(Sampler[list[int]]):
    """This rank's slice of every global batch (each of `halves` parts sliced separately)."""

    def __init__(self, inner, d: Dist, halves: int = 1):
        self.inner, self.d, self.halves = inner, d, halves

    def set_epoch(self, epoch: int) -> None:
        """Pass the epoch to the inner sampler so every rank shuffles the same way."""
        target = self.inner if hasattr(self.inner, "set_epoch") else getattr(self.inner, "sampler", None)
        if target is not None and hasattr(target, "set_epoch"):
            target.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.inner)

    def __iter__(self) -> Iterator[list[int]]:
        r, w = self.d.rank, self.d.world
        for batch in self.inner:
            part = len(batch) // self.halves
            if part % w:
                raise ValueError(f"a global batch of {part} does not split over {w} processes; "
                                 f"pick a batch_size divisible by {w}")
            n = part // w
            yield [i for h in range(self.halves) for i in batch[h * part + r * n: h * part + (r + 1) * n]]


def gather_rows(local: torch.Tensor, total: int, d: Dist) -> torch.Tensor:
    """Rows computed as indices r, r+w, r+2w … on each rank, back in their global order."""
    if not d.enabled:
        return local
    parts: list = [None] * d.world
    dist.all_gather_object(parts, local.cpu())
    out = torch.empty((total, *local.shape[1:]), dtype=local.dtype)
    for r, part in enumerate(parts):
        out[r::d.world] = part
    return out


def all_ranks_sum(value: float, d: Dist, device: torch.device) -> float:
    """Budgets count every rank's work (device-seconds add up over processes); every rank
    gets the same number, so all of them take the same stop decision."""
    if not d.enabled:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t.item())

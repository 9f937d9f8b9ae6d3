"""Training samplers: instance-balanced, class-balanced, square-root and dual (LPT) sampling.

Every sampler owns its torch.Generator, seeded from (seed, epoch): each `__iter__` (one
epoch) draws a new order and then moves to the next epoch, and `set_epoch(e)` makes a
resumed run draw exactly the order epoch e drew the first time. Draws are vectorised
(randperm / randint / multinomial), so a 400k-image epoch costs milliseconds.

`build_batch_sampler(kind, labels, batch_size, seed)` is the one call for every kind: a
BatchSampler (with `set_epoch`) over `build_sampler(kind, …)`, or for "dual" a
DualBatchSampler whose batches hold a class-balanced half and then an instance-balanced half.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np
import torch
from torch.utils.data import BatchSampler, Sampler

SAMPLERS = ("instance", "class", "sqrt")
BATCH_SAMPLERS = SAMPLERS + ("dual",)


def _generator(seed: int, epoch: int) -> torch.Generator:
    # SeedSequence mixes (seed, epoch) so seed s epoch e+1 never equals seed s+1 epoch e
    state = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(epoch)]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 31 | int(state[1]) >> 1)


class LTSampler(Sampler[int]):
    """Yields `num_samples` dataset indices an epoch; subclasses say how they are drawn."""

    kind = ""

    def __init__(self, labels: np.ndarray, seed: int = 0, num_samples: int | None = None):
        labels = np.asarray(labels, dtype=np.int64)
        if labels.ndim != 1 or len(labels) == 0:
            raise ValueError("a sampler needs a non-empty 1-d label array")
        if labels.min() < 0:
            raise ValueError(f"negative label {int(labels.min())}")
        self.labels = torch.from_numpy(labels)
        self.seed = int(seed)
        self.epoch = 0
        self.num_samples = len(labels) if num_samples is None else int(num_samples)
        if self.num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {self.num_samples}")

    def set_epoch(self, epoch: int) -> None:
        """The next `__iter__` draws epoch `epoch`'s order."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.num_samples

    def indices(self, epoch: int) -> torch.Tensor:
        """Epoch `epoch`'s indices (does not move the epoch counter)."""
        return self._draw(_generator(self.seed, epoch))

    def __iter__(self) -> Iterator[int]:
        idx = self.indices(self.epoch)
        self.epoch += 1
        return iter(idx.tolist())

    def _draw(self, g: torch.Generator) -> torch.Tensor:
        raise NotImplementedError


class InstanceSampler(LTSampler):
    """Every image equally likely: a shuffle (repeated or cut to num_samples)."""

    kind = "instance"

    def _draw(self, g: torch.Generator) -> torch.Tensor:
        n = len(self.labels)
        reps = -(-self.num_samples // n)
        perms = [torch.randperm(n, generator=g) for _ in range(reps)]
        return torch.cat(perms)[: self.num_samples]


class ClassWeightedSampler(LTSampler):
    """Draw a class with probability ∝ n_c^power, then an image of it uniformly (with replacement).

    power 0: class-balanced; power 0.5: square-root sampling; power 1 would be instance sampling.
    """

    def __init__(self, labels: np.ndarray, seed: int = 0, num_samples: int | None = None, power: float = 0.0):
        super().__init__(labels, seed, num_samples)
        self.power = float(power)
        counts = torch.bincount(self.labels)
        self.classes = torch.nonzero(counts).flatten()  # only classes that have images
        present = counts[self.classes].double()
        self.class_counts = present.long()
        self.class_probs = present.pow(self.power) / present.pow(self.power).sum()
        order = torch.argsort(self.labels, stable=True)
        self.by_class = order  # indices grouped by class, classes ascending
        starts = torch.zeros(len(counts), dtype=torch.long)
        starts[1:] = torch.cumsum(counts, 0)[:-1]
        self.class_starts = starts[self.classes]

    def _draw(self, g: torch.Generator) -> torch.Tensor:
        k = len(self.classes)
        if self.power == 0.0:
            which = torch.randint(k, (self.num_samples,), generator=g)
        else:
            which = torch.multinomial(self.class_probs, self.num_samples, replacement=True, generator=g)
        offset = (torch.rand(self.num_samples, generator=g, dtype=torch.float64) * self.class_counts[which]).long()
        offset = torch.minimum(offset, self.class_counts[which] - 1)
        return self.by_class[self.class_starts[which] + offset]


def build_sampler(kind: str, labels: np.ndarray, seed: int, num_samples: int | None = None) -> LTSampler:
    """`instance` (shuffle), `class` (class-balanced) or `sqrt` (class probability ∝ √n_c)."""
    if kind == "instance":
        s: LTSampler = InstanceSampler(labels, seed, num_samples)
    elif kind == "class":
        s = ClassWeightedSampler(labels, seed, num_samples, power=0.0)
    elif kind == "sqrt":
        s = ClassWeightedSampler(labels, seed, num_samples, power=0.5)
    elif kind == "dual":
        raise ValueError("sampler 'dual' yields whole batches (class-balanced + instance-balanced halves): "
                         "use build_batch_sampler('dual', labels, batch_size, seed)")
    else:
        raise ValueError(f"unknown sampler {kind!r}; known samplers: {', '.join(SAMPLERS)}")
    s.kind = kind
    return s


class DualBatchSampler(Sampler[list[int]]):
    """LPT's dual sampling: each batch is `batch_size` class-balanced indices, then `batch_size`
    instance-balanced ones (2·batch_size in all; split a batch with `x[:batch_size]`, `x[batch_size:]`).

    The instance half is a shuffled pass over the data; its number of batches sets the epoch
    length (`len`); with drop_last the partial last batch is dropped, otherwise it is kept with
    an equally short class-balanced half. The class half draws a class uniformly, then an image of
    it (with replacement). Both halves come from one generator seeded by (seed, epoch), so
    `set_epoch(e)` replays epoch e.
    """

    kind = "dual"

    def __init__(self, labels: np.ndarray, batch_size: int, seed: int = 0, drop_last: bool = True):
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.balanced = ClassWeightedSampler(labels, seed, power=0.0)  # validates labels; its tables
        self.batch_size = int(batch_size)
        self.drop_last = bool(drop_last)
        self.seed = int(seed)
        self.epoch = 0
        n = len(self.balanced.labels)
        self.num_instances = (n // self.batch_size) * self.batch_size if self.drop_last else n
        if self.num_instances == 0:
            raise ValueError(f"{n} images make no full batch of {self.batch_size}")
        self.balanced.num_samples = self.num_instances

    def set_epoch(self, epoch: int) -> None:
        """The next `__iter__` draws epoch `epoch`'s batches."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return -(-self.num_instances // self.batch_size)

    def indices(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Epoch `epoch`'s (class-balanced, instance) index streams, each `num_instances` long."""
        g = _generator(self.seed, epoch)
        instance = torch.randperm(len(self.balanced.labels), generator=g)[: self.num_instances]
        return self.balanced._draw(g), instance

    def __iter__(self) -> Iterator[list[int]]:
        balanced, instance = self.indices(self.epoch)
        self.epoch += 1
        bs = self.batch_size
        full = self.num_instances // bs * bs
        batches = torch.cat([balanced[:full].view(-1, bs), instance[:full].view(-1, bs)], 1).tolist()
        if full < self.num_instances:
            batches.append(balanced[full:].tolist() + instance[full:].tolist())
        return iter(batches)


class EpochBatchSampler(BatchSampler):
    """A BatchSampler that forwards `set_epoch` (and `kind`) to its sampler."""

    @property
    def kind(self) -> str:
        return getattr(self.sampler, "kind", "")

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)


def build_batch_sampler(kind: str, labels: np.ndarray, batch_size: int, seed: int,
                        drop_last: bool = True) -> BatchSampler | DualBatchSampler:
    """Batches for any kind, for DataLoader(batch_sampler=...): `dual` gives a DualBatchSampler
    (batches of 2·batch_size), every other kind a BatchSampler over `build_sampler(kind, ...)`.
    Both have `set_epoch`."""
    if kind == "dual":
        return DualBatchSampler(labels, batch_size, seed, drop_last=drop_last)
    if kind not in SAMPLERS:
        raise ValueError(f"unknown sampler {kind!r}; known samplers: {', '.join(BATCH_SAMPLERS)}")
    return EpochBatchSampler(build_sampler(kind, labels, seed), batch_size, drop_last)

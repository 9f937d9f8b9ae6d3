"""Training samplers: instance-balanced, class-balanced, square-root and dual (LPT) sampling.

Every sampler owns its torch.Generator, seeded from (seed, epoch): each `__iter__` (one
epoch) draws a new order and then moves to the next epoch, and `set_epoch(e)` makes a
resumed run draw exactly the order epoch e drew the first time. Draws are vectorised
(randperm / randint / multinomial), so a 400k-image epoch costs milliseconds.

Every kind is registered in `ltbench.plugins.SAMPLERS`: a per-image sampler as its builder
`(labels, seed, num_samples) -> LTSampler`, a batch made of several samplers' parts as `Parts`
("dual" = class + instance, LPT's dual sampling). A new sampler is one registration.

`build_batch_sampler(kind, labels, batch_size, seed)` is the one call for every kind: a
BatchSampler (with `set_epoch`) over `build_sampler(kind, …)`, or for a `Parts` kind or several
kinds (a tuple) a PartsBatchSampler whose batches hold one part per kind.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import BatchSampler, Sampler

from ..plugins import SAMPLERS


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


@SAMPLERS.register("instance", help="every image equally likely: a shuffle")
def instance_sampler(labels: np.ndarray, seed: int, num_samples: int | None = None) -> LTSampler:
    return InstanceSampler(labels, seed, num_samples)


@SAMPLERS.register("class", help="class-balanced: a class uniformly, then one of its images")
def class_sampler(labels: np.ndarray, seed: int, num_samples: int | None = None) -> LTSampler:
    return ClassWeightedSampler(labels, seed, num_samples, power=0.0)


@SAMPLERS.register("sqrt", help="square-root sampling: a class with probability ∝ √n_c, then one of its images")
def sqrt_sampler(labels: np.ndarray, seed: int, num_samples: int | None = None) -> LTSampler:
    return ClassWeightedSampler(labels, seed, num_samples, power=0.5)


@dataclass(frozen=True)
class Parts:
    """A registered kind whose batches are parts drawn by other kinds, `batch_size` each, in order."""

    kinds: tuple[str, ...]


#: LPT's dual sampling: a class-balanced part, then an instance part
DUAL = Parts(("class", "instance"))
SAMPLERS.register("dual", help="LPT's dual sampling: a class-balanced part, then an instance-sampled part")(DUAL)


def _lookup(kind: str):
    if kind not in SAMPLERS:
        raise ValueError(f"unknown sampler {kind!r}; known samplers: {', '.join(SAMPLERS.registered())}")
    return SAMPLERS.get(kind)


def build_sampler(kind: str, labels: np.ndarray, seed: int, num_samples: int | None = None) -> LTSampler:
    """The per-image sampler registered as `kind`: `instance` (shuffle), `class` (class-balanced),
    `sqrt` (class probability ∝ √n_c), …"""
    builder = _lookup(kind)
    if isinstance(builder, Parts):
        raise ValueError(f"sampler {kind!r} yields whole batches ({' + '.join(builder.kinds)} parts): "
                         f"use build_batch_sampler({kind!r}, labels, batch_size, seed)")
    s = builder(labels, seed, num_samples)
    s.kind = kind
    return s


class PartsBatchSampler(Sampler[list[int]]):
    """Batches made of parts: `batch_size` indices from each kind's sampler, in order.

    LPT's dual sampling is `("class", "instance")`: a class-balanced part, then an
    instance-sampled part (2·batch_size in all; part p is `x[p·batch_size:(p+1)·batch_size]`).
    An epoch is `len(labels) // batch_size` batches (one pass of instance sampling), or with
    `drop_last=False` one more, shorter batch whose parts are equally short. Every part's stream
    is drawn from one generator seeded by (seed, epoch), so `set_epoch(e)` replays epoch e.
    """

    def __init__(self, labels: np.ndarray, batch_size: int, kinds: tuple[str, ...] | list[str], seed: int = 0,
                 drop_last: bool = True):
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.kinds = tuple(kinds)
        if not self.kinds:
            raise ValueError("a batch needs at least one part")
        self.samplers = [build_sampler(k, labels, seed) for k in self.kinds]  # validate kinds and labels
        self.batch_size = int(batch_size)
        self.drop_last = bool(drop_last)
        self.seed = int(seed)
        self.epoch = 0
        n = len(self.samplers[0].labels)
        self.num_samples = (n // self.batch_size) * self.batch_size if self.drop_last else n
        if self.num_samples == 0:
            raise ValueError(f"{n} images make no full batch of {self.batch_size}")
        for s in self.samplers:
            s.num_samples = self.num_samples

    @property
    def kind(self) -> str:
        return "+".join(self.kinds)

    def set_epoch(self, epoch: int) -> None:
        """The next `__iter__` draws epoch `epoch`'s batches."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return -(-self.num_samples // self.batch_size)

    def indices(self, epoch: int) -> list[torch.Tensor]:
        """Epoch `epoch`'s index stream of every part, each `num_samples` long."""
        g = _generator(self.seed, epoch)
        return [s._draw(g) for s in self.samplers]

    def __iter__(self) -> Iterator[list[int]]:
        streams = self.indices(self.epoch)
        self.epoch += 1
        bs = self.batch_size
        full = self.num_samples // bs * bs
        batches = torch.cat([st[:full].view(-1, bs) for st in streams], 1).tolist()
        if full < self.num_samples:
            batches.append([i for st in streams for i in st[full:].tolist()])
        return iter(batches)


class EpochBatchSampler(BatchSampler):
    """A BatchSampler that forwards `set_epoch` (and `kind`) to its sampler."""

    @property
    def kind(self) -> str:
        return getattr(self.sampler, "kind", "")

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)


def build_batch_sampler(kind: str | tuple[str, ...] | list[str], labels: np.ndarray, batch_size: int, seed: int,
                        drop_last: bool = True) -> BatchSampler | PartsBatchSampler:
    """Batches for DataLoader(batch_sampler=...), with `set_epoch`: for one kind a BatchSampler over
    `build_sampler(kind, ...)`; for several kinds, or a `Parts` kind such as `dual` (= class +
    instance), a PartsBatchSampler with one `batch_size` part per kind."""
    kinds = (kind,) if isinstance(kind, str) else tuple(kind)
    if len(kinds) == 1 and isinstance(_lookup(kinds[0]), Parts):
        kinds = _lookup(kinds[0]).kinds
    if len(kinds) > 1:
        return PartsBatchSampler(labels, batch_size, kinds, seed, drop_last=drop_last)
    return EpochBatchSampler(build_sampler(kinds[0], labels, seed), batch_size, drop_last)

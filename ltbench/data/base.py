"""The dataset every source produces: a long-tailed train split, balanced val/test, OOD sets.

Images stay lazy (arrays in memory or paths on disk); labels are always an int64 array, so
class counts, shot groups and metrics never touch pixels.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from PIL import Image

from ..errors import DataError
from ..metrics import FEW_THRESHOLD, MANY_THRESHOLD, shot_groups


def load_image(path: str | Path, draft: bool = False) -> Image.Image:
    """An RGB image; 16-bit greys (PNG `I;16`, `I`) are scaled to 8 bits, not clipped at 255."""
    with Image.open(path) as im:
        if draft:
            im.draft("RGB", (64, 64))  # JPEG only: a faster decode of the same bytes, for checks
        if im.mode.startswith("I;16") or im.mode == "I":
            a = np.asarray(im).astype(np.int64)
            im8 = Image.fromarray((np.clip(a, 0, 65535) >> 8).astype(np.uint8), "L")
            return im8.convert("RGB")
        return im.convert("RGB")


class Split:
    """A list of labelled images. Subclasses say where the pixels come from."""

    labels: np.ndarray
    #: Classes an OOD set covers (e.g. ImageNet-R's 200); None means all classes.
    class_subset: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def image(self, i: int) -> Image.Image:
        """Sample i as an RGB image, decoded only when asked: a split of 400k files costs nothing until read."""
        raise NotImplementedError

    def where(self, i: int) -> str:
        """Where sample i comes from, for error messages."""
        return f"sample {i}"

    def check(self, decode: bool = True) -> None:
        """Fail before training if any sample cannot be read (with `decode`, every image is decoded)."""

    def subset(self, idx: Sequence[int] | np.ndarray) -> "Split":
        """The samples at `idx`, as a split of the same kind (LT-Soups' capped subsets, a rank's shard,
        the readable images): cheap, since only the list is copied, never the pixels or files."""
        raise NotImplementedError

    def unreadable(self) -> list[int]:
        """Indices of samples whose image cannot be decoded (opens every image: slow, opt-in)."""
        bad = []
        for i in range(len(self)):
            try:
                self.image(i)
            except DataError:
                bad.append(i)
        return bad


class ArraySplit(Split):
    """Images held in memory as uint8 arrays (N×H×W grey or N×H×W×3 RGB)."""

    def unreadable(self) -> list[int]:
        """None: pixels in memory were decoded when the split was built."""
        return []

    def __init__(self, images: np.ndarray, labels: np.ndarray, class_subset: np.ndarray | None = None):
        if len(images) != len(labels):
            raise DataError(f"{len(images)} images but {len(labels)} labels")
        self.images = images
        self.labels = np.asarray(labels, dtype=np.int64)
        self.class_subset = class_subset

    def image(self, i: int) -> Image.Image:
        """RGB even for grey arrays (Fashion-MNIST): every backbone takes three channels."""
        return Image.fromarray(self.images[i]).convert("RGB")

    def subset(self, idx: Sequence[int] | np.ndarray) -> "ArraySplit":
        """The rows at `idx`; the class subset is kept, as the classes a split covers do not change."""
        idx = np.asarray(idx, dtype=np.int64)
        return ArraySplit(self.images[idx], self.labels[idx], self.class_subset)


class FileSplit(Split):
    """Images on disk, listed by a split file (`relative/path label` per line)."""

    def __init__(
        self,
        root: str | Path,
        paths: Sequence[str],
        labels: np.ndarray,
        source: str | Path | None = None,
        lines: Sequence[int] | None = None,
        class_subset: np.ndarray | None = None,
    ):
        self.root = Path(root)
        self.paths = list(paths)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.source = str(source) if source is not None else None
        self.lines = list(lines) if lines is not None else None
        self.class_subset = class_subset

    def where(self, i: int) -> str:
        """The split file and line that listed sample i, so a bad image can be fixed at its source."""
        if self.source is not None and self.lines is not None:
            return f"{self.source}:{self.lines[i]} ({self.paths[i]})"
        return str(self.root / self.paths[i])

    def image(self, i: int, draft: bool = False) -> Image.Image:
        """Sample i from disk; a missing or broken file is a DataError naming its split-file line (not
        a PIL traceback). `draft`: JPEGs at reduced scale, enough to know the file decodes."""
        path = self.root / self.paths[i]
        try:
            return load_image(path, draft)
        except FileNotFoundError:
            raise DataError(f"missing image {path} listed at {self.where(i)}") from None
        except (OSError, ValueError, Image.DecompressionBombError) as e:
            raise DataError(f"unreadable image {path} listed at {self.where(i)}: {e}") from None

    def _decode_errors(self) -> dict[int, str]:
        """Every image decoded once (threads; JPEGs at reduced scale, which still reads every byte)."""
        def error(i: int) -> str | None:
            try:
                self.image(i, draft=True)
            except DataError as e:
                return str(e)
            return None

        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
            return {i: e for i, e in enumerate(pool.map(error, range(len(self)), chunksize=32)) if e}

    def unreadable(self) -> list[int]:
        """Every image decoded once (threaded): what --skip-bad-images drops."""
        return sorted(self._decode_errors())

    def check(self, decode: bool = True) -> None:
        """Fail before training, not hours in, on a missing or (with `decode`) undecodable file."""
        for i, p in enumerate(self.paths):
            if not (self.root / p).is_file():
                raise DataError(f"missing image {self.root / p} listed at {self.where(i)}")
        errors = self._decode_errors() if decode else {}
        if errors:
            first = errors[min(errors)]
            more = f" ({len(errors)} unreadable in this split)" if len(errors) > 1 else ""
            raise DataError(f"{first}{more}; fix or drop it, or pass --skip-bad-images")

    def subset(self, idx: Sequence[int] | np.ndarray) -> "FileSplit":
        """The files at `idx`, keeping their split-file lines so errors still point at the source."""
        idx = [int(i) for i in idx]
        return FileSplit(
            self.root,
            [self.paths[i] for i in idx],
            self.labels[idx],
            self.source,
            [self.lines[i] for i in idx] if self.lines is not None else None,
            self.class_subset,
        )


def exponential_profile(num_classes: int, head: int, imbalance: float) -> list[int]:
    """n_i = int(head · IF^(−i/(C−1))): the CIFAR-100-LT profile, for any class count."""
    if imbalance < 1:
        raise DataError(f"imbalance factor must be >= 1, got {imbalance}")
    if num_classes == 1:
        return [int(head)]
    return [int(head * imbalance ** (-i / (num_classes - 1))) for i in range(num_classes)]


def lt_train_val(labels: np.ndarray, classnames: Sequence[str], head: int, imbalance: float, val_per_class: int,
                 rng_train: np.random.Generator, rng_val: np.random.Generator, source: str) -> tuple[np.ndarray, np.ndarray]:
    """Indices of an exponential-profile LT train split and a balanced val split from the rest."""
    c = len(classnames)
    counts = exponential_profile(c, head, imbalance)
    if min(counts) < 1:
        raise DataError(f"{source}: head={head}, imbalance={imbalance} leaves a class with no training images: {counts}")
    avail = np.bincount(labels, minlength=c)
    need = np.asarray(counts) + val_per_class
    if (need > avail).any():
        k = int(np.argmax(need > avail))
        raise DataError(
            f"{source}: class {k} ({classnames[k]}) has {int(avail[k])} training images,"
            f" profile {counts[k]} + val_per_class {val_per_class} = {int(need[k])} requested"
        )
    train_idx = take_per_class(labels, counts, rng_train)
    rest = np.setdiff1d(np.arange(len(labels)), train_idx, assume_unique=True)
    return train_idx, take_per_class(labels, [val_per_class] * c, rng_val, pool=rest)


@dataclass
class LTDataset:
    """Everything a run needs from the data, and nothing about pixels' transforms."""

    name: str
    classnames: list[str]
    train: Split
    val: Split
    test: Split
    ood: dict[str, Split] = field(default_factory=dict)
    many_threshold: int = MANY_THRESHOLD
    few_threshold: int = FEW_THRESHOLD
    #: The resolved source options (recorded in the expert's config).
    options: dict[str, Any] = field(default_factory=dict)
    #: images dropped by `validate(skip_bad_images=True)`, per split
    skipped: dict[str, int] = field(default_factory=dict)

    def _drop_unreadable(self) -> None:
        splits = {"train": self.train, "val": self.val, "test": self.test, **{f"ood:{k}": v for k, v in self.ood.items()}}
        for name, split in splits.items():
            bad = split.unreadable()
            if not bad:
                continue
            self.skipped[name] = len(bad)
            kept = split.subset(np.setdiff1d(np.arange(len(split)), bad))
            if name.startswith("ood:"):
                self.ood[name[4:]] = kept
            else:
                setattr(self, name, kept)

    @property
    def num_classes(self) -> int:
        """From the class names, not the labels: a class with no training image still has a logit."""
        return len(self.classnames)

    @property
    def class_counts(self) -> np.ndarray:
        """Training images per class (0 where none): the prior that LT losses and samplers reweigh by."""
        return np.bincount(self.train.labels, minlength=self.num_classes)

    def shot_groups(self) -> np.ndarray:
        """Many / medium / few of each class from its training count, for the per-group accuracies."""
        return shot_groups(self.class_counts, self.many_threshold, self.few_threshold)

    def eval_splits(self) -> dict[str, Split]:
        """Splits whose logits are cached with every expert: val, test, then `ood:<name>`."""
        out = {"val": self.val, "test": self.test}
        out.update({f"ood:{k}": v for k, v in self.ood.items()})
        return out

    def validate(self, skip_bad_images: bool = False) -> None:
        """Label range, empty training classes, readable files: fail before training starts.

        Every image of every split (train, val, test, OOD) is decoded once, so a bad test image
        fails now, not after training. With `skip_bad_images`, unreadable or truncated ones are
        dropped and counted in `self.skipped` instead of failing the run.
        """
        c = self.num_classes
        if skip_bad_images:
            self._drop_unreadable()
        for split_name, split in [("train", self.train), ("val", self.val), ("test", self.test), *self.ood.items()]:
            bad = np.flatnonzero((split.labels < 0) | (split.labels >= c))
            if len(bad):
                i = int(bad[0])
                raise DataError(
                    f"{split_name}: label {int(split.labels[i])} at {split.where(i)} is outside 0..{c - 1}"
                )
        empty = np.flatnonzero(self.class_counts == 0)
        if len(empty):
            k = int(empty[0])
            raise DataError(
                f"class {k} ({self.classnames[k]!r}) has no training images"
                f" ({len(empty)} empty classes in all)"
            )
        for split in [self.train, self.val, self.test, *self.ood.values()]:
            split.check(decode=not skip_bad_images)  # skipping decoded them all already


class TorchSplit:
    """A torch-style dataset view of a Split: (image tensor, label, index)."""

    def __init__(self, split: Split, transform: Callable[[Image.Image], Any]):
        self.split = split
        self.transform = transform

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int):
        return self.transform(self.split.image(i)), int(self.split.labels[i]), i


def take_per_class(
    labels: np.ndarray,
    counts: Sequence[int] | np.ndarray,
    rng: np.random.Generator,
    pool: np.ndarray | None = None,
) -> np.ndarray:
    """Seeded random indices: `counts[c]` samples of each class c, drawn from `pool` (default all).

    Returns the chosen indices sorted; raises DataError naming the first class that is short.
    """
    labels = np.asarray(labels, dtype=np.int64)
    counts = np.asarray(counts, dtype=np.int64)
    pool = np.arange(len(labels)) if pool is None else np.asarray(pool, dtype=np.int64)
    have = np.bincount(labels[pool], minlength=len(counts))[: len(counts)]
    short = np.flatnonzero(have < counts)
    if len(short):
        c = int(short[0])
        raise DataError(f"class {c}: {int(counts[c])} images requested but only {int(have[c])} available")
    perm = rng.permutation(pool)
    perm = perm[labels[perm] < len(counts)]
    order = perm[np.argsort(labels[perm], kind="stable")]
    sorted_labels = labels[order]
    starts = np.searchsorted(sorted_labels, np.arange(len(counts)))
    rank = np.arange(len(order)) - starts[sorted_labels]
    return np.sort(order[rank < counts[sorted_labels]])

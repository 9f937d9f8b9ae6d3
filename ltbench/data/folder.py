"""`image-folder`: a generic class-per-folder layout.

    root/train/<class>/*.jpg|png|...    required; the classes are its subfolders, sorted
    root/val/<class>/...                optional; if absent, `val_per_class` a class is drawn from train
    root/test/<class>/...               required; a subset of train's classes

With `imbalance` set, the training split is cut to the exponential profile
n_i = int(head · IF^(−i/(C−1))) over the sorted classes (head defaults to the smallest class
size available, so the profile always fits); with only `head` set, every class is capped at
`head` images. Subsets are seeded.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import numpy as np

from ..checks import Float, Int, Opt
from ..errors import DataError
from ..plugins import DATASETS
from .base import FileSplit, LTDataset, exponential_profile, take_per_class

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")


def _class_dirs(folder: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))


def _images(folder: Path) -> list[str]:
    return sorted(
        e.name
        for e in os.scandir(folder)
        if e.is_file() and not e.name.startswith(".") and e.name.lower().endswith(IMAGE_EXTENSIONS)
    )


def scan_folder(root: Path, split: str, classes: list[str]) -> FileSplit:
    """All images under root/split/<class>/, labelled by the class's index in `classes`."""
    index = {c: k for k, c in enumerate(classes)}
    paths: list[str] = []
    labels: list[int] = []
    for c in _class_dirs(root / split):
        if c not in index:
            raise DataError(f"{root / split / c}: class folder {c!r} is not among the training classes")
        files = _images(root / split / c)
        paths += [f"{split}/{c}/{f}" for f in files]
        labels += [index[c]] * len(files)
    if not paths:
        raise DataError(f"no images found under {root / split} (extensions: {', '.join(IMAGE_EXTENSIONS)})")
    return FileSplit(root, paths, np.asarray(labels, dtype=np.int64))


@DATASETS.register("image-folder")
def image_folder(
    root: str | None = None,
    seed: int = 0,
    val_per_class: Annotated[int, Int(lo=1, hi=10**6)] = 20,
    imbalance: Annotated[float | None, Opt(Float(lo=1, hi=1e6))] = None,
    head: Annotated[int | None, Opt(Int(lo=1, hi=10**7))] = None,
) -> LTDataset:
    """Generic root/{train,val,test}/<class>/ image folders, optional LT profile on train."""
    if root is None:
        raise DataError("image-folder needs root=<folder with train/ and test/ class folders>")
    root_p = Path(root).expanduser()
    for split in ("train", "test"):
        if not (root_p / split).is_dir():
            raise DataError(f"image-folder: {root_p / split} not found (expected root/{{train,val,test}}/<class>/)")
    classes = _class_dirs(root_p / "train")
    if not classes:
        raise DataError(f"image-folder: {root_p / 'train'} has no class folders")
    c = len(classes)
    train = scan_folder(root_p, "train", classes)
    test = scan_folder(root_p, "test", classes)
    r_val, r_train = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))
    if (root_p / "val").is_dir():
        val = scan_folder(root_p, "val", classes)
    else:
        counts = np.bincount(train.labels, minlength=c)
        short = np.flatnonzero(counts <= val_per_class)
        if len(short):
            k = int(short[0])
            raise DataError(
                f"image-folder: no val/ folder, and class {classes[k]!r} has {int(counts[k])} training images:"
                f" too few to hold out val_per_class={val_per_class} (add root/val/ or lower val_per_class)"
            )
        val_idx = take_per_class(train.labels, [val_per_class] * c, r_val)
        keep = np.setdiff1d(np.arange(len(train)), val_idx, assume_unique=True)
        val, train = train.subset(val_idx), train.subset(keep)
    if imbalance is not None or head is not None:
        avail = np.bincount(train.labels, minlength=c)
        if imbalance is None:
            want = np.minimum(avail, head)
        else:
            want = np.asarray(exponential_profile(c, int(head) if head is not None else int(avail.min()), imbalance))
            over = np.flatnonzero(want > avail)
            if len(over):
                k = int(over[0])
                raise DataError(
                    f"image-folder: the LT profile asks {int(want[k])} images of class {classes[k]!r},"
                    f" which has {int(avail[k])} training images (lower head=)"
                )
            if want.min() < 1:
                raise DataError(f"image-folder: head={head}, imbalance={imbalance} leaves a class with no images")
        train = train.subset(take_per_class(train.labels, want, r_train))
    names = [n.replace("_", " ") for n in classes]
    return LTDataset(name="image-folder", classnames=names, train=train, val=val, test=test)

"""`cifar100-lt`: CIFAR-100-LT from a local CIFAR-100 copy in torchvision's layout.

    root/cifar-100-python/{train,test,meta}   (the python pickles; nothing is downloaded)

Training split: n_i = int(head · IF^(−i/99)) images of class i, a seeded random subset
(IF 100, head 500 gives 10,847); validation: `val_per_class` images per class from the
training images left over; test: the balanced 10,000. With `val_from=test` (LT-Soups' official
split, its datasets/cifar100.py:22-33) validation is instead the first `val_per_class` test
images of each class in file order and the test set the rest (10 a class: 1,000 / 9,000).
"""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import Annotated, Any

import numpy as np

from ..checks import Choice, Float, Int
from ..errors import DataError
from ..plugins import DATASETS
from .base import ArraySplit, LTDataset, exponential_profile, lt_train_val

FOLDER = "cifar-100-python"


def _get(d: dict, key: str) -> Any:
    for k in (key, key.encode()):
        if k in d:
            return d[k]
    raise KeyError(key)


def _load_pickle(path: Path) -> dict:
    if not path.is_file():
        raise DataError(
            f"CIFAR-100 file {path} not found: expected torchvision's layout"
            f" <root>/{FOLDER}/{{train,test,meta}} (pass root=<folder holding {FOLDER}>)"
        )
    try:
        with open(path, "rb") as f:
            return pickle.load(f, encoding="bytes")
    except Exception as e:  # noqa: BLE001 - any unpickling failure is bad data
        raise DataError(f"cannot read CIFAR-100 pickle {path}: {e}") from None


def _read_part(path: Path) -> tuple[np.ndarray, np.ndarray]:
    d = _load_pickle(path)
    try:
        data = np.asarray(_get(d, "data"), dtype=np.uint8)
        labels = np.asarray(_get(d, "fine_labels"), dtype=np.int64)
    except KeyError as e:
        raise DataError(f"{path}: no {e.args[0]!r} entry (is this CIFAR-100?)") from None
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(data) != len(labels):
        raise DataError(f"{path}: expected N×3072 images and N labels, got {data.shape} and {labels.shape}")
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).copy(), labels


def load_cifar100(root: str | Path) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(class names, train images N×32×32×3, train labels, test images, test labels)."""
    root = Path(root)
    folder = root if root.name == FOLDER else root / FOLDER
    meta = _load_pickle(folder / "meta")
    try:
        raw = _get(meta, "fine_label_names")
        # "aquarium_fish" -> "aquarium fish": names double as text prompts
        names = [(n.decode() if isinstance(n, bytes) else str(n)).replace("_", " ") for n in raw]
    except KeyError:
        raise DataError(f"{folder / 'meta'}: no 'fine_label_names' entry (is this CIFAR-100?)") from None
    x_tr, y_tr = _read_part(folder / "train")
    x_te, y_te = _read_part(folder / "test")
    for part, y in (("train", y_tr), ("test", y_te)):
        bad = np.flatnonzero((y < 0) | (y >= len(names)))
        if len(bad):
            raise DataError(
                f"{folder / part}: label {int(y[bad[0]])} at index {int(bad[0])} is outside 0..{len(names) - 1}"
            )
    return names, x_tr, y_tr, x_te, y_te


@DATASETS.register("cifar100-lt")
def cifar100_lt(
    root: str | None = None,
    seed: int = 0,
    imbalance: Annotated[float, Float(lo=1, hi=1e6)] = 100,
    head: Annotated[int, Int(lo=1, hi=10**7)] = 500,
    val_per_class: Annotated[int, Int(lo=1, hi=10**6)] = 20,
    val_from: Annotated[str, Choice(("train", "test"))] = "train",
) -> LTDataset:
    """CIFAR-100-LT (n_i = int(500·IF^(−i/99))) from <root>/cifar-100-python pickles."""
    if root is None:
        raise DataError(f"cifar100-lt needs root=<folder holding {FOLDER}/> (torchvision's CIFAR-100 layout)")
    names, x_tr, y_tr, x_te, y_te = load_cifar100(root)
    r_train, r_val = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))
    if val_from == "test":
        train_idx, _ = lt_train_val(y_tr, names, head, imbalance, 0, r_train, r_val, "cifar100-lt")
        rank = np.empty(len(y_te), dtype=np.int64)  # position of each test image within its class, in file order
        for c in range(len(names)):
            where = np.flatnonzero(y_te == c)
            rank[where] = np.arange(len(where))
        val_idx, test_idx = np.flatnonzero(rank < val_per_class), np.flatnonzero(rank >= val_per_class)
        val = ArraySplit(x_te[val_idx], y_te[val_idx])
        test = ArraySplit(x_te[test_idx], y_te[test_idx])
    else:
        train_idx, val_idx = lt_train_val(y_tr, names, head, imbalance, val_per_class, r_train, r_val, "cifar100-lt")
        val = ArraySplit(x_tr[val_idx], y_tr[val_idx])
        test = ArraySplit(x_te, y_te)
    val.indices = val_idx
    train = ArraySplit(x_tr[train_idx], y_tr[train_idx])
    train.indices = train_idx
    return LTDataset(name="cifar100-lt", classnames=names, train=train, val=val, test=test)


def _count_train(root: str | None, head: int, imbalance: float, **_: object) -> int:
    """Its exponential profile's total, without reading the pickles (what `--plan` shows)."""
    return int(sum(exponential_profile(100, head, imbalance)))


cifar100_lt.count_train = _count_train

"""`fashion-mnist-lt`: the offline default source.

Fashion-MNIST comes from the Debian package `dataset-fashion-mnist` (IDX files in
/usr/share/datasets/fashion-mnist/), or from the folder `root` / `$LTBENCH_FASHION_MNIST` names. The training split follows the CIFAR-LT exponential
profile over the 10 classes; the balanced validation split is drawn from the training
images left over (disjoint from the LT split); the test split is the official 10,000
(optionally a balanced subset). The OOD set `fashion-mnist-sketch` renders the same test
images as line drawings (edges dark on white), the analogue of ImageNet-Sketch.
"""
from __future__ import annotations

import gzip
import os
from functools import lru_cache
from pathlib import Path
from typing import Annotated

import numpy as np

from ..checks import Float, Int, Opt
from ..errors import DataError
from ..plugins import DATASETS
from .base import (
    ArraySplit,
    LTDataset,
    exponential_profile,
    lt_train_val,
    take_per_class,
)

DEFAULT_ROOT = "/usr/share/datasets/fashion-mnist"
CLASSNAMES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
SKETCH = "fashion-mnist-sketch"

# IDX type codes -> numpy big-endian dtypes
_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | Path, ndim: int | None = None) -> np.ndarray:
    """Read an IDX file (optionally gzip-compressed); DataError naming the file on bad input."""
    path = Path(path)
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except (OSError, EOFError) as e:
        raise DataError(f"cannot read IDX file {path}: {e}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES:
        raise DataError(f"{path}: not an IDX file (bad magic number {raw[:4].hex() or 'empty'})")
    nd = raw[3]
    if ndim is not None and nd != ndim:
        raise DataError(f"{path}: expected a {ndim}-dimensional IDX array, the header says {nd}")
    header = 4 + 4 * nd
    if len(raw) < header:
        raise DataError(f"{path}: truncated IDX header")
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=nd, offset=4))
    dtype = np.dtype(_IDX_TYPES[raw[2]])
    expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) != expected:
        raise DataError(f"{path}: header shape {shape} needs {expected} bytes, the file has {len(raw)}")
    arr = np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)
    return arr.astype(dtype.newbyteorder("="), copy=False)


def _find(folder: Path, stem: str) -> Path:
    for name in (stem + ".gz", stem):
        if (folder / name).is_file():
            return folder / name
    raise DataError(f"Fashion-MNIST file {folder / (stem + '.gz')} not found")


@lru_cache(maxsize=4)
def _load_cached(folder: str, stamp: tuple) -> tuple[np.ndarray, ...]:
    f = Path(folder)
    out = []
    for split in ("train", "test"):
        img_path, lab_path = _find(f, FILES[f"{split}_images"]), _find(f, FILES[f"{split}_labels"])
        images, labels = read_idx(img_path, ndim=3), read_idx(lab_path, ndim=1)
        if len(images) != len(labels):
            raise DataError(f"{img_path} has {len(images)} images but {lab_path} has {len(labels)} labels")
        if images.dtype != np.uint8:
            raise DataError(f"{img_path}: expected unsigned bytes, got {images.dtype}")
        bad = np.flatnonzero(labels >= len(CLASSNAMES))
        if len(bad):
            raise DataError(f"{lab_path}: label {int(labels[bad[0]])} at index {int(bad[0])} is outside 0..9")
        labels = labels.astype(np.int64)
        images.flags.writeable = False
        labels.flags.writeable = False
        out += [images, labels]
    return tuple(out)


def load_fashion_mnist(root: str | Path | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(train images, train labels, test images, test labels), read-only arrays, cached per folder."""
    folder = Path(root if root is not None else os.environ.get("LTBENCH_FASHION_MNIST") or DEFAULT_ROOT)
    if not folder.is_dir():
        raise DataError(
            f"Fashion-MNIST folder {folder} not found: run `apt-get install -y dataset-fashion-mnist`,"
            " or point LTBENCH_FASHION_MNIST (or --set root=) at a folder with the four IDX .gz files"
        )
    stamp = []
    for stem in FILES.values():
        p = _find(folder, stem)
        st = os.stat(p)
        stamp.append((p.name, st.st_size, st.st_mtime_ns))
    return _load_cached(str(folder.resolve()), tuple(stamp))


def sketch(images: np.ndarray) -> np.ndarray:
    """Line drawings of grey images (N×H×W uint8): Sobel edges as dark strokes on white.

    Each image's gradient magnitude is scaled by its own 99th percentile, soft-thresholded
    (weak texture edges vanish, outlines saturate) and inverted, so the result keeps shape
    and loses the fill and shading, as ImageNet-Sketch does for ImageNet.
    """
    x = np.asarray(images, dtype=np.float32)
    if x.ndim == 2:
        return sketch(x[None])[0]
    p = np.pad(x, ((0, 0), (1, 1), (1, 1)), mode="edge")
    # Sobel kernels via shifted views: gx = [1 0 -1; 2 0 -2; 1 0 -1]^T, gy its transpose
    tl, tc, tr = p[:, :-2, :-2], p[:, :-2, 1:-1], p[:, :-2, 2:]
    ml, mr = p[:, 1:-1, :-2], p[:, 1:-1, 2:]
    bl, bc, br = p[:, 2:, :-2], p[:, 2:, 1:-1], p[:, 2:, 2:]
    gx = (tr + 2 * mr + br) - (tl + 2 * ml + bl)
    gy = (bl + 2 * bc + br) - (tl + 2 * tc + tr)
    mag = np.sqrt(gx * gx + gy * gy)
    flat = mag.reshape(len(mag), -1)
    k = min(flat.shape[1] - 1, int(round(0.99 * (flat.shape[1] - 1))))
    scale = np.partition(flat, k, axis=1)[:, k]  # the 99th percentile, per image
    mag /= np.maximum(scale, 1e-6)[:, None, None]
    # ink = clip((mag - 0.2) / 0.6, 0, 1); pixel = 255 · (1 − ink)
    mag -= 0.2
    mag *= 255.0 / 0.6
    np.clip(mag, 0.0, 255.0, out=mag)
    return (255.5 - mag).astype(np.uint8)


@DATASETS.register("fashion-mnist-lt")
def fashion_mnist_lt(
    root: str | None = None,
    seed: int = 0,
    imbalance: Annotated[float, Float(lo=1, hi=1e6)] = 100,
    head: Annotated[int, Int(lo=1, hi=10**7)] = 500,
    val_per_class: Annotated[int, Int(lo=1, hi=10**6)] = 20,
    test_per_class: Annotated[int | None, Opt(Int(lo=1, hi=10**6))] = None,
) -> LTDataset:
    """Fashion-MNIST, exponential LT train (offline default; Debian dataset-fashion-mnist)."""
    x_tr, y_tr, x_te, y_te = load_fashion_mnist(root)
    c = len(CLASSNAMES)
    r_train, r_val, r_test = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(3))
    train_idx, val_idx = lt_train_val(y_tr, CLASSNAMES, head, imbalance, val_per_class, r_train, r_val,
                                      "fashion-mnist-lt")
    if test_per_class is None:
        test_images, test_labels = x_te, y_te
    else:
        test_idx = take_per_class(y_te, [test_per_class] * c, r_test)
        test_images, test_labels = x_te[test_idx], y_te[test_idx]
    train = ArraySplit(x_tr[train_idx], y_tr[train_idx])
    train.indices = train_idx  # indices into the official training set (provenance, tests)
    val = ArraySplit(x_tr[val_idx], y_tr[val_idx])
    val.indices = val_idx
    test = ArraySplit(test_images, test_labels)
    ood = {SKETCH: ArraySplit(sketch(test_images), test_labels)}
    return LTDataset(name="fashion-mnist-lt", classnames=list(CLASSNAMES), train=train, val=val, test=test, ood=ood)


def _count_train(root: str | None, head: int, imbalance: float, **_: object) -> int:
    """Its exponential profile's total, without reading an image (what `--plan` shows)."""
    return int(sum(exponential_profile(10, head, imbalance)))


fashion_mnist_lt.count_train = _count_train

"""Split-file datasets: `places-lt`, `imagenet-lt`, `inat2018`.

The standard format: one `relative/path label` per line, labels 0..C−1, paths relative to
an image `root` (the label is the last field, so a path may contain spaces). The split files are looked up in `split_dir`; Places-LT's and ImageNet-LT's
ship with ltbench (gzipped, `ltbench/data/splits/`) and are the default, so only the images
are needed; a user's own `split_dir` (plain or `.gz` files) still wins. ImageNet-LT's train
file is not shipped (give `train_file=/path/ImageNet_LT_train.txt` or a `split_dir`), nor are
iNaturalist 2018's (`split_dir` defaults to root). Nothing is stat'ed at build time; `LTDataset.validate()` (FileSplit.check) finds missing images
before training, naming the split file and line.

iNaturalist 2018 has no separate test set: its official val file serves as test, and the
validation split (used for model selection and fusion) is held out from the training file,
`val_per_class` images a class but never more than half a class.
"""
from __future__ import annotations

import gzip
import re
from pathlib import Path
from typing import Annotated, Callable

import numpy as np

from ..checks import Int, Opt, Str
from ..errors import DataError
from ..plugins import DATASETS
from .base import FileSplit, LTDataset, take_per_class

#: The split files shipped as package data, one folder per dataset.
PACKAGED = Path(__file__).resolve().parent / "splits"


def read_text(path: Path) -> str:
    """A text file's contents, gunzipped when its name ends in `.gz`."""
    if path.suffix == ".gz":  # utf-8-sig: a byte-order mark (Windows editors) is dropped, not read as a path
        with gzip.open(path, "rt", encoding="utf-8-sig") as f:
            return f.read()
    return path.read_text(encoding="utf-8-sig")


def find_file(path: str | Path) -> Path | None:
    """`path`, or else `path.gz`; None when neither is a file."""
    path = Path(path)
    gz = path.with_name(path.name + ".gz")
    return path if path.is_file() else gz if path.suffix != ".gz" and gz.is_file() else None


def read_split_file(path: str | Path, root: str | Path, num_classes: int | None = None) -> FileSplit:
    """Parse a `relative/path label` file into a FileSplit keeping 1-based line numbers.

    Blank lines are skipped. A line that is not exactly two fields with an integer label, or a
    label outside 0..num_classes−1, raises DataError with `file:line` and the offending text.
    """
    path = Path(path)
    try:
        text = read_text(path)
    except FileNotFoundError:
        raise DataError(f"split file {path} not found") from None
    except (OSError, EOFError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read split file {path}: {e}") from None
    paths: list[str] = []
    labels: list[int] = []
    lines: list[int] = []
    for no, line in enumerate(text.splitlines(), start=1):
        # the label is the last field and the path all before it, so a path may contain spaces
        parts = line.strip().rsplit(None, 1)
        if not parts:
            continue
        if len(parts) != 2:
            raise DataError(f"{path}:{no}: expected `relative/path label`, got {line.strip()!r}")
        try:
            label = int(parts[1])
        except ValueError:
            raise DataError(f"{path}:{no}: label {parts[1]!r} is not an integer in {line.strip()!r}"
                            " (the label must be the line's last field; a path may contain spaces)") from None
        if label < 0 or (num_classes is not None and label >= num_classes):
            top = f"0..{num_classes - 1}" if num_classes is not None else "non-negative"
            raise DataError(f"{path}:{no}: label {label} is outside {top} in {line.strip()!r}")
        paths.append(parts[0])
        labels.append(label)
        lines.append(no)
    if not paths:
        raise DataError(f"split file {path} lists no images")
    return FileSplit(root, paths, np.asarray(labels, dtype=np.int64), source=path, lines=lines)


_KEY = re.compile(r"[_/\-\d]")


def read_classnames(path: str | Path, num_classes: int | None = None) -> list[str]:
    """One class per line, either `folder_name class name` (Places-LT, `n01440764 tench`), a
    plain `class name`, or Places365's `/a/airfield 0`. The two-column form is recognised when every line has at least two
    fields, the first fields are distinct, and each first field looks like a key (has `_`, `/`,
    `-` or a digit, or repeats the name). Underscores in names become spaces."""
    path = Path(path)
    try:
        rows = [ln.strip() for ln in read_text(path).splitlines()]
    except FileNotFoundError:
        raise DataError(f"classnames file {path} not found (pass classnames_file=None to name classes from the train paths)") from None
    except (OSError, EOFError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read classnames file {path}: {e}") from None
    rows = [r for r in rows if r]
    if num_classes is not None and len(rows) != num_classes:
        raise DataError(f"classnames file {path} has {len(rows)} names but num_classes is {num_classes}")
    split = [r.split(None, 1) for r in rows]
    if all(len(s) == 2 and s[1].strip().isdigit() for s in split):
        # Places365's categories file: `/a/airfield 0` -> "airfield"
        names = [re.sub(r"^/[a-z]/", "", s[0]).strip("/").replace("/", " ") for s in split]
        return [n.replace("_", " ").strip() for n in names]
    keyed = (
        all(len(s) == 2 for s in split)
        and len({s[0] for s in split}) == len(split)
        and all(_KEY.search(s[0]) or s[0] == s[1] for s in split)
    )
    names = [s[1] if keyed else r for s, r in zip(split, rows)]
    return [n.replace("_", " ").strip() for n in names]


def _names_from_paths(split: FileSplit, num_classes: int) -> list[str]:
    """Class k's name = the folder of the first training image labelled k."""
    names = [f"class {k}" for k in range(num_classes)]
    seen = np.zeros(num_classes, dtype=bool)
    for p, y in zip(split.paths, split.labels):
        if not seen[y]:
            seen[y] = True
            parent = Path(p).parent.name
            if parent:
                names[y] = parent.replace("_", " ")
    return names


def build_split_dataset(
    name: str,
    root: str | None,
    seed: int,
    *,
    split_dir: str | None,
    train_file: str,
    val_file: str | None,
    test_file: str,
    classnames_file: str | None,
    num_classes: int,
    val_per_class: int,
    packaged: str | None = None,
) -> LTDataset:
    """The one builder behind every split-file source; `packaged` names its shipped folder."""
    if root is None:
        raise DataError(f"{name} needs root=<image folder> (the folder the split files' paths are relative to)")
    root_p = Path(root).expanduser()
    if not root_p.is_dir():
        raise DataError(f"{name}: image root {root_p} is not a folder")
    sdir = Path(split_dir).expanduser() if split_dir else PACKAGED / packaged if packaged else root_p

    def locate(option: str, file: str) -> Path:
        p = Path(file).expanduser()
        p = p if p.is_absolute() else sdir / p
        found = find_file(p)
        if found is None:
            where = " (not shipped with ltbench)" if not split_dir and packaged and not Path(file).is_absolute() else ""
            raise DataError(f"{name}: {option} {p} not found{where}; set split_dir=<folder> or {option}=<file>")
        return found

    train = read_split_file(locate("train_file", train_file), root_p, num_classes)
    test = read_split_file(locate("test_file", test_file), root_p, num_classes)
    if val_file:
        val = read_split_file(locate("val_file", val_file), root_p, num_classes)
    else:
        # hold out up to val_per_class a class from train, never more than half a class
        counts = np.bincount(train.labels, minlength=num_classes)
        take = np.minimum(val_per_class, counts // 2)
        rng = np.random.default_rng(np.random.SeedSequence(seed).spawn(1)[0])
        val_idx = take_per_class(train.labels, take, rng)
        keep = np.setdiff1d(np.arange(len(train)), val_idx, assume_unique=True)
        val, train = train.subset(val_idx), train.subset(keep)
    if classnames_file:
        classnames = read_classnames(locate("classnames_file", classnames_file), num_classes)
    else:
        classnames = _names_from_paths(train, num_classes)
    return LTDataset(name=name, classnames=classnames, train=train, val=val, test=test)


@DATASETS.register("places-lt")
def places_lt(
    root: str | None = None,
    seed: int = 0,
    split_dir: Annotated[str | None, Opt(Str())] = None,  # None: the shipped split files
    train_file: Annotated[str, Str()] = "Places_LT_train.txt",
    val_file: Annotated[str | None, Opt(Str())] = "Places_LT_val.txt",
    test_file: Annotated[str, Str()] = "Places_LT_test.txt",
    classnames_file: Annotated[str | None, Opt(Str())] = "classnames.txt",
    num_classes: Annotated[int, Int(lo=1, hi=10**6)] = 365,
    val_per_class: Annotated[int, Int(lo=1, hi=10**6)] = 20,
) -> LTDataset:
    """Places-LT (365 classes, 4,980…5 a class; split files shipped) over a Places365 image root"""
    return build_split_dataset(
        "places-lt", root, seed, packaged="places_lt", split_dir=split_dir, train_file=train_file, val_file=val_file,
        test_file=test_file, classnames_file=classnames_file, num_classes=num_classes, val_per_class=val_per_class,
    )


@DATASETS.register("imagenet-lt")
def imagenet_lt(
    root: str | None = None,
    seed: int = 0,
    split_dir: Annotated[str | None, Opt(Str())] = None,  # None: the shipped files (train_file= then needs a path)
    train_file: Annotated[str, Str()] = "ImageNet_LT_train.txt",
    val_file: Annotated[str | None, Opt(Str())] = "ImageNet_LT_val.txt",
    test_file: Annotated[str, Str()] = "ImageNet_LT_test.txt",
    classnames_file: Annotated[str | None, Opt(Str())] = "classnames.txt",
    num_classes: Annotated[int, Int(lo=1, hi=10**6)] = 1000,
    val_per_class: Annotated[int, Int(lo=1, hi=10**6)] = 20,
) -> LTDataset:
    """ImageNet-LT (1000 classes, 1,280…5 a class; val/test files shipped) over an ImageNet root"""
    return build_split_dataset(
        "imagenet-lt", root, seed, packaged="imagenet_lt", split_dir=split_dir, train_file=train_file, val_file=val_file,
        test_file=test_file, classnames_file=classnames_file, num_classes=num_classes, val_per_class=val_per_class,
    )


@DATASETS.register("inat2018")
def inat2018(
    root: str | None = None,
    seed: int = 0,
    split_dir: Annotated[str | None, Opt(Str())] = None,  # None: root (iNaturalist's files are not shipped)
    train_file: Annotated[str, Str()] = "iNaturalist18_train.txt",
    val_file: Annotated[str | None, Opt(Str())] = None,
    test_file: Annotated[str, Str()] = "iNaturalist18_val.txt",
    classnames_file: Annotated[str | None, Opt(Str())] = None,
    num_classes: Annotated[int, Int(lo=1, hi=10**6)] = 8142,
    val_per_class: Annotated[int, Int(lo=1, hi=10**6)] = 1,
) -> LTDataset:
    """iNaturalist 2018 split files (8,142 classes); official val is the test set."""
    return build_split_dataset(
        "inat2018", root, seed, split_dir=split_dir, train_file=train_file, val_file=val_file,
        test_file=test_file, classnames_file=classnames_file, num_classes=num_classes, val_per_class=val_per_class,
    )


def _train_counter(packaged: str | None) -> Callable[..., int | None]:
    """A split-file source's `count_train`: its train file's lines minus the validation images held
    out of it (none with a val file), read without an image; None when the file is not there."""
    def count(root: str | None, split_dir: str | None, train_file: str, val_file: str | None, num_classes: int,
              val_per_class: int, **_: object) -> int | None:
        sdir = Path(split_dir).expanduser() if split_dir else \
            PACKAGED / packaged if packaged else Path(root or ".").expanduser()
        path = Path(train_file).expanduser()
        found = find_file(path if path.is_absolute() else sdir / path)
        if found is None:
            return None
        labels = read_split_file(found, ".", num_classes).labels
        held = 0 if val_file else int(np.minimum(val_per_class, np.bincount(labels) // 2).sum())
        return len(labels) - held
    return count


places_lt.count_train = _train_counter("places_lt")
imagenet_lt.count_train = _train_counter("imagenet_lt")
inat2018.count_train = _train_counter(None)

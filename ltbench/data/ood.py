"""Out-of-distribution test sets over ImageNet's 1000 classes, read from their usual layouts.

    imagenet-sketch   PATH/sketch/<wnid>/*.JPEG  (or PATH is the sketch folder)   1000 classes
    imagenet-r        PATH/<wnid>/*.jpg                                            200 classes
    imagenet-a        PATH/<wnid>/*.jpg                                            200 classes
    imagenet-v2       PATH/<class index 0..999>/*.jpeg                             1000 classes

Labels are ImageNet-1k class indices. A wnid's index is its position in the dataset's class
order, which for ImageNet(-LT) is the sorted wnid list: the first column of imagenet-lt's
shipped `ltbench/data/splits/imagenet_lt/classnames.txt.gz` (`n01440764 tench`), or equivalently the
`train/<wnid>/…` folders of the split files (`wnids_from_split`, what `attach_ood` uses, so
the map always matches the dataset's own labels). ImageNet-R and -A cover 200 classes: their
splits carry `class_subset` (the official 200-wnid lists below, from the datasets' release
code), so scoring masks the logits to those classes (`metrics.mask_to_subset`).

    ds = create_dataset("imagenet-lt", root=..., train_file=".../ImageNet_LT_train.txt")
    attach_ood(ds, ["imagenet-r=/data/imagenet-r", "imagenet-sketch=/data/imagenet-sketch"])
    # → ds.ood["imagenet-r"], cached and scored as split "ood:imagenet-r"
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..errors import DataError
from ..plugins import OOD_SETS
from .base import FileSplit, LTDataset, Split
from .folder import IMAGE_EXTENSIONS, _class_dirs, _images

WNID = re.compile(r"^n\d{8}$")

# The 200 classes of ImageNet-R (hendrycks/imagenet-r, eval code) and ImageNet-A
# (hendrycks/natural-adv-examples), sorted, i.e. in ImageNet index order.
IMAGENET_R_WNIDS = tuple("""
    n01443537 n01484850 n01494475 n01498041 n01514859 n01518878 n01531178 n01534433 n01614925 n01616318
    n01630670 n01632777 n01644373 n01677366 n01694178 n01748264 n01770393 n01774750 n01784675 n01806143
    n01820546 n01833805 n01843383 n01847000 n01855672 n01860187 n01882714 n01910747 n01944390 n01983481
    n01986214 n02007558 n02009912 n02051845 n02056570 n02066245 n02071294 n02077923 n02085620 n02086240
    n02088094 n02088238 n02088364 n02088466 n02091032 n02091134 n02092339 n02094433 n02096585 n02097298
    n02098286 n02099601 n02099712 n02102318 n02106030 n02106166 n02106550 n02106662 n02108089 n02108915
    n02109525 n02110185 n02110341 n02110958 n02112018 n02112137 n02113023 n02113624 n02113799 n02114367
    n02117135 n02119022 n02123045 n02128385 n02128757 n02129165 n02129604 n02130308 n02134084 n02138441
    n02165456 n02190166 n02206856 n02219486 n02226429 n02233338 n02236044 n02268443 n02279972 n02317335
    n02325366 n02346627 n02356798 n02363005 n02364673 n02391049 n02395406 n02398521 n02410509 n02423022
    n02437616 n02445715 n02447366 n02480495 n02480855 n02481823 n02483362 n02486410 n02510455 n02526121
    n02607072 n02655020 n02672831 n02701002 n02749479 n02769748 n02793495 n02797295 n02802426 n02808440
    n02814860 n02823750 n02841315 n02843684 n02883205 n02906734 n02909870 n02939185 n02948072 n02950826
    n02951358 n02966193 n02980441 n02992529 n03124170 n03272010 n03345487 n03372029 n03424325 n03452741
    n03467068 n03481172 n03494278 n03495258 n03498962 n03594945 n03602883 n03630383 n03649909 n03676483
    n03710193 n03773504 n03775071 n03888257 n03930630 n03947888 n04086273 n04118538 n04133789 n04141076
    n04146614 n04147183 n04192698 n04254680 n04266014 n04275548 n04310018 n04325704 n04347754 n04389033
    n04409515 n04465501 n04487394 n04522168 n04536866 n04552348 n04591713 n07614500 n07693725 n07695742
    n07697313 n07697537 n07714571 n07714990 n07718472 n07720875 n07734744 n07742313 n07745940 n07749582
    n07753275 n07753592 n07768694 n07873807 n07880968 n07920052 n09472597 n09835506 n10565667 n12267677
""".split())

IMAGENET_A_WNIDS = tuple("""
    n01498041 n01531178 n01534433 n01558993 n01580077 n01614925 n01616318 n01631663 n01641577 n01669191
    n01677366 n01687978 n01694178 n01698640 n01735189 n01770081 n01770393 n01774750 n01784675 n01819313
    n01820546 n01833805 n01843383 n01847000 n01855672 n01882714 n01910747 n01914609 n01924916 n01944390
    n01985128 n01986214 n02007558 n02009912 n02037110 n02051845 n02077923 n02085620 n02099601 n02106550
    n02106662 n02110958 n02119022 n02123394 n02127052 n02129165 n02133161 n02137549 n02165456 n02174001
    n02177972 n02190166 n02206856 n02219486 n02226429 n02231487 n02233338 n02236044 n02259212 n02268443
    n02279972 n02280649 n02281787 n02317335 n02325366 n02346627 n02356798 n02361337 n02410509 n02445715
    n02454379 n02486410 n02492035 n02504458 n02655020 n02669723 n02672831 n02676566 n02690373 n02701002
    n02730930 n02777292 n02782093 n02787622 n02793495 n02797295 n02802426 n02814860 n02815834 n02837789
    n02879718 n02883205 n02895154 n02906734 n02948072 n02951358 n02980441 n02992211 n02999410 n03014705
    n03026506 n03124043 n03125729 n03187595 n03196217 n03223299 n03250847 n03255030 n03291819 n03325584
    n03355925 n03384352 n03388043 n03417042 n03443371 n03444034 n03445924 n03452741 n03483316 n03584829
    n03590841 n03594945 n03617480 n03666591 n03670208 n03717622 n03720891 n03721384 n03724870 n03775071
    n03788195 n03804744 n03837869 n03840681 n03854065 n03888257 n03891332 n03935335 n03982430 n04019541
    n04033901 n04039381 n04067472 n04086273 n04099969 n04118538 n04131690 n04133789 n04141076 n04146614
    n04147183 n04179913 n04208210 n04235860 n04252077 n04252225 n04254120 n04270147 n04275548 n04310018
    n04317175 n04344873 n04347754 n04355338 n04366367 n04376876 n04389033 n04399382 n04442312 n04456115
    n04482393 n04507155 n04509417 n04532670 n04540053 n04554684 n04562935 n04591713 n04606251 n07583066
    n07695742 n07697313 n07697537 n07714990 n07718472 n07720875 n07734744 n07749582 n07753592 n07760859
    n07768694 n07831146 n09229709 n09246464 n09472597 n09835506 n11879895 n12057211 n12144580 n12267677
""".split())

#: loader(path, wnids of the dataset's classes in label order, or None) -> FileSplit
OODLoader = Callable[[Path, Sequence[str] | None], FileSplit]

IMAGENET_CLASSES = 1000


# -- wnid ↔ class index ---------------------------------------------------------------------
def wnids_from_classnames(path: str | Path) -> list[str]:
    """The first column of a `wnid name` classnames file (imagenet-lt's classnames.txt[.gz])."""
    from .splitfile import read_text

    path = Path(path)
    try:
        rows = [ln.split() for ln in read_text(path).splitlines() if ln.strip()]
    except (OSError, EOFError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read classnames file {path}: {e}") from None
    for no, r in enumerate(rows, start=1):
        if not WNID.match(r[0]):
            raise DataError(f"{path}:{no}: {r[0]!r} is not a wnid (expected `n01440764 tench`)")
    return [r[0] for r in rows]


def wnids_from_split(split: Split, num_classes: int) -> list[str | None]:
    """Class k's wnid = the `n########` folder in the paths of the images labelled k.

    Returns None for classes with no image in `split`; a class seen under two wnids raises.
    """
    wnids: list[str | None] = [None] * num_classes
    for i, (p, y) in enumerate(zip(getattr(split, "paths", ()), split.labels)):
        w = next((part for part in reversed(p.replace("\\", "/").split("/")[:-1]) if WNID.match(part)), None)
        if w is None:
            return [None] * num_classes  # not a wnid layout
        if wnids[y] is None:
            wnids[y] = w
        elif wnids[y] != w:
            raise DataError(f"class {int(y)} is both {wnids[y]} and {w} (at {split.where(i)})")
    return wnids


def dataset_wnids(dataset: LTDataset) -> list[str]:
    """The wnid of each of the dataset's classes, from its split files' `<wnid>/` folders."""
    wnids: list[str | None] = [None] * dataset.num_classes
    for split in (dataset.train, dataset.val, dataset.test):
        for k, w in enumerate(wnids_from_split(split, dataset.num_classes)):
            if w is not None and wnids[k] is None:
                wnids[k] = w
            elif w is not None and w != wnids[k]:
                raise DataError(f"{dataset.name}: class {k} is {wnids[k]} in one split and {w} in another")
    missing = [k for k, w in enumerate(wnids) if w is None]
    if missing:
        raise DataError(
            f"{dataset.name}: cannot map ImageNet wnids to its classes (class {missing[0]}"
            f" {dataset.classnames[missing[0]]!r} has no `<wnid>/` folder in its split files' paths;"
            f" {len(missing)} classes in all). ImageNet OOD sets need an ImageNet-class dataset such as imagenet-lt"
        )
    if len(set(wnids)) != len(wnids):
        raise DataError(f"{dataset.name}: two classes share a wnid folder")
    return [w for w in wnids if w is not None]


# -- loaders ----------------------------------------------------------------------------------
def _folder(name: str, path: str | Path, inner: str | None = None) -> Path:
    p = Path(path).expanduser()
    if not p.is_dir():
        raise DataError(f"OOD set {name}: folder {p} not found")
    if inner and (p / inner).is_dir():
        p = p / inner
    return p


def _scan(name: str, root: Path, folder_label: dict[str, int], what: str) -> FileSplit:
    classes = _class_dirs(root)
    if not classes:
        raise DataError(f"OOD set {name}: no class folders under {root} (expected {what})")
    paths: list[str] = []
    labels: list[int] = []
    for c in classes:
        if c not in folder_label:
            raise DataError(f"OOD set {name}: folder {root / c} is not {what}")
        files = _images(root / c)
        paths += [f"{c}/{f}" for f in files]
        labels += [folder_label[c]] * len(files)
    if not paths:
        raise DataError(f"OOD set {name}: no images under {root} (extensions: {', '.join(IMAGE_EXTENSIONS)})")
    return FileSplit(root, paths, np.asarray(labels, dtype=np.int64))


def _wnid_index(name: str, wnids: Sequence[str] | None) -> dict[str, int]:
    if wnids is None:
        raise DataError(f"OOD set {name} needs the wnids of the dataset's classes (its folders are wnids)")
    return {w: k for k, w in enumerate(wnids)}


def _subset_split(name: str, path: Path, wnids: Sequence[str] | None, subset: Sequence[str]) -> FileSplit:
    index = _wnid_index(name, wnids)
    absent = [w for w in subset if w not in index]
    if absent:
        raise DataError(f"OOD set {name}: its class {absent[0]} is not among the dataset's classes"
                        f" ({len(absent)} of its {len(subset)} are not; it needs ImageNet's 1000)")
    allowed = {w: index[w] for w in subset}
    split = _scan(name, path, allowed, f"a wnid folder of one of {name}'s {len(subset)} classes")
    split.class_subset = np.array(sorted(allowed.values()), dtype=np.int64)
    return split


@OOD_SETS.register("imagenet-sketch")
def imagenet_sketch(path: Path, wnids: Sequence[str] | None) -> FileSplit:
    """ImageNet-Sketch: sketch/<wnid>/*.JPEG, 50 sketches of each of the 1000 classes."""
    return _scan("imagenet-sketch", _folder("imagenet-sketch", path, "sketch"),
                 _wnid_index("imagenet-sketch", wnids), "a wnid folder of one of the dataset's classes")


@OOD_SETS.register("imagenet-r")
def imagenet_r(path: Path, wnids: Sequence[str] | None) -> FileSplit:
    """ImageNet-R(endition): <wnid>/*.jpg over 200 classes; scored among those 200."""
    return _subset_split("imagenet-r", _folder("imagenet-r", path, "imagenet-r"), wnids, IMAGENET_R_WNIDS)


@OOD_SETS.register("imagenet-a")
def imagenet_a(path: Path, wnids: Sequence[str] | None) -> FileSplit:
    """ImageNet-A (natural adversarial examples): <wnid>/*.jpg over 200 classes; scored among those 200."""
    return _subset_split("imagenet-a", _folder("imagenet-a", path, "imagenet-a"), wnids, IMAGENET_A_WNIDS)


@OOD_SETS.register("imagenet-v2")
def imagenet_v2(path: Path, wnids: Sequence[str] | None) -> FileSplit:
    """ImageNetV2 (matched-frequency …): <class index 0..999>/*.jpeg folders, 10 images a class.

    Folder k is ImageNet's class k, i.e. the k-th wnid in sorted order; it gets the label of
    that wnid in `wnids` (the identity for ImageNet-LT), or k itself when `wnids` is None.
    """
    n = IMAGENET_CLASSES
    if wnids is None:
        labels = {str(k): k for k in range(n)}
    else:
        if len(wnids) != n or len(set(wnids)) != n:
            raise DataError(f"OOD set imagenet-v2 labels ImageNet's {n} classes by index; the dataset has"
                            f" {len(set(wnids))} distinct classes")
        index = {w: k for k, w in enumerate(wnids)}
        labels = {str(k): index[w] for k, w in enumerate(sorted(wnids))}
    return _scan("imagenet-v2", _folder("imagenet-v2", path), labels, f"a class index folder 0..{n - 1}")


def load_ood(name: str, path: str | Path, classnames_wnids: Sequence[str] | None) -> FileSplit:
    """The OOD set `name` at `path`, labelled by position in `classnames_wnids` (the dataset's
    classes' wnids in label order; imagenet-v2 may pass None)."""
    if name not in OOD_SETS:
        raise DataError(OOD_SETS.unknown_message(name))
    return OOD_SETS.get(name)(Path(path), classnames_wnids)


def parse_ood_spec(spec: str) -> tuple[str, Path]:
    name, sep, path = spec.partition("=")
    name, path = name.strip(), path.strip()
    if not sep or not name or not path:
        raise DataError(f"--ood {spec!r}: expected NAME=PATH with NAME one of {', '.join(OOD_SETS)}")
    if name not in OOD_SETS:
        raise DataError(f"--ood {spec!r}: {OOD_SETS.unknown_message(name)}")
    p = Path(path).expanduser()
    if not p.is_dir():
        raise DataError(f"--ood {name}: folder {p} not found")
    return name, p


def attach_ood(dataset: LTDataset, specs: Sequence[str]) -> LTDataset:
    """Add `name=PATH` OOD sets to `dataset.ood` (cached and scored as split `ood:<name>`).

    Every spec is checked (name known, folder present, not given twice) before any folder is
    scanned; the wnid → class index map comes from the dataset's own split-file paths.
    """
    parsed = [parse_ood_spec(s) for s in specs]
    names = [n for n, _ in parsed]
    for n in names:
        if names.count(n) > 1 or n in dataset.ood:
            raise DataError(f"--ood {n} given twice (or the dataset already has an OOD set {n!r})")
    wnids = dataset_wnids(dataset) if parsed else None
    for name, path in parsed:
        dataset.ood[name] = load_ood(name, path, wnids)
    return dataset

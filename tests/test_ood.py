"""ImageNet OOD sets: folder loaders on tiny fake trees, wnid → index maps, masked scoring."""
import numpy as np
import pytest
import torch
from PIL import Image

from ltbench.plugins import OOD_SETS
from ltbench.errors import DataError
from ltbench.data.base import FileSplit, LTDataset
from ltbench.data.ood import attach_ood, load_ood
from ltbench.data.ood import IMAGENET_A_WNIDS, IMAGENET_R_WNIDS, wnids_from_classnames, wnids_from_split
from ltbench.data.splitfile import PACKAGED, read_split_file
from ltbench.metrics import evaluate_logits

CLASSNAMES = PACKAGED / "imagenet_lt" / "classnames.txt.gz"
WNIDS = wnids_from_classnames(CLASSNAMES)
INDEX = {w: k for k, w in enumerate(WNIDS)}


def tree(root, folders, ext=".jpg", per=2):
    for f in folders:
        (root / f).mkdir(parents=True)
        for i in range(per):
            Image.fromarray(np.full((8, 8, 3), 40 * i, dtype=np.uint8)).save(root / f / f"img{i}{ext}")
    return root


def imagenet_like(tmp_path) -> LTDataset:
    """A 1000-class dataset whose split-file paths carry the wnid folders (as imagenet-lt's do)."""
    def split(prefix):
        return FileSplit(tmp_path, [f"{prefix}/{w}/{w}_1.JPEG" for w in WNIDS], np.arange(1000))
    return LTDataset("imagenet-lt", WNIDS, split("train"), split("train"), split("val"))


def test_the_wnid_order_comes_from_classnames_or_split_paths():
    assert len(WNIDS) == 1000 and WNIDS == sorted(WNIDS) and WNIDS[0] == "n01440764"
    test = read_split_file(PACKAGED / "imagenet_lt" / "ImageNet_LT_test.txt.gz", "/nonexistent", 1000)
    assert wnids_from_split(test, 1000) == WNIDS
    assert len(set(IMAGENET_R_WNIDS)) == len(set(IMAGENET_A_WNIDS)) == 200
    assert set(IMAGENET_R_WNIDS) <= set(WNIDS) and set(IMAGENET_A_WNIDS) <= set(WNIDS)
    assert sorted(OOD_SETS) == ["imagenet-a", "imagenet-r", "imagenet-sketch", "imagenet-v2"]


def test_masked_scoring_1000_to_200():
    """The argmax over all 1000 classes is outside ImageNet-R's 200, the argmax inside is right."""
    subset = np.array(sorted(INDEX[w] for w in IMAGENET_R_WNIDS))
    outside = np.setdiff1d(np.arange(1000), subset)
    labels = subset[[0, 5, 50, 199]]
    logits = torch.zeros(4, 1000)
    for i, y in enumerate(labels):
        logits[i, outside[i * 7]] = 9.0  # wrong and out of subset: wins unmasked
        logits[i, y] = 5.0  # right, the best inside the subset
        logits[i, subset[(i + 1) % 200]] = 4.0  # a wrong in-subset runner-up
    groups = np.zeros(1000, dtype=np.int64)
    assert evaluate_logits(logits, labels, groups)["overall"] == 0.0
    assert evaluate_logits(logits, labels, groups, class_subset=subset)["overall"] == 1.0


def test_imagenet_r_and_a_folders(tmp_path):
    r = tree(tmp_path / "imagenet-r", [IMAGENET_R_WNIDS[0], IMAGENET_R_WNIDS[-1]])
    split = load_ood("imagenet-r", tmp_path, WNIDS)  # the parent of imagenet-r/ works too
    assert len(split) == 4 and split.root == r
    assert sorted(set(split.labels.tolist())) == [INDEX[IMAGENET_R_WNIDS[0]], INDEX[IMAGENET_R_WNIDS[-1]]]
    assert len(split.class_subset) == 200 and set(split.labels) <= set(split.class_subset)
    assert split.image(0).size == (8, 8)

    a = tree(tmp_path / "a", IMAGENET_A_WNIDS[:3], per=1)
    split = load_ood("imagenet-a", a, WNIDS)
    assert split.labels.tolist() == [INDEX[w] for w in IMAGENET_A_WNIDS[:3]] and len(split.class_subset) == 200
    assert split.class_subset.tolist() == sorted(INDEX[w] for w in IMAGENET_A_WNIDS)

    not_r = next(w for w in WNIDS if w not in IMAGENET_R_WNIDS)
    tree(tmp_path / "bad-r", [not_r], per=1)
    with pytest.raises(DataError, match=f"{not_r} is not a wnid folder of one of imagenet-r's 200"):
        load_ood("imagenet-r", tmp_path / "bad-r", WNIDS)


def test_imagenet_sketch_and_v2_folders(tmp_path):
    tree(tmp_path / "sk" / "sketch", WNIDS[:2], ext=".JPEG")
    split = load_ood("imagenet-sketch", tmp_path / "sk", WNIDS)
    assert split.labels.tolist() == [0, 0, 1, 1] and split.class_subset is None
    assert split.paths[0] == f"{WNIDS[0]}/img0.JPEG"

    tree(tmp_path / "v2", ["0", "999", "10"], ext=".jpeg", per=1)
    split = load_ood("imagenet-v2", tmp_path / "v2", WNIDS)
    assert sorted(split.labels.tolist()) == [0, 10, 999] and split.class_subset is None
    # folder k is ImageNet's k-th sorted wnid, whatever the dataset's own class order
    shuffled = WNIDS[::-1]
    assert sorted(load_ood("imagenet-v2", tmp_path / "v2", shuffled).labels.tolist()) == [0, 989, 999]

    tree(tmp_path / "junk", ["not-a-class"], per=1)
    with pytest.raises(DataError, match="not-a-class is not a wnid folder"):
        load_ood("imagenet-sketch", tmp_path / "junk", WNIDS)


def test_attach_ood(tmp_path):
    ds = imagenet_like(tmp_path)
    tree(tmp_path / "r", IMAGENET_R_WNIDS[:2], per=1)
    tree(tmp_path / "v2", ["3"], ext=".jpeg", per=1)
    attach_ood(ds, [f"imagenet-r={tmp_path / 'r'}", f"imagenet-v2={tmp_path / 'v2'}"])
    assert list(ds.ood) == ["imagenet-r", "imagenet-v2"]
    assert "ood:imagenet-r" in ds.eval_splits()
    assert len(ds.ood["imagenet-r"].class_subset) == 200 and ds.ood["imagenet-v2"].labels.tolist() == [3]

    with pytest.raises(DataError, match=r"unknown OOD set 'imagenet-s'\. Did you mean .*Known: imagenet-a, imagenet-r"):
        attach_ood(ds, [f"imagenet-s={tmp_path}"])
    with pytest.raises(DataError, match=f"--ood imagenet-a: folder {tmp_path / 'missing'} not found"):
        attach_ood(ds, [f"imagenet-a={tmp_path / 'missing'}"])
    with pytest.raises(DataError, match="expected NAME=PATH"):
        attach_ood(ds, ["imagenet-a"])
    with pytest.raises(DataError, match="given twice"):
        attach_ood(ds, [f"imagenet-r={tmp_path / 'r'}"])

    other = LTDataset("toy", ["a", "b"], *(FileSplit(tmp_path, ["a/1.png", "b/1.png"], np.arange(2)),) * 3)
    with pytest.raises(DataError, match="cannot map ImageNet wnids"):
        attach_ood(other, [f"imagenet-r={tmp_path / 'r'}"])

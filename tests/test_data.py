"""Data sources, split files, LT profiles, OOD sketches, samplers."""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ltbench.plugins.names import UnknownNameError
from ltbench.errors import DataError
from ltbench.data import create_dataset, dataset_options
from ltbench.data.base import exponential_profile
from ltbench.metrics import shot_groups
from ltbench.data.fashion_mnist import DEFAULT_ROOT as FMNIST_ROOT
from ltbench.data.fashion_mnist import read_idx, sketch
from ltbench.data.samplers import build_sampler
from ltbench.data.splitfile import PACKAGED, read_classnames, read_split_file

PLACES_TRAIN = PACKAGED / "places_lt" / "Places_LT_train.txt.gz"
needs_fmnist = pytest.mark.skipif(not Path(FMNIST_ROOT).is_dir(), reason="dataset-fashion-mnist not installed")


# --------------------------------------------------------------------------- split files


def test_places_lt_counts_and_shot_groups_from_real_split_file(tmp_path):
    split = read_split_file(PLACES_TRAIN, tmp_path, 365)
    assert len(split) == 62_500
    counts = np.bincount(split.labels, minlength=365)
    assert len(counts) == 365 and counts.max() == 4980 and counts.min() == 5
    assert np.bincount(shot_groups(counts), minlength=3).tolist() == [131, 163, 71]
    assert split.lines[0] == 1 and split.lines[-1] == 62_500


def test_places_lt_dataset_builds_from_shipped_split_files_and_validate_finds_missing(tmp_path):
    ds = create_dataset("places-lt", root=str(tmp_path))  # no split_dir: the files shipped in the package
    assert (len(ds.train), len(ds.val), len(ds.test)) == (62_500, 7_300, 36_500)
    assert ds.num_classes == 365 and ds.classnames[1] == "airplane cabin"
    assert np.bincount(ds.shot_groups(), minlength=3).tolist() == [131, 163, 71]
    assert ds.options["num_classes"] == 365 and ds.options["split_dir"] is None
    assert ds.train.paths[0] == "train/airfield/00004851.jpg" and ds.test.paths[-1].startswith("val/")
    with pytest.raises(DataError, match=r"Places_LT_train\.txt\.gz:1 "):
        ds.validate()


def test_imagenet_lt_ships_val_test_and_classnames_but_not_train(tmp_path):
    with pytest.raises(DataError, match=r"ImageNet_LT_train\.txt not found \(not shipped with ltbench\); set split_dir="):
        create_dataset("imagenet-lt", root=str(tmp_path))
    # a train file of the user's own (absolute path), the shipped val / test / class names
    own = tmp_path / "ImageNet_LT_train.txt"
    own.write_text("".join(f"train/n{k:08d}/x.JPEG {k}\n" for k in range(1000)))
    ds = create_dataset("imagenet-lt", root=str(tmp_path), train_file=str(own))
    assert (len(ds.train), len(ds.val), len(ds.test)) == (1000, 20_000, 50_000)
    assert ds.classnames[:3] == ["tench", "goldfish", "great white shark"] and ds.train.source == str(own)


def test_user_split_dir_wins_plain_or_gzipped(tmp_path):
    import gzip

    sdir = tmp_path / "splits"
    sdir.mkdir()
    (sdir / "Places_LT_train.txt").write_text("a/1.jpg 0\nb/1.jpg 1\nb/2.jpg 1\n")
    with gzip.open(sdir / "Places_LT_val.txt.gz", "wt") as f:
        f.write("a/2.jpg 0\nb/3.jpg 1\n")
    (sdir / "Places_LT_test.txt").write_text("a/3.jpg 0\nb/4.jpg 1\n")
    ds = create_dataset("places-lt", root=str(tmp_path), split_dir=str(sdir), num_classes=2, classnames_file=None)
    assert ds.train.labels.tolist() == [0, 1, 1] and ds.val.paths == ["a/2.jpg", "b/3.jpg"]
    assert ds.classnames == ["a", "b"] and ds.val.source == str(sdir / "Places_LT_val.txt.gz")
    with pytest.raises(DataError, match=r"classnames_file .*splits/classnames\.txt not found; set split_dir="):
        create_dataset("places-lt", root=str(tmp_path), split_dir=str(sdir), num_classes=2)


def test_split_file_source_needs_root(tmp_path):
    with pytest.raises(DataError, match="root"):
        create_dataset("places-lt")
    with pytest.raises(DataError, match="not a folder"):
        create_dataset("places-lt", root=str(tmp_path / "nope"))
    with pytest.raises(DataError, match="iNaturalist18_train.txt not found; set split_dir="):
        create_dataset("inat2018", root=str(tmp_path))  # inat2018's split files are not shipped


@pytest.mark.parametrize(
    "bad, pattern",
    [
        ("c/z.jpg 1 extra", r"bad\.txt:3: label 'extra' is not an integer in 'c/z\.jpg 1 extra' \(the label must be"
                            r" the line's last field; a path may contain spaces\)"),
        ("c/z.jpg one", r"bad\.txt:3: label 'one' is not an integer"),
        ("c/z.jpg 7", r"bad\.txt:3: label 7 is outside 0\.\.2 in 'c/z\.jpg 7'"),
        ("c/z.jpg -1", r"bad\.txt:3: label -1 is outside 0\.\.2"),
        ("justapath", r"bad\.txt:3: expected"),
    ],
)
def test_split_file_errors_name_file_and_line(tmp_path, bad, pattern):
    f = tmp_path / "bad.txt"
    f.write_text(f"a/x.jpg 0\n\n{bad}\nb/y.jpg 2\n")
    with pytest.raises(DataError, match=pattern):
        read_split_file(f, tmp_path, num_classes=3)


def test_missing_image_named_with_file_and_line(tmp_path):
    for rel in ["a/x.jpg", "b/y.jpg"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (4, 4)).save(tmp_path / rel)
    f = tmp_path / "list.txt"
    f.write_text("a/x.jpg 0\nb/y.jpg 1\nb/gone.jpg 1\n")
    split = read_split_file(f, tmp_path, 2)
    with pytest.raises(DataError, match=r"list\.txt:3 \(b/gone\.jpg\)"):
        split.check()
    assert split.image(1).mode == "RGB"
    with pytest.raises(DataError, match=r"list\.txt:3"):
        split.image(2)


def test_split_dataset_end_to_end_and_held_out_val(tmp_path):
    lines = [f"img/c{k}/{i}.png {k}" for k, n in enumerate([8, 4, 2]) for i in range(n)]
    for ln in lines:
        p = tmp_path / ln.split()[0]
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.new("L", (5, 5), 128).save(p)
    (tmp_path / "train.txt").write_text("\n".join(lines) + "\n")
    (tmp_path / "test.txt").write_text("\n".join(lines[:1] + lines[8:9] + lines[12:13]) + "\n")
    ds = create_dataset(
        "inat2018", root=str(tmp_path), train_file="train.txt", test_file="test.txt", num_classes=3, val_per_class=2
    )
    assert ds.classnames == ["c0", "c1", "c2"]  # named from the train paths
    assert np.bincount(ds.val.labels).tolist() == [2, 2, 1]  # never more than half a class
    assert ds.class_counts.tolist() == [6, 2, 1]
    assert not set(ds.val.paths) & set(ds.train.paths)
    ds.validate()
    again = create_dataset(
        "inat2018", root=str(tmp_path), train_file="train.txt", test_file="test.txt", num_classes=3, val_per_class=2
    )
    assert again.val.paths == ds.val.paths


def test_classnames_formats_and_length_mismatch(tmp_path):
    f = tmp_path / "names.txt"
    f.write_text("airfield airfield\nairplane_cabin airplane_cabin\nalley alley\n")
    assert read_classnames(f, 3) == ["airfield", "airplane cabin", "alley"]
    f.write_text("n01440764 tench\nn01443537 goldfish\nn01484850 great white shark\n")
    assert read_classnames(f, 3) == ["tench", "goldfish", "great white shark"]
    f.write_text("tench\ngreat white shark\ntiger shark\n")
    assert read_classnames(f, 3) == ["tench", "great white shark", "tiger shark"]
    f.write_text("/a/airfield 0\n/b/bedroom 1\n/a/apartment_building/outdoor 2\n")
    assert read_classnames(f, 3) == ["airfield", "bedroom", "apartment building outdoor"]
    with pytest.raises(DataError, match=r"names\.txt has 3 names but num_classes is 4"):
        read_classnames(f, 4)


def test_shipped_class_names():
    names = read_classnames(PACKAGED / "imagenet_lt" / "classnames.txt.gz", 1000)
    assert names[:3] == ["tench", "goldfish", "great white shark"]
    assert read_classnames(PACKAGED / "places_lt" / "classnames.txt.gz", 365)[:2] == ["airfield", "airplane cabin"]


# --------------------------------------------------------------------------- CIFAR-100-LT


def test_cifar100_lt_profile():
    counts = exponential_profile(100, 500, 100)
    assert sum(counts) == 10_847 and counts[0] == 500 and counts[-1] == 5
    assert counts == sorted(counts, reverse=True)


def _fake_cifar(root: Path, per_class_train: int = 12, per_class_test: int = 3) -> None:
    rng = np.random.default_rng(0)
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    for part, n in (("train", per_class_train), ("test", per_class_test)):
        labels = np.repeat(np.arange(100), n)
        data = rng.integers(0, 256, (len(labels), 3072), dtype=np.uint8)
        with open(folder / part, "wb") as f:
            pickle.dump({b"data": data, b"fine_labels": labels.tolist(), b"coarse_labels": [0] * len(labels)}, f)
    names = [f"class_{k}".encode() for k in range(99)] + [b"aquarium_fish"]
    with open(folder / "meta", "wb") as f:
        pickle.dump({b"fine_label_names": names}, f)


def test_cifar100_lt_source_end_to_end(tmp_path):
    _fake_cifar(tmp_path)
    ds = create_dataset("cifar100-lt", root=str(tmp_path), head=8, imbalance=4, val_per_class=2)
    assert ds.class_counts.tolist() == exponential_profile(100, 8, 4)
    assert np.bincount(ds.val.labels).tolist() == [2] * 100
    assert not set(ds.train.indices) & set(ds.val.indices)
    assert len(ds.test) == 300 and ds.classnames[-1] == "aquarium fish"
    assert ds.train.images.shape[1:] == (32, 32, 3)
    im = ds.test.image(0)
    assert im.mode == "RGB" and im.size == (32, 32)
    ds.validate()
    same = create_dataset("cifar100-lt", root=str(tmp_path), head=8, imbalance=4, val_per_class=2)
    other = create_dataset("cifar100-lt", root=str(tmp_path), seed=1, head=8, imbalance=4, val_per_class=2)
    assert np.array_equal(same.train.indices, ds.train.indices)
    assert not np.array_equal(other.train.indices, ds.train.indices)
    with pytest.raises(DataError, match="class 0"):  # 8 + 5 > 12 images
        create_dataset("cifar100-lt", root=str(tmp_path), head=8, imbalance=4, val_per_class=5)


def test_cifar100_missing_names_expected_path(tmp_path):
    with pytest.raises(DataError, match=r"cifar-100-python/meta"):
        create_dataset("cifar100-lt", root=str(tmp_path))
    with pytest.raises(DataError, match="root="):
        create_dataset("cifar100-lt")


# --------------------------------------------------------------------------- Fashion-MNIST-LT


@needs_fmnist
def test_fashion_mnist_lt_profile_val_test_and_sketch():
    ds = create_dataset("fashion-mnist-lt", seed=0)
    assert ds.class_counts.tolist() == exponential_profile(10, 500, 100)
    assert ds.classnames[0] == "T-shirt/top" and ds.num_classes == 10
    assert np.bincount(ds.val.labels, minlength=10).tolist() == [20] * 10
    assert np.bincount(ds.test.labels, minlength=10).tolist() == [1000] * 10
    # val is drawn from the training images the LT split left over
    assert not set(ds.train.indices.tolist()) & set(ds.val.indices.tolist())
    train_bytes = {im.tobytes() for im in ds.train.images}
    assert sum(im.tobytes() in train_bytes for im in ds.val.images) <= 2  # (exact duplicates exist in F-MNIST)
    sk = ds.ood["fashion-mnist-sketch"]
    assert sk.images.shape == ds.test.images.shape and sk.images.dtype == np.uint8
    assert np.array_equal(sk.labels, ds.test.labels)
    assert sk.images.mean() > 150  # dark lines on white
    assert not np.array_equal(sk.images[0], sk.images[1])
    assert ds.train.image(0).mode == "RGB"
    ds.validate()


@needs_fmnist
def test_fashion_mnist_lt_seeded_options():
    a = create_dataset("fashion-mnist-lt", seed=3, imbalance=10, head=100, val_per_class=5, test_per_class=30)
    b = create_dataset("fashion-mnist-lt", seed=3, imbalance=10, head=100, val_per_class=5, test_per_class=30)
    c = create_dataset("fashion-mnist-lt", seed=4, imbalance=10, head=100, val_per_class=5, test_per_class=30)
    assert a.class_counts.tolist() == exponential_profile(10, 100, 10)
    assert np.bincount(a.test.labels).tolist() == [30] * 10
    assert np.array_equal(a.train.indices, b.train.indices) and np.array_equal(a.val.indices, b.val.indices)
    sa, sb, sc = (d.ood["fashion-mnist-sketch"].images for d in (a, b, c))
    assert np.array_equal(sa, sb) and not np.array_equal(sa, sc)
    assert not np.array_equal(a.train.indices, c.train.indices)
    assert a.options == {"imbalance": 10, "head": 100, "val_per_class": 5, "test_per_class": 30}


def test_fashion_mnist_missing_folder_and_bad_idx(tmp_path):
    with pytest.raises(DataError, match="apt-get install -y dataset-fashion-mnist"):
        create_dataset("fashion-mnist-lt", root=str(tmp_path / "none"))
    bad = tmp_path / "x-idx3-ubyte"
    bad.write_bytes(b"\x00\x00\x08\x03" + np.array([2, 2, 2], ">u4").tobytes() + b"\x00" * 7)
    with pytest.raises(DataError, match=r"x-idx3-ubyte: header shape \(2, 2, 2\) needs 24 bytes"):
        read_idx(bad)
    bad.write_bytes(b"\x12\x34\x08\x03")
    with pytest.raises(DataError, match=r"x-idx3-ubyte: not an IDX file"):
        read_idx(bad)


def test_sketch_is_line_drawing_of_the_shape():
    img = np.zeros((2, 28, 28), np.uint8)
    img[0, 8:20, 8:20] = 200  # a filled square -> its outline
    img[1, 4:24, 12:16] = 255  # a bar -> its outline
    s = sketch(img)
    assert s.shape == img.shape and s.dtype == np.uint8
    assert s[0, 14, 14] == 255 and s[0, 0, 0] == 255  # inside and background white
    assert s[0, 8, 14] < 100  # the edge is drawn dark
    assert not np.array_equal(s[0], s[1])
    assert np.array_equal(sketch(img), s)


# --------------------------------------------------------------------------- image folders


def test_image_folder_with_held_out_val_and_profile(tmp_path):
    for split, sizes in (("train", [12, 9, 7]), ("test", [2, 2, 2])):
        for k, n in enumerate(sizes):
            d = tmp_path / split / f"cls_{k}"
            d.mkdir(parents=True)
            for i in range(n):
                Image.new("RGB", (6, 6), (k * 50, i, 0)).save(d / f"{i}.png")
    (tmp_path / "train" / "cls_0" / "notes.txt").write_text("not an image")
    ds = create_dataset("image-folder", root=str(tmp_path), val_per_class=2, imbalance=5)
    assert ds.classnames == ["cls 0", "cls 1", "cls 2"]
    assert np.bincount(ds.val.labels).tolist() == [2, 2, 2]
    assert ds.class_counts.tolist() == exponential_profile(3, 5, 5)  # head = smallest class left (7 − 2)
    assert not set(ds.val.paths) & set(ds.train.paths)
    ds.validate()
    assert ds.test.image(0).size == (6, 6)
    with pytest.raises(DataError, match="asks 11 images of class 'cls_0', which has 10"):
        create_dataset("image-folder", root=str(tmp_path), val_per_class=2, imbalance=2, head=11)
    (tmp_path / "test" / "stray").mkdir()
    with pytest.raises(DataError, match="stray"):
        create_dataset("image-folder", root=str(tmp_path))


# --------------------------------------------------------------------------- registry & options


def test_unknown_option_and_dataset_messages():
    with pytest.raises(DataError) as e:
        create_dataset("fashion-mnist-lt", imbalnce=10)
    msg = str(e.value)
    assert "'imbalnce'" in msg and "Did you mean 'imbalance'?" in msg
    assert "head" in msg and "val_per_class" in msg and "test_per_class" in msg
    with pytest.raises(UnknownNameError, match="Did you mean 'places-lt'"):
        create_dataset("place-lt")
    assert dataset_options("cifar100-lt") == {"imbalance": 100, "head": 500, "val_per_class": 20, "val_from": "train"}
    assert dataset_options("places-lt")["train_file"] == "Places_LT_train.txt"
    assert dataset_options("inat2018")["test_file"] == "iNaturalist18_val.txt"


# --------------------------------------------------------------------------- samplers


LT_LABELS = np.repeat(np.arange(4), [1000, 100, 10, 2])


def test_class_balanced_sampler_is_roughly_uniform_and_seeded():
    s = build_sampler("class", LT_LABELS, seed=0, num_samples=20_000)
    idx = np.fromiter(iter(s), dtype=np.int64)
    assert len(idx) == len(s) == 20_000 and idx.min() >= 0 and idx.max() < len(LT_LABELS)
    freq = np.bincount(LT_LABELS[idx], minlength=4) / len(idx)
    assert np.allclose(freq, 0.25, atol=0.02)
    assert set(idx[LT_LABELS[idx] == 3]) == {1110, 1111}  # both tail images are reachable
    t = build_sampler("class", LT_LABELS, seed=0, num_samples=20_000)
    assert np.array_equal(np.fromiter(iter(t), dtype=np.int64), idx)


def test_sampler_epochs_differ_and_resume_reproduces():
    s = build_sampler("instance", LT_LABELS, seed=5)
    e0, e1 = list(s), list(s)
    assert sorted(e0) == list(range(len(LT_LABELS))) and e0 != e1
    r = build_sampler("instance", LT_LABELS, seed=5)
    r.set_epoch(1)
    assert list(r) == e1
    assert list(build_sampler("instance", LT_LABELS, seed=6)) != e0


def test_sqrt_sampler_and_unknown_kind():
    s = build_sampler("sqrt", LT_LABELS, seed=1, num_samples=40_000)
    freq = np.bincount(LT_LABELS[list(s)], minlength=4) / 40_000
    want = np.sqrt([1000, 100, 10, 2]) / np.sqrt([1000, 100, 10, 2]).sum()
    assert np.allclose(freq, want, atol=0.02)
    with pytest.raises(ValueError, match="instance, class, sqrt"):
        build_sampler("balanced", LT_LABELS, seed=0)


def test_transforms_shapes():
    from ltbench.data.transforms import build_transform

    cfg = {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5), "interpolation": "bicubic", "crop_pct": 0.9}
    im = Image.new("RGB", (28, 28), (10, 20, 30))
    for train in (True, False):
        x = build_transform(cfg, 32, train)(im)
        assert tuple(x.shape) == (3, 32, 32)
    names = [type(t).__name__ for t in build_transform(cfg, 32, True).transforms]
    assert "ColorJitter" not in names and "RandomHorizontalFlip" in names


@needs_fmnist
def test_fashion_mnist_folder_from_environment(tmp_path, monkeypatch):
    """LTBENCH_FASHION_MNIST replaces the Debian folder (set-up without root); root= still wins."""
    from ltbench.data.fashion_mnist import load_fashion_mnist

    for f in Path(FMNIST_ROOT).glob("*-ubyte.gz"):
        (tmp_path / f.name).symlink_to(f)
    monkeypatch.setenv("LTBENCH_FASHION_MNIST", str(tmp_path / "nowhere"))
    with pytest.raises(DataError, match=r"folder .*nowhere not found.*LTBENCH_FASHION_MNIST"):
        load_fashion_mnist()
    assert load_fashion_mnist(FMNIST_ROOT)[1].shape == (60_000,)
    monkeypatch.setenv("LTBENCH_FASHION_MNIST", str(tmp_path))
    x_tr, y_tr, x_te, y_te = load_fashion_mnist()
    assert x_tr.shape == (60_000, 28, 28) and y_te.shape == (10_000,)


def test_cifar100_lt_official_val_test_split(tmp_path):
    """`val_from=test` (LT-Soups' split): validation is the first `val_per_class` test images of each
    class in file order, the test set the rest; the training subset is the same as by default."""
    import pickle

    _fake_cifar(tmp_path, per_class_test=5)
    folder = tmp_path / "cifar-100-python"
    with open(folder / "test", "rb") as f:
        raw = pickle.load(f)
    order = np.random.default_rng(1).permutation(len(raw[b"fine_labels"]))  # classes interleaved in the file
    raw = {b"data": raw[b"data"][order], b"fine_labels": np.asarray(raw[b"fine_labels"])[order].tolist()}
    with open(folder / "test", "wb") as f:
        pickle.dump(raw, f)
    y = np.asarray(raw[b"fine_labels"])
    ds = create_dataset("cifar100-lt", root=str(tmp_path), head=8, imbalance=4, val_per_class=2, val_from="test")
    default = create_dataset("cifar100-lt", root=str(tmp_path), head=8, imbalance=4, val_per_class=2)
    assert np.array_equal(ds.train.indices, default.train.indices)
    want_val = np.sort(np.concatenate([np.flatnonzero(y == c)[:2] for c in range(100)]))
    assert np.array_equal(ds.val.indices, want_val)
    assert np.array_equal(ds.val.images, raw[b"data"][want_val].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    assert len(ds.test) == 300 and np.bincount(ds.test.labels).tolist() == [3] * 100
    assert np.array_equal(ds.val.labels, y[want_val])

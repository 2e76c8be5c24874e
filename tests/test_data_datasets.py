"""Dataset loaders against tiny fixtures written in each real on-disk format.

Truths: the arrays and labels written into the fixtures, and torchvision's own readers of the same
files (CIFAR10/100, STL10 with their md5 check switched off), plus sklearn's load_digits.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from mitools.data import (
    DATASET_SPECS,
    IMAGENET100_CLASSES,
    TwoViewTransform,
    build_dataset,
    compute_mean_std,
    digits_split_indices,
    get_spec,
    preset_for,
)
from mitools.data import datasets as datasets_module
from mitools.data.datasets import download_dataset


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


# ----------------------------------------------------------------------------- CIFAR fixtures


def _write_pickle(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def _cifar_rows(images: np.ndarray) -> np.ndarray:
    """(N, 32, 32, 3) -> (N, 3072): 1024 R values row-major, then G, then B (the CIFAR layout)."""
    rows = np.empty((images.shape[0], 3072), dtype=np.uint8)
    for n, img in enumerate(images):
        rows[n] = np.concatenate([img[:, :, c].reshape(-1) for c in range(3)])
    return rows


def make_cifar10(root: Path, per_batch: int = 2, n_test: int = 3) -> dict:
    rng = _rng(1)
    folder = root / "cifar-10-batches-py"
    train_imgs, train_labels = [], []
    for b in range(1, 6):
        imgs = rng.integers(0, 256, (per_batch, 32, 32, 3), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, per_batch)]
        _write_pickle(
            folder / f"data_batch_{b}",
            {"batch_label": f"training batch {b} of 5", "labels": labels,
             "data": _cifar_rows(imgs), "filenames": [f"img_{b}_{i}.png" for i in range(per_batch)]},
        )  # fmt: skip
        train_imgs.append(imgs)
        train_labels += labels
    test_imgs = rng.integers(0, 256, (n_test, 32, 32, 3), dtype=np.uint8)
    test_labels = [int(v) for v in rng.integers(0, 10, n_test)]
    _write_pickle(
        folder / "test_batch",
        {"batch_label": "testing batch 1 of 1", "labels": test_labels,
         "data": _cifar_rows(test_imgs), "filenames": [f"t{i}.png" for i in range(n_test)]},
    )  # fmt: skip
    names = [
        "airplane",
        "automobile",
        "bird",
        "cat",
        "deer",
        "dog",
        "frog",
        "horse",
        "ship",
        "truck",
    ]
    _write_pickle(
        folder / "batches.meta",
        {"num_cases_per_batch": per_batch, "label_names": names, "num_vis": 3072},
    )
    return {
        "train": (np.concatenate(train_imgs), train_labels),
        "test": (test_imgs, test_labels),
        "classes": names,
    }


def make_cifar100(root: Path, n_train: int = 5, n_test: int = 4) -> dict:
    rng = _rng(2)
    folder = root / "cifar-100-python"
    out = {}
    for split, n in (("train", n_train), ("test", n_test)):
        imgs = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
        fine = [int(v) for v in rng.integers(0, 100, n)]
        _write_pickle(
            folder / split,
            {"filenames": [f"{split}{i}.png" for i in range(n)], "batch_label": split,
             "fine_labels": fine, "coarse_labels": [v // 5 for v in fine],
             "data": _cifar_rows(imgs)},
        )  # fmt: skip
        out[split] = (imgs, fine)
    fine_names = [f"fine_{i}" for i in range(100)]
    _write_pickle(
        folder / "meta",
        {"fine_label_names": fine_names, "coarse_label_names": [f"c{i}" for i in range(20)]},
    )
    out["classes"] = fine_names
    return out


def _no_md5(monkeypatch) -> None:
    """torchvision checks the official md5s on every load; the fixtures are not the official files."""
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda *a, **k: True)
    monkeypatch.setattr(torchvision.datasets.stl10, "check_integrity", lambda *a, **k: True)


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
@pytest.mark.parametrize("split", ["train", "test"])
def test_cifar_matches_written_arrays_and_torchvision(tmp_path, monkeypatch, name, split):
    truth = (make_cifar10 if name == "cifar10" else make_cifar100)(tmp_path)
    images, labels = truth[split]
    ds = build_dataset(name, tmp_path, split)
    assert len(ds) == len(labels)
    np.testing.assert_array_equal(ds.data, images)
    assert [ds[i][1] for i in range(len(ds))] == labels
    assert ds.classes == truth["classes"]
    assert len(ds.classes) == get_spec(name).num_classes
    img, label = ds[len(ds) - 1]
    assert isinstance(img, Image.Image) and img.mode == "RGB" and img.size == (32, 32)
    np.testing.assert_array_equal(np.asarray(img), images[-1])
    assert isinstance(label, int)

    _no_md5(monkeypatch)
    tv_cls = torchvision.datasets.CIFAR10 if name == "cifar10" else torchvision.datasets.CIFAR100
    tv = tv_cls(str(tmp_path), train=(split == "train"))
    np.testing.assert_array_equal(tv.data, ds.data)
    assert list(tv.targets) == [int(t) for t in ds.targets]
    assert tv.classes == ds.classes


def test_cifar_missing_files_name_path_and_remedy(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        build_dataset("cifar10", tmp_path, "train")
    msg = str(err.value)
    assert "\n" not in msg
    assert str(tmp_path / "cifar-10-batches-py" / "data_batch_1") in msg
    assert "data_batch_1..5, test_batch, batches.meta" in msg
    assert "download=True" in msg and "data.download=true" in msg
    make_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(FileNotFoundError, match="data_batch_3"):
        build_dataset("cifar10", tmp_path, "train")
    build_dataset("cifar10", tmp_path, "test")  # the test split does not need the train batches
    with pytest.raises(FileNotFoundError, match=r"cifar-100-python.*train, test, meta"):
        build_dataset("cifar100", tmp_path, "test")


def test_cifar_md5_verification(tmp_path, monkeypatch):
    make_cifar10(tmp_path)
    with pytest.raises(ValueError, match="md5 of .*test_batch"):
        build_dataset("cifar10", tmp_path, "test", verify_integrity=True)
    # with the fixture's own md5s registered as the official ones, verification passes
    folder = tmp_path / "cifar-10-batches-py"
    md5 = {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in folder.iterdir()}
    cls = torchvision.datasets.CIFAR10
    monkeypatch.setattr(
        cls, "train_list", [[f"data_batch_{i}", md5[f"data_batch_{i}"]] for i in range(1, 6)]
    )
    monkeypatch.setattr(cls, "test_list", [["test_batch", md5["test_batch"]]])
    monkeypatch.setattr(cls, "meta", {**cls.meta, "md5": md5["batches.meta"]})
    assert len(build_dataset("cifar10", tmp_path, "train", verify_integrity=True)) == 10


def _truncate(path: Path, keep: float) -> None:
    """Keep the first ``keep`` fraction of the bytes of ``path`` (an interrupted download/copy)."""
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


@pytest.mark.parametrize(
    ("name", "split", "file", "damage"),
    [
        ("cifar10", "train", "data_batch_2", "half"),  # UnpicklingError: pickle data was truncated
        ("cifar10", "test", "test_batch", "empty"),  # EOFError: Ran out of input
        ("cifar10", "test", "batches.meta", "no_key"),  # KeyError: 'label_names'
        ("cifar100", "train", "train", "no_key"),  # KeyError: 'fine_labels'
        ("cifar100", "test", "meta", "half"),
    ],
)
def test_cifar_corrupt_pickle_names_file_and_remedy(tmp_path, name, split, file, damage):
    make = make_cifar10 if name == "cifar10" else make_cifar100
    make(tmp_path)
    folder = tmp_path / ("cifar-10-batches-py" if name == "cifar10" else "cifar-100-python")
    path = folder / file
    if damage == "half":
        _truncate(path, 0.5)
    elif damage == "empty":
        _truncate(path, 0.0)
    else:  # a readable pickle of the wrong content
        _write_pickle(path, {"data": np.zeros((1, 3072), np.uint8), "batch_label": "x"})
    with pytest.raises(ValueError) as err:
        build_dataset(name, tmp_path, split)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(f"{name} {split}: cannot read {path}: ")
    assert "truncated or corrupt" in msg and "delete it and pass download=True" in msg
    assert "https://www.cs.toronto.edu/~kriz/" in msg
    if damage == "no_key":
        assert "no key(s) ['" in msg


def test_cifar_pickle_with_wrong_data_shape(tmp_path):
    make_cifar10(tmp_path)
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    _write_pickle(path, {"data": np.zeros((3, 3000), np.uint8), "labels": [0, 1, 2]})
    with pytest.raises(ValueError, match=r"test_batch: 'data' of shape \(3, 3000\) for 3 labels"):
        build_dataset("cifar10", tmp_path, "test")


# ----------------------------------------------------------------------------- STL-10


def _stl_bytes(images: np.ndarray) -> bytes:
    """The STL-10 binary layout: per image, per channel, the 96x96 array in column-major order."""
    return b"".join(
        np.ascontiguousarray(img[:, :, c]).flatten(order="F").tobytes()
        for img in images
        for c in range(3)
    )


def make_stl10(root: Path) -> dict:
    rng = _rng(3)
    folder = root / "stl10_binary"
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for split, n in (("train", 3), ("test", 2), ("unlabeled", 4)):
        # a per-image ramp plus noise makes transposition and orientation errors visible
        ramp = np.arange(96, dtype=np.int64)[:, None, None] * np.array([2, 1, 0])[None, None, :]
        imgs = ((rng.integers(0, 60, (n, 96, 96, 3)) + ramp[None]) % 256).astype(np.uint8)
        (folder / f"{split}_X.bin").write_bytes(_stl_bytes(imgs))
        labels = rng.integers(1, 11, n).astype(np.uint8)
        if split != "unlabeled":
            (folder / f"{split}_y.bin").write_bytes(labels.tobytes())
            out[split] = (imgs, [int(v) - 1 for v in labels])
        else:
            out[split] = (imgs, [-1] * n)
    names = ["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"]
    (folder / "class_names.txt").write_text("\n".join(names) + "\n")
    out["classes"] = names
    return out


@pytest.mark.parametrize("split", ["train", "test", "unlabeled", "train+unlabeled"])
def test_stl10_matches_written_arrays_and_torchvision(tmp_path, monkeypatch, split):
    truth = make_stl10(tmp_path)
    if split == "train+unlabeled":
        images = np.concatenate([truth["train"][0], truth["unlabeled"][0]])
        labels = truth["train"][1] + truth["unlabeled"][1]
    else:
        images, labels = truth[split]
    ds = build_dataset("stl10", tmp_path, split)
    assert len(ds) == len(labels)
    np.testing.assert_array_equal(ds.data, images)
    assert [ds[i][1] for i in range(len(ds))] == labels
    assert ds.classes == truth["classes"]
    img = ds[0][0]
    assert img.size == (96, 96) and img.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(img), images[0])

    _no_md5(monkeypatch)
    tv = torchvision.datasets.STL10(str(tmp_path), split=split)
    np.testing.assert_array_equal(tv.data.transpose(0, 2, 3, 1), ds.data)
    np.testing.assert_array_equal(tv.labels, ds.targets)
    np.testing.assert_array_equal(np.asarray(tv[1][0]), np.asarray(ds[1][0]))


def test_stl10_missing_and_corrupt(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        build_dataset("stl10", tmp_path, "train+unlabeled")
    msg = str(err.value)
    assert "\n" not in msg and str(tmp_path / "stl10_binary" / "train_X.bin") in msg
    assert "unlabeled_X.bin" in msg and "download=True" in msg
    make_stl10(tmp_path)
    (tmp_path / "stl10_binary" / "unlabeled_X.bin").unlink()
    assert len(build_dataset("stl10", tmp_path, "train")) == 3
    with pytest.raises(FileNotFoundError, match="unlabeled_X.bin"):
        build_dataset("stl10", tmp_path, "unlabeled")
    with open(tmp_path / "stl10_binary" / "test_X.bin", "ab") as f:
        f.write(b"\x00" * 7)
    with pytest.raises(ValueError, match="not a multiple of 27648"):
        build_dataset("stl10", tmp_path, "test")


@pytest.mark.parametrize("file", ["train_X.bin", "train_y.bin", "unlabeled_X.bin"])
def test_stl10_truncated_file_names_file_and_remedy(tmp_path, file):
    make_stl10(tmp_path)
    path = tmp_path / "stl10_binary" / file
    _truncate(path, 0.6)  # 3 train images -> 1.8, 3 labels -> 1, 4 unlabeled -> 2.4
    with pytest.raises(ValueError) as err:
        build_dataset("stl10", tmp_path, "train+unlabeled")
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(f"stl10 train+unlabeled: cannot read {path}: ")
    assert "truncated or corrupt" in msg and "delete it and pass download=True" in msg
    assert torchvision.datasets.STL10.url in msg
    problem = "1 labels for 3 images" if file == "train_y.bin" else "not a multiple of 27648"
    assert problem in msg


# ----------------------------------------------------------------------------- Tiny-ImageNet


def _colour(label: int, k: int) -> tuple[int, int, int]:
    return (40 * label + 20, 30 * k + 10, 200 - 50 * label)


def _save_jpeg(path: Path, colour: tuple[int, int, int], size: int, grey: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.new("RGB", (size, size), colour)
    (img.convert("L") if grey else img).save(path, format="JPEG", quality=95)


TINY_WNIDS = ["n02000003", "n01000001", "n03000002"]  # deliberately not sorted


def make_tiny_imagenet(base: Path, official: bool = True) -> dict:
    """Official-zip layout (``official``) or plain class folders; 2 train, 1-2 val images/class."""
    root = base / "tiny-imagenet-200" if official else base
    classes = sorted(TINY_WNIDS)
    train, val = [], []
    for wnid in TINY_WNIDS:
        label = classes.index(wnid)
        for k in range(2):
            sub = root / "train" / wnid / ("images" if official else "")
            _save_jpeg(
                sub / f"{wnid}_{k}.JPEG", _colour(label, k), 64, grey=(k == 1 and label == 0)
            )
            train.append((label, k))
        if official:
            (root / "train" / wnid / f"{wnid}_boxes.txt").write_text(
                f"{wnid}_0.JPEG\t0\t0\t63\t63\n"
            )
    lines = []
    for i, wnid in enumerate(TINY_WNIDS * 2):
        label = classes.index(wnid)
        k = 2 + i // 3
        if official:
            _save_jpeg(root / "val" / "images" / f"val_{i}.JPEG", _colour(label, k), 64)
            lines.append(f"val_{i}.JPEG\t{wnid}\t1\t2\t60\t61")
        else:
            _save_jpeg(root / "val" / wnid / f"val_{i}.JPEG", _colour(label, k), 64)
        val.append((label, k))
    if official:
        (root / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
        (root / "wnids.txt").write_text("\n".join(TINY_WNIDS) + "\n")
    return {"train": train, "val": val, "classes": classes}


def _decode(ds, i: int) -> tuple[int, np.ndarray]:
    img, label = ds[i]
    assert img.mode == "RGB" and img.size == (64, 64)
    return label, np.asarray(img, dtype=np.float64).mean((0, 1))


@pytest.mark.parametrize("official", [True, False])
@pytest.mark.parametrize("split", ["train", "val"])
def test_tiny_imagenet_layouts(tmp_path, official, split):
    truth = make_tiny_imagenet(tmp_path, official)
    ds = build_dataset("tiny_imagenet", tmp_path, split)
    assert ds.classes == truth["classes"]
    assert len(ds) == len(truth[split])
    got = sorted(_decode(ds, i)[0] for i in range(len(ds)))
    assert got == sorted(label for label, _ in truth[split])
    # each image's colour identifies the (label, k) it was written with
    for i in range(len(ds)):
        label, mean = _decode(ds, i)
        matches = [
            (lab, k) for lab, k in truth[split]
            if lab == label and np.abs(mean - np.array(_colour(lab, k))).max() < 4
        ]  # fmt: skip
        grey_ok = split == "train" and label == 0 and np.ptp(mean) < 1  # the greyscale JPEG
        assert matches or grey_ok, (i, label, mean)


def test_tiny_imagenet_errors(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        build_dataset("tiny_imagenet", tmp_path, "train")
    msg = str(err.value)
    assert "\n" not in msg and str(tmp_path / "train") in msg
    assert "ROOT/train/<wnid>/images/*.JPEG" in msg and "val_annotations.txt" in msg
    make_tiny_imagenet(tmp_path)
    ann = tmp_path / "tiny-imagenet-200" / "val" / "val_annotations.txt"
    ann.write_text(ann.read_text() + "val_9.JPEG\tn09999999\t0\t0\t1\t1\n")
    with pytest.raises(ValueError, match="n09999999"):
        build_dataset("tiny_imagenet", tmp_path, "val")
    with pytest.raises(ValueError, match="not supported"):
        build_dataset("tiny_imagenet", tmp_path, "train", download=True)


def _empty_class(folder: Path) -> None:
    """Delete the images of a class folder, keeping the folder (an interrupted copy)."""
    for p in folder.iterdir():
        if p.suffix == ".JPEG":
            p.unlink()


@pytest.mark.parametrize(
    ("official", "split", "damage", "problem"),
    [
        (True, "train", "no_folder", "1 without a class folder ['n01000001']"),
        (True, "train", "empty", "1 with an empty folder (no images) ['n01000001']"),
        (False, "train", "empty", "1 with an empty folder (no images) ['n01000001']"),
        (False, "val", "no_folder", "1 without a class folder ['n01000001']"),
    ],
    ids=[
        "official-train-no_folder",
        "official-train-empty",
        "plain-train-empty",
        "plain-val-no_folder",
    ],
)
def test_tiny_imagenet_incomplete_tree(tmp_path, official, split, damage, problem):
    make_tiny_imagenet(tmp_path, official)
    root = tmp_path / "tiny-imagenet-200" if official else tmp_path
    class_dir = root / split / "n01000001"
    if damage == "no_folder":
        shutil.rmtree(class_dir)
    else:
        _empty_class(class_dir / "images" if official else class_dir)
    with pytest.raises(ValueError) as err:
        build_dataset("tiny_imagenet", tmp_path, split)
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith(
        f"tiny_imagenet {split}: 1 of 3 classes have no images in {root / split}: "
    )
    assert problem in msg
    assert "an interrupted copy? re-copy those class folders" in msg
    assert "tiny-imagenet-200.zip" in msg
    other = "val" if split == "train" else "train"
    assert len(build_dataset("tiny_imagenet", tmp_path, other)) > 0  # the complete split loads


# ----------------------------------------------------------------------------- ImageNet-100

IN100_SMALL = ["n00000003", "n00000001", "n00000002"]


def make_imagenet100(root: Path, classes=IN100_SMALL, per_class=(3, 1)) -> None:
    for split, n in zip(("train", "val"), per_class, strict=True):
        for wnid in classes:
            label = sorted(classes).index(wnid)
            for k in range(n):
                _save_jpeg(root / split / wnid / f"{wnid}_{k}.JPEG", _colour(label, k), 20 + 3 * k)


def test_imagenet100_class_list_constant():
    """The whole list, in order, is CMC's imagenet100.txt (github.com/HobbitLong/CMC).

    The audit of issue 4 compared the tuple with two independent copies of that file and found it
    equal; it was compared again with HobbitLong/CMC's own copy when this test was written, equal
    too. The sha256 below is of ``"\\n".join(IMAGENET100_CLASSES)`` (no trailing newline), computed
    then. The list is in the file's order, not sorted; datasets sort it for class indices.
    """
    assert len(IMAGENET100_CLASSES) == 100 == len(set(IMAGENET100_CLASSES))
    assert all(len(w) == 9 and w[0] == "n" and w[1:].isdigit() for w in IMAGENET100_CLASSES)
    assert IMAGENET100_CLASSES[0] == "n02869837" and IMAGENET100_CLASSES[-1] == "n02090622"
    assert list(IMAGENET100_CLASSES) != sorted(IMAGENET100_CLASSES)  # CMC's order is kept
    digest = hashlib.sha256("\n".join(IMAGENET100_CLASSES).encode()).hexdigest()
    assert digest == "b06db93f7ac2851ef476c162d6c4cbba17197be0269c88005add46486f682cb0"
    assert DATASET_SPECS["imagenet100"].num_classes == 100


@pytest.mark.parametrize("split", ["train", "val"])
def test_imagenet100_tree_with_small_class_list(tmp_path, split):
    make_imagenet100(tmp_path)
    ds = build_dataset("imagenet100", tmp_path, split, class_list=IN100_SMALL)
    n = 3 if split == "train" else 1
    assert len(ds) == 3 * n
    assert ds.classes == sorted(IN100_SMALL)
    for i in range(len(ds)):
        img, label = ds[i]
        k = i % n
        assert img.mode == "RGB" and img.size == (20 + 3 * k, 20 + 3 * k)
        assert label == i // n
        mean = np.asarray(img, dtype=np.float64).mean((0, 1))
        assert np.abs(mean - np.array(_colour(label, k))).max() < 4


def test_imagenet100_class_mismatch_errors(tmp_path):
    make_imagenet100(tmp_path)
    with pytest.raises(ValueError) as err:
        build_dataset("imagenet100", tmp_path, "train")
    msg = str(err.value)
    assert "\n" not in msg and "100 missing" in msg and "3 extra" in msg and "n00000001" in msg
    (tmp_path / "train" / "n00000009").mkdir()
    with pytest.raises(ValueError, match=r"0 missing \[\], 1 extra \['n00000009'\]"):
        build_dataset("imagenet100", tmp_path, "train", class_list=IN100_SMALL)
    with pytest.raises(ValueError, match=r"1 missing \['n00000004'\]"):
        build_dataset("imagenet100", tmp_path, "val", class_list=[*IN100_SMALL, "n00000004"])
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "nowhere" / "val")):
        build_dataset("imagenet100", tmp_path / "nowhere", "val")
    with pytest.raises(ValueError, match="imagenet100 only"):
        build_dataset("cifar10", tmp_path, "train", class_list=IN100_SMALL)


@pytest.mark.parametrize("split", ["train", "val"])
def test_imagenet100_empty_class_folders(tmp_path, split):
    make_imagenet100(tmp_path, classes=[*IN100_SMALL, "n00000004"])
    for wnid in ("n00000004", "n00000002"):
        _empty_class(tmp_path / split / wnid)
    class_list = [*IN100_SMALL, "n00000004"]
    with pytest.raises(ValueError) as err:
        build_dataset("imagenet100", tmp_path, split, class_list=class_list)
    msg = str(err.value)
    assert "\n" not in msg
    assert msg == (
        f"imagenet100 {split}: 2 of 4 classes have no images in {tmp_path / split}: 2 with an "
        "empty folder (no images) ['n00000002', 'n00000004']; an interrupted copy? re-copy those "
        f"class folders (from ImageNet-1k's {split} set)"
    )
    other = "val" if split == "train" else "train"
    assert len(build_dataset("imagenet100", tmp_path, other, class_list=class_list)) > 0


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "stl10", "tiny_imagenet", "imagenet100"])
def test_missing_data_errors_show_relative_root_as_absolute(tmp_path, monkeypatch, name):
    """Under torchrun/Slurm the working directory may differ: a relative root is also shown
    resolved."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    with pytest.raises(FileNotFoundError) as err:
        build_dataset(name, "data", "train")
    msg = str(err.value)
    absolute = (tmp_path / "data").resolve()
    assert "\n" not in msg
    if name in ("cifar10", "cifar100", "stl10"):
        assert f"ROOT=data (= {absolute})" in msg
    else:
        assert f"missing data/train (= {absolute / 'train'})" in msg


# ----------------------------------------------------------------------------- digits


def test_digits_split_images_and_labels():
    from sklearn.datasets import load_digits

    bunch = load_digits()
    idx = digits_split_indices()
    assert (len(idx["train"]), len(idx["val"]), len(idx["all"])) == (1438, 359, 1797)
    assert np.intersect1d(idx["train"], idx["val"]).size == 0
    np.testing.assert_array_equal(np.union1d(idx["train"], idx["val"]), np.arange(1797))
    for c in range(10):  # stratified: round(20%) of each class in val
        n_c = int((bunch.target == c).sum())
        assert int((bunch.target[idx["val"]] == c).sum()) == round(0.2 * n_c)
    np.testing.assert_array_equal(digits_split_indices()["val"], idx["val"])  # fixed
    for split in ("train", "val", "all"):
        ds = build_dataset("digits", None, split)
        assert len(ds) == len(idx[split])
        img, label = ds[5]
        assert img.shape == (1, 8, 8) and img.dtype == torch.float32
        np.testing.assert_array_equal(img[0].numpy(), bunch.images[idx[split][5]] / 16.0)
        assert label == int(bunch.target[idx[split][5]])
        np.testing.assert_array_equal(ds.targets, bunch.target[idx[split]])


def test_spec_mean_std_of_digits_and_compute_mean_std(tmp_path):
    mean, std = compute_mean_std(build_dataset("digits", None, "all"))
    spec = get_spec("digits")
    np.testing.assert_allclose(mean, spec.mean, atol=1e-5)
    np.testing.assert_allclose(std, spec.std, atol=1e-5)
    truth = make_cifar10(tmp_path)
    x = truth["test"][0].astype(np.float64) / 255.0
    mean, std = compute_mean_std(build_dataset("cifar10", tmp_path, "test"))
    np.testing.assert_allclose(mean, x.mean((0, 1, 2)), rtol=1e-12)
    np.testing.assert_allclose(std, x.std((0, 1, 2)), rtol=1e-9)


# ----------------------------------------------------------------------------- download

_MAKERS = {"cifar10": make_cifar10, "cifar100": make_cifar100, "stl10": make_stl10}
_TV_CLASSES = {
    "cifar10": torchvision.datasets.CIFAR10,
    "cifar100": torchvision.datasets.CIFAR100,
    "stl10": torchvision.datasets.STL10,
}
_TV_MODULES = (torchvision.datasets.utils, torchvision.datasets.cifar, torchvision.datasets.stl10)


def _fake_downloader(monkeypatch, name: str | None) -> list[tuple]:
    """Replace torchvision's download_and_extract_archive (no network here) by one that records
    its arguments and extracts the fixture of ``name`` (None: an archive without the files).

    Patched in torchvision's dataset modules too (they import it by name), so a download through
    torchvision's classes is recorded as well.
    """
    calls: list[tuple] = []

    def fake(url, download_root, extract_root=None, filename=None, md5=None, remove_finished=False):
        calls.append((url, Path(download_root), filename, md5))
        if name is not None:
            _MAKERS[name](Path(extract_root or download_root))

    for module in _TV_MODULES:
        monkeypatch.setattr(module, "download_and_extract_archive", fake)
    return calls


def _archive(name: str) -> tuple:
    tv = _TV_CLASSES[name]
    return (tv.url, tv.filename, tv.tgz_md5)


def _failing(what: str):
    def fail(*args, **kwargs):
        raise AssertionError(f"{what} called")

    return fail


def _forbid(monkeypatch, *targets: tuple) -> None:
    for owner, attr in targets:
        monkeypatch.setattr(owner, attr, _failing(f"{owner.__name__}.{attr}"))


def _forbid_reading_and_hashing(monkeypatch) -> None:
    """Any read of a split (ours or torchvision's: pickle.load, np.fromfile) or md5 of a file fails."""
    _forbid(
        monkeypatch,
        (datasets_module, "_read_cifar_pickle"),
        (datasets_module, "_read_stl_images"),
        (pickle, "load"),
        (np, "fromfile"),
        (torchvision.datasets.utils, "calculate_md5"),
        (hashlib, "md5"),
    )


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "stl10"])
def test_download_dataset_fetches_missing_files_once_with_torchvision_archive(
    tmp_path, monkeypatch, name
):
    calls = _fake_downloader(monkeypatch, name)
    root = tmp_path / "data"
    assert download_dataset(name, root) == root
    assert [(url, fname, md5) for url, _, fname, md5 in calls] == [_archive(name)]
    assert calls[0][1] == root
    split = get_spec(name).pretrain_split
    assert len(build_dataset(name, root, split)) > 0
    assert download_dataset(name, str(root), splits=[split]) == root  # present now: no download
    assert len(calls) == 1


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "stl10"])
def test_download_dataset_with_files_present_neither_downloads_nor_reads(
    tmp_path, monkeypatch, name
):
    _MAKERS[name](tmp_path)
    calls = _fake_downloader(monkeypatch, None)
    _forbid_reading_and_hashing(monkeypatch)
    assert download_dataset(name, tmp_path) == tmp_path
    for split in get_spec(name).splits:
        assert download_dataset(name, tmp_path, splits=[split]) == tmp_path
    assert calls == []


@pytest.mark.parametrize(
    ("name", "split", "present", "size"),
    [
        ("cifar10", "train", False, 10),
        ("cifar10", "train", True, 10),
        ("cifar100", "test", False, 4),
        ("stl10", "train+unlabeled", False, 7),
        ("stl10", "train+unlabeled", True, 7),
    ],
)
def test_build_dataset_download_reads_the_split_once(
    tmp_path, monkeypatch, name, split, present, size
):
    """download=True no longer goes through torchvision's dataset class (which reads the whole
    split, after an md5 of every file) before our loader reads it again."""
    if present:
        _MAKERS[name](tmp_path)
    calls = _fake_downloader(monkeypatch, name)
    tv_cls = _TV_CLASSES[name]
    constructed = []
    tv_init = tv_cls.__init__

    def spy_init(self, *args, **kwargs):
        constructed.append((args, kwargs))
        tv_init(self, *args, **kwargs)

    monkeypatch.setattr(tv_cls, "__init__", spy_init)
    reads: Counter[str] = Counter()
    real_load, real_fromfile = pickle.load, np.fromfile

    def load(f, *args, **kwargs):
        reads[os.path.basename(f.name)] += 1
        return real_load(f, *args, **kwargs)

    def fromfile(file, *args, **kwargs):  # torchvision passes an open file, we a path
        reads[os.path.basename(getattr(file, "name", file))] += 1
        return real_fromfile(file, *args, **kwargs)

    monkeypatch.setattr(pickle, "load", load)
    monkeypatch.setattr(np, "fromfile", fromfile)
    _forbid(monkeypatch, (torchvision.datasets.utils, "calculate_md5"))

    ds = build_dataset(name, tmp_path, split, download=True)
    assert len(calls) == (0 if present else 1)
    assert constructed == []
    expected = [p.name for p in datasets_module._expected_files(name, tmp_path, split)]
    assert reads == Counter(expected)  # every file of the split read exactly once
    assert len(ds) == size  # the fixture's images of the split


@pytest.mark.parametrize(
    ("name", "gone", "split"),
    [
        ("cifar10", "data_batch_3", None),
        ("cifar10", "batches.meta", "test"),
        ("cifar100", "meta", None),
        ("stl10", "unlabeled_X.bin", "train+unlabeled"),
        ("stl10", "test_y.bin", None),
    ],
)
def test_download_dataset_fetches_a_partially_present_set(tmp_path, monkeypatch, name, gone, split):
    _MAKERS[name](tmp_path)
    folder = tmp_path / _TV_CLASSES[name].base_folder
    (folder / gone).unlink()
    calls = _fake_downloader(monkeypatch, name)
    download_dataset(name, tmp_path, splits=None if split is None else [split])
    assert [(url, fname, md5) for url, _, fname, md5 in calls] == [_archive(name)]
    assert (folder / gone).is_file()
    assert len(build_dataset(name, tmp_path, split or get_spec(name).splits[0])) > 0


def test_download_dataset_checks_only_the_requested_splits(tmp_path, monkeypatch):
    make_cifar10(tmp_path)
    make_stl10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    (tmp_path / "stl10_binary" / "unlabeled_X.bin").unlink()
    calls = _fake_downloader(monkeypatch, None)
    download_dataset("cifar10", tmp_path, splits=["test"])
    download_dataset("stl10", tmp_path, splits="train")  # a str is one split
    download_dataset("stl10", tmp_path, splits=["train", "test"])
    assert calls == []
    with pytest.raises(FileNotFoundError) as err:  # an archive without the expected files
        download_dataset("stl10", tmp_path, splits=["train+unlabeled"])
    msg = str(err.value)
    assert len(calls) == 1 and "\n" not in msg
    assert str(tmp_path / "stl10_binary" / "unlabeled_X.bin") in msg
    assert "after extracting " + torchvision.datasets.STL10.url in msg


def test_download_dataset_digits_and_not_downloadable_datasets(tmp_path, monkeypatch):
    calls = _fake_downloader(monkeypatch, None)
    assert download_dataset("digits", None) is None
    assert download_dataset("digits", tmp_path / "d", splits=["val"]) == tmp_path / "d"
    assert not (tmp_path / "d").exists()
    for name in ("tiny_imagenet", "imagenet100"):
        with pytest.raises(ValueError) as err:
            download_dataset(name, tmp_path)
        msg = str(err.value)
        assert msg == (
            f"{name}: download=True is not supported; prepare ROOT={tmp_path} by hand (see "
            "mitools.data.datasets docstring)"
        )
        with pytest.raises(ValueError) as err2:  # the same error through build_dataset
            build_dataset(name, tmp_path, "train", download=True)
        assert str(err2.value) == msg
    with pytest.raises(ValueError, match="did you mean 'cifar10'"):
        download_dataset("cifar-10", tmp_path)
    with pytest.raises(ValueError, match="stl10: unknown split 'val'; known splits: train, "):
        download_dataset("stl10", tmp_path, splits=["train", "val"])
    with pytest.raises(ValueError, match="root is None"):
        download_dataset("cifar10", None)
    assert calls == []


# ----------------------------------------------------------------------------- registry


def test_unknown_names_and_splits(tmp_path):
    with pytest.raises(ValueError) as err:
        build_dataset("cifar-10", tmp_path, "train")
    msg = str(err.value)
    assert "did you mean 'cifar10'" in msg
    assert all(name in msg for name in DATASET_SPECS)
    with pytest.raises(ValueError, match="did you mean 'tiny_imagenet'"):
        get_spec("tinyimagenet")
    with pytest.raises(ValueError, match="known splits: train, test, unlabeled, train\\+unlabeled"):
        build_dataset("stl10", tmp_path, "val")
    with pytest.raises(ValueError, match="root is None"):
        build_dataset("cifar10", None, "train")


def test_specs_are_consistent():
    for name, spec in DATASET_SPECS.items():
        assert spec.name == name
        assert len(spec.mean) == len(spec.std) == spec.channels
        assert {spec.pretrain_split, spec.train_split, spec.eval_split} <= set(spec.splits)
    assert DATASET_SPECS["stl10"].pretrain_split == "train+unlabeled"


def test_two_view_transform_through_dataloader(tmp_path):
    make_cifar10(tmp_path)
    ds = build_dataset(
        "cifar10", tmp_path, "train", transform=TwoViewTransform(preset_for("cifar10"))
    )
    loader = torch.utils.data.DataLoader(ds, batch_size=4)
    (v1, v2), labels = next(iter(loader))
    assert v1.shape == v2.shape == (4, 3, 32, 32) and v1.dtype == torch.float32
    assert labels.tolist() == [ds.targets[i] for i in range(4)]
    digits = build_dataset("digits", None, "val", transform=TwoViewTransform(preset_for("digits")))
    (d1, d2), _ = next(iter(torch.utils.data.DataLoader(digits, batch_size=3)))
    assert d1.shape == d2.shape == (3, 1, 8, 8)

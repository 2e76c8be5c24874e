"""Dataset registry for SSL pre-training and linear evaluation.

``build_dataset(name, root, split)`` returns a ``torch.utils.data.Dataset`` yielding
``(image, label)`` pairs, and ``get_spec(name)`` its :class:`DatasetSpec`.

Image convention (as torchvision): the on-disk datasets yield a ``PIL.Image`` in mode ``"RGB"``;
``digits`` yields a ``float32`` tensor of shape ``(1, 8, 8)`` in ``[0, 1]`` (the sklearn values
0..16 divided by 16, exact). Turning images into tensors and augmenting them is the job of
:mod:`mitools.data.augment`, whose pipelines accept both kinds. Labels are Python ``int``;
unlabelled images (STL-10 ``unlabeled``) have label ``-1`` as in torchvision.

On-disk layouts (``ROOT`` is the ``root`` argument):

* ``cifar10``: ``ROOT/cifar-10-batches-py/{data_batch_1..data_batch_5, test_batch, batches.meta}``
  (the python pickles of the official tarball, as torchvision reads them).
* ``cifar100``: ``ROOT/cifar-100-python/{train, test, meta}``; labels are the 100 fine labels.
* ``stl10``: ``ROOT/stl10_binary/{train_X.bin, train_y.bin, test_X.bin, test_y.bin,
  unlabeled_X.bin[, class_names.txt]}``: uint8 images 3x96x96 each stored channel by channel in
  column-major order, labels uint8 1..10 (returned 0..9). Splits ``train`` (5000), ``test`` (8000),
  ``unlabeled`` (100000), ``train+unlabeled`` (pre-training split, as torchvision).
* ``tiny_imagenet``: ``ROOT/train/<wnid>/images/*.JPEG`` (official zip) or ``ROOT/train/<wnid>/*.JPEG``;
  ``val`` either as in the official zip, ``ROOT/val/images/*.JPEG`` + ``ROOT/val/val_annotations.txt``
  (tab-separated ``file wnid x0 y0 x1 y1``), or as ``ROOT/val/<wnid>/[images/]*.JPEG``. ``ROOT`` may also
  be the folder holding the unzipped ``tiny-imagenet-200/``. The unlabelled official ``test`` split is
  not supported.
* ``imagenet100``: ``ROOT/{train,val}/<wnid>/*.JPEG`` holding exactly the 100 classes of
  :data:`IMAGENET100_CLASSES` (the CMC list, also used by solo-learn); checked on load.
* ``digits``: ``sklearn.datasets.load_digits`` (bundled, no download). Fixed stratified split: in each
  class, a permutation drawn with ``numpy.random.default_rng(DIGITS_SPLIT_SEED)`` puts the first
  ``round(DIGITS_VAL_FRACTION * n_class)`` images in ``val`` and the rest in ``train``; ``all`` is the
  whole set in sklearn's order (1797 images: 1438 train, 359 val).

Class indices of folder datasets are the positions of the wnids in sorted order (as
``torchvision.datasets.ImageFolder``).

Integrity: the official archives have published md5 sums (torchvision checks them on every load).
Here they are checked only with ``verify_integrity=True``, so that test fixtures and re-packed copies
in the same format load. :func:`download_dataset` (also what ``download=True`` runs) checks only
that the expected files are present and downloads the archive through torchvision, which verifies
the archive's md5, only when one is missing.
Without it, a CIFAR pickle that cannot be read (truncated, corrupt, or without the expected keys)
and an STL-10 ``.bin`` whose size is not a whole number of images are still a ValueError naming
the file. Folder datasets must be complete: every class of the class list (``IMAGENET100_CLASSES``,
or Tiny-ImageNet's ``wnids.txt``, else the ``train`` folders) needs a class folder holding at least
one image in each class-folder split, else a ValueError names the empty or missing classes (an
interrupted copy would otherwise train on fewer classes without notice).

Errors name paths as given and, for a relative ``root``, also its absolute form (the working
directory of a torchrun/Slurm job is not always the submitting shell's).
"""

from __future__ import annotations

import difflib
import functools
import os
import pickle
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

__all__ = [
    "DatasetNotFoundError",
    "DatasetSpec",
    "DATASET_SPECS",
    "IMAGENET100_CLASSES",
    "DIGITS_SPLIT_SEED",
    "DIGITS_VAL_FRACTION",
    "ArrayImageDataset",
    "TensorImageDataset",
    "FileImageDataset",
    "build_dataset",
    "download_dataset",
    "get_spec",
    "known_datasets",
    "compute_mean_std",
]

IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png")
DIGITS_SPLIT_SEED = 0
DIGITS_VAL_FRACTION = 0.2
_DOWNLOAD_HINT = "pass download=True (or --set data.download=true)"


class DatasetNotFoundError(FileNotFoundError):
    """A downloadable dataset's files are missing.

    ``detail``: what is missing and the expected layout; ``url``: the archive that provides it.
    The message adds how to download it with this library or the trainer (``download=True``);
    a program without a download option (``trainers.linear_eval``) builds its own from the two.
    """

    def __init__(self, detail: str, url: str) -> None:
        self.detail, self.url = detail, url
        super().__init__(f"{detail}; {_DOWNLOAD_HINT} to fetch {url} into ROOT")


def _shown(path: Path) -> str:
    """``path`` as given, plus its resolved absolute form when it is relative."""
    return str(path) if path.is_absolute() else f"{path} (= {path.resolve()})"


# The 100 ImageNet classes of CMC (Tian et al. 2019, github.com/HobbitLong/CMC, imagenet100.txt),
# the subset that solo-learn and most SSL papers call ImageNet-100. Order as in that file.
IMAGENET100_CLASSES: tuple[str, ...] = tuple(
    """
n02869837 n01749939 n02488291 n02107142 n13037406 n02091831 n04517823 n04589890 n03062245 n01773797
n01735189 n07831146 n07753275 n03085013 n04485082 n02105505 n01983481 n02788148 n03530642 n04435653
n02086910 n02859443 n13040303 n03594734 n02085620 n02099849 n01558993 n04493381 n02109047 n04111531
n02877765 n04429376 n02009229 n01978455 n02106550 n01820546 n01692333 n07714571 n02974003 n02114855
n03785016 n03764736 n03775546 n02087046 n07836838 n04099969 n04592741 n03891251 n02701002 n03379051
n02259212 n07715103 n03947888 n04026417 n02326432 n03637318 n01980166 n02113799 n02086240 n03903868
n02483362 n04127249 n02089973 n03017168 n02093428 n02804414 n02396427 n04418357 n02172182 n01729322
n02113978 n03787032 n02089867 n02119022 n03777754 n04238763 n02231487 n03032252 n02138441 n02104029
n03837869 n03494278 n04136333 n03794056 n03492542 n02018207 n04067472 n03930630 n03584829 n02123045
n04229816 n02100583 n03642806 n04336792 n03259280 n02116738 n02108089 n03424325 n01855672 n02090622
""".split()
)


@dataclass(frozen=True)
class DatasetSpec:
    """Static facts about a dataset.

    ``image_size`` is the side of the (square) training crop; ``mean``/``std`` are per-channel
    statistics of pixel values in ``[0, 1]`` used by ``normalize``; ``augmentation`` names the
    preset in :func:`mitools.data.augment.get_preset`; ``pretrain_split`` is the split SSL
    pre-training reads, ``train_split``/``eval_split`` those of the linear probe.
    """

    name: str
    num_classes: int
    image_size: int
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    splits: tuple[str, ...]
    augmentation: str
    pretrain_split: str
    train_split: str
    eval_split: str


_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)

# mean/std: CIFAR and Tiny-ImageNet values are the commonly quoted training-set statistics; STL-10
# the common train+unlabeled values; ImageNet-100 uses the ImageNet-1k statistics (as solo-learn);
# digits values are computed from the bundled data (checked in tests).
DATASET_SPECS: dict[str, DatasetSpec] = {
    "cifar10": DatasetSpec(
        "cifar10", 10, 32, 3, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616),
        ("train", "test"), "cifar", "train", "train", "test",
    ),
    "cifar100": DatasetSpec(
        "cifar100", 100, 32, 3, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762),
        ("train", "test"), "cifar", "train", "train", "test",
    ),
    "stl10": DatasetSpec(
        "stl10", 10, 96, 3, (0.4467, 0.4398, 0.4066), (0.2603, 0.2566, 0.2713),
        ("train", "test", "unlabeled", "train+unlabeled"), "stl10", "train+unlabeled", "train",
        "test",
    ),
    "tiny_imagenet": DatasetSpec(
        "tiny_imagenet", 200, 64, 3, (0.4802, 0.4481, 0.3975), (0.2770, 0.2691, 0.2821),
        ("train", "val"), "tiny_imagenet", "train", "train", "val",
    ),
    "imagenet100": DatasetSpec(
        "imagenet100", 100, 224, 3, _IMAGENET_MEAN, _IMAGENET_STD,
        ("train", "val"), "imagenet100", "train", "train", "val",
    ),
    "digits": DatasetSpec(
        "digits", 10, 8, 1, (0.30526,), (0.37605,),
        ("train", "val", "all"), "digits", "train", "train", "val",
    ),
}  # fmt: skip


def known_datasets() -> tuple[str, ...]:
    return tuple(DATASET_SPECS)


def get_spec(name: str) -> DatasetSpec:
    """The :class:`DatasetSpec` of ``name``; unknown names raise ValueError with the nearest match."""
    if name not in DATASET_SPECS:
        known = ", ".join(DATASET_SPECS)
        near = difflib.get_close_matches(name.lower(), list(DATASET_SPECS), n=1, cutoff=0.0)
        hint = f"; did you mean {near[0]!r}?" if near else ""
        raise ValueError(f"unknown dataset {name!r}; known datasets: {known}{hint}")
    return DATASET_SPECS[name]


# ----------------------------------------------------------------------------- dataset classes


class _InMemoryImages(Dataset):
    """Images held in memory with integer targets; subclasses say how one image is produced."""

    def __init__(
        self,
        data: Any,
        targets: Sequence[int] | np.ndarray,
        classes: Sequence[str],
        transform: Callable | None = None,
    ) -> None:
        targets = np.asarray(targets, dtype=np.int64)
        if targets.shape != (data.shape[0],):
            raise ValueError(f"{data.shape[0]} images but targets of shape {targets.shape}")
        self.data = data
        self.targets = targets
        self.classes = list(classes)
        self.transform = transform

    def __len__(self) -> int:
        return self.data.shape[0]

    def _image(self, index: int) -> Any:
        raise NotImplementedError

    def __getitem__(self, index: int) -> tuple[Any, int]:
        img = self._image(index)
        if self.transform is not None:
            img = self.transform(img)
        return img, int(self.targets[index])


class ArrayImageDataset(_InMemoryImages):
    """In-memory uint8 images ``data`` of shape (N, H, W, 3); yields ``(PIL RGB image, int)``."""

    def __init__(
        self,
        data: np.ndarray,
        targets: Sequence[int] | np.ndarray,
        classes: Sequence[str],
        transform: Callable | None = None,
    ) -> None:
        data = np.asarray(data)
        if data.dtype != np.uint8 or data.ndim != 4 or data.shape[-1] != 3:
            raise ValueError(f"data must be uint8 (N, H, W, 3), got {data.dtype} {data.shape}")
        super().__init__(data, targets, classes, transform)

    def _image(self, index: int) -> Any:
        return Image.fromarray(self.data[index])


class TensorImageDataset(_InMemoryImages):
    """In-memory float images (N, C, H, W) in [0, 1]; yields ``(float32 tensor (C, H, W), int)``."""

    def __init__(
        self,
        data: torch.Tensor,
        targets: Sequence[int] | np.ndarray,
        classes: Sequence[str],
        transform: Callable | None = None,
    ) -> None:
        if data.ndim != 4 or not data.is_floating_point():
            raise ValueError(
                f"data must be a float (N, C, H, W) tensor, got {data.dtype} {data.shape}"
            )
        super().__init__(data, targets, classes, transform)

    def _image(self, index: int) -> Any:
        return self.data[index]


class FileImageDataset(Dataset):
    """Images read from files (``samples`` = [(path, label)]); yields ``(PIL RGB image, int)``.

    Images are converted to RGB (Tiny-ImageNet and ImageNet contain some greyscale/CMYK JPEGs).
    """

    def __init__(
        self,
        samples: Sequence[tuple[Path, int]],
        classes: Sequence[str],
        transform: Callable | None = None,
    ) -> None:
        self.samples = list(samples)
        self.targets = np.asarray([label for _, label in self.samples], dtype=np.int64)
        self.classes = list(classes)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        path, label = self.samples[index]
        with open(path, "rb") as f:
            img: Any = Image.open(f).convert("RGB")
        if self.transform is not None:
            img = self.transform(img)
        return img, int(label)


# ----------------------------------------------------------------------------- CIFAR


def _tv_class(name: str) -> Any:
    """torchvision's dataset class of downloadable ``name``: the source of the archive's url,
    filename and md5 and of the official files' md5s (imported late: torchvision is slow to import).
    """
    import torchvision

    return {
        "cifar10": torchvision.datasets.CIFAR10,
        "cifar100": torchvision.datasets.CIFAR100,
        "stl10": torchvision.datasets.STL10,
    }[name]


_DOWNLOADABLE = ("cifar10", "cifar100", "stl10")


@dataclass(frozen=True)
class _CifarFormat:
    name: str
    folder: str
    split_files: dict[str, tuple[str, ...]]
    meta_file: str
    meta_key: str
    label_key: str

    @property
    def url(self) -> str:
        return _tv_class(self.name).url


_CIFAR = {
    "cifar10": _CifarFormat(
        "cifar10",
        "cifar-10-batches-py",
        {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)},
        "batches.meta",
        "label_names",
        "labels",
    ),
    "cifar100": _CifarFormat(
        "cifar100",
        "cifar-100-python",
        {"train": ("train",), "test": ("test",)},
        "meta",
        "fine_label_names",
        "fine_labels",
    ),
}


def _tv_md5s(tv_cls: Any) -> dict[str, str]:
    md5 = {fname: h for fname, h in list(tv_cls.train_list) + list(tv_cls.test_list)}
    meta = getattr(tv_cls, "meta", None)
    if isinstance(meta, dict):
        md5[meta["filename"]] = meta["md5"]
    return md5


def _verify_md5(name: str, files: Sequence[Path], md5s: dict[str, str]) -> None:
    from torchvision.datasets.utils import calculate_md5

    for path in files:
        want = md5s.get(path.name)
        if want is None:
            continue
        got = calculate_md5(str(path))
        if got != want:
            raise ValueError(
                f"{name}: md5 of {path} is {got}, expected {want} (the official file); "
                f"delete it and {_DOWNLOAD_HINT}, or pass verify_integrity=False for a re-packed copy"
            )


def _expected_files(name: str, root: Path, split: str) -> list[Path]:
    """The files under ``root`` that the loader of downloadable ``name``'s ``split`` reads.

    CIFAR: the split's pickles, then the meta file (last). STL-10: ``X`` then ``y`` file of each
    part (``unlabeled`` has no ``y``); the optional ``class_names.txt`` is not among them.
    """
    if name in _CIFAR:
        fmt = _CIFAR[name]
        folder = root / fmt.folder
        return [folder / f for f in fmt.split_files[split]] + [folder / fmt.meta_file]
    folder = root / _STL_FOLDER
    return [folder / f for p in _stl_parts(split) for f in _STL_FILES[p] if f is not None]


def _missing_error(name: str, root: Path, split: str, missing: Path) -> DatasetNotFoundError:
    """The error for file ``missing`` of :func:`_expected_files`, with the layout and the archive."""
    if name in _CIFAR:
        fmt = _CIFAR[name]
        all_files = [*fmt.split_files["train"], *fmt.split_files["test"], fmt.meta_file]
        listed = (
            "data_batch_1..5, test_batch, batches.meta"
            if name == "cifar10"
            else ", ".join(all_files)
        )
        layout = f"ROOT/{fmt.folder}/{{{listed}}}"
    else:
        layout = (
            f"ROOT/{_STL_FOLDER}/{{train_X.bin, train_y.bin, test_X.bin, test_y.bin, "
            "unlabeled_X.bin}"
        )
    return DatasetNotFoundError(
        f"{name} {split}: missing {_shown(missing)}; expected {layout} with ROOT={_shown(root)}",
        _tv_class(name).url,
    )


def _present_files(name: str, root: Path, split: str, verify: bool) -> list[Path]:
    """:func:`_expected_files`, after checking they exist (and their md5 with ``verify``)."""
    files = _expected_files(name, root, split)
    missing = [p for p in files if not p.is_file()]
    if missing:
        raise _missing_error(name, root, split, missing[0])
    if verify:
        _verify_md5(name, files, _tv_md5s(_tv_class(name)))
    return files


def _load_cifar(
    name: str, root: Path, split: str, transform: Callable | None, verify: bool
) -> ArrayImageDataset:
    fmt = _CIFAR[name]
    files = _present_files(name, root, split, verify)
    chunks, targets = [], []
    for path in files[:-1]:
        entry = _read_cifar_pickle(name, split, path, ("data", fmt.label_key))
        data = np.asarray(entry["data"], dtype=np.uint8)
        labels = [int(t) for t in entry[fmt.label_key]]
        if data.ndim != 2 or data.shape != (len(labels), 3072):
            raise _corrupt_file_error(
                f"{name} {split}", path, f"'data' of shape {data.shape} for {len(labels)} labels "
                "(expected (N, 3072) uint8)", fmt.url,
            )  # fmt: skip
        chunks.append(data)
        targets.extend(labels)
    data = np.concatenate(chunks).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    classes = _read_cifar_pickle(name, split, files[-1], (fmt.meta_key,))[fmt.meta_key]
    return ArrayImageDataset(np.ascontiguousarray(data), targets, classes, transform)


def _corrupt_file_error(what: str, path: Path, problem: str, url: str) -> ValueError:
    """One-line error for a data file that exists but cannot be read as its format says."""
    return ValueError(
        f"{what}: cannot read {_shown(path)}: {problem}; the file is truncated or corrupt (an "
        f"interrupted download or copy?): delete it and {_DOWNLOAD_HINT} to re-download {url}"
    )


def _read_cifar_pickle(name: str, split: str, path: Path, keys: Sequence[str]) -> dict:
    """The dict pickled in CIFAR file ``path``; ValueError if unreadable or without ``keys``."""
    url = _CIFAR[name].url
    try:
        with open(path, "rb") as f:
            entry = pickle.load(f, encoding="latin1")
    except Exception as exc:  # a damaged pickle can raise nearly anything; all mean "corrupt"
        problem = " ".join(f"{type(exc).__name__}: {exc}".split())
        raise _corrupt_file_error(f"{name} {split}", path, problem, url) from exc
    absent = [k for k in keys if k not in entry] if isinstance(entry, dict) else list(keys)
    if absent:
        got = sorted(entry) if isinstance(entry, dict) else type(entry).__name__
        raise _corrupt_file_error(f"{name} {split}", path, f"no key(s) {absent} (found {got})", url)
    return entry


# ----------------------------------------------------------------------------- STL-10

_STL_FOLDER = "stl10_binary"
_STL_SIDE = 96
_STL_FILES = {
    "train": ("train_X.bin", "train_y.bin"),
    "test": ("test_X.bin", "test_y.bin"),
    "unlabeled": ("unlabeled_X.bin", None),
}


def _read_stl_images(path: Path, split: str, url: str) -> np.ndarray:
    """uint8 (N, 96, 96, 3): each image on disk is 3 channels, each a column-major 96x96 array.

    A size that is not a whole number of images (a truncated file) is a ValueError naming the file.
    """
    raw = np.fromfile(path, dtype=np.uint8)
    per_image = 3 * _STL_SIDE * _STL_SIDE
    if raw.size % per_image:
        raise _corrupt_file_error(
            f"stl10 {split}", path,
            f"{raw.size} bytes, not a multiple of {per_image} (one 3x96x96 image)", url,
        )  # fmt: skip
    # on disk (N, C, W, H) in C order == per-channel column-major; to (N, H, W, C)
    return np.ascontiguousarray(raw.reshape(-1, 3, _STL_SIDE, _STL_SIDE).transpose(0, 3, 2, 1))


def _stl_parts(split: str) -> list[str]:
    return ["train", "unlabeled"] if split == "train+unlabeled" else [split]


def _load_stl10(
    root: Path, split: str, transform: Callable | None, verify: bool
) -> ArrayImageDataset:
    import torchvision

    _present_files("stl10", root, split, verify)
    folder = root / _STL_FOLDER
    datas, targets = [], []
    for part in _stl_parts(split):
        x_file, y_file = _STL_FILES[part]
        images = _read_stl_images(folder / x_file, split, torchvision.datasets.STL10.url)
        if y_file is None:
            labels = np.full(images.shape[0], -1, dtype=np.int64)
        else:
            labels = np.fromfile(folder / y_file, dtype=np.uint8).astype(np.int64) - 1
            if labels.shape[0] != images.shape[0]:
                raise _corrupt_file_error(
                    f"stl10 {split}", folder / y_file,
                    f"{labels.shape[0]} labels for {images.shape[0]} images in {folder / x_file}",
                    torchvision.datasets.STL10.url,
                )  # fmt: skip
        datas.append(images)
        targets.append(labels)
    class_file = folder / "class_names.txt"
    classes = (
        class_file.read_text().splitlines() if class_file.is_file() else [str(i) for i in range(10)]
    )
    return ArrayImageDataset(np.concatenate(datas), np.concatenate(targets), classes, transform)


# ----------------------------------------------------------------------------- folder datasets


def _image_files(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
    )


def _class_images(class_dir: Path) -> list[Path]:
    """Images of one class folder: ``<wnid>/images/*`` (official Tiny-ImageNet) or ``<wnid>/*``."""
    sub = class_dir / "images"
    return _image_files(sub) if sub.is_dir() else _image_files(class_dir)


def _subdirs(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_dir())


def _check_complete(
    dataset: str,
    split: str,
    split_dir: Path,
    per_class: dict[str, int],
    remedy: str,
) -> None:
    """ValueError if a class of ``per_class`` (wnid -> number of images; -1: no folder) has none.

    An interrupted copy leaves such a tree; loading it would train on fewer classes silently.
    """
    missing = sorted(w for w, n in per_class.items() if n < 0)
    empty = sorted(w for w, n in per_class.items() if n == 0)
    if not missing and not empty:
        return
    parts = []
    if missing:
        parts.append(f"{len(missing)} without a class folder {missing[:5]}")
    if empty:
        parts.append(f"{len(empty)} with an empty folder (no images) {empty[:5]}")
    raise ValueError(
        f"{dataset} {split}: {len(missing) + len(empty)} of {len(per_class)} classes have no "
        f"images in {_shown(split_dir)}: {', '.join(parts)}; an interrupted copy? re-copy those "
        f"class folders ({remedy})"
    )


def _tiny_root(root: Path) -> Path:
    nested = root / "tiny-imagenet-200"
    if not (root / "train").is_dir() and not (root / "val").is_dir() and nested.is_dir():
        return nested
    return root


_TINY_LAYOUT = (
    "expected ROOT/train/<wnid>/images/*.JPEG (official zip) or ROOT/train/<wnid>/*.JPEG, and "
    "ROOT/val/images/*.JPEG + ROOT/val/val_annotations.txt or ROOT/val/<wnid>/*.JPEG; get "
    "http://cs231n.stanford.edu/tiny-imagenet-200.zip and unzip it so that ROOT is tiny-imagenet-200"
)


def _load_tiny_imagenet(root: Path, split: str, transform: Callable | None) -> FileImageDataset:
    root = _tiny_root(root)
    split_dir = root / split
    if not split_dir.is_dir():
        raise FileNotFoundError(
            f"tiny_imagenet {split}: missing {_shown(split_dir)}; {_TINY_LAYOUT}"
        )
    wnids_file = root / "wnids.txt"
    if wnids_file.is_file():
        classes = sorted(set(wnids_file.read_text().split()))
    elif (root / "train").is_dir():
        classes = _subdirs(root / "train")
    else:
        classes = [d for d in _subdirs(split_dir) if d != "images"]
    index = {wnid: i for i, wnid in enumerate(classes)}
    annotations = split_dir / "val_annotations.txt"
    samples: list[tuple[Path, int]] = []
    if split == "val" and annotations.is_file():
        for lineno, line in enumerate(annotations.read_text().splitlines(), 1):
            if not line.strip():
                continue
            fields = line.split("\t")
            if len(fields) < 2 or fields[1] not in index:
                raise ValueError(
                    f"tiny_imagenet: {annotations} line {lineno}: expected 'file<TAB>wnid<TAB>...' "
                    f"with a known wnid, got {line!r}"
                )
            path = split_dir / "images" / fields[0]
            if not path.is_file():
                raise FileNotFoundError(
                    f"tiny_imagenet val: {annotations} lists {fields[0]} but {_shown(path)} is "
                    f"missing; {_TINY_LAYOUT}"
                )
            samples.append((path, index[fields[1]]))
    else:
        dirs = [d for d in _subdirs(split_dir) if d != "images"]
        unknown = sorted(set(dirs) - set(index))
        if unknown:
            raise ValueError(
                f"tiny_imagenet {split}: class folders {unknown[:10]} of {_shown(split_dir)} are not "
                f"in the class list ({wnids_file if wnids_file.is_file() else root / 'train'})"
            )
        per_class = dict.fromkeys(classes, -1)
        for wnid in dirs:
            images = _class_images(split_dir / wnid)
            per_class[wnid] = len(images)
            samples.extend((p, index[wnid]) for p in images)
        if samples:  # an empty tree gets the layout error below
            _check_complete(
                "tiny_imagenet", split, split_dir, per_class,
                "or unzip http://cs231n.stanford.edu/tiny-imagenet-200.zip again",
            )  # fmt: skip
    if not samples:
        raise FileNotFoundError(
            f"tiny_imagenet {split}: no images under {_shown(split_dir)}; {_TINY_LAYOUT}"
        )
    return FileImageDataset(samples, classes, transform)


def _load_imagenet100(
    root: Path,
    split: str,
    transform: Callable | None,
    class_list: Sequence[str] | None,
) -> FileImageDataset:
    expected = tuple(IMAGENET100_CLASSES if class_list is None else class_list)
    split_dir = root / split
    layout = (
        f"expected ROOT/{{train,val}}/<wnid>/*.JPEG with the {len(expected)} ImageNet-100 wnids "
        "(mitools.data.IMAGENET100_CLASSES, the CMC list); build it by copying/linking those class "
        "folders of ImageNet-1k (val re-sorted into class folders)"
    )
    if not split_dir.is_dir():
        raise FileNotFoundError(f"imagenet100 {split}: missing {_shown(split_dir)}; {layout}")
    present = set(_subdirs(split_dir))
    missing, extra = sorted(set(expected) - present), sorted(present - set(expected))
    if missing or extra:
        raise ValueError(
            f"imagenet100 {split}: class folders of {_shown(split_dir)} do not match the class "
            f"list: {len(missing)} missing {missing[:10]}, {len(extra)} extra {extra[:10]}; "
            f"{layout}"
        )
    classes = sorted(expected)
    images = {wnid: _image_files(split_dir / wnid) for wnid in classes}
    samples = [(p, i) for i, wnid in enumerate(classes) for p in images[wnid]]
    if not samples:
        raise FileNotFoundError(
            f"imagenet100 {split}: no images under {_shown(split_dir)}; {layout}"
        )
    _check_complete(
        "imagenet100", split, split_dir, {w: len(v) for w, v in images.items()},
        f"from ImageNet-1k's {split} set",
    )  # fmt: skip
    return FileImageDataset(samples, classes, transform)


# ----------------------------------------------------------------------------- digits


@functools.lru_cache(maxsize=1)
def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return bunch.images, bunch.target


def digits_split_indices() -> dict[str, np.ndarray]:
    """Index arrays (into sklearn's order) of the fixed stratified digits split."""
    y = _digits_arrays()[1]
    rng = np.random.default_rng(DIGITS_SPLIT_SEED)
    train, val = [], []
    for c in range(10):
        idx = rng.permutation(np.flatnonzero(y == c))
        n_val = int(round(DIGITS_VAL_FRACTION * idx.size))
        val.append(idx[:n_val])
        train.append(idx[n_val:])
    return {
        "train": np.sort(np.concatenate(train)),
        "val": np.sort(np.concatenate(val)),
        "all": np.arange(y.size),
    }


def _load_digits(split: str, transform: Callable | None) -> TensorImageDataset:
    images, targets = _digits_arrays()
    idx = digits_split_indices()[split]
    data = torch.as_tensor(images[idx] / 16.0, dtype=torch.float32).unsqueeze(1)
    return TensorImageDataset(data, targets[idx], [str(d) for d in range(10)], transform)


# ----------------------------------------------------------------------------- entry points


def _check_split(spec: DatasetSpec, split: str) -> None:
    if split not in spec.splits:
        raise ValueError(
            f"{spec.name}: unknown split {split!r}; known splits: {', '.join(spec.splits)}"
        )


def _root_path(name: str, root: str | os.PathLike | None) -> Path:
    if root is None:
        raise ValueError(
            f"{name}: root is None; pass the data directory (--set data.root=PATH); only 'digits' "
            "needs none"
        )
    return Path(root).expanduser()


def download_dataset(
    name: str,
    root: str | os.PathLike | None,
    *,
    splits: Sequence[str] | None = None,
) -> Path | None:
    """Make sure the files of ``splits`` of dataset ``name`` (default: all its splits) are under
    ``root``, downloading them only if one is missing; returns ``root`` as a ``Path``.

    Checks presence only: the files that :func:`build_dataset` reads for those splits (see the
    module docstring) must exist. When they all do, nothing is downloaded, hashed or read, so a
    large split (STL-10 ``unlabeled``) is not loaded here and can be loaded later by
    ``build_dataset(download=False)``. When one is missing, the dataset's single archive (all splits)
    is fetched and extracted into ``root`` by torchvision's ``download_and_extract_archive`` with
    the url, filename and md5 of torchvision's dataset class: torchvision verifies the archive's
    md5 (and skips the network if the archive is already in ``root`` with that md5). A present
    but damaged file is not detected here: ``build_dataset`` reports an unreadable file, and
    ``build_dataset(verify_integrity=True)`` checks the files' md5 against the official ones.

    ``digits`` is bundled: a no-op that ignores ``root`` (may be None; returned as given).
    ``tiny_imagenet`` and ``imagenet100`` are not downloadable (ValueError: prepare by hand); an
    unknown name or split is a ValueError as in :func:`build_dataset`; a ``str`` ``splits`` is one
    split. FileNotFoundError if the extracted archive still lacks an expected file.
    """
    spec = get_spec(name)
    wanted = (
        spec.splits if splits is None else (splits,) if isinstance(splits, str) else tuple(splits)
    )
    for split in wanted:
        _check_split(spec, split)
    if name == "digits":
        return None if root is None else Path(root).expanduser()
    root = _root_path(name, root)
    if name not in _DOWNLOADABLE:
        raise ValueError(
            f"{name}: download=True is not supported; prepare ROOT={_shown(root)} by hand (see "
            "mitools.data.datasets docstring)"
        )

    def first_missing() -> tuple[str, Path] | None:
        for split in wanted:
            for path in _expected_files(name, root, split):
                if not path.is_file():
                    return split, path
        return None

    if first_missing() is None:
        return root
    from torchvision.datasets.utils import download_and_extract_archive

    tv_cls = _tv_class(name)
    download_and_extract_archive(
        tv_cls.url, str(root), filename=tv_cls.filename, md5=tv_cls.tgz_md5
    )
    still = first_missing()
    if still is not None:
        split, path = still
        raise FileNotFoundError(
            f"{name} {split}: {_shown(path)} is missing after extracting {tv_cls.url} into "
            f"ROOT={_shown(root)}; the archive does not have the expected layout"
        )
    return root


def build_dataset(
    name: str,
    root: str | os.PathLike | None,
    split: str,
    *,
    download: bool = False,
    transform: Callable | None = None,
    verify_integrity: bool = False,
    class_list: Sequence[str] | None = None,
) -> Dataset:
    """Build split ``split`` of dataset ``name`` stored under ``root`` (see module docstring).

    ``download=True`` first runs :func:`download_dataset` for ``split`` (CIFAR-10/100 and STL-10
    are fetched through torchvision if a file is missing; Tiny-ImageNet and ImageNet-100 must be
    prepared by hand; ``digits`` is bundled and ignores ``root``), then loads as without it, so
    the split is read once.
    ``verify_integrity=True`` checks the md5 sums of the official files. ``class_list`` overrides
    :data:`IMAGENET100_CLASSES` (imagenet100 only). ``transform`` is applied to the image.
    """
    spec = get_spec(name)
    _check_split(spec, split)
    if class_list is not None and name != "imagenet100":
        raise ValueError(f"class_list applies to imagenet100 only, not {name!r}")
    if name == "digits":
        return _load_digits(split, transform)
    root = _root_path(name, root)
    if download:
        download_dataset(name, root, splits=(split,))
    if name in _CIFAR:
        return _load_cifar(name, root, split, transform, verify_integrity)
    if name == "stl10":
        return _load_stl10(root, split, transform, verify_integrity)
    if name == "tiny_imagenet":
        return _load_tiny_imagenet(root, split, transform)
    return _load_imagenet100(root, split, transform, class_list)


def compute_mean_std(
    dataset: Dataset, max_items: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and (population) std of pixel values in [0, 1] over ``dataset``.

    Pools all pixels of the first ``max_items`` images (all by default); images may be PIL or
    float tensors (C, H, W) as yielded by :func:`build_dataset` without transform.
    """
    n = len(dataset) if max_items is None else min(max_items, len(dataset))
    total = total_sq = None
    count = 0
    for i in range(n):
        img = dataset[i][0]
        if isinstance(img, Image.Image):
            arr = np.asarray(img, dtype=np.float64) / 255.0
            arr = arr.reshape(-1, arr.shape[-1] if arr.ndim == 3 else 1)
        else:
            t = torch.as_tensor(img, dtype=torch.float64)
            arr = t.reshape(t.shape[0], -1).T.numpy()
        s, sq = arr.sum(0), (arr**2).sum(0)
        total = s if total is None else total + s
        total_sq = sq if total_sq is None else total_sq + sq
        count += arr.shape[0]
    if total is None:
        raise ValueError("compute_mean_std: empty dataset")
    mean = total / count
    return mean, np.sqrt(np.maximum(total_sq / count - mean**2, 0.0))

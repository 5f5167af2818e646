"""Image dataset adapters: CIFAR-10/100, CINIC-10 and Fashion-MNIST in their official on-disk formats.

Every adapter returns the same in-memory form the training engine reads for audio: :class:`FeatureSplit` objects
holding ``uint8`` images N×3×32×32 (C-contiguous RGB planes) plus labels and a per-item index.

* **CIFAR-10** ``cifar-10-batches-py/`` (``data_batch_1..5``, ``test_batch``, ``batches.meta``) and **CIFAR-100**
  ``cifar-100-python/`` (``train``, ``test``, ``meta``): Python 2 cPickle files, read with a restricted unpickler
  that admits only numpy's array-reconstruction globals (see :class:`RestrictedUnpickler`); nothing else in a
  pickle can run.
* **CINIC-10** ``train|valid|test/<class>/*.png``: decoded once with Pillow into a cache
  (``<cache_dir>/images/cinic10/<key>/``, key = hash of the file list with sizes and mtimes), then memory-mapped.
* **Fashion-MNIST** IDX files (gzip or plain), 28×28 grey padded 2 px to 32×32 and repeated to 3 channels;
  :func:`fetch_fashion_mnist` gets them from Debian's ``dataset-fashion-mnist`` package.

Splits: ``train``; ``evaluate`` = ``holdout`` training items held back (stratified by class, deterministic by
``seed``) when ``holdout > 0``, otherwise the official test split (CINIC-10: ``valid``); ``test`` = the official
test split. The test split is never meant for tuning: ablations use ``holdout``. Normalisation statistics are the
per-channel mean/std (0–255 units, population std) of the pixels of the final train split (after the holdout).
"""
from __future__ import annotations

import gzip
import json
import os
import pickle
import struct
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from audio_mrkd.data import cache, packages
from audio_mrkd.data.splits import FeatureSplit, stratified_holdout
from audio_mrkd.errors import InputError
from audio_mrkd.fileio import building_dir
from audio_mrkd.progress import progress

IMAGE_SHAPE = (3, 32, 32)
ROW_BYTES = 3 * 32 * 32

CIFAR10_DIR = "cifar-10-batches-py"
CIFAR10_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_TEST = "test_batch"
CIFAR10_META = "batches.meta"
CIFAR100_DIR = "cifar-100-python"
CIFAR100_FILES = ("train", "test", "meta")

CINIC_SPLITS = ("train", "valid", "test")
CINIC_CACHE_VERSION = "cinic10-png-v1"

FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                   "Ankle boot")
FASHION_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
                 "t10k": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
FASHION_PACKAGE = "dataset-fashion-mnist"
FASHION_IN_DEB = Path("usr/share/datasets/fashion-mnist")
FASHION_EXTRACTED = "dataset-fashion-mnist"      # <work_dir>/<this>/usr/share/datasets/fashion-mnist
IDX_IMAGES_MAGIC = 0x00000803
IDX_LABELS_MAGIC = 0x00000801

Log = Callable[[str], None]
#: A dataset's reader: (root, coarse=, cache_dir=, log=) → (its folder, class names, {split: (images, labels, names)})
Reader = Callable[..., tuple[Path, list[str], dict]]


# ----------------------------------------------------------------------------------------- restricted pickle
def _numpy_reconstruct():
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct,   # written by numpy < 2 (the official files)
    ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct,  # written by numpy >= 2
    ("numpy", "ndarray"): lambda: np.ndarray,
    ("numpy", "dtype"): lambda: np.dtype,
}
_LATIN1 = ("latin1", "latin-1", "iso-8859-1", "iso8859-1", "l1")


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickles the CIFAR "python version" files and nothing more.

    ``find_class`` admits only the numpy globals that rebuild an array (``_reconstruct`` under its numpy 1 and
    numpy 2 module names, ``ndarray``, ``dtype``). One more is tolerated in a harmless form: Python 3 writes
    ``bytes`` at protocol 2 as ``_codecs.encode(text, "latin1")``, so a CIFAR file re-saved by Python 3 with
    ``pickle.dump(..., protocol=2)`` would otherwise not load; that global is replaced by a function that only
    turns a str into latin-1 bytes and refuses any other codec. Every other global raises :class:`InputError`
    naming the file and the global, before anything is called.
    """

    def __init__(self, file, path: Path):
        super().__init__(file, encoding="bytes")
        self.path = path

    def find_class(self, module: str, name: str):
        factory = _ALLOWED_GLOBALS.get((module, name))
        if factory is not None:
            return factory()
        if (module, name) == ("_codecs", "encode"):
            return self._latin1_encode
        raise InputError(f"{self.path}: refused pickle global {module}.{name} (only numpy array globals are "
                         f"allowed in CIFAR files)")

    def _latin1_encode(self, text, encoding="utf-8", *rest):
        if rest or not isinstance(text, str) or not isinstance(encoding, str) or encoding.lower() not in _LATIN1:
            raise InputError(f"{self.path}: refused pickle call _codecs.encode with codec {_str(encoding)!r} "
                             f"(only str → latin-1 bytes is allowed)")
        return text.encode("latin-1")

    def persistent_load(self, pid):
        raise InputError(f"{self.path}: refused pickle persistent id")


def _str(value) -> str:
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)


def load_pickle(path: Path) -> dict:
    """A CIFAR pickle as a dict with str keys (values as stored: arrays, lists, bytes)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    try:
        with open(path, "rb") as fh:
            obj = RestrictedUnpickler(fh, path).load()
    except InputError:
        raise
    except MemoryError:
        raise InputError(f"{path}: not a readable CIFAR pickle (asks for more memory than there is)") from None
    except Exception as exc:  # truncated or corrupt pickles raise many types; all mean the same to the user
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(f"{path}: not a readable CIFAR pickle ({detail})") from None
    if not isinstance(obj, dict):
        raise InputError(f"{path}: not a CIFAR pickle (a dict expected, found {type(obj).__name__})")
    return {_str(k): v for k, v in obj.items()}


# ----------------------------------------------------------------------------------------------- CIFAR
def _cifar_folder(root: Path, folder: str, expected: tuple[str, ...], title: str) -> Path:
    """``root`` itself when it is (or looks like) the dataset folder, else ``root/folder``."""
    if not root.is_dir():
        raise InputError(f"{root}: folder not found")
    if (root / folder).is_dir():
        return root / folder
    if root.name == folder or any((root / name).exists() for name in expected):
        return root
    raise InputError(f"{root}: no {folder}/ folder and none of its files ({', '.join(expected)}): "
                     f"not a {title} 'python version' folder")


def _cifar_batch(path: Path, label_key: str, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    batch = load_pickle(path)
    for key in ("data", label_key):
        if key not in batch:
            raise InputError(f"{path}: no '{key}' entry (found {', '.join(sorted(batch)) or 'none'})")
    data = batch["data"]
    if not isinstance(data, np.ndarray) or data.ndim != 2:
        shape = getattr(data, "shape", None)
        raise InputError(f"{path}: 'data' is not an N×3072 array (found {type(data).__name__} {shape or ''})")
    if data.shape[1] != ROW_BYTES:
        raise InputError(f"{path}: row length {data.shape[1]}, expected 3072 (32×32 R, G and B planes)")
    if data.dtype != np.uint8:
        raise InputError(f"{path}: 'data' has dtype {data.dtype}, expected uint8")
    try:
        labels = np.asarray(batch[label_key], dtype=np.int64).reshape(-1)
    except (TypeError, ValueError):
        raise InputError(f"{path}: '{label_key}' is not a list of integers") from None
    if len(labels) != len(data):
        raise InputError(f"{path}: {len(labels)} {label_key} for {len(data)} images")
    bad = labels[(labels < 0) | (labels >= n_classes)]
    if len(bad):
        raise InputError(f"{path}: label {int(bad[0])} outside 0..{n_classes - 1} ({n_classes} class names)")
    return data.reshape(len(data), *IMAGE_SHAPE), labels


def _class_names(path: Path, key: str) -> list[str]:
    meta = load_pickle(path)
    names = meta.get(key)
    if not isinstance(names, (list, tuple)) or not names:
        raise InputError(f"{path}: no '{key}' list (found {', '.join(sorted(meta)) or 'none'})")
    return [_str(n) for n in names]


def _cifar_split(folder: Path, files: tuple[str, ...], label_key: str, n_classes: int):
    images, labels, names = [], [], []
    for name in files:
        x, y = _cifar_batch(folder / name, label_key, n_classes)
        images.append(x)
        labels.append(y)
        names.extend(f"{name}:{i}" for i in range(len(y)))
    return np.ascontiguousarray(np.concatenate(images)), np.concatenate(labels), names


def _check_files(folder: Path, files: tuple[str, ...], title: str) -> None:
    for name in files:
        if not (folder / name).is_file():
            raise InputError(f"{folder / name}: missing ({title} needs {', '.join(files)})")


def read_cifar10(root: Path, coarse: bool = False, cache_dir: Path | None = None,
                 log: Log = print) -> tuple[Path, list[str], dict]:
    folder = _cifar_folder(root, CIFAR10_DIR, (*CIFAR10_TRAIN, CIFAR10_TEST, CIFAR10_META), "CIFAR-10")
    _check_files(folder, (*CIFAR10_TRAIN, CIFAR10_TEST, CIFAR10_META), "CIFAR-10")
    classes = _class_names(folder / CIFAR10_META, "label_names")
    return folder, classes, {"train": _cifar_split(folder, CIFAR10_TRAIN, "labels", len(classes)),
                             "test": _cifar_split(folder, (CIFAR10_TEST,), "labels", len(classes))}


def read_cifar100(root: Path, coarse: bool = False, cache_dir: Path | None = None,
                  log: Log = print) -> tuple[Path, list[str], dict]:
    folder = _cifar_folder(root, CIFAR100_DIR, CIFAR100_FILES, "CIFAR-100")
    _check_files(folder, CIFAR100_FILES, "CIFAR-100")
    level = "coarse" if coarse else "fine"
    classes = _class_names(folder / "meta", f"{level}_label_names")
    return folder, classes, {split: _cifar_split(folder, (split,), f"{level}_labels", len(classes))
                             for split in ("train", "test")}


# --------------------------------------------------------------------------------------------- CINIC-10
def decode_png(path: Path) -> np.ndarray:
    """One CINIC-10 PNG as uint8 3×32×32 (grey, palette and RGBA images become RGB; alpha is dropped)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            rgb = np.asarray(image.convert("RGB"), dtype=np.uint8)
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise InputError(f"{path}: cannot decode image ({exc})") from None
    if rgb.shape[:2] != (32, 32):
        raise InputError(f"{path}: {rgb.shape[1]}×{rgb.shape[0]} pixels, CINIC-10 images are 32×32")
    return rgb.transpose(2, 0, 1)


def _cinic_root(root: Path) -> Path:
    if not root.is_dir():
        raise InputError(f"{root}: folder not found")
    if not any((root / s).is_dir() for s in CINIC_SPLITS):
        for name in ("CINIC-10", "cinic-10", "cinic10"):
            if (root / name).is_dir():
                return root / name
    return root


def _cinic_listing(root: Path) -> tuple[list[str], dict[str, list[tuple[str, int]]], list[tuple[str, int, int]]]:
    """Class names (sorted train folders), per split [(relative path, label)], and the (path, size, mtime) list."""
    for split in CINIC_SPLITS:
        if not (root / split).is_dir():
            raise InputError(f"{root / split}: missing (CINIC-10 needs train/, valid/ and test/, "
                             f"each with one folder per class)")
    classes = sorted(p.name for p in (root / "train").iterdir() if p.is_dir())
    if not classes:
        raise InputError(f"{root / 'train'}: no class folders")
    listing, stats = {}, []
    for split in CINIC_SPLITS:
        found = sorted(p.name for p in (root / split).iterdir() if p.is_dir())
        if found != classes:
            raise InputError(f"{root / split}: class folders {found} differ from train/'s {classes}")
        items = []
        for label, name in enumerate(classes):
            with os.scandir(root / split / name) as entries:
                files = sorted((e.name, e.stat()) for e in entries
                               if e.name.lower().endswith(".png") and e.is_file())
            for fname, st in files:
                rel = f"{split}/{name}/{fname}"
                items.append((rel, label))
                stats.append((rel, st.st_size, st.st_mtime_ns))
        if not items:
            raise InputError(f"{root / split}: no .png images in its class folders")
        listing[split] = items
    return classes, listing, stats


def _cinic_complete(entry: Path) -> bool:
    return (entry / cache.MARKER).is_file() and all((entry / f"{s}.npy").is_file() for s in CINIC_SPLITS)


def _build_cinic_cache(root: Path, entry: Path, classes: list[str], listing: dict, key: str, log: Log) -> None:
    total = sum(len(v) for v in listing.values())
    log(f"cinic10: decoding {total} PNGs from {root} into {entry}")
    with building_dir(entry) as tmp, \
            progress(total=total, desc="cinic10 PNG → cache", unit="img", min_interval=10) as bar:
        for split, items in listing.items():
            array = np.lib.format.open_memmap(tmp / f"{split}.npy", mode="w+", dtype=np.uint8,
                                              shape=(len(items), *IMAGE_SHAPE))
            for i, (rel, _) in enumerate(items):
                array[i] = decode_png(root / rel)
                bar.update(1)
            array.flush()
            del array
            np.save(tmp / f"{split}_labels.npy", np.array([lab for _, lab in items], dtype=np.int64))
            pd.DataFrame({"filename": [rel for rel, _ in items]}).to_csv(tmp / f"{split}_files.csv", index=False)
        (tmp / "classes.json").write_text(json.dumps(classes) + "\n")
        cache.finish(tmp, {"key": key, "kind": "cinic10", "root": str(root), "classes": classes,
                           "counts": {s: len(v) for s, v in listing.items()}})


def read_cinic10(root: Path, coarse: bool = False, cache_dir: Path | None = None,
                 log: Log = print) -> tuple[Path, list[str], dict]:
    from filelock import FileLock

    root = _cinic_root(root)
    classes, listing, stats = _cinic_listing(root)
    key = cache.cache_key(CINIC_CACHE_VERSION, stats)
    base = Path(cache_dir) if cache_dir is not None else cache.default_cache_dir()
    entry = base / "images" / "cinic10" / key
    if not _cinic_complete(entry):
        cache.ensure_writable(entry.parent)
        with FileLock(str(entry.parent / f".{key}.lock")):
            if not _cinic_complete(entry):
                _build_cinic_cache(root, entry, classes, listing, key, log)
    else:
        log(f"cinic10: reusing the decoded cache {entry}")
    out = {}
    again = f"delete {entry} and run again (the PNGs are decoded anew)"
    for split in CINIC_SPLITS:
        for part in (f"{split}.npy", f"{split}_labels.npy"):
            cache.check_npy(entry / part, again)
        images = np.load(entry / f"{split}.npy", mmap_mode="r", allow_pickle=False)
        labels = np.load(entry / f"{split}_labels.npy", allow_pickle=False)
        names = pd.read_csv(entry / f"{split}_files.csv", dtype=str)["filename"].tolist()
        out[split] = (images, labels, names)
    return root, json.loads((entry / "classes.json").read_text()), out


# ---------------------------------------------------------------------------------------- Fashion-MNIST
def _read_bytes(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as fh:
                return fh.read()
        return path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise InputError(f"{path}: cannot read ({exc})") from None


def read_idx(path: Path, magic: int) -> np.ndarray:
    """An IDX file of unsigned bytes (``magic`` 0x00000803 images N×rows×cols, 0x00000801 labels N)."""
    data = _read_bytes(path)
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(data) < header:
        raise InputError(f"{path}: truncated IDX header ({len(data)} bytes)")
    found = struct.unpack(">I", data[:4])[0]
    if found != magic:
        raise InputError(f"{path}: magic 0x{found:08x}, expected 0x{magic:08x} "
                         f"(IDX {'images' if ndim == 3 else 'labels'} of unsigned bytes)")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    size = int(np.prod(dims))
    if len(data) - header != size:
        what = "truncated" if len(data) - header < size else "too long"
        raise InputError(f"{path}: {what}: header says {'×'.join(map(str, dims))} = {size} bytes of data, "
                         f"found {len(data) - header}")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def _fashion_folder(root: Path) -> Path:
    if not root.is_dir():
        raise InputError(f"{root}: folder not found")
    for folder in (root, root / FASHION_IN_DEB, root / FASHION_EXTRACTED / FASHION_IN_DEB, root / "fashion-mnist"):
        if any(_idx_path(folder, stem) for stem in FASHION_FILES["train"]):
            return folder
    return root


def _idx_path(folder: Path, stem: str) -> Path | None:
    for name in (f"{stem}.gz", stem):
        if (folder / name).is_file():
            return folder / name
    return None


def read_fashion_mnist(root: Path, coarse: bool = False, cache_dir: Path | None = None,
                       log: Log = print) -> tuple[Path, list[str], dict]:
    folder = _fashion_folder(root)
    paths = {}
    for part, stems in FASHION_FILES.items():
        for stem in stems:
            path = _idx_path(folder, stem)
            if path is None:
                raise InputError(f"{folder / (stem + '.gz')}: missing (Fashion-MNIST needs "
                                 f"train-/t10k-images-idx3-ubyte and -labels-idx1-ubyte, .gz or plain)")
            paths[stem] = path
    out = {}
    for part, (img_stem, lab_stem) in FASHION_FILES.items():
        images = read_idx(paths[img_stem], IDX_IMAGES_MAGIC)
        labels = read_idx(paths[lab_stem], IDX_LABELS_MAGIC).astype(np.int64)
        if images.shape[1:] != (28, 28):
            raise InputError(f"{paths[img_stem]}: images are {images.shape[1]}×{images.shape[2]}, expected 28×28")
        if len(labels) != len(images):
            raise InputError(f"{paths[lab_stem]}: {len(labels)} labels for {len(images)} images "
                             f"in {paths[img_stem].name}")
        if len(labels) and labels.max() >= len(FASHION_CLASSES):
            raise InputError(f"{paths[lab_stem]}: label {int(labels.max())} outside 0..{len(FASHION_CLASSES) - 1}")
        rgb = np.zeros((len(images), *IMAGE_SHAPE), dtype=np.uint8)
        rgb[:, :, 2:30, 2:30] = images[:, None]
        out["train" if part == "train" else "test"] = (rgb, labels, [f"{part}:{i}" for i in range(len(labels))])
    return folder, list(FASHION_CLASSES), out


def fetch_fashion_mnist(work_dir: Path) -> Path:
    """The folder of the 4 Fashion-MNIST IDX files, from Debian's ``dataset-fashion-mnist`` package.

    :func:`audio_mrkd.data.packages.fetch_deb` (``apt-get download dataset-fashion-mnist`` in ``work_dir``;
    ``apt-get update`` and a second try if the first fails) and :func:`~audio_mrkd.data.packages.extract_deb` of its
    ``usr/share/datasets/fashion-mnist`` into ``work_dir/dataset-fashion-mnist`` (built beside it, then renamed).
    A .deb or an extraction already in ``work_dir`` is reused.
    """
    folder = Path(work_dir) / FASHION_EXTRACTED / FASHION_IN_DEB
    if _fashion_complete(folder):
        return folder
    deb = packages.fetch_deb(FASHION_PACKAGE, work_dir)
    folder = packages.extract_deb(deb, Path(work_dir) / FASHION_EXTRACTED, FASHION_IN_DEB)
    if not _fashion_complete(folder):
        raise InputError(f"{deb}: no {FASHION_IN_DEB}/ with the 4 IDX files in the package")
    return folder


def _fashion_complete(folder: Path) -> bool:
    return all(_idx_path(folder, stem) for stems in FASHION_FILES.values() for stem in stems)


# ---------------------------------------------------------------------------------------------- common
def channel_stats(images: np.ndarray, chunk: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and population std of uint8 N×C×H×W images, as float32 C×1×1 (exact integer sums)."""
    n_channels = images.shape[1]
    total = np.zeros(n_channels, dtype=np.float64)
    squares = np.zeros(n_channels, dtype=np.float64)
    for start in range(0, len(images), chunk):
        block = np.asarray(images[start:start + chunk], dtype=np.int64)
        total += block.sum(axis=(0, 2, 3))
        squares += (block * block).sum(axis=(0, 2, 3))
    count = len(images) * int(np.prod(images.shape[2:]))
    if count == 0:
        raise InputError("train split: no images to compute normalisation statistics from")
    mean = total / count
    std = np.sqrt(np.maximum(squares / count - mean * mean, 0.0))
    return (mean.astype(np.float32).reshape(-1, 1, 1),
            np.maximum(std, 1e-5).astype(np.float32).reshape(-1, 1, 1))


def _feature_split(images, labels, names, rows, classes, mean, std, info) -> FeatureSplit:
    labels = np.asarray(labels, dtype=np.int64)
    names = list(names)
    items = pd.DataFrame({"filename": names, "scene_label": [classes[i] for i in labels], "identifier": names,
                          "source_label": "none", "device_group": "none"})
    return FeatureSplit(features=images, labels=labels, class_names=list(classes),
                        recording_devices=np.zeros(len(labels), dtype=np.int64), device_names=["none"],
                        rows=np.asarray(rows, dtype=np.int64), items=items, norm_mean=mean, norm_std=std,
                        info=dict(info))


def load_image_splits(kind: str, read: Reader, root: str | Path, holdout: int = 0, seed: int = 0,
                      coarse_labels: bool = False, cache_dir: Path | None = None, log: Log = print,
                      evaluated: str = "test") -> dict[str, FeatureSplit]:
    """``{"train", "evaluate", "test"}`` splits of an image dataset in its official on-disk format.

    ``kind``: its name (in messages and the splits' info); ``read``: its reader (``read_cifar10``, …: the dataset
    registry's line). ``root``: the dataset folder or its parent. ``evaluate`` = ``holdout`` training items held back
    (stratified, deterministic by ``seed``) when ``holdout > 0``, else the official split ``evaluated`` (``test``, or
    CINIC-10's ``valid``); ``test`` = the official test split. ``coarse_labels``: CIFAR-100's 20 superclasses.
    ``cache_dir`` (CINIC-10 only): the cache root, default :func:`audio_mrkd.data.cache.default_cache_dir`; decoded
    images go to ``<cache_dir>/images/cinic10/<key>/``.
    """
    if holdout < 0:
        raise InputError(f"data.holdout: {holdout} is negative")
    folder, classes, splits = read(Path(root).expanduser(), coarse=coarse_labels, cache_dir=cache_dir, log=log)
    info = {"kind": kind, "root": str(folder)}

    train_x, train_y, train_names = splits["train"]
    train_rows = np.arange(len(train_y))
    if holdout:
        if holdout >= len(train_y):
            raise InputError(f"data.holdout: {holdout} is not below the {len(train_y)} training items of {folder}")
        held = stratified_holdout(train_y, holdout, seed)
        keep = np.setdiff1d(train_rows, held, assume_unique=True)
        evaluate = (np.ascontiguousarray(train_x[held]), train_y[held], [train_names[i] for i in held], held)
        train_x, train_y = np.ascontiguousarray(train_x[keep]), train_y[keep]
        train_names, train_rows = [train_names[i] for i in keep], keep
    else:
        official = splits[evaluated]
        evaluate = (*official, np.arange(len(official[1])))
    test_x, test_y, test_names = splits["test"]
    mean, std = channel_stats(train_x)
    out = {"train": _feature_split(train_x, train_y, train_names, train_rows, classes, mean, std, info),
           "evaluate": _feature_split(*evaluate[:3], evaluate[3], classes, mean, std, info),
           "test": _feature_split(test_x, test_y, test_names, np.arange(len(test_y)), classes, mean, std, info)}
    log(f"{kind}: {len(out['train'])} train / {len(out['evaluate'])} evaluate"
        f"{' (held out of train, seed ' + str(seed) + ')' if holdout else ''} / {len(out['test'])} test items, "
        f"{len(classes)} classes, from {folder}")
    return out

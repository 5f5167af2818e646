"""Tiny image datasets written by the tests in exactly the official on-disk formats.

* CIFAR "python version": Python 2 cPickle protocol-2 files. :func:`py2_pickle` emits the opcodes Python 2's
  cPickle writes for these dicts (``str`` → SHORT_BINSTRING/BINSTRING, which Python 3 reads back as ``bytes`` with
  ``encoding="bytes"``; arrays through ``numpy.core.multiarray._reconstruct`` + ``numpy.dtype`` + BUILD), so the
  loader is tested on the byte structure of the real files, not on what Python 3's pickler would write.
  ``writer="py3"`` writes the same dicts with Python 3's ``pickle.dump(protocol=2)`` instead.
* CINIC-10: ``train|valid|test/<class>/*.png`` written with Pillow in RGB, grey, palette and RGBA modes.
* Fashion-MNIST: IDX files (big-endian magic and dimensions), gzip or plain.
"""
from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
from PIL import Image

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
CINIC_CLASSES = ["airplane", "automobile", "bird", "cat"]


# --------------------------------------------------------------------------------------- Python 2 pickle
class Global:
    """A global reference written as the GLOBAL opcode (``c<module>\\n<name>\\n``)."""

    def __init__(self, module: str, name: str):
        self.module, self.name = module, name


class Reduce:
    """``func(*args)`` then, if ``state`` is given, BUILD with it: what Pickler.save_reduce writes."""

    def __init__(self, func: Global, args: tuple, state=None):
        self.func, self.args, self.state = func, args, state


def _array(array: np.ndarray, numpy_module: str) -> Reduce:
    """The reduce tuple numpy (1.x, under Python 2) gives for an ndarray, with Python 2 ``str`` for bytes."""
    array = np.ascontiguousarray(array)
    order = array.dtype.str[0] if array.dtype.itemsize > 1 else "|"
    dtype = Reduce(Global("numpy", "dtype"), (array.dtype.str[1:].encode(), 0, 1),
                   (3, order.encode(), None, None, None, -1, -1, 0))
    return Reduce(Global(numpy_module, "_reconstruct"), (Global("numpy", "ndarray"), (0,), b"b"),
                  (1, tuple(array.shape), dtype, False, array.tobytes()))


def py2_pickle(obj, numpy_module: str = "numpy.core.multiarray") -> bytes:
    """``obj`` (dict, list, tuple, int, bool, None, str/bytes, ndarray, Global, Reduce) as Python 2 cPickle
    protocol 2 would write it (without memo opcodes, which change nothing on load)."""
    out = bytearray(b"\x80\x02")

    def save(x):
        if isinstance(x, Global):
            out.extend(b"c" + x.module.encode() + b"\n" + x.name.encode() + b"\n")
        elif isinstance(x, Reduce):
            save(x.func)
            save(tuple(x.args))
            out.extend(b"R")
            if x.state is not None:
                save(x.state)
                out.extend(b"b")
        elif isinstance(x, np.ndarray):
            save(_array(x, numpy_module))
        elif x is None:
            out.extend(b"N")
        elif isinstance(x, bool):
            out.extend(b"\x88" if x else b"\x89")
        elif isinstance(x, int):
            if 0 <= x < 256:
                out.extend(b"K" + bytes([x]))
            elif 0 <= x < 65536:
                out.extend(b"M" + struct.pack("<H", x))
            elif -2**31 <= x < 2**31:
                out.extend(b"J" + struct.pack("<i", x))
            else:
                raw = x.to_bytes((x.bit_length() + 8) // 8, "little", signed=True)
                out.extend(b"\x8a" + bytes([len(raw)]) + raw)
        elif isinstance(x, (str, bytes)):           # a Python 2 str
            raw = x.encode("latin-1") if isinstance(x, str) else x
            out.extend((b"U" + bytes([len(raw)])) if len(raw) < 256 else (b"T" + struct.pack("<I", len(raw))))
            out.extend(raw)
        elif isinstance(x, tuple):
            if not x:
                out.extend(b")")
            elif len(x) <= 3:
                for v in x:
                    save(v)
                out.extend({1: b"\x85", 2: b"\x86", 3: b"\x87"}[len(x)])
            else:
                out.extend(b"(")
                for v in x:
                    save(v)
                out.extend(b"t")
        elif isinstance(x, (list, dict)):  # EMPTY_LIST/DICT, then MARK … APPENDS/SETITEMS
            empty, items, close = (b"]", x, b"e") if isinstance(x, list) else \
                (b"}", [v for pair in x.items() for v in pair], b"u")
            out.extend(empty)
            if items:
                out.extend(b"(")
                for v in items:
                    save(v)
                out.extend(close)
        else:
            raise TypeError(f"py2_pickle: cannot write {type(x).__name__}")

    save(obj)
    out.extend(b".")
    return bytes(out)


def write_pickle(path: Path, obj, writer: str = "py2", numpy_module: str = "numpy.core.multiarray") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if writer == "py2":
        path.write_bytes(py2_pickle(obj, numpy_module))
    else:
        with open(path, "wb") as fh:
            pickle.dump(obj, fh, protocol=2)
    return path


# ----------------------------------------------------------------------------------------------- CIFAR
def random_images(rng: np.random.Generator, n: int) -> np.ndarray:
    """uint8 N×3×32×32 with a different brightness per channel, so channel statistics differ."""
    base = rng.integers(0, 256, size=(n, 3, 32, 32))
    return ((base * np.array([1.0, 0.6, 0.3])[None, :, None, None]) + np.array([0, 40, 90])[None, :, None, None]
            ).astype(np.uint8)


def cifar_batch(images: np.ndarray, labels: list[int], label_key: bytes, batch_label: str, stem: str,
                coarse: list[int] | None = None) -> dict:
    """A batch dict as in the official files; rows are R plane, G plane, B plane (each 32×32 row-major)."""
    batch = {b"data": images.reshape(len(images), 3072), label_key: [int(v) for v in labels],
             b"batch_label": batch_label.encode(),
             b"filenames": [f"{stem}_s_{i:06d}.png".encode() for i in range(len(images))]}
    if coarse is not None:
        batch[b"coarse_labels"] = [int(v) for v in coarse]
    return batch


def write_cifar10(parent: Path, n_per_batch: int = 20, n_test: int = 20, seed: int = 0, writer: str = "py2",
                  numpy_module: str = "numpy.core.multiarray") -> tuple[Path, dict]:
    """``parent/cifar-10-batches-py`` with data_batch_1..5, test_batch and batches.meta.

    Returns the folder and ``{"train": (images, labels), "test": (images, labels)}`` as written."""
    rng = np.random.default_rng(seed)
    folder = parent / "cifar-10-batches-py"
    train_x, train_y = [], []
    for b in range(1, 6):
        x = random_images(rng, n_per_batch)
        y = rng.integers(0, 10, size=n_per_batch)
        write_pickle(folder / f"data_batch_{b}",
                     cifar_batch(x, y, b"labels", f"training batch {b} of 5", f"img{b}"), writer, numpy_module)
        train_x.append(x)
        train_y.append(y)
    test_x, test_y = random_images(rng, n_test), rng.integers(0, 10, size=n_test)
    write_pickle(folder / "test_batch", cifar_batch(test_x, test_y, b"labels", "testing batch 1 of 1", "test"),
                 writer, numpy_module)
    write_pickle(folder / "batches.meta", {b"num_cases_per_batch": n_per_batch,
                                           b"label_names": [c.encode() for c in CIFAR10_CLASSES],
                                           b"num_vis": 3072}, writer, numpy_module)
    return folder, {"train": (np.concatenate(train_x), np.concatenate(train_y)), "test": (test_x, test_y)}


def write_cifar100(parent: Path, n_train: int = 60, n_test: int = 20, seed: int = 0,
                   writer: str = "py2") -> tuple[Path, dict]:
    """``parent/cifar-100-python`` with train, test and meta (100 fine classes in 20 coarse ones)."""
    rng = np.random.default_rng(seed)
    folder = parent / "cifar-100-python"
    fine_names = [f"fine_{i:02d}" for i in range(100)]
    coarse_names = [f"coarse_{i:02d}" for i in range(20)]
    written = {}
    for split, n in (("train", n_train), ("test", n_test)):
        x = random_images(rng, n)
        fine = rng.integers(0, 100, size=n)
        coarse = fine // 5
        write_pickle(folder / split, cifar_batch(x, fine, b"fine_labels", f"{split}ing batch 1 of 1", split,
                                                 coarse=list(coarse)), writer)
        written[split] = (x, fine, coarse)
    write_pickle(folder / "meta", {b"fine_label_names": [n.encode() for n in fine_names],
                                   b"coarse_label_names": [n.encode() for n in coarse_names]}, writer)
    written["fine_names"], written["coarse_names"] = fine_names, coarse_names
    return folder, written


# -------------------------------------------------------------------------------------------- CINIC-10
MODES = ("RGB", "L", "P", "RGBA")


def png_image(rng: np.random.Generator, mode: str) -> tuple[Image.Image, np.ndarray]:
    """A 32×32 image in ``mode`` and the RGB uint8 3×32×32 array it should decode to."""
    rgb = rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
    if mode == "RGB":
        image = Image.fromarray(rgb, "RGB")
    elif mode == "L":
        grey = rgb[..., 0]
        image = Image.fromarray(grey, "L")
        rgb = np.repeat(grey[..., None], 3, axis=2)
    elif mode == "P":
        palette = rng.integers(0, 256, size=(256, 3), dtype=np.uint8)
        index = rng.integers(0, 256, size=(32, 32), dtype=np.uint8)
        image = Image.fromarray(index, "L")
        image = image.convert("P")
        image.putpalette(palette.reshape(-1).tolist())
        rgb = palette[index]
    else:
        alpha = rng.integers(0, 256, size=(32, 32, 1), dtype=np.uint8)
        image = Image.fromarray(np.concatenate([rgb, alpha], axis=2), "RGBA")
    return image, rgb.transpose(2, 0, 1)


def write_cinic10(root: Path, per_class: dict[str, int] | None = None, seed: int = 0) -> dict:
    """``root/{train,valid,test}/<class>/*.png``; returns {split: [(relative path, label, expected 3×32×32)]}
    in sorted (class, filename) order."""
    per_class = per_class or {"train": 5, "valid": 3, "test": 2}
    rng = np.random.default_rng(seed)
    written = {}
    k = 0
    for split, n in per_class.items():
        items = []
        for label, name in enumerate(CINIC_CLASSES):
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                image, expected = png_image(rng, MODES[k % len(MODES)])
                k += 1
                rel = f"{split}/{name}/{'n' if i % 2 else 'cifar10'}-{split}-{i:04d}.png"
                image.save(root / rel)
                items.append((rel, label, expected))
        written[split] = sorted(items, key=lambda t: (t[1], t[0]))
    return written


# ---------------------------------------------------------------------------------------- Fashion-MNIST
def idx_bytes(array: np.ndarray, magic: int | None = None) -> bytes:
    """An IDX file of unsigned bytes: magic 0x00000800 | ndim, big-endian uint32 dims, then the data."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    magic = (0x0800 | array.ndim) if magic is None else magic
    return struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def write_idx(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".gz":
        with gzip.open(path, "wb") as fh:
            fh.write(data)
    else:
        path.write_bytes(data)
    return path


def write_fashion_mnist(folder: Path, n_train: int = 50, n_test: int = 20, seed: int = 0,
                        gz: bool = True) -> dict:
    """The 4 Fashion-MNIST IDX files in ``folder``; returns {"train"/"test": (images N×28×28, labels)}."""
    rng = np.random.default_rng(seed)
    written = {}
    for part, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = np.arange(n, dtype=np.uint8) % 10
        rng.shuffle(labels)
        suffix = ".gz" if gz else ""
        write_idx(folder / f"{part}-images-idx3-ubyte{suffix}", idx_bytes(images))
        write_idx(folder / f"{part}-labels-idx1-ubyte{suffix}", idx_bytes(labels))
        written["train" if part == "train" else "test"] = (images, labels.astype(np.int64))
    return written

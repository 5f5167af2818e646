"""Image adapters (CIFAR-10/100, CINIC-10, Fashion-MNIST) on tiny files written in the official formats."""
from __future__ import annotations

import os
import pickle
import shutil
import stat
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from audio_mrkd.data import image_readers as images
from audio_mrkd.data.datasets import dataset
from audio_mrkd.data.image_readers import fetch_fashion_mnist, stratified_holdout
from audio_mrkd.data.splits import BatchLoader, FeatureSplit
from audio_mrkd.errors import InputError
from image_formats import (CIFAR10_CLASSES, CINIC_CLASSES, Global, Reduce, cifar_batch, idx_bytes, py2_pickle,
                           random_images, write_cifar10, write_cifar100, write_cinic10, write_fashion_mnist,
                           write_idx, write_pickle)

ITEM_COLUMNS = ["filename", "scene_label", "identifier", "source_label", "device_group"]


def quiet(_msg: str) -> None:
    pass


def load(kind: str, root: Path, **kw) -> dict[str, FeatureSplit]:
    return dataset(kind).read_splits(root, log=quiet, **kw)


def expect_error(call, *fragments: str) -> str:
    with pytest.raises(InputError) as excinfo:
        call()
    message = str(excinfo.value)
    assert "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, message
    return message


def numpy_stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(x, dtype=np.float64)
    return x.mean(axis=(0, 2, 3)), x.std(axis=(0, 2, 3))


def check_split(split: FeatureSplit, n: int, classes: list[str], kind: str) -> None:
    assert split.features.shape == (n, 3, 32, 32) and split.features.dtype == np.uint8
    assert split.features.flags["C_CONTIGUOUS"]
    assert split.labels.dtype == np.int64 and split.labels.shape == (n,)
    assert split.class_names == classes
    assert split.recording_devices.dtype == np.int64 and not split.recording_devices.any()
    assert split.device_names == ["none"]
    assert split.rows.dtype == np.int64 and len(split.rows) == n
    assert list(split.items.columns) == ITEM_COLUMNS and len(split.items) == n
    assert (split.items["identifier"] == split.items["filename"]).all()
    assert (split.items["source_label"] == "none").all() and (split.items["device_group"] == "none").all()
    assert split.items["scene_label"].tolist() == [classes[i] for i in split.labels]
    assert split.norm_mean.shape == (3, 1, 1) and split.norm_mean.dtype == np.float32
    assert split.norm_std.shape == (3, 1, 1) and split.norm_std.dtype == np.float32
    assert split.info["kind"] == kind


# ----------------------------------------------------------------------------------------------- CIFAR
def test_cifar10_official_pickles(tmp_path):
    folder, written = write_cifar10(tmp_path, n_per_batch=12, n_test=9)
    splits = load("cifar10", tmp_path)
    assert set(splits) == {"train", "evaluate", "test"}
    train, evaluate, test = splits["train"], splits["evaluate"], splits["test"]
    check_split(train, 60, CIFAR10_CLASSES, "cifar10")
    check_split(test, 9, CIFAR10_CLASSES, "cifar10")
    assert train.info["root"] == str(folder)
    np.testing.assert_array_equal(train.features, written["train"][0])
    np.testing.assert_array_equal(train.labels, written["train"][1])
    np.testing.assert_array_equal(test.features, written["test"][0])
    np.testing.assert_array_equal(test.labels, written["test"][1])
    assert train.items["filename"][0] == "data_batch_1:0" and train.items["filename"][12] == "data_batch_2:0"
    assert train.items["filename"][59] == "data_batch_5:11" and test.items["filename"][8] == "test_batch:8"
    np.testing.assert_array_equal(train.rows, np.arange(60))
    # no holdout: evaluate is the official test split
    np.testing.assert_array_equal(evaluate.features, test.features)
    np.testing.assert_array_equal(evaluate.labels, test.labels)
    mean, std = numpy_stats(written["train"][0])
    np.testing.assert_allclose(train.norm_mean.ravel(), mean, rtol=1e-6)
    np.testing.assert_allclose(train.norm_std.ravel(), std, rtol=1e-6)
    assert evaluate.norm_mean is train.norm_mean and test.norm_std is train.norm_std
    # the engine's loader normalises with these statistics: train batches are ~zero-mean, unit-std per channel
    x = next(iter(BatchLoader(train, batch_size=60))).x.numpy()
    np.testing.assert_allclose(x.mean(axis=(0, 2, 3)), 0.0, atol=1e-4)
    np.testing.assert_allclose(x.std(axis=(0, 2, 3)), 1.0, atol=1e-4)


def test_cifar_rows_are_r_g_b_planes(tmp_path):
    """Byte c*1024 + r*32 + col of a row is pixel (channel c, row r, column col)."""
    folder, _ = write_cifar10(tmp_path, n_per_batch=3)
    data = np.zeros((3, 3072), dtype=np.uint8)
    spots = {(0, 5, 7): 200, (1, 3, 1): 100, (2, 31, 0): 50, (2, 0, 31): 77}
    for (c, r, col), value in spots.items():
        data[1, c * 1024 + r * 32 + col] = value
    write_pickle(folder / "data_batch_1", {b"data": data, b"labels": [0, 1, 2], b"batch_label": b"x",
                                           b"filenames": [b"a.png", b"b.png", b"c.png"]})
    image = load("cifar10", folder)["train"].features[1]
    assert int(image.sum()) == sum(spots.values())
    for (c, r, col), value in spots.items():
        assert image[c, r, col] == value


@pytest.mark.parametrize("writer,numpy_module,point_at_folder", [
    ("py2", "numpy.core.multiarray", True),
    ("py2", "numpy._core.multiarray", False),
    ("py3", None, False),          # Python 3 pickle.dump(protocol=2): bytes come as _codecs.encode(…, "latin1")
])
def test_cifar10_writers_and_roots(tmp_path, writer, numpy_module, point_at_folder):
    folder, written = write_cifar10(tmp_path / "data", n_per_batch=4, n_test=4, writer=writer,
                                    numpy_module=numpy_module or "numpy.core.multiarray")
    splits = load("cifar10", folder if point_at_folder else folder.parent)
    np.testing.assert_array_equal(splits["train"].features, written["train"][0])
    assert splits["test"].class_names == CIFAR10_CLASSES


@pytest.mark.parametrize("coarse", [False, True])
def test_cifar100_fine_and_coarse(tmp_path, coarse):
    folder, written = write_cifar100(tmp_path, n_train=30, n_test=10)
    splits = load("cifar100", tmp_path, coarse_labels=coarse)
    names = written["coarse_names"] if coarse else written["fine_names"]
    check_split(splits["train"], 30, names, "cifar100")
    check_split(splits["test"], 10, names, "cifar100")
    np.testing.assert_array_equal(splits["train"].features, written["train"][0])
    np.testing.assert_array_equal(splits["train"].labels, written["train"][2 if coarse else 1])
    np.testing.assert_array_equal(splits["test"].labels, written["test"][2 if coarse else 1])
    assert splits["test"].items["filename"][3] == "test:3"


class _PythonPayload:
    def __init__(self, func, arg):
        self.func, self.arg = func, arg

    def __reduce__(self):
        return self.func, (self.arg,)


@pytest.mark.parametrize("payload", ["os.system", "builtins.eval", "builtins.exec-protocol4", "codecs-rot13",
                                     "nested-in-array-state"])
def test_malicious_pickle_is_refused(tmp_path, payload):
    folder, _ = write_cifar10(tmp_path, n_per_batch=2, n_test=2)
    marker = tmp_path / "PWNED"
    command = f"open({str(marker)!r}, 'w').write('x')"
    target = folder / "data_batch_2"
    if payload == "os.system":
        target.write_bytes(pickle.dumps({b"data": _PythonPayload(os.system, f"touch {marker}")}, protocol=2))
        refused = f"{os.system.__module__}.system"
    elif payload == "builtins.eval":
        target.write_bytes(py2_pickle({b"data": Reduce(Global("__builtin__", "eval"), (command,))}))
        refused = "__builtin__.eval"
    elif payload == "builtins.exec-protocol4":
        target.write_bytes(pickle.dumps({b"labels": _PythonPayload(exec, command)}, protocol=4))
        refused = "builtins.exec"
    elif payload == "codecs-rot13":
        target.write_bytes(py2_pickle({b"data": Reduce(Global("_codecs", "encode"), ("abc", "rot13"))}))
        refused = "_codecs.encode with codec 'rot13'"
    else:  # hidden inside an array's BUILD state, after admitted numpy globals have already been used
        array = Reduce(Global("numpy.core.multiarray", "_reconstruct"), (Global("numpy", "ndarray"), (0,), b"b"),
                       (1, (1,), Reduce(Global("posix", "system"), (f"touch {marker}",)), False, b"\x00"))
        target.write_bytes(py2_pickle({b"data": array}))
        refused = "posix.system"
    expect_error(lambda: load("cifar10", tmp_path), str(target), "refused pickle", refused)
    assert not marker.exists()


def test_cifar_missing_data_batch_3(tmp_path):
    folder, _ = write_cifar10(tmp_path, n_per_batch=2, n_test=2)
    (folder / "data_batch_3").unlink()
    expect_error(lambda: load("cifar10", tmp_path), str(folder / "data_batch_3"), "missing")


def test_cifar10_missing_batches_meta(tmp_path):
    folder, _ = write_cifar10(tmp_path, n_per_batch=2, n_test=2)
    (folder / "batches.meta").unlink()
    expect_error(lambda: load("cifar10", folder), str(folder / "batches.meta"), "missing")


def test_cifar100_missing_meta(tmp_path):
    folder, _ = write_cifar100(tmp_path, n_train=4, n_test=2)
    (folder / "meta").unlink()
    expect_error(lambda: load("cifar100", tmp_path), str(folder / "meta"), "missing")


def test_cifar_not_a_cifar_folder(tmp_path):
    (tmp_path / "something").mkdir()
    expect_error(lambda: load("cifar10", tmp_path), str(tmp_path), "cifar-10-batches-py")
    expect_error(lambda: load("cifar100", tmp_path / "nope"), str(tmp_path / "nope"), "not found")


def test_cifar_row_length_not_3072(tmp_path):
    folder, _ = write_cifar10(tmp_path, n_per_batch=2, n_test=2)
    write_pickle(folder / "data_batch_4", {b"data": np.zeros((2, 3 * 28 * 28), np.uint8), b"labels": [0, 1]})
    expect_error(lambda: load("cifar10", tmp_path), str(folder / "data_batch_4"), "row length 2352", "3072")


def test_cifar_label_count_differs_from_image_count(tmp_path):
    folder, _ = write_cifar10(tmp_path, n_per_batch=3, n_test=2)
    x = random_images(np.random.default_rng(1), 3)
    write_pickle(folder / "test_batch", cifar_batch(x, [1, 2], b"labels", "testing batch 1 of 1", "t"))
    expect_error(lambda: load("cifar10", tmp_path), str(folder / "test_batch"), "2 labels for 3 images")


def test_cifar_truncated_pickle(tmp_path):
    folder, _ = write_cifar10(tmp_path, n_per_batch=4, n_test=2)
    raw = (folder / "data_batch_5").read_bytes()
    (folder / "data_batch_5").write_bytes(raw[: len(raw) // 2])
    expect_error(lambda: load("cifar10", tmp_path), str(folder / "data_batch_5"), "not a readable CIFAR pickle")


def test_cifar_label_outside_class_list(tmp_path):
    folder, _ = write_cifar10(tmp_path, n_per_batch=2, n_test=2)
    write_pickle(folder / "data_batch_1", cifar_batch(random_images(np.random.default_rng(0), 2), [3, 10],
                                                      b"labels", "b", "x"))
    expect_error(lambda: load("cifar10", tmp_path), str(folder / "data_batch_1"), "label 10 outside 0..9")


# --------------------------------------------------------------------------------------------- holdout
def test_stratified_holdout_largest_remainder():
    labels = np.array([0] * 60 + [1] * 30 + [2] * 10)
    for holdout, expected in ((10, [6, 3, 1]), (7, [4, 2, 1]), (1, [1, 0, 0])):
        held = stratified_holdout(labels, holdout, seed=3)
        assert len(np.unique(held)) == holdout
        np.testing.assert_array_equal(np.bincount(labels[held], minlength=3), expected)


def test_holdout_is_stratified_deterministic_and_keeps_test_apart(tmp_path):
    _, written = write_cifar10(tmp_path, n_per_batch=40, n_test=10)
    all_x, all_y = written["train"]
    splits = load("cifar10", tmp_path, holdout=50, seed=7)
    train, evaluate, test = splits["train"], splits["evaluate"], splits["test"]
    assert len(train) == 150 and len(evaluate) == 50 and len(test) == 10
    check_split(train, 150, CIFAR10_CLASSES, "cifar10")
    check_split(evaluate, 50, CIFAR10_CLASSES, "cifar10")
    # disjoint, together the whole official train split; rows are positions in it
    assert set(train.rows).isdisjoint(evaluate.rows)
    np.testing.assert_array_equal(np.sort(np.concatenate([train.rows, evaluate.rows])), np.arange(200))
    np.testing.assert_array_equal(evaluate.features, all_x[evaluate.rows])
    np.testing.assert_array_equal(evaluate.labels, all_y[evaluate.rows])
    np.testing.assert_array_equal(train.features, all_x[train.rows])
    assert evaluate.items["filename"].tolist() == [f"data_batch_{r // 40 + 1}:{r % 40}" for r in evaluate.rows]
    # stratified: each class within one item of its proportional share
    share = np.bincount(all_y, minlength=10) * 50 / 200
    assert np.all(np.abs(np.bincount(evaluate.labels, minlength=10) - share) < 1)
    # the test split is the official one, untouched
    np.testing.assert_array_equal(test.features, written["test"][0])
    # statistics come from the remaining train items only
    mean, std = numpy_stats(all_x[train.rows])
    np.testing.assert_allclose(train.norm_mean.ravel(), mean, rtol=1e-6)
    np.testing.assert_allclose(train.norm_std.ravel(), std, rtol=1e-6)
    assert not np.allclose(mean, numpy_stats(all_x)[0], rtol=1e-6)
    # deterministic by seed
    again = load("cifar10", tmp_path, holdout=50, seed=7)["evaluate"]
    np.testing.assert_array_equal(again.rows, evaluate.rows)
    other = load("cifar10", tmp_path, holdout=50, seed=8)["evaluate"]
    assert not np.array_equal(other.rows, evaluate.rows)


def test_eval_split_test_trains_as_the_selection_runs_and_scores_the_official_test_split(tmp_path):
    """The chosen variants, reported once: the same training items and statistics as with the held-back
    selection split, evaluated on the official test split."""
    from audio_mrkd.config_loader import load_experiment
    from audio_mrkd.data.selection import load_data
    _, written = write_cifar10(tmp_path, n_per_batch=40, n_test=10)
    data = ["data.kind=cifar10", f"data.root={tmp_path}", "data.holdout=50"]
    selection = load_data(load_experiment(None, data).data)
    reported = load_data(load_experiment(None, [*data, "data.eval_split=test"]).data)
    np.testing.assert_array_equal(reported.train.rows, selection.train.rows)
    np.testing.assert_array_equal(reported.train.norm_mean, selection.train.norm_mean)
    assert len(selection.eval) == 50 and len(reported.eval) == 10
    np.testing.assert_array_equal(reported.eval.features, written["test"][0])
    expect_error(lambda: load_data(load_experiment(None, [*data, "data.eval_split=valid"]).data),
                 "data.eval_split", "'valid'", "cifar10")


@pytest.mark.parametrize("kw,fragments", [
    ({"kind": "svhn"}, ("data.kind", "svhn")),
    ({"kind": "cifar10", "coarse_labels": True}, ("coarse_labels", "cifar10")),
    ({"kind": "cifar10", "holdout": 10}, ("data.holdout", "10 training items")),
    ({"kind": "cifar10", "holdout": -1}, ("data.holdout", "negative")),
])
def test_bad_arguments(tmp_path, kw, fragments):
    write_cifar10(tmp_path, n_per_batch=2, n_test=2)
    kind = kw.pop("kind")
    expect_error(lambda: load(kind, tmp_path, **kw), *fragments)


# -------------------------------------------------------------------------------------------- CINIC-10
def test_cinic10_decodes_once_then_reuses_the_cache(tmp_path, monkeypatch):
    root = tmp_path / "CINIC-10"
    written = write_cinic10(root)
    cache_dir = tmp_path / "cache"
    messages: list[str] = []
    splits = dataset("cinic10").read_splits(tmp_path, cache_dir=cache_dir, log=messages.append)
    assert splits["train"].info["root"] == str(root)
    for name, source in (("train", "train"), ("evaluate", "valid"), ("test", "test")):
        split = splits[name]
        check_split(split, len(written[source]), CINIC_CLASSES, "cinic10")
        assert split.items["filename"].tolist() == [rel for rel, _, _ in written[source]]
        np.testing.assert_array_equal(split.labels, [lab for _, lab, _ in written[source]])
        np.testing.assert_array_equal(split.features, np.stack([x for _, _, x in written[source]]))
    assert isinstance(splits["train"].features, np.memmap)   # read from the cache, memory-mapped
    mean, std = numpy_stats(np.stack([x for _, _, x in written["train"]]))
    np.testing.assert_allclose(splits["test"].norm_mean.ravel(), mean, rtol=1e-6)
    np.testing.assert_allclose(splits["test"].norm_std.ravel(), std, rtol=1e-6)
    entries = list((cache_dir / "images" / "cinic10").iterdir())
    entries = [e for e in entries if not e.name.startswith(".")]
    assert len(entries) == 1
    entry = entries[0]
    for name in ("COMPLETE", "train.npy", "valid.npy", "test.npy", "train_labels.npy", "train_files.csv",
                 "classes.json"):
        assert (entry / name).is_file(), name

    def no_decoding(path):
        raise AssertionError(f"decoded {path} again")

    monkeypatch.setattr(images, "decode_png", no_decoding)
    again = dataset("cinic10").read_splits(root, cache_dir=cache_dir, log=messages.append)
    np.testing.assert_array_equal(again["train"].features, splits["train"].features)
    np.testing.assert_array_equal(again["evaluate"].labels, splits["evaluate"].labels)
    assert any("reusing" in m for m in messages)


def test_cinic10_changed_file_list_rebuilds_and_interruption_leaves_no_complete_cache(tmp_path, monkeypatch):
    root = tmp_path / "cinic"
    write_cinic10(root, {"train": 2, "valid": 1, "test": 1})
    cache_dir = tmp_path / "cache"
    load("cinic10", root, cache_dir=cache_dir)
    shutil.copy(root / "train" / "cat" / "cifar10-train-0000.png", root / "train" / "cat" / "extra.png")
    real = images.decode_png
    calls = []

    def failing(path):
        calls.append(path)
        if len(calls) == 5:
            raise OSError("disk went away")
        return real(path)

    monkeypatch.setattr(images, "decode_png", failing)
    with pytest.raises(OSError):
        load("cinic10", root, cache_dir=cache_dir)
    base = cache_dir / "images" / "cinic10"
    assert sum(images._cinic_complete(e) for e in base.iterdir()) == 1        # only the first, older entry
    assert not [e for e in base.iterdir() if e.name.endswith(".tmp")]         # staging folder removed
    monkeypatch.setattr(images, "decode_png", real)
    splits = load("cinic10", root, cache_dir=cache_dir)
    assert len(splits["train"]) == 9 and "train/cat/extra.png" in splits["train"].items["filename"].tolist()
    assert sum(images._cinic_complete(e) for e in base.iterdir()) == 2


def test_cinic10_missing_split(tmp_path):
    root = tmp_path / "cinic"
    write_cinic10(root, {"train": 1, "valid": 1, "test": 1})
    shutil.rmtree(root / "valid")
    expect_error(lambda: load("cinic10", root, cache_dir=tmp_path / "c"), str(root / "valid"), "missing")


def test_cinic10_class_folders_differ(tmp_path):
    root = tmp_path / "cinic"
    write_cinic10(root, {"train": 1, "valid": 1, "test": 1})
    shutil.rmtree(root / "test" / "bird")
    expect_error(lambda: load("cinic10", root, cache_dir=tmp_path / "c"), str(root / "test"), "differ")


def test_cinic10_image_not_32x32(tmp_path):
    from PIL import Image

    root = tmp_path / "cinic"
    write_cinic10(root, {"train": 1, "valid": 1, "test": 1})
    bad = root / "valid" / "cat" / "big.png"
    Image.new("RGB", (40, 30)).save(bad)
    expect_error(lambda: load("cinic10", root, cache_dir=tmp_path / "c"), str(bad), "40×30", "32×32")
    assert not any(images._cinic_complete(e) for e in (tmp_path / "c" / "images" / "cinic10").iterdir())


# ---------------------------------------------------------------------------------------- Fashion-MNIST
@pytest.mark.parametrize("gz,layout", [(True, "folder"), (False, "folder"), (True, "dpkg-x")])
def test_fashion_mnist_idx(tmp_path, gz, layout):
    folder = tmp_path / "usr/share/datasets/fashion-mnist" if layout == "dpkg-x" else tmp_path / "fm"
    written = write_fashion_mnist(folder, n_train=30, n_test=12, gz=gz)
    splits = load("fashion_mnist", tmp_path if layout == "dpkg-x" else folder)
    classes = list(images.FASHION_CLASSES)
    assert classes[0] == "T-shirt/top" and classes[9] == "Ankle boot"
    for name, n in (("train", 30), ("test", 12)):
        split = splits[name]
        check_split(split, n, classes, "fashion_mnist")
        grey, labels = written[name]
        np.testing.assert_array_equal(split.labels, labels)
        for c in range(3):
            np.testing.assert_array_equal(split.features[:, c, 2:30, 2:30], grey)
        border = split.features.copy()
        border[:, :, 2:30, 2:30] = 0
        assert not border.any()
    assert splits["test"].items["filename"][5] == "t10k:5" and splits["train"].items["filename"][0] == "train:0"
    assert splits["train"].info["root"] == str(folder)
    mean, std = numpy_stats(splits["train"].features)
    np.testing.assert_allclose(splits["train"].norm_mean.ravel(), mean, rtol=1e-6)
    np.testing.assert_allclose(splits["train"].norm_std.ravel(), std, rtol=1e-6)


def test_fashion_mnist_missing_idx_file(tmp_path):
    write_fashion_mnist(tmp_path, n_train=10, n_test=10)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    expect_error(lambda: load("fashion_mnist", tmp_path), str(tmp_path / "t10k-labels-idx1-ubyte.gz"), "missing")


def test_fashion_mnist_truncated_idx(tmp_path):
    write_fashion_mnist(tmp_path, n_train=10, n_test=10, gz=False)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-100])
    expect_error(lambda: load("fashion_mnist", tmp_path), str(path), "truncated", "10×28×28 = 7840")


def test_fashion_mnist_wrong_magic(tmp_path):
    written = write_fashion_mnist(tmp_path, n_train=10, n_test=10)
    path = write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", idx_bytes(written["test"][0], magic=0x00000801))
    expect_error(lambda: load("fashion_mnist", tmp_path), str(path), "magic 0x00000801", "expected 0x00000803")


def test_fashion_mnist_label_count_differs_from_image_count(tmp_path):
    write_fashion_mnist(tmp_path, n_train=10, n_test=10)
    path = write_idx(tmp_path / "train-labels-idx1-ubyte.gz", idx_bytes(np.zeros(9, np.uint8)))
    expect_error(lambda: load("fashion_mnist", tmp_path), str(path), "9 labels for 10 images")


def _fake_apt_get(bin_dir: Path, script: str) -> dict:
    bin_dir.mkdir(parents=True, exist_ok=True)
    tool = bin_dir / "apt-get"
    tool.write_text("#!/bin/sh\n" + script)
    tool.chmod(tool.stat().st_mode | stat.S_IEXEC)
    return {"PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}


def test_fetch_fashion_mnist_reports_apt_failure_in_one_line(tmp_path, monkeypatch):
    env = _fake_apt_get(tmp_path / "bin", 'echo "E: Unable to locate package $2" >&2\nexit 100\n')
    monkeypatch.setenv("PATH", env["PATH"])
    expect_error(lambda: fetch_fashion_mnist(tmp_path / "work"), "apt-get download dataset-fashion-mnist",
                 "E: Unable to locate package dataset-fashion-mnist")


@pytest.mark.skipif(shutil.which("dpkg-deb") is None or shutil.which("dpkg") is None, reason="needs dpkg")
def test_fetch_fashion_mnist_downloads_extracts_and_reuses(tmp_path, monkeypatch):
    """A fake apt-get hands over a real .deb (built here with dpkg-deb) holding tiny IDX files."""
    tree = tmp_path / "pkg"
    written = write_fashion_mnist(tree / "usr/share/datasets/fashion-mnist", n_train=20, n_test=10)
    (tree / "DEBIAN").mkdir()
    (tree / "DEBIAN/control").write_text("Package: dataset-fashion-mnist\nVersion: 0.0-1\nArchitecture: all\n"
                                         "Maintainer: test <t@example.org>\nDescription: test\n")
    deb = tmp_path / "dataset-fashion-mnist_0.0-1_all.deb"
    subprocess.run(["dpkg-deb", "--build", "--root-owner-group", str(tree), str(deb)], check=True,
                   capture_output=True)
    log = tmp_path / "apt.log"
    env = _fake_apt_get(tmp_path / "bin", f'echo "$@" >> {log}\ncp {deb} .\n')
    monkeypatch.setenv("PATH", env["PATH"])
    work = tmp_path / "work"
    folder = fetch_fashion_mnist(work)
    assert folder == work / "dataset-fashion-mnist/usr/share/datasets/fashion-mnist"
    assert log.read_text().split() == ["download", "dataset-fashion-mnist"]
    splits = load("fashion_mnist", folder)
    np.testing.assert_array_equal(splits["train"].features[:, 0, 2:30, 2:30], written["train"][0])
    assert not [p for p in work.iterdir() if p.name.endswith(".tmp")]
    # reused: neither apt-get nor dpkg runs again
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert fetch_fashion_mnist(work) == folder


@pytest.mark.slow
def test_fetch_real_fashion_mnist(tmp_path):
    if shutil.which("apt-get") is None or shutil.which("dpkg") is None:
        pytest.skip("apt-get/dpkg not available: Fashion-MNIST comes from Debian's dataset-fashion-mnist")
    start = time.perf_counter()
    folder = fetch_fashion_mnist(tmp_path / "work")
    splits = dataset("fashion_mnist").read_splits(folder, log=print)
    print(f"fetch + load: {time.perf_counter() - start:.1f} s")
    assert len(splits["train"]) == 60000 and len(splits["test"]) == 10000
    np.testing.assert_array_equal(np.bincount(splits["train"].labels, minlength=10), [6000] * 10)
    np.testing.assert_array_equal(np.bincount(splits["test"].labels, minlength=10), [1000] * 10)
    assert splits["train"].features.shape == (60000, 3, 32, 32)
    assert not splits["train"].features[:, :, :2].any()          # the 2-px padding

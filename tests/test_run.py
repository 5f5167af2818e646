"""A run folder has one reader and writer (:class:`audio_mrkd.runs.run.Run`), its data.json one typed form
(:class:`audio_mrkd.data.info.DataInfo`), and a dataset kind is one registry entry (:mod:`audio_mrkd.data.datasets`)."""
import ast
import io
import json
import tokenize
from pathlib import Path

import numpy as np
import pytest
import torch

from audio_mrkd import config_io
from audio_mrkd.config_loader import load_experiment
from audio_mrkd.data.datasets import DATASETS, DataBundle, DatasetKind, dataset
from audio_mrkd.data.datasets.synthetic import synthetic_splits
from audio_mrkd.data.info import DataInfo
from audio_mrkd.data.selection import load_data
from audio_mrkd.errors import InputError
from audio_mrkd.runs.run import Run
from audio_mrkd.train.engine import train_run
from audio_mrkd.train.inference import run_logits
from tests.test_engine import config, prepared  # noqa: F401  (the tiny prepared DCASE tree, a module fixture)

PACKAGE = Path(__file__).resolve().parents[1] / "audio_mrkd"
#: The one module that may name a run's files.
RUN_FILE_READERS = {"runs/run.py"}


def old_data_info(cfg, data) -> dict:
    """data.json as the writer before DataInfo made it (train/run_files.py at 0dbb8b6), kept as the reference."""
    split, dcfg = data.train, cfg.data

    def stat(values):
        return None if not dcfg.normalize or values is None else np.asarray(values).tolist()

    return {
        "kind": data.kind, "name": dcfg.name, "root": dcfg.root, "manifest_dir": dcfg.manifest_dir,
        "train_split": dcfg.train_split, "eval_split": dcfg.eval_split, "class_names": split.class_names,
        "device_names": split.device_names, "input_shape": list(split.item_shape),
        "norm_mean": stat(split.norm_mean), "norm_std": stat(split.norm_std),
        "features": data.frontend, "n_train": len(split), "n_eval": len(data.eval),
        "cv_folds": dcfg.cv_folds, "cv_fold": dcfg.cv_fold, "cv_pool": dcfg.cv_pool, "holdout": dcfg.holdout,
        "train_limit": dcfg.train_limit,
    }


def as_file(content: dict) -> str:
    return json.dumps(content, indent=2, sort_keys=False, default=str) + "\n"  # fileio.write_json's bytes


@pytest.fixture(scope="module")
def synthetic_run(tmp_path_factory):
    cfg = load_experiment(None, ["data.kind=synthetic", "data.synthetic_items=64", "model.name=dcase_cnn",
                                 "train.epochs=1", "train.batch_size=32", "train.progress=false",
                                 f"train.out_dir={tmp_path_factory.mktemp('run')}"])
    run_dir, _ = train_run(cfg)
    return cfg, run_dir


def test_run_reads_back_the_folder_training_wrote(synthetic_run):
    cfg, run_dir = synthetic_run
    run = Run(run_dir)
    assert config_io.to_dict(run.config) == config_io.to_dict(cfg)
    data = load_data(cfg.data)
    assert run.info == DataInfo.of(cfg.data, data)
    assert run.info.kind == "synthetic" and run.info.n_train == 64 and run.info.input_shape == [1, 32, 16]
    assert run.dataset is DATASETS["synthetic"]
    for which in ("best", "last"):
        model = run.model(which)
        assert not model.training
    evaluated = run.data().eval
    assert evaluated.norm_mean is None and run.info.norm_arrays() is None  # synthetic items are not normalised
    probs = torch.softmax(run_logits(run.model("last"), evaluated), 1).numpy()
    saved = np.loadtxt(run_dir / "predictions.csv", delimiter="\t", skiprows=1, usecols=(2, 3, 4, 5))
    assert np.allclose(probs, saved, atol=1e-5)
    assert len(run.split("all")) == len(run.split("train")) + len(run.split("evaluate"))


def test_data_json_is_byte_identical_to_the_old_writer(synthetic_run, prepared):  # noqa: F811
    cfg, run_dir = synthetic_run
    written = (run_dir / "data.json").read_text()
    assert written == as_file(old_data_info(cfg, load_data(cfg.data)))
    assert as_file(DataInfo.from_json(json.loads(written)).to_json()) == written
    audio = config(prepared, prepared, "data.cv_folds=2", "data.cv_fold=1")  # front-end, per-mel-bin statistics
    data = load_data(audio.data)
    info = DataInfo.of(audio.data, data)
    assert as_file(info.to_json()) == as_file(old_data_info(audio, data))
    assert info.features and np.array_equal(info.norm_arrays()[0], data.train.norm_mean)


def test_data_info_compares_datasets_and_selection_splits():
    base = DataInfo(kind="audio", name="tiny", class_names=["a", "b"], input_shape=[1, 32, 10], eval_split="evaluate")
    assert base.dataset_difference(DataInfo(**{**base.to_json(), "n_train": 3})) is None
    assert base.dataset_difference(DataInfo(**{**base.to_json(), "class_names": ["b", "a"]})) == "class_names"
    assert base.scored_on_the_same_split(DataInfo(**{**base.to_json(), "n_train": 3}))
    assert not base.scored_on_the_same_split(DataInfo(**{**base.to_json(), "cv_folds": 2}))
    assert DataInfo.from_json({"kind": "audio", "unknown": 1}).name is None  # older or newer files still read


class Blobs(DatasetKind):
    """A dataset kind defined here, as a user would add one: six classes of separable blobs."""

    family = "synthetic"

    def load(self, cfg) -> DataBundle:
        return DataBundle(*synthetic_splits(cfg, seed=7, n_classes=6), self.family, {})

    def split(self, cfg, name: str):
        return dict(zip(("train", "evaluate"), synthetic_splits(cfg, seed=7, n_classes=6)))[name]


def test_a_new_dataset_is_a_class_and_a_registry_line(tmp_path, monkeypatch):
    """Registered, a kind is a config choice that trains, and its runs evaluate, through the registry alone."""
    from audio_mrkd.evaluate import evaluate_run
    monkeypatch.setitem(DATASETS, "blobs", Blobs())
    cfg = load_experiment(None, ["data.kind=blobs", "data.synthetic_items=96", "model.name=dcase_cnn",
                                 "train.epochs=1", "train.batch_size=32", "train.progress=false",
                                 f"train.out_dir={tmp_path}"])
    run_dir, summary = train_run(cfg)
    assert Run(run_dir).info.class_names == [f"c{c}" for c in range(6)] and summary["complete"]
    scores = evaluate_run(run_dir, "evaluate", "last", log=lambda *_: None)
    assert scores["accuracy"] == pytest.approx(summary["last"]["accuracy"])


def test_a_folder_without_run_files_is_one_line(tmp_path):
    with pytest.raises(InputError, match=r"not a run directory \(no config.yaml\)$"):
        Run(tmp_path).config
    with pytest.raises(InputError, match=r"not a run directory \(no data.json\)$"):
        Run(tmp_path).info


def test_the_dataset_registry_lists_the_six_kinds():
    assert list(DATASETS) == ["audio", "cifar10", "cifar100", "cinic10", "fashion_mnist", "synthetic"]
    assert [k for k, d in DATASETS.items() if d.official_test] == ["cifar10", "cifar100", "cinic10", "fashion_mnist"]
    assert [k for k, d in DATASETS.items() if d.frontend] == ["audio"]
    with pytest.raises(InputError) as err:
        dataset("mnist")
    assert str(err.value) == ("data.kind: 'mnist' is not one of 'audio', 'cifar10', 'cifar100', 'cinic10', "
                              "'fashion_mnist', 'synthetic'")
    with pytest.raises(InputError) as err:   # a config offers exactly the registered kinds
        load_experiment(None, ["data.kind=mnist"])
    assert str(err.value) == f"data.kind: 'mnist' is not one of {', '.join(map(repr, DATASETS))}"


def _string_literals(path: Path) -> list[tuple[int, str]]:
    """(line, value) of every plain string literal of a module (f-strings and docstrings' prose excluded)."""
    found = []
    for token in tokenize.generate_tokens(io.StringIO(path.read_text()).readline):
        if token.type == tokenize.STRING and not token.string.lstrip("rbuRBU").startswith(("f", "F")):
            try:
                found.append((token.start[0], ast.literal_eval(token.string)))
            except (ValueError, SyntaxError):
                pass
    return found


#: Every file and folder a run holds, as training and the post-run commands write them (the seed file, a common
#: word, is left out of the scan).
RUN_FILES = {"config.yaml", "data.json", "metrics.json", "versions.json", "predictions.csv", "predictions_best.csv",
             "predictions_test.csv", "checkpoints", "last.pt", "best.pt", "finetuned"}


def test_the_run_module_names_every_run_file():
    from audio_mrkd.runs import run
    assert set(run.RUN_FILES) == RUN_FILES


def test_no_module_but_the_run_module_names_run_files():
    """No string literal of the package names a run's file, alone or in a path, outside the run module."""
    offenders = [f"{path.relative_to(PACKAGE)}:{line}: {value!r}" for path in sorted(PACKAGE.rglob("*.py"))
                 if path.relative_to(PACKAGE).as_posix() not in RUN_FILE_READERS
                 for line, value in _string_literals(path)
                 if isinstance(value, str) and RUN_FILES & set(value.replace("\\", "/").split("/"))]
    assert not offenders, "run files named outside audio_mrkd/runs/run.py:\n" + "\n".join(offenders)

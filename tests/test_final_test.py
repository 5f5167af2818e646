"""data.final_test: the official test split scored once after the last epoch, beside the selection split, never
used to choose; and a study's records and tables that carry it."""
import json

import pandas as pd
import pytest

from audio_mrkd.config_loader import load_experiment
from audio_mrkd.errors import InputError
from audio_mrkd.evaluate import evaluate_run
from audio_mrkd.studies.ablation import run_ablation
from audio_mrkd.train.engine import train_run
from tests.image_formats import write_fashion_mnist

N_TEST = 12


@pytest.fixture(scope="module")
def fmnist(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fmnist")
    write_fashion_mnist(folder, n_train=40, n_test=N_TEST)
    return folder


def recipe(root, out, *extra) -> list[str]:
    return ["data.kind=fashion_mnist", f"data.root={root}", "data.holdout=10", "model.name=resnet20",
            "train.epochs=3", "train.batch_size=8", "train.optimizer=sgd", "train.lr=0.05", "train.threads=1",
            "train.progress=false", f"train.out_dir={out}", *extra]


def test_last_and_best_are_scored_on_the_test_split_and_choose_nothing(fmnist, tmp_path):
    run_dir, metrics = train_run(load_experiment(None, recipe(fmnist, tmp_path / "a", "data.final_test=true")))
    _, plain = train_run(load_experiment(None, recipe(fmnist, tmp_path / "b")))
    # the selection split's numbers, the best epoch and the curve are those of the same run without it
    assert "test" not in plain
    for key in ("last", "best", "history"):
        assert json.dumps(metrics[key], sort_keys=True) == json.dumps(plain[key], sort_keys=True)
    test = metrics["test"]
    assert test["last"]["epoch"] == 3 and test["best"]["epoch"] == metrics["best"]["epoch"]
    for which in ("last", "best"):  # the same numbers `audio-mrkd evaluate RUN --split test` gives
        again = evaluate_run(run_dir, "test", which, log=lambda *_: None)
        assert test[which]["n_items"] == N_TEST
        for m in ("accuracy", "macro_accuracy", "log_loss"):
            assert test[which][m] == pytest.approx(again[m], abs=1e-5), (which, m)
    assert json.loads((run_dir / "metrics.json").read_text())["test"]["last"]["accuracy"] == test["last"]["accuracy"]
    assert len(pd.read_csv(run_dir / "predictions_test.csv", sep="\t")) == N_TEST


@pytest.mark.parametrize("extra,fragment", [
    (["data.holdout=0"], "already the official test split"),
    (["data.eval_split=test"], "already the official test split"),
    (["data.kind=synthetic"], "only image data sets"),
])
def test_final_test_refuses_a_run_without_a_separate_test_split(fmnist, tmp_path, extra, fragment):
    with pytest.raises(InputError, match=fragment) as err:
        load_experiment(None, recipe(fmnist, tmp_path, "data.final_test=true", *extra))
    assert str(err.value).startswith("data.final_test:") and "\n" not in str(err.value)


def test_study_records_and_tables_carry_the_test_split(fmnist, tmp_path):
    base = tmp_path / "recipe.yaml"
    base.write_text("method: ce\n")
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"config: {base.name}\nfolds: 0\nseeds: [0]\nreference: ce\n"
                    f"overrides: {json.dumps(recipe(fmnist, tmp_path, 'data.final_test=true', 'train.epochs=2'))}\n"
                    "variants:\n  ce: [method=ce]\n  ce_ls: [method=ce, train.label_smoothing=0.1]\n")
    table = run_ablation(spec, tmp_path / "abl", log=lambda *_: None)
    records = [json.loads(line) for line in (tmp_path / "abl" / "runs.jsonl").read_text().splitlines()]
    for rec in records:
        assert rec["n_test"] == N_TEST and rec["n_eval"] == 10
        assert {"test_last_macro_accuracy", "test_best_macro_accuracy", "test_last_log_loss"} <= set(rec)
    ls = next(r for r in records if r["variant"] == "ce_ls")
    ce = next(r for r in records if r["variant"] == "ce")
    summary = json.loads((tmp_path / "abl" / "ablation.json").read_text())
    assert summary["ce_ls"]["delta_test_last_macro_accuracy"]["mean"] == pytest.approx(
        ls["test_last_macro_accuracy"] - ce["test_last_macro_accuracy"])
    assert "| variant | test last macro acc |" in table
    assert f"| ce_ls | {100 * ls['test_last_macro_accuracy']:.1f} ± 0.0 |" in table
    assert (tmp_path / "abl" / "ablation_test.png").is_file() and (tmp_path / "abl" / "ablation.png").is_file()

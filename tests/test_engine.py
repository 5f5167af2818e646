"""The training engine end to end on a small prepared DCASE tree: run dir, TensorBoard, resume, seeds, CLI."""
import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from audio_mrkd.cli import main
from audio_mrkd.config_loader import load_experiment
from audio_mrkd.data.prepare import prepare
from audio_mrkd.errors import InputError
from audio_mrkd.evaluate import evaluate_run
from audio_mrkd.runs.run import checkpoint_path
from audio_mrkd.studies.sweep import run_seeds
from audio_mrkd.train.engine import Trainer, resume_run, train_run
from audio_mrkd.train.optim import make_lr_scheduler
from tests.conftest import make_dcase_tree


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("engine")
    tree = make_dcase_tree(root / "dev", n=48)
    prepare(tree, "tiny", cache_dir=root / "cache", manifest_dir=root / "manifests", workers=1,
            overrides=["n_mels=32"], log=lambda *_: None)
    return root


def config(prepared, tmp_path, *extra):
    return load_experiment(None, [
        "data.name=tiny", f"data.manifest_dir={prepared / 'manifests'}", f"train.out_dir={tmp_path / 'runs'}",
        "model.name=cp_mobile", "model.options={base_channels: 8, n_blocks: [1, 1, 1]}", "train.epochs=3",
        "train.batch_size=8", "train.lr=0.01", "train.progress=false", "train.log_every=1",
        "augment.roll=0.1", "augment.freq_mask=4", *extra])


def scalars(run_dir, tag):
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return acc, [e.value for e in acc.Scalars(tag)] if tag else None


def test_ce_run_directory(prepared, tmp_path):
    run_dir, summary = train_run(config(prepared, tmp_path, "method=ce"))
    for name in ("config.yaml", "versions.json", "seed", "data.json", "metrics.json", "predictions.csv"):
        assert (run_dir / name).is_file(), name
    assert list(run_dir.glob("events.out.tfevents.*"))
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["complete"] and metrics["last"]["epoch"] == 3 and 1 <= metrics["best"]["epoch"] <= 3
    for key in ("accuracy", "macro_accuracy", "log_loss", "per_class", "per_device", "per_device_group",
                "confusion"):
        assert key in metrics["last"] and key in metrics["best"]
    assert metrics["best"]["macro_accuracy"] == max(h["macro_accuracy"] for h in metrics["history"])
    assert set(metrics["last"]["per_device_group"]) <= {"real", "seen_sim", "unseen_sim"}
    preds = pd.read_csv(run_dir / "predictions.csv", sep="\t")
    assert list(preds.columns[:2]) == ["filename", "scene_label"]
    assert np.allclose(preds[["metro", "park", "street"]].sum(axis=1), 1.0, atol=1e-4)
    assert (preds["scene_label"] == preds["true_label"]).mean() == pytest.approx(metrics["last"]["accuracy"])
    last = metrics["last"]  # each accuracy with the number of clips it rests on
    assert last["per_class_count"] == preds["true_label"].value_counts().to_dict()
    for group in ("per_class", "per_device", "per_device_group"):
        assert sum(last[f"{group}_count"].values()) == last["n_items"] == len(preds), group
        assert set(last[f"{group}_count"]) == set(last[group]), group
    items = pd.read_csv(prepared / "manifests" / "tiny" / "evaluate.csv", dtype={"source_label": str})
    assert last["per_device_count"] == items["source_label"].value_counts().to_dict()
    assert last["per_device_group_count"] == items["device_group"].value_counts().to_dict()
    for which in ("last", "best"):
        state = torch.load(checkpoint_path(run_dir, which), weights_only=True)
        assert {"model", "optimizer", "scheduler", "rng", "epoch"} <= set(state)
    assert json.loads((run_dir / "versions.json").read_text())["torch"].startswith("2.11")
    assert (run_dir / "seed").read_text().strip() == "0"


def test_mrkd_tensorboard_tags_and_values(prepared, tmp_path):
    run_dir, summary = train_run(config(prepared, tmp_path, "method=mrkd", "mrkd.k=2", "train.epochs=4"))
    acc, active = scalars(run_dir, "mrkd/active")
    tags = set(acc.Tags()["scalars"])
    expected = {"loss/ce", "loss/kd", "loss/fcn", "lr", "mrkd/active", "mrkd/teacher_acc/0", "mrkd/teacher_acc/1",
                "mrkd/ensemble_acc", "mrkd/mean_acc", "mrkd/ka_rate", "mrkd/teacher_time_share",
                "eval/accuracy", "eval/macro_accuracy", "eval/log_loss", "eval/per_class/park"}
    assert expected <= tags, expected - tags
    events = acc.Scalars("mrkd/active")
    first_active = min(e.step for e in events if e.value == 1.0)
    # k=2 with one backup per epoch: the bank is full after epoch 2, so epochs 1-2 are plain CE
    per_epoch = max(e.step for e in acc.Scalars("eval/epoch") if e.value == 1.0)
    assert first_active == 2 * per_epoch + 1
    assert all(e.value == 0.0 for e in events if e.step <= 2 * per_epoch)
    ka = [e.value for e in acc.Scalars("mrkd/ka_rate")]
    share = [e.value for e in acc.Scalars("mrkd/teacher_time_share") if e.step >= first_active]
    assert all(0.0 <= v <= 1.0 for v in ka) and share and all(0.0 < v < 1.0 for v in share)
    kd = {e.step: e.value for e in acc.Scalars("loss/kd")}
    assert all(v > 0 for step, v in kd.items() if step >= first_active)
    assert all(v == 0 for step, v in kd.items() if step < first_active)
    assert "eval/confusion" in acc.Tags()["images"]
    assert not (run_dir / "hparams").exists()  # hparams live inside the run: one entry per run
    lr = [e.value for e in acc.Scalars("lr")]
    assert lr[-1] < lr[0]  # cosine decay
    eval_acc = [e.value for e in acc.Scalars("eval/accuracy")]
    assert eval_acc == pytest.approx([h["accuracy"] for h in summary["history"]])


@pytest.mark.parametrize("method", ["ce", "mrkd"])
def test_resume_continues_the_same_trajectory(prepared, tmp_path, method):
    extra = [f"method={method}", "mrkd.k=1", "augment.mixup_alpha=0.3"]
    _, straight = train_run(config(prepared, tmp_path / "a", *extra))
    trainer = Trainer(config(prepared, tmp_path / "b", *extra))
    partial = trainer.fit(stop_after=1)
    assert partial["epochs_done"] == 1 and not partial["complete"]
    run_dir, resumed = resume_run(trainer.run_dir)
    assert run_dir == trainer.run_dir and resumed["complete"]
    assert [h["accuracy"] for h in resumed["history"]] == [h["accuracy"] for h in straight["history"]]
    assert resumed["last"]["log_loss"] == pytest.approx(straight["last"]["log_loss"], abs=1e-6)


def test_resume_from_a_checkpoint_with_the_old_closed_form_schedule(prepared, tmp_path):
    """Checkpoints written before torch's chained schedulers hold a LambdaLR state: the steps are replayed."""
    extra = ["method=ce", "train.warmup_epochs=1", "train.epochs=3"]
    _, straight = train_run(config(prepared, tmp_path / "a", *extra))
    trainer = Trainer(config(prepared, tmp_path / "b", *extra))
    trainer.fit(stop_after=2)
    path = checkpoint_path(trainer.run_dir, "last")
    state = torch.load(path, weights_only=True)
    lr = state["optimizer"]["param_groups"][0]["lr"]
    state["scheduler"] = {"base_lrs": [0.01], "last_epoch": state["global_step"], "_step_count": state["global_step"] + 1,
                          "_last_lr": [lr], "lr_lambdas": [None], "verbose": False}
    torch.save(state, path)
    _, resumed = resume_run(trainer.run_dir)
    assert resumed["complete"] and len(resumed["history"]) == 3
    assert [h["accuracy"] for h in resumed["history"]] == [h["accuracy"] for h in straight["history"]]
    assert resumed["last"]["log_loss"] == pytest.approx(straight["last"]["log_loss"], abs=1e-6)


def test_seeds_summary_and_evaluate(prepared, tmp_path):
    cfg = config(prepared, tmp_path, "method=ce", "seeds=[0,1]", "train.epochs=2")
    summary = run_seeds(cfg, log=lambda *_: None)
    saved = json.loads((cfg.out_dir / "summary.json").read_text())
    assert saved["n_runs"] == 2 and saved["seeds"] == [0, 1]
    runs = sorted(p for p in cfg.out_dir.iterdir() if p.is_dir())
    lasts = [json.loads((r / "metrics.json").read_text())["last"]["log_loss"] for r in runs]
    assert lasts[0] != lasts[1]  # different seeds, different runs
    assert saved["last"]["log_loss"]["mean"] == pytest.approx(np.mean(lasts))
    assert saved["last"]["log_loss"]["std"] == pytest.approx(np.std(lasts, ddof=1))
    best = json.loads((runs[0] / "metrics.json").read_text())["best"]
    printed = []
    again = evaluate_run(runs[0], which="best", log=printed.append)
    assert again["accuracy"] == pytest.approx(best["accuracy"])
    assert again["per_class_count"] == best["per_class_count"] and sum(best["per_class_count"].values()) == 12
    for group, what in (("per_class", "class"), ("per_device", "device"), ("per_device_group", "device group")):
        for name, acc in again[group].items():  # each accuracy printed with its number of clips
            assert f"  {what} {name}: {acc:.4f} (n={again[f'{group}_count'][name]})" in printed, (group, name)
    assert again["log_loss"] == pytest.approx(best["log_loss"], abs=1e-4)


def test_cli_train_and_errors(prepared, tmp_path, capsys):
    base = ["data.name=tiny", f"data.manifest_dir={prepared / 'manifests'}", f"train.out_dir={tmp_path}",
            "train.epochs=1", "train.batch_size=8", "train.progress=false", "model.options={base_channels: 8}"]
    assert main(["train", "--config", "configs/experiments/dcase_ce.yaml", *base]) == 0
    assert "| dcase_ce (ce) | 1 |" in capsys.readouterr().out
    assert main(["train", "--config", "configs/experiments/dcase_mrkd.yaml", *base, "mrkd.kk=3"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "mrkd.kk: unknown config key" in err
    assert main(["train", "--config", "configs/experiments/dcase_ce.yaml", "data.name=nope",
                 f"data.manifest_dir={tmp_path}"]) == 2
    assert "data.name 'nope'" in capsys.readouterr().err


def _lr_factors(tcfg, steps_per_epoch: int) -> list[float]:
    """The learning rate of every step of a run whose peak learning rate is 1."""
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = make_lr_scheduler(optimizer, tcfg, steps_per_epoch)
    factors = []
    for _ in range(tcfg.epochs * steps_per_epoch):
        factors.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return factors


def test_lr_schedule_warmup_cosine_multistep():
    cfg = load_experiment(None, ["data.kind=synthetic", "train.epochs=10", "train.warmup_epochs=1"])
    factors = _lr_factors(cfg.train, 10)
    closed_form = [(s + 1) / 10 for s in range(10)] + [0.5 * (1 + math.cos(math.pi * s / 90)) for s in range(90)]
    assert factors == pytest.approx(closed_form, rel=1e-12, abs=1e-15)
    assert all(a >= b for a, b in zip(factors[9:], factors[10:]))
    multi = load_experiment(None, ["data.kind=synthetic", "train.schedule=multistep", "train.milestones=[3,6]",
                                   "train.epochs=10", "train.warmup_epochs=0"])
    assert [_lr_factors(multi.train, 10)[s * 10] for s in (0, 2, 3, 5, 6, 9)] == pytest.approx(
        [1, 1, 0.1, 0.1, 0.01, 0.01])
    warm_multi = load_experiment(None, ["data.kind=synthetic", "train.schedule=multistep", "train.milestones=[3]",
                                        "train.epochs=5", "train.warmup_epochs=2"])
    assert _lr_factors(warm_multi.train, 4)[::4] == pytest.approx([0.125, 0.625, 1, 0.1, 0.1])
    constant = load_experiment(None, ["data.kind=synthetic", "train.schedule=constant", "train.epochs=3",
                                      "train.warmup_epochs=0"])
    assert _lr_factors(constant.train, 4) == [1.0] * 12


@pytest.mark.parametrize("epochs", [4, 8, 200])
def test_percent_milestones_scale_with_the_run(epochs):
    """milestone_unit percent: the ×0.1 drops sit at 50 % and 75 % of the steps whatever train.epochs is."""
    cfg = load_experiment(None, ["data.kind=synthetic", "train.schedule=multistep", "train.milestones=[50,75]",
                                 "train.milestone_unit=percent", f"train.epochs={epochs}", "train.warmup_epochs=0"])
    factors = _lr_factors(cfg.train, 10)
    total = 10 * epochs
    drops = [s for s in range(1, total) if factors[s] < factors[s - 1] * 0.5]
    assert drops == [total // 2, 3 * total // 4]
    assert factors[-1] == pytest.approx(0.01)
    for bad in ("[0,50]", "[50,100]"):
        with pytest.raises(InputError, match="train.milestones"):
            load_experiment(None, [f"train.milestones={bad}", "train.milestone_unit=percent"])


def test_synthetic_data_is_learnt_by_both_methods(tmp_path):
    for method in ("ce", "mrkd"):
        cfg = load_experiment(None, ["data.kind=synthetic", "model.name=dcase_cnn", f"method={method}",
                                     "train.epochs=4", "train.batch_size=32", "mrkd.k=1", "train.progress=false",
                                     f"train.out_dir={tmp_path}", "train.save_checkpoints=false"])
        _, summary = train_run(cfg)
        assert summary["last"]["accuracy"] > 0.9, method


def test_ablation_grid_pairs_variants_by_fold_and_seed(prepared, tmp_path):
    from audio_mrkd.studies.ablation import run_ablation
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"""
data: {{name: tiny, manifest_dir: {prepared / 'manifests'}}}
model: {{name: cp_mobile, options: {{base_channels: 8, n_blocks: [1, 1, 1]}}}}
train: {{epochs: 2, batch_size: 8, lr: 0.01}}
mrkd: {{k: 1}}
""")
    spec = tmp_path / "spec.yaml"
    spec.write_text("config: recipe.yaml\nfolds: 2\nseeds: [0]\nreference: ce\n"
                    "variants:\n  ce: [method=ce]\n  mean: [method=mrkd, mrkd.ensemble=mean]\n")
    text = run_ablation(spec, tmp_path / "abl", log=lambda *_: None)
    records = [json.loads(line) for line in (tmp_path / "abl" / "runs.jsonl").read_text().splitlines()]
    assert {(r["variant"], r["fold"]) for r in records} == {("ce", 0), ("ce", 1), ("mean", 0), ("mean", 1)}
    by = {(r["variant"], r["fold"]): r for r in records}
    assert by[("ce", 0)]["n_eval"] + by[("ce", 1)]["n_eval"] == 36  # the folds partition the 36 train items
    summary = json.loads((tmp_path / "abl" / "ablation.json").read_text())
    deltas = [by[("mean", f)]["last_macro_accuracy"] - by[("ce", f)]["last_macro_accuracy"] for f in (0, 1)]
    assert summary["mean"]["delta_last_macro_accuracy"]["mean"] == pytest.approx(np.mean(deltas))
    assert summary["ce"]["delta_last_macro_accuracy"]["mean"] == 0.0
    assert "| mean | `method=mrkd mrkd.ensemble=mean` |" in text
    again = run_ablation(spec, tmp_path / "abl", log=lambda *_: None)  # complete: nothing re-run
    assert again == text


def test_engine_run_exports_and_predicts(prepared, tmp_path, capsys):
    """The export contract holds for a run written by the real engine (not a hand-made run directory)."""
    from audio_mrkd.export.commands import export_run
    run_dir, summary = train_run(config(prepared, tmp_path, "method=mrkd", "mrkd.k=1", "train.epochs=3"))
    export_run(run_dir, int8=True, calibration=16, log=lambda *_: None)
    out = run_dir / "export"
    parity = json.loads((out / "parity.json").read_text())
    assert parity["fp32_vs_pytorch"]["max_abs_logit_diff"] <= 1e-4
    complexity = json.loads((out / "complexity.json").read_text())
    from audio_mrkd.models import build_model
    expected = sum(p.numel() for p in build_model("cp_mobile", 3, 1, base_channels=8, n_blocks=[1, 1, 1]).parameters())
    assert complexity["parameters"] == expected
    wav = next((prepared / "dev" / "audio").glob("park-*.wav"))
    assert main(["predict", str(out / "model.onnx"), str(wav), "--csv", str(tmp_path / "pred.csv")]) == 0
    pred = pd.read_csv(tmp_path / "pred.csv", sep="\t")
    assert list(pred.columns) == ["filename", "scene_label", "metro", "park", "street"]


def test_image_adapter_through_the_same_engine(tmp_path):
    """CIFAR-10 files in the official format → the audio engine, with image metrics in metrics.json."""
    from tests.image_formats import write_cifar10
    folder, _ = write_cifar10(tmp_path, n_per_batch=16, n_test=24)
    cfg = load_experiment("configs/experiments/cifar10_resnet18_mrkd.yaml", [
        f"data.root={folder}", "model.name=resnet20", "train.epochs=2", "train.batch_size=16", "mrkd.k=1",
        "train.milestones=[1]", f"train.out_dir={tmp_path / 'runs'}", "train.progress=false"])
    run_dir, summary = train_run(cfg)
    for key in ("accuracy", "top5", "log_loss", "ece"):
        assert key in summary["last"]
    assert summary["last"]["n_items"] == 24
    info = json.loads((run_dir / "data.json").read_text())
    assert info["kind"] == "image" and info["input_shape"] == [3, 32, 32] and len(info["norm_mean"]) == 3
    acc, _ = scalars(run_dir, None)
    assert {"eval/top5", "eval/ece", "mrkd/active"} <= set(acc.Tags()["scalars"])
    with pytest.raises(Exception, match="data.root: required"):
        load_experiment("configs/experiments/cifar100_resnet18_ce.yaml")


def test_train_limit_takes_a_stratified_subset():
    from audio_mrkd.data.selection import load_data
    cfg = load_experiment(None, ["data.kind=synthetic", "data.train_limit=64"]).data
    full = load_experiment(None, ["data.kind=synthetic"]).data
    limited, whole = load_data(cfg), load_data(full)
    assert len(limited.train) == 64 and len(whole.train) == 256
    assert np.bincount(limited.train.labels).tolist() == [16, 16, 16, 16]
    assert len(limited.eval) == len(whole.eval)


def test_eval_every_evaluates_on_schedule_and_after_the_last_epoch(tmp_path):
    cfg = load_experiment(None, ["data.kind=synthetic", "model.name=dcase_cnn", "train.epochs=5", "train.eval_every=2",
                                 "train.batch_size=64", "train.progress=false", f"train.out_dir={tmp_path}"])
    run_dir, summary = train_run(cfg)
    assert [h["epoch"] for h in summary["history"]] == [2, 4, 5]
    assert summary["last"]["epoch"] == 5
    assert torch.load(checkpoint_path(run_dir, "last"), weights_only=True)["epoch"] == 5


def test_ablation_prints_a_line_per_run_counting_resumed_runs(tmp_path, capsys):
    """Not a terminal: one plain line per finished run, ``n/total`` counting the runs already in runs.jsonl."""
    import re
    from audio_mrkd.studies.ablation import run_ablation
    (tmp_path / "recipe.yaml").write_text("data: {kind: synthetic, synthetic_items: 32}\nmodel: {name: dcase_cnn}\n"
                                          "train: {epochs: 1, batch_size: 16}\nmrkd: {k: 1}\n")
    spec = tmp_path / "spec.yaml"
    spec.write_text("config: recipe.yaml\nfolds: 0\nseeds: [0, 1]\nreference: ce\n"
                    "variants:\n  ce: [method=ce]\n  mrkd: [method=mrkd]\n")
    line = re.compile(r"ablation: (\d+)/4 runs \((\d+)%\), \d+:\d\d elapsed(, ~\d+:\d\d left)?, "
                      r"variant=(\w+), fold=0, seed=(\d), last_macro_acc=(\d\.\d{4})")
    calls = []

    def interrupted(cfg):  # the third run fails: the ablation stops after two, as if interrupted
        calls.append(cfg.seed)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return train_run(cfg)

    capsys.readouterr()
    with pytest.raises(KeyboardInterrupt):
        run_ablation(spec, tmp_path / "abl", train_fn=interrupted, log=lambda *_: None)
    first = [line.fullmatch(x) for x in capsys.readouterr().err.splitlines() if x.startswith("ablation")]
    logged = []
    run_ablation(spec, tmp_path / "abl", log=logged.append)
    assert logged == [f"ablation: 2 of 4 runs already in {tmp_path / 'abl' / 'runs.jsonl'}"]
    second = [line.fullmatch(x) for x in capsys.readouterr().err.splitlines() if x.startswith("ablation")]
    assert all(first) and all(second), (first, second)
    assert [int(m[1]) for m in first] == [1, 2] and [int(m[1]) for m in second] == [3, 4]
    assert [int(m[2]) for m in first + second] == [25, 50, 75, 100]
    # the time left: after the first run of each invocation (3/4 resumed: from this invocation's runs only), not at 4/4
    assert [bool(m[3]) for m in first + second] == [True, True, True, False]
    records = [json.loads(x) for x in (tmp_path / "abl" / "runs.jsonl").read_text().splitlines()]
    assert [(m[4], int(m[5]), float(m[6])) for m in first + second] == [
        (r["variant"], r["seed"], round(r["last_macro_accuracy"], 4)) for r in records]
    assert [(r["variant"], r["seed"]) for r in records] == [("ce", 0), ("mrkd", 0), ("ce", 1), ("mrkd", 1)]

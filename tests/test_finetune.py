"""DCASE 2025 device-specific fine-tuning: one model per device from the general run, routed evaluation."""
import json

import numpy as np
import pytest
import torch

from audio_mrkd.cli import main
from audio_mrkd.config_loader import load_experiment
from audio_mrkd.data.prepare import prepare
from audio_mrkd.train.engine import Trainer, train_run
from tests.conftest import make_dcase_tree


@pytest.fixture(scope="module")
def general(tmp_path_factory):
    root = tmp_path_factory.mktemp("finetune")
    prepare(make_dcase_tree(root / "dev", n=60), "tiny", cache_dir=root / "cache", manifest_dir=root / "man",
            workers=1, overrides=["n_mels=32"], log=lambda *_: None)
    cfg = load_experiment("configs/experiments/dcase_ce.yaml", [
        "data.name=tiny", f"data.manifest_dir={root / 'man'}", f"train.out_dir={root / 'runs'}",
        "model.name=cp_mobile", "model.options={base_channels: 8, n_blocks: [1, 1, 1]}", "train.epochs=2",
        "train.batch_size=8", "train.progress=false", "train.warmup_epochs=0"])
    run_dir, _ = train_run(cfg)
    return root, run_dir


def test_finetune_trains_one_model_per_device_and_routes_the_evaluation(general, tmp_path, capsys):
    root, run_dir = general
    out = tmp_path / "ft"
    assert main(["finetune", str(run_dir), "--devices", "a", "s1", "train.epochs=2", "--out", str(out),
                 "train.progress=false", "train.warmup_steps=3"]) == 0
    printed = capsys.readouterr().out
    assert "| routed |" in printed and "| gain |" in printed
    report = json.loads((out / "metrics.json").read_text())
    assert set(report["device_runs"]) == {"a", "s1"}
    for device in ("a", "s1"):
        device_run = [p for p in (out / device).iterdir() if p.is_dir()][0]
        saved = json.loads((device_run / "data.json").read_text())
        cfg = __import__("yaml").safe_load((device_run / "config.yaml").read_text())
        assert cfg["data"]["train_devices"] == [device] and cfg["train"]["lr"] == 0.0005
        assert cfg["train"]["warmup_steps"] == 3 and cfg["augment"]["mixstyle_p"] == 0
        assert cfg["train"]["init_from"].endswith("checkpoints/last.pt")
        assert saved["n_train"] < json.loads((run_dir / "data.json").read_text())["n_train"]  # one device's clips
    # the routed scores, recomputed by hand from the models' own predictions
    routed, general_scores = report["routed"], report["general"]
    assert report["n_items"] == json.loads((run_dir / "data.json").read_text())["n_eval"]
    assert set(routed["per_device"]) == set(general_scores["per_device"])
    for device in routed["per_device"]:
        if device not in ("a", "s1"):  # unseen: the general model answers, so nothing changes
            assert routed["per_device"][device] == general_scores["per_device"][device]
        assert report["gain"]["per_device"][device] == pytest.approx(
            routed["per_device"][device] - general_scores["per_device"][device])
    assert report["gain"]["accuracy"] == pytest.approx(routed["accuracy"] - general_scores["accuracy"])


def test_fine_tuning_starts_from_the_general_weights(general, tmp_path):
    root, run_dir = general
    cfg = load_experiment("configs/experiments/dcase_ce.yaml", [
        "data.name=tiny", f"data.manifest_dir={root / 'man'}", f"train.out_dir={tmp_path}", "model.name=cp_mobile",
        "model.options={base_channels: 8, n_blocks: [1, 1, 1]}", "train.epochs=1", "train.progress=false",
        f"train.init_from={run_dir}", "data.train_devices=[b]"])
    trainer = Trainer(cfg)
    best = torch.load(run_dir / "checkpoints" / "best.pt", weights_only=True)["model"]
    assert all(torch.equal(trainer.model.state_dict()[k], v) for k, v in best.items())
    names = np.asarray(trainer.data.train.device_names)[trainer.data.train.recording_devices]
    assert set(names) == {"b"}


def test_finetune_bad_device_is_one_line(general, capsys):
    _, run_dir = general
    assert main(["finetune", str(run_dir), "--devices", "a", "phone9"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "phone9" in err[0] and "the dataset's devices are" in err[0]

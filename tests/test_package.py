"""The DCASE 2025 workflow end to end on a DCASE-layout set made here (several devices, a split25-style train
file): prepare → train → finetune → package → install into a fresh virtual environment that cannot import
audio_mrkd → predict, compared with `audio-mrkd predict` on the same clips."""
import json
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from audio_mrkd.cli import main
from audio_mrkd.config_loader import load_experiment
from audio_mrkd.data.prepare import prepare
from audio_mrkd.train.engine import train_run
from tests.conftest import make_dcase_tree

LABEL = "Tester_AMRKD_task1"


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory):
    root = tmp_path_factory.mktemp("package")
    tree = make_dcase_tree(root / "dev", n=72)
    rows = (tree / "evaluation_setup" / "fold1_train.csv").read_text().splitlines()
    subset = [r for i, r in enumerate(rows[1:]) if i % 5 != 4]  # a subset of the train fold, every device kept
    (tree / "evaluation_setup" / "split25.csv").write_text("\n".join(rows[:1] + subset) + "\n")
    prepare(tree, "tiny", cache_dir=root / "cache", manifest_dir=root / "man", workers=1, train_split="split25.csv",
            overrides=["n_mels=32"], log=lambda *_: None)
    assert len((root / "man" / "tiny" / "train.csv").read_text().splitlines()) - 1 == len(subset)
    cfg = load_experiment("configs/experiments/dcase_ce.yaml", [
        "data.name=tiny", f"data.manifest_dir={root / 'man'}", f"train.out_dir={root / 'runs'}",
        "model.name=cp_mobile", "model.options={base_channels: 8, n_blocks: [1, 1, 1]}", "train.epochs=2",
        "train.batch_size=8", "train.progress=false"])
    run_dir, _ = train_run(cfg)
    assert main(["finetune", str(run_dir), "--devices", "a", "s1", "--out", str(root / "ft"), "train.epochs=1",
                 "train.progress=false"]) == 0
    return root, run_dir


@pytest.fixture(scope="module")
def package(finetuned):
    root, run_dir = finetuned
    assert main(["package", str(run_dir), "--finetuned", str(root / "ft"), "--label", LABEL,
                 "--out", str(root / "pkg")]) == 0
    return root / "pkg" / LABEL


def test_package_layout_and_complexity(package):
    module = package / LABEL / f"{LABEL}_1.py"
    resources = package / LABEL / "resources" / f"{LABEL}_1"
    assert module.is_file() and (package / "pyproject.toml").is_file()
    assert (package / LABEL / "resources" / "dummy.wav").is_file()
    for name in ("frontend.pt2", "general.pt", "device_a.pt", "device_s1.pt", "config.json", "onnx/general.onnx",
                 "onnx/device_a.onnx"):
        assert (resources / name).is_file(), name
    imports = {line.split()[1].split(".")[0] for line in module.read_text().splitlines()
               if line.startswith(("import ", "from "))}
    assert imports <= {"__future__", "importlib", "json", "math", "pathlib", "types", "numpy", "soundfile", "torch",
                       "torchaudio"}
    network = (package / LABEL / "networks" / "cp_mobile.py").read_text()
    assert "audio_mrkd" not in network and "class CPMobile" in network  # the model's own source, copied
    import torch
    assert all(v.dtype == torch.float16 for v in torch.load(resources / "device_a.pt", weights_only=True).values())
    complexity = json.loads((package / "complexity.json").read_text())
    assert set(complexity) == {"general", "device_a", "device_s1"}
    assert all(c["pass"] and c["stored_precision"] == "fp16" and c["macs"] > 0 for c in complexity.values())


def test_a_model_over_the_limits_is_refused(finetuned, tmp_path, capsys):
    root, _ = finetuned
    cfg = load_experiment("configs/experiments/dcase_ce.yaml", [
        "data.name=tiny", f"data.manifest_dir={root / 'man'}", f"train.out_dir={tmp_path}", "model.name=cp_mobile",
        "model.options={base_channels: 96}", "train.epochs=1", "train.progress=false"])
    big, _ = train_run(cfg)
    assert main(["package", str(big), "--label", LABEL, "--out", str(tmp_path / "pkg")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "exceed the DCASE limits" in err[0] and "--allow-over-limits" in err[0]
    assert not (tmp_path / "pkg" / LABEL).exists()
    assert main(["package", str(big), "--label", LABEL, "--out", str(tmp_path / "pkg"), "--allow-over-limits"]) == 0
    assert not json.loads((tmp_path / "pkg" / LABEL / "complexity.json").read_text())["general"]["pass"]


def test_bad_label_is_one_line(finetuned, tmp_path, capsys):
    _, run_dir = finetuned
    assert main(["package", str(run_dir), "--label", "no label", "--out", str(tmp_path)]) == 2
    assert "Surname_ORG_task1" in capsys.readouterr().err


@pytest.mark.slow
def test_installed_package_predicts_like_audio_mrkd_predict(finetuned, package, tmp_path):
    """A fresh venv whose only extra path is the dependencies' site-packages (no audio_mrkd: its editable finder
    is not processed from there); `pip install` of the package; predict with seen, unseen and unknown device ids."""
    root, run_dir = finetuned
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    Path(site, "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    installed = subprocess.run([str(python), "-m", "pip", "install", "--no-deps", "--no-build-isolation",
                                "--no-index", str(package)], capture_output=True, text=True, timeout=600)
    assert installed.returncode == 0, installed.stdout + installed.stderr
    clips = sorted(str(p) for p in (root / "dev" / "audio").glob("*.wav"))[:8]
    devices = ["a", "s1", "unknown", "s4", "a", "s1", "b", "unknown"]
    code = (f"import json, sys; from {LABEL} import {LABEL}_1 as m; "
            f"logits, classes = m.predict({clips!r}, {devices!r}); "
            # the template's complexity check: each device's network on load_inputs' tensor, fp16 parameter bytes
            f"model = m.load_model(); x = m.load_inputs({clips[:1]!r}, ['a'], model)[0]; "
            f"sizes = {{d: sum(p.numel() * p.element_size() for p in m.get_model_for_device(model, d).parameters()) "
            f"for d in ['a', 's1', 's4', 'unknown']}}; "
            f"shape = list(m.get_model_for_device(model, 'a')(x).shape); "
            # the template's MAC count: torchinfo on a float copy of the device network
            f"import copy, torchinfo; macs = torchinfo.summary(copy.deepcopy(m.get_model_for_device(model, 's1'))"
            f".float(), input_size=tuple(x.shape), verbose=0).total_mult_adds; "
            f"print(json.dumps({{'classes': classes, 'logits': [l.tolist() for l in logits], 'sizes': sizes, "
            f"'shape': shape, 'input': list(x.shape), 'macs': macs, 'audio_mrkd_loaded': 'audio_mrkd' in sys.modules}}))")
    done = subprocess.run([str(python), "-c", code], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert not out["audio_mrkd_loaded"] and out["classes"] == ["metro", "park", "street"]
    assert out["input"] == [1, 1, 32, 65] and out["shape"] == [1, 3]
    complexity = json.loads((package / "complexity.json").read_text())
    assert all(size == 2 * complexity["general"]["parameters"] for size in out["sizes"].values())  # fp16
    assert out["macs"] == complexity["device_s1"]["macs"] > 0  # what the template counts is what we report
    probs = np.exp(out["logits"]) / np.exp(out["logits"]).sum(axis=1, keepdims=True)
    report = json.loads((root / "ft" / "metrics.json").read_text())
    runs = {"a": report["device_runs"]["a"], "s1": report["device_runs"]["s1"]}
    for i, (clip, device) in enumerate(zip(clips, devices)):
        source = runs.get(device, str(run_dir))  # seen devices: their model; unseen and unknown: the general one
        export = tmp_path / "exports" / Path(source).name
        if not export.exists():
            assert main(["export", source, "--out", str(export), "--checkpoint", "last"]) == 0
        assert main(["predict", str(export / "model.onnx"), clip, "--csv", str(tmp_path / "p.csv")]) == 0
        reference = pd.read_csv(tmp_path / "p.csv", sep="\t")[out["classes"]].to_numpy()[0]
        np.testing.assert_allclose(probs[i], reference, atol=1e-2)  # the package computes at fp16
        assert probs[i].argmax() == reference.argmax()

"""Determinism on the CPU: the same ``audio-mrkd train`` command twice — once in this process, once in a fresh
interpreter with another hash seed — gives the same run, bit for bit, for the demo recipes of both methods.

Compared: ``metrics.json`` (history, last and best metrics with their per-class/per-device numbers), the
predictions of the last and the best epoch, and the whole ``last`` checkpoint (weights, optimiser, scheduler,
RNG and loader states, and for MrKD the snapshot bank and the FCN ensembler).

On a CPU the float sums inside convolutions depend on how many threads share them, so a run is reproduced bit for
bit at the same ``torch.get_num_threads()``: both commands say ``train.threads=1`` (one thread also keeps the
test quick on a busy machine). The thread count of a process is no longer changed behind the user's back by
``prepare`` with ``workers=1``, which used to leave the process at one thread (the extraction's setting), so that a
training run after it in the same process differed (by ~1e-7 in the log loss after one epoch) from the same
command run on its own.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from audio_mrkd.cli import main
from audio_mrkd.data.prepare import prepare
from audio_mrkd.demo import DEMO_FRONTEND
from audio_mrkd.runs.run import checkpoint_path
from tests.conftest import make_dcase_tree

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("determinism")
    tree = make_dcase_tree(root / "dev", n=48)
    threads = torch.get_num_threads()
    torch.set_num_threads(threads + 1)  # not 1 (the extraction's own setting), so that a leak would show
    try:
        prepare(tree, "tiny", cache_dir=root / "cache", manifest_dir=root / "manifests", workers=1,
                overrides=DEMO_FRONTEND, log=lambda *_: None)
        assert torch.get_num_threads() == threads + 1  # extracting in this process left its threads alone
    finally:
        torch.set_num_threads(threads)
    return root


def command(prepared: Path, method: str, out: Path) -> list[str]:
    """``audio-mrkd train`` with the demo recipe of ``method``, shrunk to a few seconds on the tiny set."""
    return ["train", "--config", str(ROOT / "configs" / "experiments" / f"demo_drums_{method}.yaml"),
            "data.name=tiny", f"data.manifest_dir={prepared / 'manifests'}", f"train.out_dir={out}",
            "model.options={base_channels: 8, n_blocks: [1, 1, 1]}", "train.epochs=4", "train.batch_size=8",
            "train.progress=false", "mrkd.k=2", "seed=3", "train.threads=1"]


def the_run(out: Path) -> Path:
    runs = [p for p in out.iterdir() if p.is_dir()]
    assert len(runs) == 1, runs
    return runs[0]


def assert_same(a, b, where: str = "state") -> None:
    """Equal nested checkpoint contents: tensors bit for bit (same dtype and shape), everything else by ==."""
    assert type(a) is type(b), where
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert list(a) == list(b), where
        for key in a:
            assert_same(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


@pytest.fixture(autouse=True)
def same_threads_afterwards():
    """``train.threads`` sets the thread count of the process that trains: this one's is restored after a test."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("method", ["ce", "mrkd"])
def test_same_command_twice_gives_the_same_run(prepared, tmp_path, method, capsys):
    here, fresh = tmp_path / "here", tmp_path / "fresh"
    assert main(command(prepared, method, here)) == 0
    env = {**os.environ, "PYTHONHASHSEED": "12345", "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "audio_mrkd.cli", *command(prepared, method, fresh)], env=env,
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert capsys.readouterr().out.splitlines()[-1] == done.stdout.splitlines()[-1]  # the printed table row
    a, b = the_run(here), the_run(fresh)

    ma, mb = (json.loads((r / "metrics.json").read_text()) for r in (a, b))
    ma.pop("run_id"), mb.pop("run_id")  # <timestamp>-<method>-seed3
    assert ma["complete"] and len(ma["history"]) == 4
    assert ma["history"] == mb["history"]
    assert ma["last"] == mb["last"] and ma["best"] == mb["best"]
    assert ma == mb
    for name in ("predictions.csv", "predictions_best.csv"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    for which in ("last", "best"):
        assert_same(torch.load(checkpoint_path(a, which), weights_only=True),
                    torch.load(checkpoint_path(b, which), weights_only=True), which)
    if method == "mrkd":  # the distillation was on (k=2: the bank is full after epoch 2), not plain CE all along
        assert torch.load(checkpoint_path(a, "last"), weights_only=True)["method"]["active_epoch"] == 2

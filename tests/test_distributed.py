"""Data-parallel MrKD: 2 CPU processes (gloo) launched through Lightning Fabric by the real CLI.

Stated tolerance against one process with the same global batch: per-epoch evaluated log loss within 0.15 and
final accuracy within 0.1. (Trajectories are not bit-identical: each rank normalises its BatchNorm layers with
its own half of the batch, and SyncBatchNorm does not run on CPUs.)
"""
import json
import subprocess
import sys

import pytest

from audio_mrkd.data.prepare import prepare
from tests.conftest import make_dcase_tree


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    prepare(make_dcase_tree(root / "dev", n=48), "tiny", cache_dir=root / "cache", manifest_dir=root / "man",
            workers=1, overrides=["n_mels=32"], log=lambda *_: None)
    return root


def train(root, devices: int):
    out = root / f"runs{devices}"
    cmd = [sys.executable, "-m", "audio_mrkd.cli", "train", "--config", "configs/experiments/demo_drums_mrkd.yaml",
           "data.name=tiny", f"data.manifest_dir={root / 'man'}", f"train.out_dir={out}", "train.epochs=6",
           "train.batch_size=8", "train.lr=0.003", "mrkd.k=2", "model.name=dcase_cnn", "model.options={channels: 8}",
           "augment.mixup_alpha=0", "train.progress=false", f"train.devices={devices}"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    runs = [p for p in out.iterdir() if p.is_dir()]
    assert len(runs) == 1, runs  # one run directory, written by rank 0 only
    return runs[0], json.loads((runs[0] / "metrics.json").read_text()), done.stdout


def test_two_processes_match_one_with_the_same_global_batch(tiny):
    run2, metrics2, stdout2 = train(tiny, 2)
    run1, metrics1, _ = train(tiny, 1)
    dist = metrics2["distributed"]
    assert dist["world_size"] == 2
    assert dist["method_digests"][0] == dist["method_digests"][1]  # every rank holds the same snapshot bank
    assert stdout2.count("| demo_drums_mrkd (mrkd) |") == 1  # only rank 0 prints and writes
    assert metrics2["last"]["n_items"] == metrics1["last"]["n_items"] == 12  # metrics gathered over both shards
    for h1, h2 in zip(metrics1["history"], metrics2["history"], strict=True):
        assert abs(h1["log_loss"] - h2["log_loss"]) < 0.15
    assert abs(metrics1["last"]["accuracy"] - metrics2["last"]["accuracy"]) <= 0.1
    assert len(list(run2.glob("events.out.tfevents.*"))) == 1 and (run2 / "checkpoints" / "best.pt").is_file()


def elastic(root, out, port: int, kill: bool) -> subprocess.CompletedProcess:
    """``torchrun --max-restarts 1`` with 2 gloo workers, a fixed run name and a checkpoint every step; ``kill``:
    rank 1 SIGKILLs itself after step 6 (mid-epoch 2) in the first attempt only."""
    import os
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUDIO_MRKD_KILL")}
    env["OMP_NUM_THREADS"] = "1"
    if kill:
        env.update({"AUDIO_MRKD_KILL_AT": "step:6", "AUDIO_MRKD_KILL_RANK": "1"})
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", "2",
           "--max-restarts", "1", "--rdzv-backend", "c10d", "--rdzv-endpoint", f"localhost:{port}",
           "-m", "audio_mrkd.cli", "train", "--config", "configs/experiments/demo_drums_mrkd.yaml",
           "data.name=tiny", f"data.manifest_dir={root / 'man'}", f"train.out_dir={out}", "train.epochs=4",
           "train.batch_size=8", "train.lr=0.003", "mrkd.k=2", "model.name=dcase_cnn", "model.options={channels: 8}",
           "augment.mixup_alpha=0", "train.progress=false", "train.devices=2", "train.run_name=elastic",
           "train.checkpoint_every=1", "train.threads=1"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_torchrun_restart_after_a_killed_worker_resumes_the_run(tiny):
    undisturbed = elastic(tiny, tiny / "elastic_plain", free_port(), kill=False)
    assert undisturbed.returncode == 0, undisturbed.stderr[-2000:]
    killed = elastic(tiny, tiny / "elastic_killed", free_port(), kill=True)
    assert killed.returncode == 0, killed.stderr[-2000:]
    assert "exitcode: -9" in killed.stderr  # rank 1 died, torchrun restarted the workers …
    assert "train.run_name: resuming" in killed.stderr and "(step 6, 1 epochs done)" in killed.stderr  # … resumed
    plain, resumed = (json.loads((tiny / d / "elastic" / "metrics.json").read_text())
                      for d in ("elastic_plain", "elastic_killed"))
    assert resumed["history"] == plain["history"] and resumed["complete"]

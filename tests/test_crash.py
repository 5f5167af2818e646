"""kill -9 anywhere loses nothing: training, prepare and ablate killed at chosen points (``audio_mrkd.faults``) and
run again end exactly where an undisturbed run ends."""
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from audio_mrkd.data import cache
from tests.conftest import make_dcase_tree

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def cli(*args: str, kill_at: str | None = None, cwd: Path = ROOT,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``audio-mrkd ARGS`` in a fresh process (``env``: variables to set on top of this one's)."""
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("AUDIO_MRKD_KILL")}, **(env or {})}
    env.update({"OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"})
    if kill_at:
        env["AUDIO_MRKD_KILL_AT"] = kill_at
    return subprocess.run([sys.executable, "-m", "audio_mrkd.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("crash")
    tree = make_dcase_tree(root / "dev", n=48)
    done = cli("prepare", "--data-dir", str(tree), "--name", "tiny", "--cache-dir", str(root / "cache"),
               "--manifest-dir", str(root / "manifests"), "--workers", "1", "n_mels=32")
    assert done.returncode == 0, done.stderr
    return root


def train_args(root: Path, out: Path) -> list[str]:
    # MrKD with K = 2 (bank and FCN in play), 4 steps an epoch, a mid-epoch checkpoint every 2 steps
    return ["train", "--config", "configs/experiments/dcase_mrkd.yaml", "data.name=tiny",
            f"data.manifest_dir={root / 'manifests'}", f"train.out_dir={out}", "model.name=cp_mobile",
            "model.options={base_channels: 8, n_blocks: [1, 1, 1]}", "train.epochs=3", "train.batch_size=8",
            "train.threads=1", "train.progress=false", "train.checkpoint_every=2", "mrkd.k=2",
            "augment.mixup_alpha=0.3", "seed=3"]


def only_run(out: Path) -> Path:
    runs = [p for p in out.iterdir() if p.is_dir()]
    assert len(runs) == 1, runs
    return runs[0]


def comparable(run_dir: Path) -> dict:
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return {k: metrics[k] for k in ("history", "last", "best", "epochs_done", "complete")}


@pytest.fixture(scope="module")
def undisturbed(tiny, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("undisturbed")
    done = cli(*train_args(tiny, out))
    assert done.returncode == 0, done.stderr
    return comparable(only_run(out))


@pytest.mark.parametrize("kill_at", ["step:7", "checkpoint:3", "eval:2", "step:10"],
                         ids=["mid_epoch", "inside_checkpoint_write", "inside_evaluation", "mid_last_epoch"])
def test_training_killed_then_resumed_equals_undisturbed(tiny, undisturbed, tmp_path, kill_at):
    killed = cli(*train_args(tiny, tmp_path), kill_at=kill_at)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    run_dir = only_run(tmp_path)
    assert (run_dir / "checkpoints" / "last.pt").is_file()
    resumed = cli("train", "--resume", str(run_dir))
    assert resumed.returncode == 0, resumed.stderr
    assert comparable(run_dir) == undisturbed
    assert not [p.name for p in (run_dir / "checkpoints").iterdir() if p.name.endswith(".tmp")]


def entry_files(cache_dir: Path) -> dict[str, bytes | dict]:
    """Every file of the one cache entry; cache.json as a dict without ``versions``, the provenance of the run
    that wrote it (its ``git_commit`` changes with a commit or an edit made while the suite runs)."""
    entries = [p for p in (cache_dir / "tiny").iterdir() if p.is_dir()]
    assert len(entries) == 1, entries
    files: dict[str, bytes | dict] = {p.name: p.read_bytes() for p in entries[0].iterdir()}
    info = json.loads(files.pop(cache.INFO))
    assert set(info["versions"]) >= {"torch", "git_commit"}
    files[cache.INFO] = {k: v for k, v in info.items() if k != "versions"}
    return files


@pytest.mark.parametrize("kill_at", ["extract:1", "publish:1"], ids=["mid_extraction", "final_rename"])
def test_prepare_killed_then_rerun_gives_the_same_cache(tiny, tmp_path, kill_at):
    args = ["prepare", "--data-dir", str(tiny / "dev"), "--name", "tiny", "--workers", "1", "n_mels=32",
            "--manifest-dir", str(tmp_path / "manifests")]
    killed = cli(*args, "--cache-dir", str(tmp_path / "cache"), kill_at=kill_at)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    published = [p for p in (tmp_path / "cache" / "tiny").iterdir() if p.is_dir() and not p.name.endswith(".tmp")]
    assert not any(cache.is_complete(p) for p in published)  # nothing half-built reads as complete
    again = cli(*args, "--cache-dir", str(tmp_path / "cache"))
    assert again.returncode == 0, again.stderr
    assert entry_files(tmp_path / "cache") == entry_files(tiny / "cache")
    assert not [p.name for p in (tmp_path / "cache" / "tiny").iterdir() if p.name.endswith(".tmp")]


def test_ablation_killed_while_writing_a_record_continues(tiny, tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"config: {ROOT / 'configs/experiments/dcase_ce.yaml'}\nfolds: 0\nseeds: [0, 1]\n"
                    "reference: ce\nvariants:\n  ce: [method=ce]\n  ls: [method=ce, train.label_smoothing=0.1]\n"
                    f"overrides: [data.name=tiny, 'data.manifest_dir={tiny / 'manifests'}', model.name=cp_mobile, "
                    "'model.options={base_channels: 8, n_blocks: [1, 1, 1]}', train.epochs=1, train.batch_size=8]\n")
    out = tmp_path / "abl"
    killed = cli("ablate", str(spec), "--out", str(out), kill_at="record:3")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    torn = (out / "runs.jsonl").read_text()
    assert not torn.endswith("\n") and torn.count("\n") == 2  # two records, then half of the third
    again = cli("ablate", str(spec), "--out", str(out))
    assert again.returncode == 0, again.stderr
    records = [json.loads(line) for line in (out / "runs.jsonl").read_text().splitlines()]
    assert sorted((r["variant"], r["seed"]) for r in records) == [("ce", 0), ("ce", 1), ("ls", 0), ("ls", 1)]


def test_ablation_killed_inside_a_run_continues_that_run(tiny, tmp_path):
    """kill -9 in the middle of a run's second epoch: the next invocation continues that run from its last
    checkpoint, and the study ends with exactly the records and curves of an undisturbed one."""
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"config: {ROOT / 'configs/experiments/dcase_mrkd.yaml'}\nfolds: 0\nseeds: [0]\n"
                    "reference: ce\nvariants:\n  ce: [method=ce]\n  mrkd: [method=mrkd, mrkd.k=2]\n"
                    f"overrides: [data.name=tiny, 'data.manifest_dir={tiny / 'manifests'}', model.name=cp_mobile, "
                    "'model.options={base_channels: 8, n_blocks: [1, 1, 1]}', train.epochs=3, train.batch_size=8]\n")
    assert cli("ablate", str(spec), "--out", str(tmp_path / "undisturbed")).returncode == 0
    killed = cli("ablate", str(spec), "--out", str(tmp_path / "abl"), kill_at="step:7")  # ce, epoch 2 of 3
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert (tmp_path / "abl" / "ce" / "ce-fold0-seed0" / "checkpoints" / "last.pt").is_file()
    again = cli("ablate", str(spec), "--out", str(tmp_path / "abl"))
    assert again.returncode == 0, again.stderr
    assert "ce-fold0-seed0 continues from its last checkpoint" in again.stdout
    assert ((tmp_path / "abl" / "runs.jsonl").read_text().splitlines()
            == (tmp_path / "undisturbed" / "runs.jsonl").read_text().splitlines())
    for run in ("ce/ce-fold0-seed0", "mrkd/mrkd-fold0-seed0"):
        assert comparable(tmp_path / "abl" / run) == comparable(tmp_path / "undisturbed" / run)
        assert not (tmp_path / "abl" / run / "checkpoints").exists()

"""``ablate --cluster`` on a real two-node Ray cluster on localhost (two ``ray start`` processes, one CPU each, addressed
as 127.0.0.1, torn down afterwards): the same records as ``--jobs 1``, a lost node, storage and address checks."""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import pytest
import yaml

from audio_mrkd.cli import main
from audio_mrkd.errors import InputError
from audio_mrkd.studies.ablation import run_ablation
from tests.test_engine import prepared  # noqa: F401  (the tiny prepared DCASE tree, a module fixture)

pytest.importorskip("ray")
RAY = Path(sys.executable).parent / "ray"
MARK = "AUDIO_MRKD_TEST_NODE"  # every process of a test node carries it: the node is killed by these ids
SILENT = lambda *_: None  # noqa: E731


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalCluster:
    """A head and a worker node on 127.0.0.1, one CPU each; ``hidden``: a folder the worker sees as an empty tmpfs
    of its own (a node without the shared storage)."""

    def __init__(self, hidden: Path | None = None):
        self.tag, port = uuid.uuid4().hex[:8], _free_port()
        self.temp = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # short: Ray's socket paths must fit 107 characters
        self.address = f"127.0.0.1:{port}"
        node = ["--node-ip-address=127.0.0.1", "--num-cpus=1", "--num-gpus=0", "--disable-usage-stats"]
        self._start("head", [str(RAY), "start", "--head", f"--port={port}", f"--temp-dir={self.temp}",
                             "--include-dashboard=false", *node])
        worker = [str(RAY), "start", f"--address={self.address}", *node]
        if hidden is not None:
            worker = ["unshare", "-m", "sh", "-c", f'mount -t tmpfs none "{hidden}" && exec "$0" "$@"', *worker]
        self._start("worker", worker)

    def _start(self, name: str, command: list[str]) -> None:
        env = os.environ | {MARK: f"{self.tag}-{name}", "PYTHONPATH": str(Path(__file__).parents[1]),
                            "RAY_USAGE_STATS_ENABLED": "0"}
        subprocess.run(command, env=env, check=True, capture_output=True, timeout=120)

    def pids(self, name: str = "") -> list[int]:
        """The processes of one node (or of both): those whose environment carries its mark."""
        found = []
        for proc in Path("/proc").iterdir():
            try:
                if proc.name.isdigit() and f"{MARK}={self.tag}-{name}".encode() in (proc / "environ").read_bytes():
                    found.append(int(proc.name))
            except OSError:
                continue
        return found

    def kill(self, name: str = "") -> None:
        for pid in self.pids(name):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def close(self) -> None:
        self.kill()
        shutil.rmtree(self.temp, ignore_errors=True)


@pytest.fixture(scope="module")
def hidden(tmp_path_factory):
    return tmp_path_factory.mktemp("hidden")


def _can_unshare() -> bool:
    """A private mount namespace (root, or CAP_SYS_ADMIN) models a node without the shared storage."""
    return subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode == 0


@pytest.fixture(scope="module")
def cluster(hidden):
    one = LocalCluster(hidden if _can_unshare() else None)
    yield one
    one.close()


def study(prepared, root: Path) -> Path:
    """2 variants × 2 seeds × 2 epochs on the tiny DCASE tree, one thread per run (a cluster task has one CPU; the
    float sums of another thread count differ in their last bits)."""
    (root / "recipe.yaml").write_text(yaml.safe_dump({
        "data": {"name": "tiny", "manifest_dir": str(prepared / "manifests")},
        "model": {"name": "cp_mobile", "options": {"base_channels": 8, "n_blocks": [1, 1, 1]}},
        "train": {"epochs": 2, "batch_size": 8, "threads": 1}, "mrkd": {"k": 1}}))
    spec = root / "spec.yaml"
    spec.write_text("config: recipe.yaml\nfolds: 0\nseeds: [0, 1]\nreference: ce\n"
                    "variants:\n  ce: [method=ce]\n  mrkd: [method=mrkd]\n")
    return spec


def outcome(out: Path) -> dict:
    """Each run's record and the history of its metrics.json, by key."""
    found = {}
    for line in (out / "runs.jsonl").read_text().splitlines():
        rec = json.loads(line)
        metrics = json.loads((out / rec["run_dir"] / "metrics.json").read_text())
        found[(rec["variant"], rec["seed"])] = (rec, metrics["history"])
    return found


@pytest.fixture(scope="module")
def local_study(prepared, tmp_path_factory):
    root = tmp_path_factory.mktemp("local")
    spec = study(prepared, root)
    run_ablation(spec, root / "abl", jobs=1, log=SILENT)
    return spec, outcome(root / "abl")


@pytest.mark.slow
def test_a_study_on_a_two_node_cluster_records_what_jobs_1_records(cluster, local_study, tmp_path):
    spec, expected = local_study
    lines = []
    run_ablation(spec, tmp_path / "abl", cluster=cluster.address, log=lines.append)
    assert outcome(tmp_path / "abl") == expected
    assert len(expected) == 4


@pytest.mark.slow
def test_a_node_that_cannot_see_out_stops_the_study_before_any_run(cluster, local_study, hidden, capsys):
    if not _can_unshare():
        pytest.skip("no private mount namespace here (unshare -m): a node without the storage cannot be modelled")
    spec, _ = local_study
    assert main(["ablate", str(spec), "--out", str(hidden / "abl"), "--cluster", cluster.address]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"cannot write to {hidden / 'abl'}" in err[0] and "--out: node " in err[0], err
    assert not (hidden / "abl" / "runs.jsonl").exists() and not (hidden / "abl" / "ce").exists()


@pytest.mark.slow
def test_a_killed_driver_is_continued_by_the_same_command(cluster, local_study, tmp_path):
    spec, expected = local_study
    out = tmp_path / "abl"
    command = [sys.executable, "-c", "import sys; from audio_mrkd.cli import main; sys.exit(main(sys.argv[1:]))",
               "ablate", str(spec), "--out", str(out), "--cluster", cluster.address]
    env = os.environ | {"PYTHONPATH": str(Path(__file__).parents[1])}
    driver = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while not ((out / "runs.jsonl").is_file() and (out / "runs.jsonl").read_text().strip()):
            assert driver.poll() is None and time.monotonic() < deadline, "the study ended before it was killed"
            time.sleep(0.1)
    finally:
        driver.kill()
        driver.wait()
    assert len((out / "runs.jsonl").read_text().splitlines()) < 4
    assert subprocess.run(command, env=env, capture_output=True, timeout=600).returncode == 0
    assert outcome(out) == expected


@pytest.mark.slow
def test_a_study_survives_a_lost_node_and_the_run_continues_from_its_checkpoint(prepared, local_study, tmp_path):
    """The first run that starts on the worker node trains one epoch (its checkpoint written), says so and waits; the
    node is then killed. Ray runs the task again on the head, which finds the checkpoint and continues the run; the
    records and histories equal those of --jobs 1 (resume is exact)."""
    spec, expected = local_study
    marks = tmp_path / "started"
    marks.mkdir()

    def marking(cfg):  # a run says where it started and whether it continues, then trains as ablate would
        from audio_mrkd.train.engine import Trainer, train_run
        node = os.environ.get(MARK, "driver")
        resumed = (Path(cfg.train.out_dir) / cfg.train.run_name / "checkpoints" / "last.pt").is_file()
        (marks / f"{node}-{cfg.train.run_name}-{'resumed' if resumed else 'fresh'}-{uuid.uuid4().hex[:6]}").touch()
        if node.endswith("-worker") and not (marks / "checkpointed").exists():
            Trainer(cfg).fit(stop_after=1)  # the first epoch and its checkpoint, then wait to be killed
            (marks / "checkpointed").write_text(cfg.train.run_name)
            time.sleep(300)
        return train_run(cfg)

    one = LocalCluster()
    try:
        def kill_worker_once_a_run_has_a_checkpoint_there():
            deadline = time.monotonic() + 300
            while not (marks / "checkpointed").exists():
                if time.monotonic() > deadline:
                    return
                time.sleep(0.2)
            one.kill("worker")

        killer = threading.Thread(target=kill_worker_once_a_run_has_a_checkpoint_there, daemon=True)
        killer.start()
        run_ablation(spec, tmp_path / "abl", cluster=one.address, train_fn=marking, log=SILENT)
        killer.join()
    finally:
        one.close()
    killed = (marks / "checkpointed").read_text()
    started = sorted(p.name for p in marks.iterdir())
    assert any(f"-{killed}-resumed-" in name for name in started), started  # the retry found the checkpoint
    assert outcome(tmp_path / "abl") == expected


@pytest.mark.slow
def test_a_run_failing_on_bad_input_is_not_retried_and_stops_the_study_in_one_line(cluster, local_study, tmp_path):
    spec, _ = local_study
    marks = tmp_path / "started"
    marks.mkdir()

    def refusing(cfg):
        (marks / f"{cfg.train.run_name}-{uuid.uuid4().hex[:6]}").touch()
        raise InputError("data.manifest_dir: row 3 names a missing clip")

    with pytest.raises(InputError) as refused:
        run_ablation(spec, tmp_path / "abl", cluster=cluster.address, train_fn=refusing, log=SILENT)
    assert "\n" not in str(refused.value) and "InputError: data.manifest_dir: row 3" in str(refused.value)
    started = [p.name.rsplit("-", 1)[0] for p in marks.iterdir()]
    assert len(started) == len(set(started)), started  # no run twice
    assert not (tmp_path / "abl" / "runs.jsonl").exists()


def test_an_address_where_nothing_answers_is_one_line_within_seconds(tmp_path, capsys):
    pytest.importorskip("ray")
    spec = tmp_path / "spec.yaml"
    (tmp_path / "recipe.yaml").write_text("method: ce\n")
    spec.write_text("config: recipe.yaml\nfolds: 0\nseeds: [0]\nreference: ce\nvariants:\n  ce: [method=ce]\n")
    start = time.monotonic()
    assert main(["ablate", str(spec), "--out", str(tmp_path / "abl"), "--cluster", f"127.0.0.1:{_free_port()}"]) == 2
    assert time.monotonic() - start < 10
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--cluster: nothing answers at 127.0.0.1:" in err[0], err
    with pytest.raises(InputError, match="nothing answers at ray://127.0.0.1:"):
        run_ablation(spec, tmp_path / "abl", cluster=f"ray://127.0.0.1:{_free_port()}", log=SILENT)
    with pytest.raises(InputError, match="is not auto, HOST:PORT"):
        run_ablation(spec, tmp_path / "abl", cluster="no-port-here", log=SILENT)

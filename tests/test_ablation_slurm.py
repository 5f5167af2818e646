"""``ablate --slurm`` on a real one-machine SLURM (``.ci/slurm_up.sh``: munged, slurmctld and slurmd from Debian's
packages, brought up here when none answers): the same records as ``--jobs 1``, a task killed mid-run and requeued,
a resubmission after partial completion, and the one-line refusals (these need no SLURM)."""
from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import time
import warnings
from pathlib import Path

import pytest
import yaml

from audio_mrkd.cli import main
from audio_mrkd.studies import task_records
from audio_mrkd.studies.ablation import run_ablation
from audio_mrkd.studies.slurm import job_name

ROOT = Path(__file__).resolve().parents[1]
SLURM_DIR = Path(os.environ.get("AUDIO_MRKD_SLURM_DIR", "/tmp/audio-mrkd-slurm"))
SILENT = lambda *_: None  # noqa: E731
WAIT_S = 300  # the longest a test waits for its study's jobs


def _answers(env: dict) -> bool:
    """The test SLURM's controller is up, this machine's slurmd answers, and its node can take jobs."""
    try:
        ping = subprocess.run(["scontrol", "ping"], env=env, capture_output=True, text=True, timeout=30)
        slurmd = subprocess.run(["scontrol", "show", "slurmd"], env=env, capture_output=True, timeout=30)
        nodes = subprocess.run(["sinfo", "--noheader", "--responding", "--states=idle,mixed,allocated,completing",
                                "--format=%n"], env=env, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return "is UP" in ping.stdout and slurmd.returncode == 0 and bool(nodes.stdout.strip())


@pytest.fixture(scope="module")
def slurm():
    """The environment of the test SLURM (its SLURM_CONF, this tree on PYTHONPATH so the jobs import it), brought up
    by .ci/slurm_up.sh when it does not answer; where it cannot be, the SLURM tests say why in one line."""
    env = {"SLURM_CONF": str(SLURM_DIR / "slurm.conf"),
           "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    if not _answers(os.environ | env):
        up = subprocess.run([str(ROOT / ".ci" / "slurm_up.sh")], env=os.environ | env, capture_output=True,
                            text=True, timeout=900)
        if up.returncode != 0 or not _answers(os.environ | env):
            why = (up.stderr.strip().splitlines() or [f"exit code {up.returncode}"])[-1]
            pytest.skip(f"no SLURM could be brought up here (.ci/slurm_up.sh: {why})")
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    yield env
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def write_study(root: Path, variants: dict | None = None, seeds=(0, 1), teachers: bool = True) -> Path:
    """A held-out-free study on synthetic data: 2 epochs of 4 steps, one thread per run (a task asks one CPU)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "recipe.yaml").write_text(yaml.safe_dump({
        "data": {"kind": "synthetic", "synthetic_items": 32},
        "model": {"name": "cp_mobile", "options": {"base_channels": 8, "n_blocks": [1, 1, 1]}},
        "train": {"epochs": 2, "batch_size": 8, "threads": 1}}))
    spec = {"config": "recipe.yaml", "folds": 0, "seeds": list(seeds), "reference": "ce",
            "variants": variants or {"ce": ["method=ce"], "kd": ["method=kd", "teacher.runs=@teachers"]}}
    if teachers:
        spec["teachers"] = {"config": "recipe.yaml", "seeds": [100]}
    (root / "spec.yaml").write_text(yaml.safe_dump(spec))
    return root / "spec.yaml"


def records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "runs.jsonl").read_text().splitlines()]


def outcome(out: Path) -> dict:
    """Each run's record and the history of its metrics.json, by key."""
    found = {}
    for rec in records(out):
        metrics = json.loads((out / rec["run_dir"] / "metrics.json").read_text())
        found[(rec["variant"], rec["fold"], rec["seed"])] = (rec, metrics["history"])
    return found


def ablate(*args: str) -> tuple[int, str]:
    """``audio-mrkd ablate ARGS`` in this process: exit code and stdout."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["ablate", *args])
    return code, out.getvalue()


def submissions(out: Path) -> list[Path]:
    return sorted(p for p in (out / "slurm").iterdir() if p.is_dir() and p.name != "records") \
        if (out / "slurm").is_dir() else []


def wait_for_study(out: Path) -> None:
    """Until no job of the study in ``out`` is queued or running."""
    deadline = time.monotonic() + WAIT_S
    while subprocess.run(["squeue", "--noheader", f"--name={job_name(out)}", "--format=%i"], capture_output=True,
                         text=True, timeout=30).stdout.strip():
        assert time.monotonic() < deadline, f"the study's jobs were still there after {WAIT_S} s"
        time.sleep(0.5)


def job_state(job: str) -> str:
    shown = subprocess.run(["scontrol", "--oneliner", "show", "job", job], capture_output=True, text=True,
                           timeout=30).stdout
    return next((w.split("=", 1)[1] for w in shown.split() if w.startswith("JobState=")), "")


@pytest.fixture(scope="module")
def local_study(tmp_path_factory):
    """The study with --jobs 1: its spec and outcome."""
    spec = write_study(tmp_path_factory.mktemp("local"))
    run_ablation(spec, spec.parent / "abl", jobs=1, log=SILENT)
    return spec, outcome(spec.parent / "abl")


@pytest.fixture(scope="module")
def slurm_study(slurm, local_study):
    """The same study through SLURM, submitted once and waited for: its folder and what ablate printed."""
    spec, _ = local_study
    out = spec.parent / "slurm_abl"
    code, said = ablate(str(spec), "--out", str(out), "--slurm")
    assert code == 0, said
    wait_for_study(out)
    return out, said


@pytest.mark.slow
def test_a_study_as_slurm_arrays_records_what_jobs_1_records(local_study, slurm_study):
    spec, expected = local_study
    out, said = slurm_study
    assert outcome(out) == expected and len(expected) == 5
    assert records(out) == records(spec.parent / "abl")  # the lines of --jobs 1, in its order
    for name in ("ablation.md", "ablation.json", "ablation.png"):
        assert (out / name).is_file(), name
    assert (out / "ablation.md").read_text() == (spec.parent / "abl" / "ablation.md").read_text()
    [folder] = submissions(out)
    plan, jobs = (json.loads((folder / name).read_text()) for name in ("plan.json", "jobs.json"))
    assert [(e["variant"], e["seed"]) for e in plan["teachers"]] == [("teacher", 100)]
    assert [(e["variant"], e["seed"]) for e in plan["runs"]] == [("ce", 0), ("kd", 0), ("ce", 1), ("kd", 1)]
    assert list(jobs) == ["teachers", "runs", "summary"] and all(jobs[p] in said for p in jobs), said
    assert not list((out / task_records.FOLDER).glob("*.json"))  # gathered into runs.jsonl


@pytest.mark.slow
def test_a_resubmission_submits_only_the_runs_without_a_record(local_study, slurm_study, tmp_path):
    spec, expected = local_study
    out = tmp_path / "abl"
    shutil.copytree(slurm_study[0], out)
    shutil.rmtree(out / "slurm")
    kept = [line for line in (out / "runs.jsonl").read_text().splitlines()
            if not (json.loads(line)["variant"] == "kd" and json.loads(line)["seed"] == 1)]
    (out / "runs.jsonl").write_text("\n".join(kept) + "\n")
    code, said = ablate(str(spec), "--out", str(out), "--slurm")
    assert code == 0 and "runs " in said and "(array of 1 run)" in said and "teachers" not in said, said
    [folder] = submissions(out)
    plan = json.loads((folder / "plan.json").read_text())
    assert plan["teachers"] == [] and [(e["variant"], e["fold"], e["seed"]) for e in plan["runs"]] == [("kd", 0, 1)]
    wait_for_study(out)
    assert outcome(out) == expected

    (out / "ablation.md").unlink()
    code, said = ablate(str(spec), "--out", str(out), "--slurm")  # every run recorded: the summary, nothing else
    assert code == 0 and "all 5 runs have a record" in said and "nothing submitted" in said, said
    assert len(submissions(out)) == 1 and (out / "ablation.md").is_file()


@pytest.mark.slow
def test_a_task_killed_mid_run_continues_from_its_checkpoint_after_a_requeue(slurm, local_study, tmp_path,
                                                                             monkeypatch):
    """The run's process kills itself (SIGKILL) at its 6th step, after the first epoch's checkpoint; the task
    fails, is requeued with scontrol, continues from that checkpoint (the resumed run never reaches a 6th step of its
    own) and records exactly what --jobs 1 recorded for the same run."""
    spec_local, expected = local_study
    spec = write_study(tmp_path, {"ce": ["method=ce"]}, seeds=(0,), teachers=False)
    out = tmp_path / "abl"
    monkeypatch.setenv("AUDIO_MRKD_KILL_AT", "step:6")  # the jobs take the submitter's environment
    code, said = ablate(str(spec), "--out", str(out), "--slurm")
    assert code == 0, said
    monkeypatch.delenv("AUDIO_MRKD_KILL_AT")
    [folder] = submissions(out)
    task = json.loads((folder / "jobs.json").read_text())["runs"] + "_0"
    deadline = time.monotonic() + WAIT_S
    while (state := job_state(task)) != "FAILED":
        assert state in ("PENDING", "CONFIGURING", "RUNNING", "COMPLETING") and time.monotonic() < deadline, state
        time.sleep(0.2)
    run_dir = out / "ce" / "ce-fold0-seed0"
    assert (run_dir / "checkpoints" / "last.pt").is_file()
    assert not json.loads((run_dir / "metrics.json").read_text())["complete"]
    assert not task_records.path(out, ("ce", 0, 0)).exists()
    subprocess.run(["scontrol", "requeue", task], check=True, capture_output=True, timeout=30)
    wait_for_study(out)
    log = (folder / "runs-0.out").read_text()
    assert "continues from its last checkpoint" in log and "1 epochs done" in log, log
    # the summary job may have run between the failure and the requeue: the same command then writes it again
    code, said = ablate(str(spec), "--out", str(out), "--slurm")
    assert code == 0 and "nothing submitted" in said, said
    assert outcome(out) == {("ce", 0, 0): expected[("ce", 0, 0)]}


@pytest.mark.slow
def test_a_job_of_the_study_in_flight_refuses_a_second_submission_in_one_line(slurm, tmp_path, capsys):
    spec = write_study(tmp_path, {"ce": ["method=ce"]}, seeds=(0,), teachers=False)
    out = tmp_path / "abl"
    code, said = ablate(str(spec), "--out", str(out), "--slurm", "--partition", "debug")
    assert code == 0, said
    capsys.readouterr()
    code, _ = ablate(str(spec), "--out", str(out), "--slurm")
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "are still queued or running" in err[0], err
    assert len(submissions(out)) == 1
    subprocess.run(["scancel", f"--name={job_name(out)}"], check=True, capture_output=True, timeout=30)
    wait_for_study(out)


@pytest.mark.slow
def test_a_refusal_of_sbatch_is_one_line_and_leaves_nothing_submitted(slurm, tmp_path, capsys):
    spec = write_study(tmp_path)
    out = tmp_path / "abl"
    assert main(["ablate", str(spec), "--out", str(out), "--slurm", "--partition", "nope"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--slurm: sbatch refused:" in err[0] and "partition" in err[0], err
    assert submissions(out) == []
    assert not subprocess.run(["squeue", "--noheader", f"--name={job_name(out)}"], capture_output=True, text=True,
                              timeout=30).stdout.strip()


@pytest.mark.parametrize("args, said", [
    (["reference=nope"], "reference: 'nope' is not one of the variants"),
    (["--run", "train.epochs=two"], "train.epochs"),
    (["--gpus-per-run", "0.5"], "--gpus-per-run: a whole number of GPUs with --slurm"),
    (["--jobs", "2"], "leave out --cluster, --jobs and --summary"),
])
def test_bad_input_is_one_line_before_anything_is_submitted(tmp_path, capsys, args, said):
    spec = write_study(tmp_path)
    assert main(["ablate", str(spec), "--out", str(tmp_path / "abl"), "--slurm", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and said in err[0] and "Traceback" not in err[0], err
    assert not (tmp_path / "abl" / "slurm").exists()


def test_slurm_options_without_slurm_are_one_line(tmp_path, capsys):
    spec = write_study(tmp_path)
    assert main(["ablate", str(spec), "--out", str(tmp_path / "abl"), "--partition", "gpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "go with --slurm" in err[0], err


def test_no_sbatch_on_path_is_one_line(tmp_path, capsys, monkeypatch):
    spec = write_study(tmp_path)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert main(["ablate", str(spec), "--out", str(tmp_path / "abl"), "--slurm"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--slurm: no sbatch on PATH" in err[0], err
    assert not (tmp_path / "abl" / "slurm").exists()


def test_a_dry_run_prints_the_scripts_and_writes_nothing(tmp_path, capsys, monkeypatch):
    spec = write_study(tmp_path)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no SLURM needed to see the scripts
    assert main(["ablate", str(spec), "--out", str(tmp_path / "abl"), "--slurm", "--dry-run", "--partition", "gpu",
                 "--time", "1:00:00", "--gpus-per-run", "1", "--cpus-per-run", "2", "--max-parallel", "3"]) == 0
    printed = capsys.readouterr().out
    for line in ("#SBATCH --array=0-0%3", "#SBATCH --array=0-3%3", "#SBATCH --gres=gpu:1", "#SBATCH --cpus-per-task=2",
                 "#SBATCH --partition=gpu", "#SBATCH --time=1:00:00", "#SBATCH --requeue",
                 "--dependency=afterany:<teachers job>", "--dependency=afterany:<teachers job>:<runs job>,singleton",
                 "-m audio_mrkd.studies.slurm run", "nothing written or submitted"):
        assert line in printed, line
    assert not (tmp_path / "abl").exists()
    assert main(["ablate", str(spec), "--out", str(tmp_path / "abl"), "--slurm", "--dry-run"]) == 0
    assert "--gres" not in capsys.readouterr().out  # no SLURM to ask whether the partition has GPUs: none asked
    assert not (tmp_path / "abl").exists()


def test_gathering_the_records_twice_appends_each_run_once(tmp_path):
    """A gatherer stopped between appending a record and removing its file appends it once, the next time."""
    first, second = ({"variant": "ce", "fold": 0, "seed": s, "last_macro_accuracy": 0.5} for s in (0, 1))
    (tmp_path / "runs.jsonl").write_text(json.dumps(first) + "\n")
    for rec in (second, first):
        task_records.write(tmp_path, rec)
    assert task_records.gather(tmp_path, [("ce", 0, 0), ("ce", 0, 1)]) == 1
    assert records(tmp_path) == [first, second]
    assert task_records.gather(tmp_path, []) == 0 and records(tmp_path) == [first, second]
    assert not list((tmp_path / task_records.FOLDER).iterdir())


def test_summary_reads_the_jobs_records_and_a_local_ablate_gathers_them(local_study, tmp_path):
    """A study under way on SLURM: ``--summary`` tables the records its jobs wrote without writing runs.jsonl; a
    local ``ablate`` on the same folder takes them into runs.jsonl instead of training those runs again."""
    spec, expected = local_study
    out = tmp_path / "abl"
    shutil.copytree(spec.parent / "abl", out)
    lines = (out / "runs.jsonl").read_text().splitlines()
    (out / "runs.jsonl").write_text("\n".join(lines[:-2]) + "\n")
    for line in lines[-2:]:
        task_records.write(out, json.loads(line))
    logged = []
    run_ablation(spec, out, train=False, log=logged.append)
    assert "5 of 5 runs recorded" in logged[0] and len(records(out)) == 3
    assert json.loads((out / "ablation.json").read_text()) == json.loads((spec.parent / "abl" / "ablation.json")
                                                                         .read_text())
    run_ablation(spec, out, jobs=1, train_fn=lambda cfg: pytest.fail(f"{cfg.train.run_name} trained again"),
                 log=SILENT)
    assert outcome(out) == expected and records(out) == records(spec.parent / "abl")


def test_a_run_on_a_slurm_machine_that_srun_did_not_start_warns_nothing(tmp_path, monkeypatch):
    """An array task (and any run on a login node) is a process srun did not start: Lightning's advice to use srun
    would be a second line on stderr after a one-line error."""
    from audio_mrkd.config_loader import load_experiment
    from audio_mrkd.train.engine import make_fabric
    (tmp_path / "srun").write_text("#!/bin/sh\nexit 0\n")
    (tmp_path / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        make_fabric(load_experiment(None, ["data.kind=synthetic"]).train)
    assert not [w for w in caught if "srun" in str(w.message)], [str(w.message) for w in caught]

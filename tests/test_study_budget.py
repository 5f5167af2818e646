"""A study fitted to a time budget (`audio-mrkd ablate-plan`, benchmarks/gpu_study.sh): the epoch-count rule, the
measuring of every run at once, and the whole GPU script run on the CPU."""
import json
import multiprocessing as mp
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from audio_mrkd.errors import InputError
from audio_mrkd.studies.ablation import run_ablation
from audio_mrkd.studies.budget import SAFETY, choose_schedule, plan_study
from tests.image_formats import write_fashion_mnist

ROOT = Path(__file__).resolve().parents[1]
TINY = ["model.name=resnet20", "data.holdout=10", "train.batch_size=8", "train.threads=1", "train.device=cpu"]


@pytest.mark.parametrize("epoch_s,startup_s,left_s,expected", [
    (2.0, 50.0, 500.0, (200, 2)),    # 200 × 2 s + 50 s ≤ 450 s: the whole schedule, no room for a third seed
    (1.0, 50.0, 499.0, (200, 3)),    # 200 × 1.5 s + 50 s ≤ 449.1 s: a third seed too, not a fourth (200 × 2 s + 50 s)
    (4.0, 50.0, 500.0, (100, 2)),    # (450 − 50) / 4: the longest that fits
    (4.0, 50.0, 50.0, (0, 2)),       # start-up alone is over 0.9 × 50 s: nothing fits
])
def test_epochs_are_the_most_that_fit_and_seeds_grow_only_with_the_whole_schedule(epoch_s, startup_s, left_s,
                                                                                  expected):
    assert SAFETY == 0.9
    assert choose_schedule(epoch_s, startup_s, left_s, seeds=2, max_seeds=4, max_epochs=200) == expected


def test_the_epoch_count_never_exceeds_the_budget():
    for epoch_s in (0.3, 1.7, 9.9):
        for left_s in (100.0, 555.0, 1e4):
            epochs, seeds = choose_schedule(epoch_s, 20.0, left_s, seeds=2, max_seeds=2, max_epochs=200)
            assert seeds == 2 and 20.0 + epochs * epoch_s <= SAFETY * left_s
            assert epochs == 200 or 20.0 + (epochs + 1) * epoch_s > SAFETY * left_s


def tiny_spec(tmp_path: Path, variants: dict) -> Path:
    write_fashion_mnist(tmp_path / "fm", n_train=40, n_test=12)
    (tmp_path / "recipe.yaml").write_text("method: ce\n")
    overrides = ["data.kind=fashion_mnist", f"data.root={tmp_path / 'fm'}", "data.final_test=true", *TINY]
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"config: recipe.yaml\nfolds: 0\nseeds: [0]\nreference: ce\noverrides: {json.dumps(overrides)}\n"
                    f"variants: {json.dumps(variants)}\n")
    return spec


@pytest.mark.slow
def test_plan_measures_every_run_at_once_and_refuses_a_failing_one_in_one_line(tmp_path):
    spec = tiny_spec(tmp_path, {"ce": ["method=ce"], "mrkd": ["method=mrkd", "mrkd.k=2"]})
    plan = plan_study(spec, 600, tmp_path / "work", max_epochs=50, max_seeds=1, seconds=0.5, log=lambda *_: None)
    runs = plan["tried"][0]["runs"]
    assert [(r["variant"], r["seed"]) for r in runs] == [("ce", 0), ("mrkd", 0)]
    assert all(r["steps_per_epoch"] == 3 and r["step_s"] > 0 and r["steps_timed"] >= 1 for r in runs)
    slowest = max(r["epoch_s"] for r in runs)
    assert plan["jobs"] == 2 and plan["model"] == "resnet20" and plan["device"] == "cpu" and plan["seeds"] == [0]
    assert 1 <= plan["epochs"] == choose_schedule(slowest, max(r["startup_s"] for r in runs), plan["left_s"], 1, 1,
                                                  50)[0]
    bad = tiny_spec(tmp_path / "bad", {"ce": ["method=ce"], "broken": ["method=ce", "model.name=nope"]})
    with pytest.raises(InputError, match=r"ablate-plan: broken \(fold 0, seed 0\): InputError: .*nope") as err:
        plan_study(bad, 600, tmp_path / "work2", seconds=0.5, log=lambda *_: None)
    assert "\n" not in str(err.value)


def test_ablate_never_initialises_cuda_and_forks_its_runs_only_without_gpus(tmp_path, monkeypatch):
    """`ablate --jobs N` forks its runs only on a machine without GPUs (with GPUs it spawns them:
    test_local_workers_each_see_one_gpu_of_their_own), and its driver never initialises CUDA."""
    parent, calls = os.getpid(), []
    for module, name in ((torch.cuda, "_lazy_init"), (mp, "get_context")):
        original = getattr(module, name)

        def watched(*args, _original=original, _name=name, **kwargs):
            if os.getpid() == parent:
                calls.append((_name, *args))
            return _original(*args, **kwargs)
        monkeypatch.setattr(module, name, watched)
    spec = tiny_spec(tmp_path, {"ce": ["method=ce"], "ce_ls": ["method=ce", "train.label_smoothing=0.1"]})
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # no GPU, whatever this machine has
    run_ablation(spec, tmp_path / "abl", jobs=2, run_overrides=["train.epochs=1"], log=lambda *_: None)
    assert len((tmp_path / "abl" / "runs.jsonl").read_text().splitlines()) == 2
    assert calls == [("get_context", "fork")]


@pytest.mark.slow
def test_gpu_study_script_plans_then_runs_and_leaves_records_and_tables(tmp_path):
    """benchmarks/gpu_study.sh end to end on the CPU with a small budget: the plan is written, the study runs with
    its epoch count and seeds, and $OUT holds the records, both tables and the test split's forest plot."""
    spec = tiny_spec(tmp_path, {"ce": ["method=ce"], "ce_ls": ["method=ce", "train.label_smoothing=0.1"]})
    out, work = tmp_path / "out", tmp_path / "work"
    env = {**os.environ, "SPEC": str(spec), "DATA": str(tmp_path / "fm"), "OUT": str(out), "WORK": str(work),
           "STUDY_BUDGET_S": "240", "POST_S": "60", "CALIBRATE_S": "0.5", "MODELS": "resnet20", "MAX_EPOCHS": "3",
           "MAX_SEEDS": "2", "RUN_EXTRA": "train.device=cpu", "PYTHONPATH": str(ROOT)}
    bin_dir = Path(sys.executable).parent
    env["PATH"] = f"{bin_dir}:{env['PATH']}"  # python3 = this interpreter
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_study.sh")], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    plan = json.loads((out / "plan.json").read_text())
    assert 1 <= plan["epochs"] <= 3 and plan["model"] == "resnet20"
    records = [json.loads(line) for line in (out / "runs.jsonl").read_text().splitlines()]
    assert sorted((r["variant"], r["seed"]) for r in records) == sorted(
        (v, s) for v in ("ce", "ce_ls") for s in plan["seeds"])
    assert all("test_last_macro_accuracy" in r for r in records)
    config = (work / "study" / "ce" / "ce-fold0-seed0" / "config.yaml").read_text()
    assert f"epochs: {plan['epochs']}" in config
    assert "Δ to `ce_ls`" in (out / "ablation_vs_ce_ls.md").read_text()
    assert "| variant | test last macro acc |" in (out / "ablation_vs_ce.md").read_text()
    assert {"gpu.txt", "study.log", "study.tar.gz", "ablation_test_vs_ce.png"} <= {p.name for p in out.iterdir()}
    assert len(list(out.iterdir())) <= 8  # what the device tool brings back

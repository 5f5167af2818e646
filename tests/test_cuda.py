"""On a CUDA device, with the device choices a user gets by default: every method trains through the engine and its
run reads back; the captured step gives the eager step's losses; a run resumed from a mid-epoch checkpoint ends like
an undisturbed one; a run trained on the GPU evaluates and exports in a process without CUDA.

Run on a GPU machine by ``benchmarks/gpu_session.sh tests``; where CUDA is absent pytest collects and skips them.
"""
import json

import numpy as np
import pandas as pd
import pytest
import torch

from audio_mrkd.cli import main
from audio_mrkd.config_schema import TrainConfig
from audio_mrkd.evaluate import evaluate_run
from audio_mrkd.export.commands import export_run
from audio_mrkd.runs.run import Run
from audio_mrkd.runs.run import checkpoint_path
from audio_mrkd.train.engine import Trainer, train_run
from audio_mrkd.train.inference import run_logits
from tests.test_crash import cli, comparable
from tests.test_engine import config, prepared  # noqa: F401  (the tiny prepared DCASE tree, a module fixture)
from tests.test_method_kd import interrupt_after_step, teachers  # noqa: F401  (two teacher runs, a module fixture)
from tests.test_step_graph import AUGMENT, StepLosses, calls_of, runtime

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="needs a CUDA device: run on a GPU machine by benchmarks/gpu_session.sh tests")

TEACHERS, TEACHER_FILE = "teacher.runs=<runs>", "teacher.logits=<file>"  # filled in from the module's fixtures
METHODS = {
    "ce": ["method=ce"],
    "ce_label_smoothing": ["method=ce", "train.label_smoothing=0.1"],
    "mrkd_same": ["method=mrkd", "mrkd.k=1"],
    "mrkd_cached": ["method=mrkd", "mrkd.k=1", "mrkd.teacher_input=cached"],
    "mrkd_teacher_ensembler": ["method=mrkd", "mrkd.k=1", "mrkd.with_teacher=ensembler", TEACHERS],
    "mrkd_teacher_term": ["method=mrkd", "mrkd.k=1", "mrkd.with_teacher=term", TEACHERS],
    "kd_teacher_runs": ["method=kd", TEACHERS],
    "kd_teacher_runs_same_batch": ["method=kd", "teacher.input=same", TEACHERS],
    "kd_teacher_file": ["method=kd", TEACHER_FILE],
    "pskd": ["method=pskd"],
    "dlb": ["method=dlb"],
    "ema": ["method=ema", "ema.warmup_steps=2"],
}
EAGER_ONLY = {"dlb", "ema"}  # no graph key: their steps run eagerly whatever train.step_graph says
STEP_GRAPH = ["train.step_graph=true"]
RUNS = [(name, graph) for name in METHODS for graph in ([], STEP_GRAPH) if not (graph and name in EAGER_ONLY)]
# MrKD in the captured-vs-eager comparison: a snapshot every 3 steps (the bank full after step 6) and α rising
# every epoch, so that the step is captured again and again
MRKD_SCHEDULE = ["mrkd.k=2", "mrkd.interval=3", "mrkd.interval_unit=step", "mrkd.alpha_schedule=linear"]


@pytest.fixture(scope="module")
def teacher_file(teachers, tmp_path_factory):  # noqa: F811
    """The two teacher runs' mean logits on every clip, written by the teacher-logits command."""
    out = tmp_path_factory.mktemp("teacher_logits") / "teachers.csv"
    assert main(["teacher-logits", str(teachers[0]), str(teachers[1]), "--out", str(out)]) == 0
    return out


def method_overrides(request, name: str) -> list[str]:
    """METHODS[name] with its teacher source filled in (the teacher fixtures are built only for a method that
    needs them)."""
    def fill(override: str) -> str:
        if override == TEACHERS:
            return "teacher.runs=[{},{}]".format(*request.getfixturevalue("teachers"))
        if override == TEACHER_FILE:
            return f"teacher.logits={request.getfixturevalue('teacher_file')}"
        return override
    return [fill(o) for o in METHODS[name]]


def gpu_config(prepared, out, *extra):  # noqa: F811
    """test_engine's tiny run with every device choice left at its default, and the default logging interval too
    (test_engine logs every step, and a logging step always runs eagerly)."""
    return config(prepared, out, f"train.log_every={TrainConfig.log_every}", *extra)


def assert_gpu_defaults(trainer: Trainer, step_graph: bool) -> None:
    """What a user gets on a CUDA machine without asking: CUDA, bf16 autocast, channels_last, the split resident
    on the GPU; the captured step only where asked for."""
    rt = trainer.runtime
    assert (rt.accelerator, rt.precision, rt.channels_last, rt.capture) == ("cuda", "bf16-mixed", True, step_graph)
    assert trainer.train_loader.resident and trainer.train_loader.features.is_cuda


def inference_copies(method) -> list[torch.nn.Module]:
    """The inference-only networks a method holds: MrKD's snapshot copies and teacher runs kept as networks."""
    objective = getattr(method, "objective", None)
    term = getattr(method, "term", None)
    signals = [getattr(term, "teachers", None), getattr(objective, "external", None)]
    copies = [m for signal in signals if signal is not None for m in signal.models or []]
    return copies + (list(objective.bank._fast) if objective is not None else [])


def cpu_probabilities(run_dir) -> tuple[list[str], np.ndarray]:
    """The run's `last` checkpoint on its evaluated items, recomputed on the CPU in float32 (evaluate's own path):
    the items' file names and the N×C probabilities."""
    run = Run(run_dir)
    model, data = run.model("last"), run.data().eval
    names = data.items["filename"].astype(str).str.replace("audio/", "", regex=False).tolist()
    return names, torch.softmax(run_logits(model, data), 1).numpy()


def check_run_reads_back(run_dir, export: bool) -> None:
    """A finished run's files read back on the CPU: both checkpoints load; the `last` weights recompute the GPU's
    predictions.csv (bf16 there, float32 here: within 0.02 per probability); evaluate agrees with metrics.json
    within one item; export's ONNX model matches PyTorch."""
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["complete"] and metrics["last"]["epoch"] == 2
    for which in ("last", "best"):
        state = torch.load(checkpoint_path(run_dir, which), map_location="cpu", weights_only=True)
        assert state["epoch"] == metrics[which]["epoch"]
    predicted = pd.read_csv(run_dir / "predictions.csv", sep="\t")
    names, probs = cpu_probabilities(run_dir)
    classes = json.loads((run_dir / "data.json").read_text())["class_names"]
    assert predicted["filename"].tolist() == names
    assert np.abs(predicted[classes].to_numpy() - probs).max() <= 0.02
    evaluated = evaluate_run(run_dir, which="last", log=lambda *_: None)
    assert evaluated["n_items"] == len(predicted)
    assert abs(evaluated["accuracy"] - metrics["last"]["accuracy"]) <= 1 / len(predicted) + 1e-9
    if export:
        export_run(run_dir, checkpoint="last", log=lambda *_: None)
        parity = json.loads((run_dir / "export" / "parity.json").read_text())
        assert parity["fp32_vs_pytorch"]["max_abs_logit_diff"] <= 1e-4


@pytest.mark.parametrize("name, graph", RUNS, ids=[f"{n}-{'step_graph' if g else 'default'}" for n, g in RUNS])
def test_every_method_trains_with_the_gpu_defaults_and_its_run_reads_back(prepared, tmp_path, request,  # noqa: F811
                                                                         name, graph):
    """Two epochs of 9 steps (step 10 logs, eagerly), device choices at their defaults; with the step graph asked for,
    every other step of a capture-safe method takes the static path and is captured or replayed. MrKD's teachers
    replay their own CUDA graph unless the whole step is captured; teacher copies are bf16. The run reads back."""
    trainer = Trainer(gpu_config(prepared, tmp_path, *method_overrides(request, name), "train.epochs=2",
                                 "train.batch_size=4", *graph))
    assert_gpu_defaults(trainer, step_graph=bool(graph))
    steps = StepLosses(trainer)
    mrkd = name.startswith("mrkd")
    teacher_graphs = calls_of(trainer.method.objective.bank.runner, "_capture") if mrkd else []
    summary = trainer.fit()
    assert summary["complete"] and len(steps.losses) == 18 and np.isfinite(steps.losses).all()
    static = bool(graph) and name not in EAGER_ONLY
    assert steps.static == [static and step % TrainConfig.log_every != 0 for step in range(1, 19)]
    assert bool(steps.captures) == static and not (static and trainer.static_step.failed)
    if mrkd:
        assert bool(teacher_graphs) == (not graph and "mrkd.teacher_input=cached" not in METHODS[name])
    copies = inference_copies(trainer.method)
    assert bool(copies) == (mrkd or name == "kd_teacher_runs_same_batch")
    assert all(p.dtype == torch.bfloat16 for m in copies for p in m.parameters())
    check_run_reads_back(trainer.run_dir, export=not graph)


def twenty_steps(prepared, out, overrides: list[str], step_graph: str) -> tuple[StepLosses, Trainer]:  # noqa: F811
    """20 fp32 steps (5 epochs of 4) through the engine's epoch loop, so that α moves between epochs as in a run;
    every device choice but the precision at its default, cuDNN without autotuning (the same kernels each run)."""
    trainer = Trainer(gpu_config(prepared, out, *overrides, "train.precision=32", "train.cudnn_benchmark=false",
                                 "train.epochs=5", "train.log_every=1000", f"train.step_graph={step_graph}", *AUGMENT))
    steps = StepLosses(trainer)
    for _ in range(5):
        trainer._train_epoch()
    return steps, trainer


@pytest.mark.parametrize("name", [name for name in METHODS if name not in EAGER_ONLY])
def test_captured_step_gives_the_eager_losses_in_fp32(prepared, tmp_path, request, monkeypatch, name):  # noqa: F811
    """Same seed, same batches, every augmentation on: the per-step losses of the captured step equal the eager
    step's within 1e-5 over 20 steps. Every step takes the static path (eager warm-ups, then captures and replays),
    each key is captured once, and MrKD is captured again across snapshot pushes and α changes."""
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)
    overrides = method_overrides(request, name) + (MRKD_SCHEDULE if name.startswith("mrkd") else [])
    eager, _ = twenty_steps(prepared, tmp_path / "eager", overrides, "false")
    captured, trainer = twenty_steps(prepared, tmp_path / "captured", overrides, "true")
    assert len(eager.losses) == len(captured.losses) == 20 and all(captured.static) and not any(eager.static)
    diffs = [abs(a - b) for a, b in zip(eager.losses, captured.losses)]
    print(f"{name}: captured vs eager, largest per-step loss difference over 20 steps {max(diffs):.2e}")
    assert max(diffs) <= 1e-5
    keys = captured.captures
    assert keys and not trainer.static_step.failed and len(set(keys)) == len(keys)
    if name.startswith("mrkd"):  # (bank full, backups taken, α): both the bank and α moved between captures
        assert len({key[1] for key in keys}) > 1 and len({key[2] for key in keys}) > 1
    if name == "pskd":  # α rises every epoch
        assert len(keys) > 1


@pytest.mark.parametrize("graph", [[], STEP_GRAPH], ids=["default", "step_graph"])
def test_resume_from_a_mid_epoch_checkpoint_ends_like_an_undisturbed_run(prepared, tmp_path, monkeypatch,  # noqa: F811
                                                                         graph):
    """MrKD K=2 with mixup, a checkpoint every 2 steps: stopped after step 7 (the last checkpoint at step 6, inside
    epoch 2), ``train --resume`` ends with the undisturbed run's metrics, exactly. cuDNN deterministic and without
    autotuning, so that two runs of the same steps compute the same numbers; the teachers not compiled (the other
    tests compile them; here it would only add compile time)."""
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)
    extra = ["method=mrkd", "mrkd.k=2", "mrkd.teacher_compile=false", "augment.mixup_alpha=0.3",
             "train.checkpoint_every=2", "train.cudnn_benchmark=false", *graph]
    straight, _ = train_run(gpu_config(prepared, tmp_path / "a", *extra))
    trainer = Trainer(gpu_config(prepared, tmp_path / "b", *extra))
    with monkeypatch.context() as patch:
        interrupt_after_step(patch, 7)
        with pytest.raises(KeyboardInterrupt):
            trainer.fit()
    state = torch.load(checkpoint_path(trainer.run_dir, "last"), map_location="cpu", weights_only=True)
    assert state["global_step"] == 6 and state["loader"]["position"] == 2 and state["rng"]["cuda"]
    assert main(["train", "--resume", str(trainer.run_dir)]) == 0
    assert comparable(trainer.run_dir) == comparable(straight)


def test_a_gpu_run_evaluates_and_exports_in_a_process_without_cuda(prepared, tmp_path):  # noqa: F811
    """The checkpoints of a GPU run hold CUDA tensors; ``evaluate`` and ``export --int8`` in a process that sees no
    GPU read them: evaluate's accuracy is the GPU's within one item (bf16 there, float32 here) and the ONNX model
    matches PyTorch."""
    run_dir, summary = train_run(gpu_config(prepared, tmp_path, "method=mrkd", "mrkd.k=1", "train.epochs=2"))
    state = torch.load(checkpoint_path(run_dir, "best"), weights_only=True)
    assert all(tensor.is_cuda for tensor in state["model"].values())
    no_gpu = {"CUDA_VISIBLE_DEVICES": ""}
    assert "torch device: cpu" in cli("env", env=no_gpu).stdout
    evaluated = cli("evaluate", str(run_dir), env=no_gpu)
    assert evaluated.returncode == 0, evaluated.stderr
    metrics = json.loads((run_dir / "eval-evaluate-best.json").read_text())
    assert abs(metrics["accuracy"] - summary["best"]["accuracy"]) <= 1 / metrics["n_items"] + 1e-9
    exported = cli("export", str(run_dir), "--int8", "--keep-int8", "--calibration", "16", env=no_gpu)
    assert exported.returncode == 0, exported.stderr
    parity = json.loads((run_dir / "export" / "parity.json").read_text())
    assert parity["fp32_vs_pytorch"]["max_abs_logit_diff"] <= 1e-4
    assert (run_dir / "export" / "model.int8.onnx").is_file()


def test_the_step_graph_is_captured_on_cuda_only_when_asked_for():
    """Off by default (not yet measured on a GPU); ``auto`` and ``true`` capture on CUDA; bf16 by default, and with
    it bf16 teacher copies."""
    default = runtime()
    assert not default.step_graph and default.precision == "bf16-mixed" and default.teacher_dtype == torch.bfloat16
    assert runtime("train.step_graph=auto").capture and runtime("train.step_graph=true").capture

"""Distillation from a teacher: ``method: kd``, MrKD with a teacher, teacher-logits files and the command."""
import json
import math
import shutil

import numpy as np
import pytest
import torch

from audio_mrkd.cli import main
from audio_mrkd.config_loader import load_experiment
from audio_mrkd.data.info import DataInfo
from audio_mrkd.distill.teachers import read_teacher_logits, write_teacher_logits
from audio_mrkd.methods import TrainContext, build_method
from audio_mrkd.runtime import Runtime
from audio_mrkd.train.engine import Trainer, train_run
from tests.test_engine import prepared  # noqa: F401  (the tiny prepared DCASE tree, a module fixture)

CLASSES = ["metro", "park", "street"]


def overrides(prepared, out, *extra) -> list[str]:
    return ["data.name=tiny", f"data.manifest_dir={prepared / 'manifests'}", f"train.out_dir={out}",
            "model.name=cp_mobile", "model.options={base_channels: 8, n_blocks: [1, 1, 1]}", "train.epochs=3",
            "train.batch_size=8", "train.lr=0.01", "train.progress=false", "train.log_every=1",
            "augment.roll=0.1", "augment.freq_mask=4", *extra]


def config(prepared, out, *extra):
    return load_experiment(None, overrides(prepared, out, *extra))


@pytest.fixture(scope="module")
def teachers(prepared, tmp_path_factory):
    """Two finished CE runs (seeds 0 and 1) of a wider network: the teacher ensemble."""
    out = tmp_path_factory.mktemp("teachers")
    wide = "model.options={base_channels: 16, n_blocks: [1, 1, 1]}"
    return [train_run(config(prepared, out, "method=ce", wide, f"seed={seed}"))[0] for seed in (0, 1)]


def train_filenames(prepared, tmp_path) -> list[str]:
    trainer = Trainer(config(prepared, tmp_path, "method=ce"))
    return trainer.data.train.items["filename"].astype(str).tolist()


# ---- the loss on a hand-computed case --------------------------------------------------------------------------
def _kd_method(tmp_path, *extra):
    """A kd method on a three-clip dataset whose teacher-logits file we write by hand."""
    names = ["audio/a.wav", "audio/b.wav", "audio/c.wav"]
    teacher = np.array([[math.log(3), 0, 0], [0, 0, 0], [0, 2, 0]], dtype=np.float32)
    write_teacher_logits(tmp_path / "t.csv", names, CLASSES, teacher)
    cfg = load_experiment(None, ["data.kind=synthetic", "method=kd", f"teacher.logits={tmp_path / 't.csv'}",
                                 *extra])
    ctx = TrainContext(model=torch.nn.Linear(1, 3), n_classes=3, torch_device=torch.device("cpu"),
                       runtime=Runtime.from_config(cfg.train), infer_train=None, average_grads=None,
                       sync_buffers=lambda: None, data_info=DataInfo(class_names=CLASSES), train_filenames=names)
    return build_method(cfg, ctx)


def test_the_teacher_term_reads_one_section_for_kd_and_for_mrkd(tmp_path):
    """The KD term toward a stronger teacher has one home, ``teacher:``: ``kd`` and MrKD's ``with_teacher: term``
    read the same settings there, and MrKD's own α (``mrkd.alpha``) stays MrKD's."""
    kd = _kd_method(tmp_path, "teacher.alpha=0.25", "teacher.tau=2", "teacher.ka=true")
    mrkd = _kd_method(tmp_path, "method=mrkd", "mrkd.with_teacher=term", "mrkd.alpha=0.7", "teacher.alpha=0.25",
                      "teacher.tau=2", "teacher.ka=true")
    for method in (kd, mrkd):
        assert (method.term.cfg.alpha, method.term.cfg.tau, method.term.cfg.ka) == (0.25, 2.0, True)
        assert {"teacher.alpha": 0.25, "teacher.tau": 2.0, "teacher.ka": True}.items() <= method.hparams().items()
    assert mrkd.objective.cfg.alpha == 0.7 and "mrkd.alpha" in mrkd.hparams()


def _kl(p, q) -> float:
    return sum(a * math.log(a / b) for a, b in zip(p, q))


def _softmax(z, tau=1.0) -> list[float]:
    e = [math.exp(v / tau) for v in z]
    return [v / sum(e) for v in e]


@pytest.mark.parametrize("tau", [1.0, 2.0])
def test_kd_loss_matches_a_hand_computed_case(tmp_path, tau):
    method = _kd_method(tmp_path, "teacher.alpha=0.25", f"teacher.tau={tau}")
    student = torch.tensor([[0.0, 0.0, 0.0]], requires_grad=True)
    loss, logs = method.loss(student, None, torch.tensor([0]), torch.tensor([0]), 0, True)
    # teacher of clip a: (ln 3, 0, 0) → at τ: p_t ∝ (3^(1/τ), 1, 1); student uniform
    p_t = [3 ** (1 / tau) / (3 ** (1 / tau) + 2), 1 / (3 ** (1 / tau) + 2), 1 / (3 ** (1 / tau) + 2)]
    kd = tau ** 2 * _kl(p_t, [1 / 3] * 3)
    ce = math.log(3)
    assert logs["loss/kd"] == pytest.approx(kd, rel=1e-5)
    assert logs["loss/ce"] == pytest.approx(ce, rel=1e-6)
    assert loss.item() == pytest.approx(0.75 * ce + 0.25 * kd, rel=1e-5)
    assert logs["kd/teacher_acc/0"] == 1.0 and logs["kd/ka_rate"] == 0.0


def test_kd_with_knowledge_adjustment_swaps_a_wrong_teacher(tmp_path):
    method = _kd_method(tmp_path, "teacher.alpha=1.0", "teacher.tau=1", "teacher.ka=true")
    student = torch.tensor([[1.0, 0.0, 0.0]])
    # clip c: teacher (0, 2, 0), label 2 → KA swaps classes 1 and 2 → (0, 0, 2)
    loss, logs = method.loss(student, None, torch.tensor([2]), torch.tensor([2]), 0, True)
    expected = _kl(_softmax([0, 0, 2]), _softmax([1, 0, 0]))
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert logs["kd/ka_rate"] == 1.0 and logs["kd/teacher_acc/0"] == 0.0 and logs["kd/ensemble_acc"] == 0.0
    unadjusted = _kd_method(tmp_path, "teacher.alpha=1.0", "teacher.tau=1", "teacher.ka=false")
    loss, _ = unadjusted.loss(student, None, torch.tensor([2]), torch.tensor([2]), 0, True)
    assert loss.item() == pytest.approx(_kl(_softmax([0, 2, 0]), _softmax([1, 0, 0])), rel=1e-5)


def test_gradient_flows_to_the_student_only(tmp_path):
    method = _kd_method(tmp_path, "teacher.alpha=1.0")
    student = torch.zeros(2, 3, requires_grad=True)
    loss, _ = method.loss(student, None, torch.tensor([0, 1]), torch.tensor([0, 1]), 0, False)
    loss.backward()
    assert student.grad is not None and student.grad[0, 0] < 0  # pulled toward the teacher's class 0
    assert not method.term.teachers.table.requires_grad


# ---- alignment to items, resume --------------------------------------------------------------------------------
def _record_teacher_rows(trainer, seen: list):
    """Wrap the method's teacher signal: remember (file names of the batch, teacher rows returned)."""
    signal = trainer.method.term.teachers
    original = signal.logits
    names = trainer.data.train.items["filename"].astype(str).tolist()

    def logits(x, index):
        out = original(x, index)
        seen.append(([names[i] for i in index.tolist()], out[0, :, 0].tolist()))
        return out
    signal.logits = logits


def test_teacher_logits_follow_the_items_across_shuffles_and_resume(prepared, tmp_path):
    names = train_filenames(prepared, tmp_path / "probe")
    code = {name: float(i) for i, name in enumerate(sorted(names))}  # each clip's own mark in column 0
    table = np.zeros((len(names), 3), dtype=np.float32)
    table[:, 0] = [code[n] for n in names]
    write_teacher_logits(tmp_path / "t.csv", [n.removeprefix("audio/") for n in names], CLASSES, table)
    extra = ["method=kd", f"teacher.logits={tmp_path / 't.csv'}", "teacher.alpha=0.1"]
    trainer = Trainer(config(prepared, tmp_path / "runs", *extra))
    seen: list = []
    _record_teacher_rows(trainer, seen)
    trainer.fit(stop_after=1)
    resumed = Trainer(config(prepared, tmp_path / "runs", *extra), resume_from=trainer.run_dir)
    _record_teacher_rows(resumed, seen)
    resumed.fit()
    assert len(seen) == 3 * (len(names) // 8)
    orders = [tuple(batch) for batch, _ in seen]
    assert len(set(orders)) > 1  # shuffled
    for batch, rows in seen:
        assert rows == [code[n] for n in batch]


@pytest.mark.parametrize("extra", [
    ["method=kd", "teacher.ensemble=fcn", "augment.mixup_alpha=0.3"],
    ["method=kd", "teacher.input=same"],
    ["method=mrkd", "mrkd.k=1", "mrkd.with_teacher=ensembler"],
    ["method=mrkd", "mrkd.k=1", "mrkd.with_teacher=term", "teacher.ensemble=fcn"],
], ids=["kd_fcn_mixup", "kd_same", "mrkd_ensembler", "mrkd_term"])
def test_resume_with_teachers_is_exact(prepared, teachers, tmp_path, extra):
    extra = [*extra, f"teacher.runs=[{teachers[0]},{teachers[1]}]"]
    _, straight = train_run(config(prepared, tmp_path / "a", *extra))
    trainer = Trainer(config(prepared, tmp_path / "b", *extra))
    trainer.fit(stop_after=1)
    resumed = Trainer(config(prepared, tmp_path / "b", *extra), resume_from=trainer.run_dir).fit()
    assert resumed["complete"]
    assert [h["log_loss"] for h in resumed["history"]] == [h["log_loss"] for h in straight["history"]]


def test_resume_refuses_other_teachers(prepared, teachers, tmp_path, capsys):
    extra = ["method=kd", f"teacher.runs=[{teachers[0]}]"]
    trainer = Trainer(config(prepared, tmp_path, *extra))
    trainer.fit(stop_after=1)
    saved = trainer.run_dir / "config.yaml"
    saved.write_text(saved.read_text().replace(str(teachers[0]), str(teachers[1])))
    assert main(["train", "--resume", str(trainer.run_dir)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not the teachers this run was started with" in err[0], err


# ---- MrKD with a teacher ---------------------------------------------------------------------------------------
def test_mrkd_with_a_teacher_in_the_ensembler(prepared, teachers, tmp_path):
    from tests.test_engine import scalars
    run_dir, _ = train_run(config(prepared, tmp_path, "method=mrkd", "mrkd.k=2", f"teacher.runs=[{teachers[0]}]"))
    _, kd = scalars(run_dir, "loss/kd")
    _, active = scalars(run_dir, "mrkd/active")
    assert kd[0] > 0 and active[0] == 0  # the teacher teaches from the first step, before the bank is full
    acc, _ = scalars(run_dir, None)
    tags = set(acc.Tags()["scalars"])
    assert {"mrkd/teacher_acc/0", "mrkd/teacher_acc/1", "mrkd/teacher_acc/2"} <= tags  # 2 snapshots + teacher
    state = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert state["method"]["fcn"]["mlp.0.weight"].shape[1] == 3 * 3  # (K + 1) teachers × C classes


def test_mrkd_with_a_teacher_as_a_second_term(prepared, teachers, tmp_path):
    from tests.test_engine import scalars
    run_dir, _ = train_run(config(prepared, tmp_path, "method=mrkd", "mrkd.k=2", f"teacher.runs=[{teachers[0]}]",
                                  "mrkd.with_teacher=term"))
    _, kd_teacher = scalars(run_dir, "loss/kd_teacher")
    _, kd_bank = scalars(run_dir, "loss/kd")
    assert all(v > 0 for v in kd_teacher) and kd_bank[0] == 0 and kd_bank[-1] > 0


# ---- the teacher-logits command --------------------------------------------------------------------------------
def test_teacher_logits_command_round_trips(prepared, teachers, tmp_path, capsys):
    out = tmp_path / "ensemble.csv"
    assert main(["teacher-logits", str(teachers[0]), str(teachers[1]), "--out", str(out)]) == 0
    assert "48 clips × 3 classes, mean logits of 2 run(s)" in capsys.readouterr().out
    trainer = Trainer(config(prepared, tmp_path, "method=kd", f"teacher.runs=[{teachers[0]},{teachers[1]}]"))
    from_runs = trainer.method.term.teachers.table.mean(dim=0).numpy()
    names = trainer.data.train.items["filename"].astype(str).tolist()
    from_file = read_teacher_logits(out, names, CLASSES)
    np.testing.assert_allclose(from_file, from_runs, rtol=1e-5, atol=1e-5)
    run_dir, summary = train_run(config(prepared, tmp_path, "method=kd", f"teacher.logits={out}"))
    assert summary["complete"]


# ---- bad teacher input: one line, exit 2 -----------------------------------------------------------------------
def _csv(tmp_path, text: str):
    path = tmp_path / "bad.csv"
    path.write_bytes(text.encode("utf-8", "surrogateescape"))
    return path


BAD_FILES = {
    "missing clip": ("filename,metro,park,street\naudio/nothing.wav,1,2,3\n", "no row for clip"),
    "nan": (None, "is 'nan', not a finite number"),
    "wrong width": (None, "5 fields, the header has 4"),
    "classes": ("filename,metro,park,beach\n", "missing: street"),
    "no filename column": ("clip,metro,park,street\n", "the first column must be 'filename'"),
    "not a number": (None, "is 'high', not a number"),
    "duplicate": (None, "appears twice"),
    "binary": ("filename,metro,park,street\n\udcff\udcfe,1,2,3\n", "not a UTF-8 CSV file"),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_teacher_logits_file_is_one_line(prepared, tmp_path, capsys, case):
    text, message = BAD_FILES[case]
    if text is None:
        names = train_filenames(prepared, tmp_path / "probe")
        rows = [f"{n},1,2,3" for n in names]
        rows[5] = {"nan": f"{names[5]},1,nan,3", "wrong width": f"{names[5]},1,2,3,4",
                   "not a number": f"{names[5]},1,high,3", "duplicate": rows[4]}[case]
        text = "filename,metro,park,street\n" + "\n".join(rows) + "\n"
    path = _csv(tmp_path, text)
    assert main(["train", "--config", "configs/experiments/dcase_ce.yaml", *overrides(prepared, tmp_path / "runs", "method=kd", f"teacher.logits={path}")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(path) in err[0] and message in err[0], err
    if case in ("nan", "wrong width", "not a number"):
        assert names[5] in err[0] and "line 7" in err[0]


@pytest.mark.parametrize("extra, message", [
    (["method=kd"], "method kd: needs a teacher"),
    (["method=ce", "teacher.logits=x.csv"], "method 'ce' uses no teacher"),
    (["method=kd", "teacher.logits=x.csv", "teacher.runs=[y]"], "give one teacher source"),
    (["method=kd", "teacher.logits=x.csv", "teacher.input=same"], "'same' needs teacher runs"),
    (["method=kd", "teacher.logits=nowhere.csv"], "nowhere.csv: file not found"),
    (["method=kd", "teacher.runs=[nowhere]"], "nowhere: not a run directory"),
    (["method=kd", "teacher.runs=[x]", "teacher.alpha=2"], "teacher.alpha: must be a finite number in [0, 1]"),
    (["method=mrkd", "teacher.runs=[x]", "teacher.alpha=0.3"], "teacher.alpha: not read: mrkd.with_teacher is "
                                                               "'ensembler'"),
    (["method=kd", "teacher.runs=[x]", "teacher.fcn_hidden=64"], "teacher.fcn_hidden: read only when "
                                                                 "teacher.ensemble is 'fcn'"),
])
def test_bad_teacher_settings_are_one_line(prepared, tmp_path, capsys, extra, message):
    assert main(["train", "--config", "configs/experiments/dcase_ce.yaml", *overrides(prepared, tmp_path / "runs", *extra)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


def test_teacher_run_of_another_dataset_is_refused(prepared, teachers, tmp_path, capsys):
    other = tmp_path / "other"
    shutil.copytree(teachers[0], other)
    info = json.loads((other / "data.json").read_text())
    info["class_names"] = ["a", "b", "c"]
    (other / "data.json").write_text(json.dumps(info))
    assert main(["train", "--config", "configs/experiments/dcase_ce.yaml", *overrides(prepared, tmp_path / "runs", "method=kd", f"teacher.runs=[{other}]")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(other) in err[0] and "class_names" in err[0], err


def test_exported_student_holds_the_student_alone(prepared, teachers, tmp_path):
    """The teachers (wider) stay out of the deployed model: complexity and the ONNX file are the student's."""
    from audio_mrkd.export.commands import export_run
    student, _ = train_run(config(prepared, tmp_path / "kd", "method=kd", f"teacher.runs=[{teachers[0]}]",
                                  "teacher.ensemble=fcn", "train.epochs=1"))
    plain, _ = train_run(config(prepared, tmp_path / "ce", "method=ce", "train.epochs=1"))
    reports = [export_run(run, tmp_path / name, log=lambda *_: None).complexity
               for run, name in ((student, "kd_export"), (plain, "ce_export"), (teachers[0], "teacher_export"))]
    keys = ("parameters", "macs")
    assert {k: reports[0][k] for k in keys} == {k: reports[1][k] for k in keys}
    assert reports[2]["parameters"] > reports[0]["parameters"]


# ---- teachers inside an ablation's folds -----------------------------------------------------------------------
def test_ablation_trains_teachers_inside_each_fold_first(prepared, tmp_path):
    import yaml
    from audio_mrkd.studies.ablation import run_ablation
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"data": {"name": "tiny", "manifest_dir": str(prepared / "manifests")},
                                      "model": {"name": "cp_mobile",
                                                "options": {"base_channels": 8, "n_blocks": [1, 1, 1]}},
                                      "train": {"epochs": 2, "batch_size": 8}, "mrkd": {"k": 1}}))
    (tmp_path / "teacher.yaml").write_text("base: recipe.yaml\nmodel: {options: {base_channels: 16}}\n")
    spec = tmp_path / "spec.yaml"
    spec.write_text("config: recipe.yaml\nfolds: 2\nseeds: [0]\nreference: ce\n"
                    "teachers: {config: teacher.yaml, seeds: [5, 6]}\n"
                    "variants:\n  ce: [method=ce]\n  kd: [method=kd, teacher.runs=@teachers]\n"
                    "  kd_mrkd: [method=mrkd, teacher.runs=@teachers]\n")
    table = run_ablation(spec, tmp_path / "abl", log=lambda *_: None)
    records = [json.loads(line) for line in (tmp_path / "abl" / "runs.jsonl").read_text().splitlines()]
    assert [r["variant"] for r in records[:4]] == ["teacher"] * 4  # the teachers first
    assert len(records) == 4 + 2 * 3
    teacher_dirs = {(r["fold"], r["seed"]): tmp_path / "abl" / r["run_dir"] for r in records[:4]}
    for (fold, _), run_dir in teacher_dirs.items():
        saved = yaml.safe_load((run_dir / "config.yaml").read_text())
        assert saved["data"]["cv_fold"] == fold and saved["model"]["options"]["base_channels"] == 16
        assert (run_dir / "checkpoints" / "best.pt").is_file()
    for r in records[4:]:
        saved = yaml.safe_load((tmp_path / "abl" / r["run_dir"] / "config.yaml").read_text())
        assert saved["data"]["cv_fold"] == r["fold"]
        if r["variant"] == "ce":  # a run without a teacher: its folder's config holds no teacher section
            assert "teacher" not in saved
            continue
        expected = [str(teacher_dirs[(r["fold"], s)]) for s in (5, 6)]
        assert saved["teacher"]["runs"] == expected  # the fold's own teachers, never another fold's
    assert "| teacher (each run alone) | `teacher.yaml`" in table
    again = []
    run_ablation(spec, tmp_path / "abl", log=again.append)
    assert again == [f"ablation: 10 of 10 runs already in {tmp_path / 'abl' / 'runs.jsonl'}"]


def interrupt_after_step(monkeypatch, n: int) -> None:
    """Training raises KeyboardInterrupt right after its n-th optimiser step (where a kill would land)."""
    from audio_mrkd import faults
    steps = []

    def point(name):
        if name == "step":
            steps.append(1)
            if len(steps) == n:
                raise KeyboardInterrupt
    monkeypatch.setattr(faults, "point", point)


@pytest.mark.parametrize("method", [
    ["method=ce"], ["method=mrkd", "mrkd.k=2", "mrkd.teacher_input=cached"], ["method=pskd"], ["method=dlb"],
    ["method=ema", "ema.warmup_steps=2"], ["method=kd", "teacher.ensemble=fcn"],
    ["method=mrkd", "mrkd.k=1", "mrkd.with_teacher=term"]], ids=lambda m: "_".join(m).replace("method=", ""))
def test_every_method_resumes_exactly_from_a_mid_epoch_checkpoint(prepared, teachers, tmp_path, monkeypatch, method):
    """train.checkpoint_every saves inside epochs; a run stopped after step 7 (the last checkpoint at step 6, in
    the middle of epoch 2) and resumed ends exactly where the uninterrupted run ends."""
    with_teacher = "method=kd" in method or "mrkd.with_teacher=term" in method
    extra = [*method, f"teacher.runs=[{teachers[0]},{teachers[1]}]" if with_teacher else "seed=0",
             "train.checkpoint_every=2", "augment.mixup_alpha=0.3"]
    _, straight = train_run(config(prepared, tmp_path / "a", *extra))
    interrupt_after_step(monkeypatch, 7)
    trainer = Trainer(config(prepared, tmp_path / "b", *extra))
    with pytest.raises(KeyboardInterrupt):
        trainer.fit()
    monkeypatch.undo()
    state = torch.load(trainer.run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert state["global_step"] == 6 and state["loader"]["position"] == 2  # inside epoch 2 of 4-step epochs
    resumed = Trainer(config(prepared, tmp_path / "b", *extra), resume_from=trainer.run_dir).fit()
    assert [h["log_loss"] for h in resumed["history"]] == [h["log_loss"] for h in straight["history"]]


def test_ablation_trains_a_vanished_teacher_again_when_a_variant_needs_it(prepared, tmp_path):
    """runs.jsonl carried to a fresh machine without the run folders: the teachers a remaining variant needs are
    trained again (deterministically: the same teacher), the others are not."""
    import yaml
    from audio_mrkd.studies.ablation import run_ablation
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump({
        "data": {"name": "tiny", "manifest_dir": str(prepared / "manifests")},
        "model": {"name": "cp_mobile", "options": {"base_channels": 8, "n_blocks": [1, 1, 1]}},
        "train": {"epochs": 1, "batch_size": 8}}))
    spec = tmp_path / "spec.yaml"
    spec.write_text("config: recipe.yaml\nfolds: 2\nseeds: [0]\nreference: ce\nteachers: {config: recipe.yaml, "
                    "seeds: [5]}\nvariants:\n  ce: [method=ce]\n  kd: [method=kd, teacher.runs=@teachers]\n")
    out = tmp_path / "abl"
    run_ablation(spec, out, log=lambda *_: None)
    lines = (out / "runs.jsonl").read_text().splitlines()
    first = {(r["variant"], r["fold"]): r for r in map(json.loads, lines)}
    shutil.rmtree(out / "teacher")  # the teachers' folders are gone …
    kept = [line for line in lines if not (json.loads(line)["variant"] == "kd" and json.loads(line)["fold"] == 1)]
    (out / "runs.jsonl").write_text("\n".join(kept) + "\n")  # … and fold 1's kd run is still to do
    run_ablation(spec, out, log=lambda *_: None)
    records = [json.loads(line) for line in (out / "runs.jsonl").read_text().splitlines()]
    retrained = [r for r in records[len(kept):] if r["variant"] == "teacher"]
    assert [r["fold"] for r in retrained] == [1]  # fold 0 needs no teacher any more
    assert retrained[0]["last_log_loss"] == first[("teacher", 1)]["last_log_loss"]  # the same teacher again
    assert (out / retrained[0]["run_dir"] / "checkpoints" / "best.pt").is_file()
    assert [r["variant"] for r in records[len(kept):]] == ["teacher", "kd"]


# ---- a teacher's best epoch chosen on the student's split -----------------------------------------------------
def test_teachers_are_distilled_at_their_last_epoch_by_default(prepared, teachers, tmp_path, capsys, monkeypatch):
    from audio_mrkd.runs.run import Run
    original, loaded = Run.model, []

    def model(run, which="best"):
        loaded.append(which)
        return original(run, which)
    monkeypatch.setattr(Run, "model", model)
    Trainer(config(prepared, tmp_path, "method=kd", f"teacher.runs=[{teachers[0]},{teachers[1]}]"))
    assert loaded == ["last", "last"] and "teacher.checkpoint" not in capsys.readouterr().err
    Trainer(config(prepared, tmp_path, "method=kd", f"teacher.runs=[{teachers[0]},{teachers[1]}]",
                   "teacher.checkpoint=best"))
    assert loaded[2:] == ["best", "best"]
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if line.startswith("teacher.checkpoint: warning")]
    assert len(warnings) == 1 and "2 of the 2 teacher run(s)" in warnings[0], err


def test_best_teachers_scored_on_another_split_are_no_leak(prepared, teachers, tmp_path, capsys):
    """The student scored on a fold of its own (data.cv_fold): the teachers chose their best epoch elsewhere."""
    Trainer(config(prepared, tmp_path, "method=kd", f"teacher.runs=[{teachers[0]}]", "teacher.checkpoint=best",
                   "data.cv_folds=2", "data.cv_fold=0"))
    assert "teacher.checkpoint: warning" not in capsys.readouterr().err


def test_ablation_warns_of_a_variant_distilling_best_teachers(prepared, tmp_path):
    from audio_mrkd.studies.ablation import run_ablation
    (tmp_path / "recipe.yaml").write_text(f"data: {{name: tiny, manifest_dir: {prepared / 'manifests'}}}\n")
    spec = tmp_path / "spec.yaml"
    spec.write_text("config: recipe.yaml\nfolds: 2\nseeds: [0]\nreference: ce\n"
                    "teachers: {config: recipe.yaml, seeds: [5]}\nvariants:\n  ce: [method=ce]\n"
                    "  kd: [method=kd, teacher.runs=@teachers]\n"
                    "  kd_best: [method=kd, teacher.runs=@teachers, teacher.checkpoint=best]\n")
    lines = []
    run_ablation(spec, tmp_path / "abl", log=lines.append, train=False)  # plans and warns, trains nothing
    warnings = [line for line in lines if "warning" in line]
    assert len(warnings) == 1 and "variant kd_best distils its teachers at teacher.checkpoint=best" in warnings[0]


# ---- a teacher-logits file's origin: the same leak check as teacher runs ----------------------------------------
@pytest.fixture(scope="module")
def logits_files(teachers, tmp_path_factory):
    """Teacher-logits files of the teacher ensemble written by the command at its best and at its last epoch."""
    out = tmp_path_factory.mktemp("logits")
    for which in ("best", "last"):
        assert main(["teacher-logits", str(teachers[0]), str(teachers[1]), "--out", str(out / f"{which}.csv"),
                     "--checkpoint", which]) == 0
    return {which: out / f"{which}.csv" for which in ("best", "last")}


def _leak_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if "warning: 'best' distils" in line]


def test_teacher_logits_file_records_its_origin(prepared, teachers, logits_files):
    origin = json.loads(logits_files["best"].with_name("best.csv.origin.json").read_text())
    assert origin["checkpoint"] == "best" and origin["split"] == "all"
    assert [r["run_dir"] for r in origin["runs"]] == [str(teachers[0].resolve()), str(teachers[1].resolve())]
    info = json.loads((teachers[0] / "data.json").read_text())
    assert origin["runs"][0]["data"] == info  # the run's data description, as its run folder holds it


@pytest.mark.parametrize("method", [["method=kd"], ["method=mrkd", "mrkd.k=2"],
                                    ["method=mrkd", "mrkd.k=2", "mrkd.with_teacher=term"]])
def test_a_file_of_best_teachers_scored_on_the_student_split_warns_as_the_runs_do(prepared, teachers, logits_files,
                                                                                 tmp_path, capsys, method):
    runs = f"teacher.runs=[{teachers[0].resolve()},{teachers[1].resolve()}]"
    Trainer(config(prepared, tmp_path / "runs", *method, runs, "teacher.checkpoint=best"))
    from_runs = _leak_lines(capsys.readouterr().err)
    Trainer(config(prepared, tmp_path / "file", *method, f"teacher.logits={logits_files['best']}"))
    err = capsys.readouterr().err
    from_file = _leak_lines(err)
    assert len(from_runs) == 1 and len(from_file) == 1 and len(err.strip().splitlines()) == 1, err
    assert from_file[0].startswith(f"teacher.logits: {logits_files['best']}: warning: 'best' distils the epoch "
                                   f"2 of the 2 teacher run(s)")
    # the same sentence, whichever the source; only the setting to change differs
    assert from_file[0].split("warning: ")[1].split("; ")[0] == from_runs[0].split("warning: ")[1].split("; ")[0]
    assert from_file[0].endswith("a file written by teacher-logits --checkpoint last does not")


def test_a_file_of_last_teachers_or_of_best_teachers_scored_elsewhere_is_no_leak(prepared, logits_files, tmp_path,
                                                                                  capsys):
    _, summary = train_run(config(prepared, tmp_path / "last", "method=kd",
                                  f"teacher.logits={logits_files['last']}", "train.epochs=1"))
    assert summary["complete"]
    assert "teacher.logits" not in capsys.readouterr().err
    # the student scored on a fold of its own (data.cv_fold): the teachers chose their best epoch elsewhere
    Trainer(config(prepared, tmp_path / "fold", "method=kd", f"teacher.logits={logits_files['best']}",
                   "data.cv_folds=2", "data.cv_fold=0"))
    assert "teacher.logits" not in capsys.readouterr().err


def test_a_file_without_its_origin_says_once_that_a_leak_cannot_be_checked(prepared, logits_files, tmp_path,
                                                                            capsys):
    bare = tmp_path / "brought.csv"
    shutil.copy(logits_files["best"], bare)  # a file brought from elsewhere (or written before files had origins)
    _, summary = train_run(config(prepared, tmp_path / "runs", "method=kd", f"teacher.logits={bare}",
                                  "train.epochs=2"))
    assert summary["complete"]  # still loads
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"teacher.logits: {bare}: origin unknown (no brought.csv.origin.json beside it), so whether its "
                   f"teachers' checkpoint leaks the split this run is scored on cannot be checked"]


def test_a_file_changed_after_its_origin_was_written_has_an_unknown_origin(prepared, logits_files, tmp_path, capsys):
    edited = tmp_path / "edited.csv"
    shutil.copy(logits_files["best"], edited)
    shutil.copy(logits_files["best"].with_name("best.csv.origin.json"), tmp_path / "edited.csv.origin.json")
    Trainer(config(prepared, tmp_path / "same", "method=kd", f"teacher.logits={edited}"))
    assert len(_leak_lines(capsys.readouterr().err)) == 1  # the record describes this very content
    lines = edited.read_text().splitlines()
    head, first = lines[1].split(",", 1)
    lines[1] = f"{head},{','.join('0.0' for _ in first.split(','))}"  # another teacher for one clip
    edited.write_text("\n".join(lines) + "\n")
    Trainer(config(prepared, tmp_path / "edited", "method=kd", f"teacher.logits={edited}"))
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "origin unknown (edited.csv.origin.json describes another content of the file" in err[0]


def test_writing_a_file_without_an_origin_removes_a_stale_record(tmp_path):
    path = tmp_path / "t.csv"
    path.with_name("t.csv.origin.json").write_text("{}")
    write_teacher_logits(path, ["audio/a.wav"], CLASSES, np.zeros((1, 3), np.float32))
    assert not path.with_name("t.csv.origin.json").exists()


def _damage(record: dict, case: str) -> dict:
    if case == "checkpoint":
        record["checkpoint"] = "sometimes"
    elif case == "runs":
        del record["runs"]
    elif case == "data":
        record["runs"][1]["data"] = "tiny"
    elif case == "eval_split":
        record["runs"][0]["data"]["eval_split"] = ["evaluate"]
    return record


BAD_ORIGINS = {
    "not json": "not a JSON origin record (Expecting value at line 1)",
    "not an object": "not an origin record (a JSON object)",
    "checkpoint": "key 'checkpoint': 'sometimes' is not 'best' or 'last'",
    "runs": "key 'runs': missing",
    "data": "key 'runs[1].data': missing or not a run's data description",
    "eval_split": "key 'runs[0].data.eval_split': ['evaluate'] is not a name or a number",
}


@pytest.mark.parametrize("case", list(BAD_ORIGINS))
def test_a_damaged_origin_record_is_one_line(prepared, logits_files, tmp_path, capsys, case):
    path = tmp_path / "t.csv"
    shutil.copy(logits_files["best"], path)
    record = json.loads(logits_files["best"].with_name("best.csv.origin.json").read_text())
    text = {"not json": '{"format": 1, "checkpoint": ', "not an object": "[1, 2]"}.get(case) \
        or json.dumps(_damage(record, case))
    path.with_name("t.csv.origin.json").write_text(text)
    assert main(["train", "--config", "configs/experiments/dcase_ce.yaml",
                 *overrides(prepared, tmp_path / "runs", "method=kd", f"teacher.logits={path}")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{path}.origin.json: " in err[0] and BAD_ORIGINS[case] in err[0], err
    assert "Traceback" not in err[0]

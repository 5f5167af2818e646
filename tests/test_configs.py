"""Every shipped config and ablation spec loads and validates (a typo in one is caught here, not by a user), and the
study records and specs kept in docs/studies name no machine's absolute paths (they run from any clone)."""
import json
from pathlib import Path

import pytest

from audio_mrkd.config_loader import load_experiment
from audio_mrkd.studies.spec import load_spec

ROOT = Path(__file__).resolve().parent.parent
EXPERIMENTS = sorted((ROOT / "configs" / "experiments").glob("*.yaml"))
ABLATIONS = sorted((ROOT / "configs" / "ablations").glob("*.yaml")) + sorted((ROOT / "docs" / "studies").glob("*.yaml"))
RECORDS = sorted((ROOT / "docs" / "studies").glob("*.runs.jsonl"))


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.stem)
def test_experiment_config_loads(path):
    text = path.read_text()
    extra = ["data.root=/data"] if "fmnist" in path.stem or "fashion" in path.stem or "cifar" in path.stem \
        or "cinic" in path.stem else []
    if "method: kd" in text:
        extra.append("teacher.logits=teacher.csv")  # a kd student needs a teacher: the user names it
    cfg = load_experiment(path, extra)
    assert cfg.name and cfg.method


@pytest.mark.parametrize("path", ABLATIONS, ids=lambda p: p.stem)
def test_ablation_spec_loads(path):
    spec, config = load_spec(path)
    assert config.is_file() and spec.reference in spec.variants
    if spec.teachers is not None:
        assert Path(spec.teachers.config).is_file()


@pytest.mark.parametrize("path", RECORDS, ids=lambda p: p.name.split(".")[0])
def test_study_records_hold_paths_relative_to_their_study(path):
    for number, line in enumerate(path.read_text().splitlines(), 1):
        record = json.loads(line)
        for key in ("run_dir", "reused_from"):
            assert not Path(record.get(key) or "").is_absolute(), f"{path.name}:{number}: {key} {record[key]}"


@pytest.mark.parametrize("path", ABLATIONS, ids=lambda p: p.stem)
def test_ablation_spec_names_no_absolute_path(path):
    spec, _ = load_spec(path)
    words = [spec.config, *spec.overrides, *(o for overrides in spec.variants.values() for o in overrides)]
    for word in words:
        for part in word.replace("[", ",").replace("]", ",").replace("=", ",").split(","):
            assert not part.strip().startswith("/"), f"{path.name}: {word}"


def test_shipped_configs_use_no_deprecated_key(capsys):
    from audio_mrkd import config_loader
    config_loader._said.clear()
    for path in EXPERIMENTS:
        test_experiment_config_loads(path)
    for path in ABLATIONS:
        test_ablation_spec_loads(path)
    assert "deprecated" not in capsys.readouterr().err


def test_deprecated_keys_are_read_with_one_line_each(capsys):
    """The keys of former layouts (``kd.teachers``, ``kd.alpha``, ``method_options.*``, …) keep working for one
    release: moved to their new home, each said once per process on stderr."""
    from audio_mrkd import config_loader
    config_loader._said.clear()
    old = ["data.kind=synthetic", "method=mrkd", "kd.teachers=[r1, r2]", "kd.checkpoint=best", "kd.with_mrkd=term",
           "kd.alpha=0.3", "kd.tau=2", "kd.ka=true", "kd.ensemble=fcn", "kd.fcn_hidden=64"]
    new = ["data.kind=synthetic", "method=mrkd", "teacher.runs=[r1, r2]", "teacher.checkpoint=best",
           "mrkd.with_teacher=term", "teacher.alpha=0.3", "teacher.tau=2", "teacher.ka=true", "teacher.ensemble=fcn",
           "teacher.fcn_hidden=64"]
    assert load_experiment(None, old) == load_experiment(None, new)
    lines = capsys.readouterr().err.splitlines()
    assert sorted(lines) == [f"{o}: deprecated, write {n} (the old key is read until the next release)" for o, n in
                             (("kd.alpha", "teacher.alpha"), ("kd.checkpoint", "teacher.checkpoint"),
                              ("kd.ensemble", "teacher.ensemble"), ("kd.fcn_hidden", "teacher.fcn_hidden"),
                              ("kd.ka", "teacher.ka"), ("kd.tau", "teacher.tau"), ("kd.teachers", "teacher.runs"),
                              ("kd.with_mrkd", "mrkd.with_teacher"))]
    load_experiment(None, old)
    assert capsys.readouterr().err == ""   # once per process
    cfg = load_experiment(None, ["data.kind=synthetic", "method=pskd", "method_options.alpha_T=0.6"])
    assert cfg.options().alpha_T == 0.6 and "write pskd.alpha_T" in capsys.readouterr().err


@pytest.mark.parametrize("overrides, message", [
    (["method=kd", "kd.teachers=[a]", "teacher.runs=[b]"],
     "kd.teachers and teacher.runs: the same setting twice (kd.teachers is its former name)"),
    (["method=ce", "method_options.alpha_T=0.5"], "method_options: method 'ce' takes no options, got alpha_T"),
    (["method=pskd", "method_options.alpha=0.5"], "pskd.alpha: unknown config key"),
    (["method=ce", "teacher.runs=[a]"], "teacher.runs / teacher.logits: method 'ce' uses no teacher (mrkd or kd do)"),
    (["method=kd"], "method kd: needs a teacher, teacher.runs: [RUN_DIR, ...] or teacher.logits: FILE"),
    (["method=kd", "teacher.runs=[a]", "kd.beta=1"], "kd: unknown config key"),   # kd has no section of its own
])
def test_deprecated_and_teacher_keys_refused_in_one_line(overrides, message):
    from audio_mrkd.errors import InputError
    with pytest.raises(InputError) as caught:
        load_experiment(None, ["data.kind=synthetic", *overrides])
    assert str(caught.value).startswith(message)


def test_a_run_folder_of_the_former_layouts_reads_quietly(capsys):
    """A config.yaml written before methods had sections, or before the teacher term owned its settings (every section
    written in full, settings the run did not read among them), reads as the same config, without deprecation
    lines."""
    from audio_mrkd import config_io, config_loader
    from audio_mrkd.config_loader import experiment_from_dict
    config_loader._said.clear()
    cfg = load_experiment(None, ["data.kind=synthetic", "method=pskd", "pskd.alpha_T=0.7", "teacher.checkpoint=best"])
    old = {k: v for k, v in config_io.to_dict(cfg).items() if k not in ("teacher", "pskd", "dlb", "ema")}
    old["kd"] = {"teachers": [], "teacher_logits": "", "checkpoint": "best", "teacher_input": "cached",
                 "ensemble": "mean", "alpha": 0.5, "tau": 3.0, "ka": False, "fcn_hidden": 128, "fcn_lr": 1e-3,
                 "with_mrkd": old["mrkd"].pop("with_teacher")}
    old["method_options"] = {"alpha_T": 0.7}
    assert experiment_from_dict(old, run_folder=True) == cfg
    # the layout before: a teacher section in full beside the kd section, here under MrKD's ensembler (which reads
    # none of the term's settings) with the mean (which reads no fcn_*)
    taught = load_experiment(None, ["data.kind=synthetic", "method=mrkd", "teacher.runs=[r1]"])
    before = config_io.to_dict(taught)
    before["kd"] = {key: before["teacher"].pop(key) for key in ("alpha", "tau", "ka")}
    assert experiment_from_dict(before, run_folder=True) == taught
    assert capsys.readouterr().err == ""


def test_a_setting_the_chosen_combination_ignores_is_refused_in_one_line():
    """Inside a section the run reads, a setting its choices leave unread is an error, not silence: the teacher term's
    under MrKD's ensembler (the teacher joins MrKD's own ensembler, weighted by mrkd.*), fcn_* beside the mean."""
    from audio_mrkd.errors import InputError
    taught = ["data.kind=synthetic", "teacher.runs=[r1, r2]"]
    for given in ("teacher.alpha=0.3", "teacher.tau=2", "teacher.ka=true", "teacher.ensemble=fcn",
                  "teacher.fcn_hidden=64"):
        with pytest.raises(InputError) as caught:
            load_experiment(None, [*taught, "method=mrkd", given])
        assert str(caught.value).startswith(f"{given.split('=')[0]}: not read: mrkd.with_teacher is 'ensembler'")
        fcn = ["teacher.ensemble=fcn"] if "fcn_" in given else []
        load_experiment(None, [*taught, "method=mrkd", "mrkd.with_teacher=term", given, *fcn])   # read there
    for method in (["method=kd"], ["method=mrkd", "mrkd.with_teacher=term"]):
        with pytest.raises(InputError) as caught:
            load_experiment(None, [*taught, *method, "teacher.fcn_lr=0.01"])
        assert str(caught.value) == ("teacher.fcn_lr: read only when teacher.ensemble is 'fcn', and it is 'mean' "
                                     "(leave teacher.fcn_lr out, or set teacher.ensemble=fcn)")
        assert load_experiment(None, [*taught, *method, "teacher.fcn_lr=0.01", "teacher.ensemble=fcn"]) \
            .teacher.fcn_lr == 0.01
    # a section the run does not read at all is left alone (a grid shares one recipe across methods)
    assert load_experiment(None, ["data.kind=synthetic", "method=ce", "teacher.alpha=0.3", "mrkd.k=2"]).method == "ce"


@pytest.mark.parametrize("overrides, sections, teacher_keys", [
    (["method=ce"], [], None),
    (["method=pskd"], ["pskd"], None),
    (["method=mrkd"], ["mrkd"], None),
    (["method=mrkd", "teacher.runs=[r1]"], ["mrkd", "teacher"], ["runs", "logits", "checkpoint", "input"]),
    (["method=mrkd", "teacher.runs=[r1]", "mrkd.with_teacher=term"], ["mrkd", "teacher"],
     ["runs", "logits", "checkpoint", "input", "alpha", "tau", "ka", "ensemble"]),
    (["method=kd", "teacher.runs=[r1, r2]", "teacher.ensemble=fcn"], ["teacher"],
     ["runs", "logits", "checkpoint", "input", "alpha", "tau", "ka", "ensemble", "fcn_hidden", "fcn_lr"]),
])
def test_a_run_folder_config_holds_only_what_the_run_reads(overrides, sections, teacher_keys):
    """config.yaml: the sections every run has, the method's own and the teacher when the run has one, each with the
    settings its choices read — and it loads back, without a line, as the same config."""
    from audio_mrkd.config_loader import experiment_from_dict, run_config
    cfg = load_experiment(None, ["data.kind=synthetic", *overrides])
    written = run_config(cfg)
    assert list(written) == ["name", "method", "seed", "seeds", "data", "model", "augment", "train", *sections]
    assert (list(written["teacher"]) if "teacher" in written else None) == teacher_keys
    assert experiment_from_dict(written) == cfg

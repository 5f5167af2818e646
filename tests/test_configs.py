"""Every shipped config and ablation spec loads and validates (a typo in one is caught here, not by a user), and the
study records and specs kept in docs/studies name no machine's absolute paths (they run from any clone)."""
import json
from pathlib import Path

import pytest

from audio_mrkd.experiment import load_experiment
from audio_mrkd.train.ablation import load_spec

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
        extra.append("kd.teacher_logits=teacher.csv")  # a kd student needs a teacher: the user names it
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

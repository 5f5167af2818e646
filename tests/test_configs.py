"""Every shipped config and ablation spec loads and validates (a typo in one is caught here, not by a user)."""
from pathlib import Path

import pytest

from audio_mrkd.experiment import load_experiment
from audio_mrkd.train.ablation import load_spec

ROOT = Path(__file__).resolve().parent.parent
EXPERIMENTS = sorted((ROOT / "configs" / "experiments").glob("*.yaml"))
ABLATIONS = sorted((ROOT / "configs" / "ablations").glob("*.yaml"))


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

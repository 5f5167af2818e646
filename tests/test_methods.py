"""The Method interface: the registry, a method added without touching the engine, and checkpoints written
before the interface (MrKD state under "mrkd") still resuming."""
import json
from dataclasses import dataclass

import pytest
import torch
import yaml

from audio_mrkd import methods
from audio_mrkd.config_io import setting
from audio_mrkd.config_loader import load_experiment
from audio_mrkd.errors import InputError
from audio_mrkd.methods.base import Method, soft_cross_entropy
from audio_mrkd.runs.checkpoint import save_checkpoint
from audio_mrkd.runs.run import checkpoint_path
from audio_mrkd.train.engine import Trainer, resume_run, train_run
from tests.test_engine import config, prepared  # noqa: F401  (module-scoped fixture)


class CountingSmoothing(Method):
    """A toy method: label-smoothed CE that counts its hooks and keeps the counts in the checkpoint."""

    @dataclass
    class Options:
        smoothing: float = setting(0.2, at_least=0, below=1)   # the bounds, declared once: the loader checks them

    def __init__(self, cfg, ctx):
        super().__init__(cfg, ctx)
        self.counts = {"steps": 0, "epochs": 0}

    def loss(self, logits, x, y, index, epoch, with_logs, mixing=None):
        loss = torch.nn.functional.cross_entropy(logits.float(), y if y.dim() == 1 else y.float(),
                                                 label_smoothing=self.options.smoothing)
        return loss, ({"loss/ce": soft_cross_entropy(logits, y).item(), "loss/smoothed": loss.item()}
                      if with_logs else {})

    def after_step(self, global_step):
        self.counts["steps"] += 1
        assert global_step == self.counts["steps"]

    def after_epoch(self, epoch):
        self.counts["epochs"] += 1

    def state_dict(self):
        return dict(self.counts)

    def load_state_dict(self, state):
        self.counts = dict(state)


def test_registry_names_are_the_config_choices():
    assert set(methods.METHODS) >= {"ce", "mrkd", "pskd"}
    with pytest.raises(InputError, match="method: 'nope' is not one of 'ce', 'mrkd', 'pskd'"):
        load_experiment(None, ["method=nope"])


def test_a_new_method_is_a_class_and_a_registry_line(prepared, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.setitem(methods.METHODS, "smooth", CountingSmoothing)
    trainer = Trainer(config(prepared, tmp_path, "method=smooth", "train.epochs=2", "smooth.smoothing=0.3"))
    assert trainer.method.options.smoothing == 0.3
    summary = trainer.fit()
    assert summary["complete"] and summary["method"] == "smooth"
    assert trainer.method.counts == {"steps": trainer.global_step, "epochs": 2} and trainer.global_step > 0
    state = torch.load(checkpoint_path(trainer.run_dir, "last"), weights_only=True)
    assert state["method"] == trainer.method.counts
    from tests.test_engine import scalars
    _, smoothed = scalars(trainer.run_dir, "loss/smoothed")
    assert len(smoothed) == trainer.global_step  # log_every=1: the method's own log reaches TensorBoard


def test_checkpoint_from_before_the_interface_still_resumes(prepared, tmp_path):  # noqa: F811
    """Older checkpoints kept MrKD's state under "mrkd", and older run folders a config.yaml without method sections
    (``kd.teachers``, ``method_options``): resuming one continues the same trajectory."""
    extra = ["method=mrkd", "mrkd.k=1"]
    _, straight = train_run(config(prepared, tmp_path / "a", *extra))
    trainer = Trainer(config(prepared, tmp_path / "b", *extra))
    trainer.fit(stop_after=2)
    path = checkpoint_path(trainer.run_dir, "last")
    state = torch.load(path, weights_only=True)
    assert state["method"]["bank"]  # the bank is full after epoch 1 (k=1)
    state["mrkd"] = state.pop("method")  # the old layout
    save_checkpoint(state, path)
    saved = yaml.safe_load((trainer.run_dir / "config.yaml").read_text())
    assert "teacher" not in saved and "kd" not in saved  # today's folder: the sections the run reads
    saved["kd"] = {"teachers": [], "teacher_logits": "", "checkpoint": "best", "teacher_input": "cached",
                   "ensemble": "mean", "fcn_hidden": 128, "fcn_lr": 1e-3, "alpha": 0.5, "tau": 3.0, "ka": False,
                   "with_mrkd": saved["mrkd"].pop("with_teacher")}  # the first layout: every section in full
    saved["method_options"] = {}
    (trainer.run_dir / "config.yaml").write_text(yaml.safe_dump(saved, sort_keys=False))
    _, resumed = resume_run(trainer.run_dir)
    assert [h["accuracy"] for h in resumed["history"]] == [h["accuracy"] for h in straight["history"]]
    assert resumed["last"]["log_loss"] == pytest.approx(straight["last"]["log_loss"], abs=1e-6)
    assert json.loads((trainer.run_dir / "metrics.json").read_text())["complete"]


@pytest.mark.parametrize("override,message", [
    ("train.precision=8", "train.precision: 8 is not one of 'auto', '32', '64', 'bf16-mixed', '16-mixed'"),
    ("train.optimizer=adam", "train.optimizer: 'adam' is not one of 'adamw', 'sgd'"),
    ("mrkd.ensemble=max", "mrkd.ensemble: 'max' is not one of 'fcn', 'mean', 'newest'"),
    ("mrkd.spacing=log", "mrkd.spacing: 'log' is not one of 'uniform', 'exponential'"),
    ("data.cv_pool=test", "data.cv_pool: 'test' is not one of 'train', 'all'"),
])
def test_choices_are_checked_where_the_config_enters(override, message):
    """The choices live in the config's types (Literal) and are checked once, when a config is loaded."""
    with pytest.raises(InputError) as err:
        load_experiment(None, ["data.kind=synthetic", override])
    assert str(err.value) == message


def test_numeric_choice_from_an_override():
    assert load_experiment(None, ["data.kind=synthetic", "train.precision=32"]).train.precision == "32"


def test_label_smoothing_is_a_switch_of_every_method():
    """train.label_smoothing ε: loss = (1 − ε)·CE(y) + ε·mean over classes of −log p, in ce and in mrkd."""
    from audio_mrkd.distill.mrkd_objective import MrKD
    from audio_mrkd.methods.mrkd import MemoryReplay
    from audio_mrkd.methods.ce import CrossEntropy

    torch.manual_seed(0)
    logits, y = torch.randn(6, 4), torch.tensor([0, 1, 2, 3, 0, 1])
    logp = torch.log_softmax(logits, dim=1)
    by_hand = (0.9 * -logp[torch.arange(6), y] + 0.1 * -logp.mean(dim=1)).mean()
    cfg = load_experiment(None, ["data.kind=synthetic", "train.label_smoothing=0.1"])
    ce_loss, logs = CrossEntropy(cfg, None).loss(logits, None, y, None, 0, True)
    assert ce_loss.item() == pytest.approx(by_hand.item(), rel=1e-6) and logs["loss/ce"] == ce_loss.item()
    mrkd_loss, _ = MrKD(MemoryReplay.Options(k=2), 4, torch.device("cpu"), label_smoothing=0.1).loss(logits, logits, y)
    assert mrkd_loss.item() == pytest.approx(by_hand.item(), rel=1e-6)  # bank empty: the smoothed CE alone
    with pytest.raises(InputError, match="train.label_smoothing"):
        load_experiment(None, ["data.kind=synthetic", "train.label_smoothing=1.0"])


def test_a_method_section_is_named_after_it_and_checked_against_its_options(monkeypatch):
    monkeypatch.setitem(methods.METHODS, "smooth", CountingSmoothing)
    with pytest.raises(InputError, match="^smooth.smoothing: expected a number, got 'x'$"):
        load_experiment(None, ["data.kind=synthetic", "method=smooth", "smooth.smoothing=x"])
    with pytest.raises(InputError, match=r"^smooth.smoothing: must be a finite number in \[0, 1\), got 1.0$"):
        load_experiment(None, ["data.kind=synthetic", "method=smooth", "smooth.smoothing=1.0"])
    with pytest.raises(InputError, match="^smooth.width: unknown config key"):
        load_experiment(None, ["data.kind=synthetic", "method=smooth", "smooth.width=3"])
    with pytest.raises(InputError, match="^ce: unknown config key"):   # ce declares no options: no section
        load_experiment(None, ["data.kind=synthetic", "method=ce", "ce.smoothing=0.1"])
    assert load_experiment(None, ["method=ce"]).options("smooth").smoothing == 0.2   # every section, at defaults


def test_mrkd_alpha_over_the_run_and_interval_in_percent(prepared, tmp_path):  # noqa: F811
    """alpha_schedule linear: α·(e+1)/E in epoch e; interval_unit percent: backups every p % of the run's steps."""
    from audio_mrkd.distill.mrkd_objective import MrKD
    from audio_mrkd.methods.mrkd import MemoryReplay
    from tests.test_engine import scalars

    linear = MrKD(MemoryReplay.Options(alpha=0.6, alpha_schedule="linear"), 4, torch.device("cpu"), run_epochs=4)
    assert [linear.alpha_at(e) for e in range(4)] == pytest.approx([0.15, 0.3, 0.45, 0.6])
    every = MrKD(MemoryReplay.Options(interval=10, interval_unit="percent"), 4, torch.device("cpu"), run_epochs=5,
                 steps_per_epoch=8).schedule
    assert (every.interval, every.unit) == (4, "step")  # 10 % of 40 steps
    with pytest.raises(InputError, match="^mrkd.interval: a percentage"):
        load_experiment(None, ["data.kind=synthetic", "mrkd.interval_unit=percent", "mrkd.interval=150"])
    trainer = Trainer(config(prepared, tmp_path, "method=mrkd", "mrkd.k=1", "mrkd.alpha_schedule=linear",
                             "mrkd.interval_unit=percent", "mrkd.interval=20"))  # 3 epochs
    trainer.fit()
    acc, alphas = scalars(trainer.run_dir, "mrkd/alpha")
    steps = trainer.steps_per_epoch
    first = round(0.2 * 3 * steps)  # the first backup: the bank (k=1) is full after this step
    active = {e.step: e.value for e in acc.Scalars("mrkd/active")}
    assert min(s for s, v in active.items() if v == 1.0) == first + 1
    for event in acc.Scalars("mrkd/alpha"):
        if active[event.step] == 1.0:
            epoch = (event.step - 1) // steps
            assert event.value == pytest.approx(0.5 * (epoch + 1) / 3)

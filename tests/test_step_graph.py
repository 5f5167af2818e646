"""train.step_graph: the training step on static buffers (a CUDA graph on CUDA) equals the eager step on the CPU."""
import pytest
import torch

from audio_mrkd.config_loader import load_experiment
from audio_mrkd.runtime import Runtime
from audio_mrkd.train.engine import Trainer
from audio_mrkd.train.optim import make_lr_scheduler, make_optimizer, use_device_lr
from audio_mrkd.train.step import TrainingStep
from audio_mrkd.train.step_graph import REWARM_STEPS, WARM_UP_STEPS, StaticStep
from tests.test_engine import config, prepared  # noqa: F401  (the tiny prepared DCASE tree, a module fixture)

AUGMENT = ["augment.mixup_alpha=0.3", "augment.mixstyle_p=0.5", "augment.roll=0.1", "augment.freq_mask=4",
           "augment.time_mask=4"]


def calls_of(obj, name: str) -> list:
    """Wrap ``obj.name`` so that each call's positional arguments are appended to the returned list."""
    calls, original = [], getattr(obj, name)

    def wrapped(*args, **kwargs):
        calls.append(args)
        return original(*args, **kwargs)
    setattr(obj, name, wrapped)
    return calls


class StepLosses:
    """Each optimiser step's loss, whichever path took the step: the eager step's loss, or the static step's output
    tensor read after the step (on CUDA, the output of the replayed graph); ``static``: which steps took the static
    path; ``captures``: the graph key of each capture."""

    def __init__(self, trainer: Trainer) -> None:
        self.static, self._losses, self._eager = [], [], None
        self._captures = calls_of(trainer.static_step, "_record") if trainer.static_step else []
        loss_fn, static_step, step = trainer.method.loss, trainer._static_step, trainer.step

        def loss(*args, **kwargs):
            total, logs = loss_fn(*args, **kwargs)
            self._eager = total.detach()
            return total, logs

        def static(batch, with_logs):
            self.static.append(static_step(batch, with_logs))
            return self.static[-1]

        def one_step(batch):
            logs = step(batch)
            self._losses.append((trainer.static_step.loss if self.static[-1] else self._eager).clone())
            return logs
        trainer.method.loss, trainer._static_step, trainer.step = loss, static, one_step

    @property
    def losses(self) -> list[float]:
        return [float(v) for v in self._losses]

    @property
    def captures(self) -> list:
        return [key for key, _epoch in self._captures]


def thirty_steps(prepared, tmp_path, step_graph: str, *extra) -> tuple[list[float], dict, Trainer]:
    trainer = Trainer(config(prepared, tmp_path, "train.epochs=8", "train.log_every=1000", "train.threads=1",
                             f"train.step_graph={step_graph}", *AUGMENT, *extra))
    steps = StepLosses(trainer)
    trainer.model.train()
    batches = (b for _ in range(8) for b in trainer.train_loader)
    for _ in range(30):
        trainer.step(next(batches))
    return steps.losses, {k: v.clone() for k, v in trainer.model.state_dict().items()}, trainer


MRKD_STEPS = ["method=mrkd", "mrkd.k=2", "mrkd.interval=3", "mrkd.interval_unit=step"]  # bank full after step 6


@pytest.mark.parametrize("method", [["method=ce"], MRKD_STEPS, [*MRKD_STEPS, "mrkd.teacher_input=cached"],
                                    [*MRKD_STEPS, "mrkd.alpha_schedule=linear"]],
                         ids=["ce", "mrkd_same", "mrkd_cached", "mrkd_linear_alpha"])
def test_static_step_equals_the_eager_step_for_30_steps(prepared, tmp_path, method):
    """Same seed, same batches: the static-buffer step (uncaptured on the CPU) gives the eager step's losses and
    weights bit for bit, with every augmentation on (draws from the run's generator, on the device); MrKD's
    snapshots (every 3 steps) and its α schedule change the step's key, never its result."""
    eager, eager_weights, eager_trainer = thirty_steps(prepared, tmp_path / "eager", "false", *method)
    static, static_weights, static_trainer = thirty_steps(prepared, tmp_path / "static", "true", *method)
    assert eager_trainer.static_step is None and static_trainer.static_step.inputs is not None
    assert len(eager) == len(static) == 30
    assert eager == static
    assert all(torch.equal(eager_weights[k], static_weights[k]) for k in eager_weights)


def test_the_eager_and_the_static_step_run_one_training_step(prepared, tmp_path, monkeypatch):
    """Both paths take their optimiser step through the trainer's one TrainingStep: the static one without logs,
    zeroing the gradients in place; the eager one (here: a logging step) with logs, freeing the gradients."""
    calls, original = [], TrainingStep.__call__

    def spy(self, x, y, index, epoch, with_logs, **kwargs):
        calls.append((self, with_logs, kwargs.get("set_to_none", True)))
        return original(self, x, y, index, epoch, with_logs, **kwargs)
    monkeypatch.setattr(TrainingStep, "__call__", spy)
    trainer = Trainer(config(prepared, tmp_path, "train.step_graph=true", "train.log_every=2", "train.threads=1"))
    trainer.model.train()
    batch = next(iter(trainer.train_loader))
    assert trainer.step(batch) == {} and trainer.static_step.inputs is not None  # step 1: the static path
    assert "lr" in trainer.step(batch)  # step 2 logs: the eager path
    assert trainer.static_step.step is trainer.training_step
    assert calls == [(trainer.training_step, False, False), (trainer.training_step, True, True)]


def test_pskd_with_its_store_sized_up_front_takes_part(prepared, tmp_path):
    eager, eager_weights, _ = thirty_steps(prepared, tmp_path / "eager", "false", "method=pskd")
    static, static_weights, trainer = thirty_steps(prepared, tmp_path / "static", "true", "method=pskd")
    assert trainer.static_step.inputs is not None and eager == static
    assert all(torch.equal(eager_weights[k], static_weights[k]) for k in eager_weights)


def test_a_method_that_is_not_capture_safe_takes_the_eager_path(prepared, tmp_path):
    losses, _, trainer = thirty_steps(prepared, tmp_path, "true", "method=ema")
    assert trainer.static_step.inputs is None and len(losses) == 30  # never used: ema declares no graph key


def runtime(*overrides: str) -> Runtime:
    """The Runtime of the default config with these overrides."""
    return Runtime.from_config(load_experiment(None, ["data.kind=synthetic", *overrides]).train)


def test_step_graph_switch_is_decided_by_the_runtime():
    # off by default, on any device (not "auto"), until the graph is measured on a GPU
    assert load_experiment(None, ["data.kind=synthetic"]).train.step_graph is False and not runtime().step_graph
    assert not runtime("train.device=cpu", "train.step_graph=auto").step_graph  # auto: on CUDA only
    forced = runtime("train.device=cpu", "train.step_graph=true")
    assert forced.step_graph and not forced.capture  # the same step, uncaptured
    assert not runtime("train.step_graph=false").step_graph
    both = runtime("train.step_graph=true", "train.compile=true", "train.compile_mode=reduce-overhead")
    assert both.compile_mode == "default"  # torch.compile adds no CUDA graphs inside a captured step


def test_device_learning_rate_follows_the_schedule_in_place():
    """A captured step reads the LR from a tensor: the schedulers must update that tensor, never replace it."""
    cfg = load_experiment(None, ["data.kind=synthetic", "train.epochs=4", "train.warmup_epochs=1"]).train
    params = [torch.nn.Parameter(torch.zeros(3))]
    reference = make_optimizer(params, cfg)
    reference_schedule = make_lr_scheduler(reference, cfg, 5)
    device_lr = make_optimizer(params, cfg)
    use_device_lr(device_lr, torch.device("cpu"))
    lr_tensor = device_lr.param_groups[0]["lr"]
    schedule = make_lr_scheduler(device_lr, cfg, 5)
    for _ in range(20):
        assert device_lr.param_groups[0]["lr"] is lr_tensor
        assert float(lr_tensor) == pytest.approx(reference.param_groups[0]["lr"], rel=1e-6)
        for opt in (reference, device_lr):
            opt.step()
        reference_schedule.step()
        schedule.step()


def test_mrkd_step_key_follows_its_state(prepared, tmp_path):
    """A new snapshot, the bank filling up and a new α each need a new capture; nothing else does."""
    trainer = Trainer(config(prepared, tmp_path, "method=mrkd", "mrkd.k=2", "mrkd.alpha_schedule=linear",
                             "train.step_graph=true"))
    method = trainer.method
    start = method.graph_key(0)
    assert method.graph_key(0) == start and method.graph_key(1) != start  # α rises every epoch
    method.objective.backup(trainer.model)
    one = method.graph_key(0)
    method.objective.backup(trainer.model)
    full = method.graph_key(0)
    assert len({start, one, full}) == 3 and full[0] and not one[0]
    assert not method.objective.bank.runner.graph  # no teacher graph inside a captured step


def test_capture_waits_for_eager_steps_at_the_start_and_after_each_new_key():
    """A capture never runs code for the first time: the run's first WARM_UP_STEPS steps, and the first REWARM_STEPS
    of each new key (MrKD's bank filling, a new α), run eagerly; every other step of a key is captured or replayed."""
    static = StaticStep(step=None, capture=True, full_batch=8, generator=None)
    assert (WARM_UP_STEPS, REWARM_STEPS) == (3, 1)  # the counts the sequence below spells out
    keys = ["a", "a", "a", "a", "a", "b", "b", "b", "c", "d", "d"]
    warm = [static._warming(key) for key in keys]
    assert warm == [True, True, True, False, False, True, False, False, True, True, False]

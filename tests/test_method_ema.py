"""``method: ema`` (mean teacher): the update by hand, the loss by hand before and after warm-up, the state round
trip, options checking, and a short engine run with TensorBoard logs and an exact resume."""
import copy
import io

import pytest
import torch
from torch import nn

from audio_mrkd import methods
from audio_mrkd.config_loader import load_experiment
from audio_mrkd.errors import InputError
from audio_mrkd.methods.base import TrainContext
from audio_mrkd.methods.ema import MeanTeacher
from audio_mrkd.runtime import Runtime
from audio_mrkd.train.engine import Trainer, resume_run, train_run
from tests.test_engine import config, prepared, scalars  # noqa: F401  (module-scoped fixture)


@pytest.fixture
def registered(monkeypatch):
    monkeypatch.setitem(methods.METHODS, "ema", MeanTeacher)


def tiny_model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))


def make(model, *options):
    cfg = load_experiment(None, ["data.kind=synthetic", "method=ema", *options])
    ctx = TrainContext(model=model, n_classes=3, torch_device=torch.device("cpu"),
                       runtime=Runtime.from_config(cfg.train), infer_train=None, average_grads=None,
                       sync_buffers=lambda: None)
    return MeanTeacher(cfg, ctx)


def train_steps(method, model, n, seed=1):
    """n optimiser steps of the method's loss on random batches (the student in train mode)."""
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(n):
        x, y = torch.randn(6, 1, 5, 5, generator=gen), torch.randint(0, 3, (6,), generator=gen)
        loss, _ = method.loss(model(x), x, y, torch.arange(6), 0, False)
        opt.zero_grad()
        loss.backward()
        opt.step()
        method.after_step(method.steps + 1)


def test_teacher_is_a_frozen_copy_and_one_update_is_the_ema_by_hand(registered):
    model = tiny_model()
    method = make(model, "ema.decay=0.9", "ema.decay_ramp=false")
    assert not method.teacher.training and all(not p.requires_grad for p in method.teacher.parameters())
    assert method.teacher is not model
    # move the student: new weights and new BatchNorm statistics (train-mode forward)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    model.train()
    model(torch.randn(8, 1, 5, 5) * 3 + 1)
    before = {k: v.clone() for k, v in method.teacher.state_dict().items()}
    student = model.state_dict()
    assert int(student["1.num_batches_tracked"]) == 1 and int(before["1.num_batches_tracked"]) == 0
    method.after_step(1)
    after = method.teacher.state_dict()
    for key, t in after.items():
        if t.is_floating_point():
            assert not torch.equal(before[key], student[key]), key  # the case is not trivial
            torch.testing.assert_close(t, 0.9 * before[key] + 0.1 * student[key], rtol=1e-6, atol=1e-7)
        else:
            assert torch.equal(t, student[key]), key  # integer buffers: copied
    assert set(after) == set(student) and method.steps == 1
    ramped = make(model, "ema.decay=0.9")  # the ramp: the 1st update averages with weight 1/2
    start = {k: v.clone() for k, v in ramped.teacher.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    ramped.after_step(1)
    key = next(k for k, v in start.items() if v.is_floating_point())
    torch.testing.assert_close(ramped.teacher.state_dict()[key], 0.5 * start[key] + 0.5 * model.state_dict()[key])
    assert all(p.grad is None for p in method.teacher.parameters())


def test_loss_by_hand_before_and_after_warmup(registered):
    model = tiny_model()
    method = make(model, "ema.warmup_steps=2", "ema.alpha=0.3", "ema.tau=2.0",
                  "train.label_smoothing=0.1")
    torch.manual_seed(3)
    x, y = torch.randn(5, 1, 5, 5), torch.tensor([0, 1, 2, 1, 0])
    logits = torch.randn(5, 3, requires_grad=True)
    logp = torch.log_softmax(logits.detach(), dim=1)
    ce = (0.9 * -logp[torch.arange(5), y] + 0.1 * -logp.mean(dim=1)).mean()

    loss, logs = method.loss(logits, x, y, torch.arange(5), 0, True)
    assert loss.item() == pytest.approx(ce.item(), rel=1e-6)  # warm-up: the smoothed CE alone
    assert logs["loss/kd"] == 0.0 and logs["ema/active"] == 0.0 and logs["loss/ce"] == pytest.approx(ce.item())

    method.after_step(1)
    assert not method.active
    method.after_step(2)
    assert method.active
    with torch.no_grad():
        t_logits = method.teacher(x)  # eval mode: running statistics
    p_t = torch.softmax(t_logits / 2.0, dim=1)
    log_p_s = torch.log_softmax(logits.detach() / 2.0, dim=1)
    kd = 4.0 * (p_t * (torch.log(p_t) - log_p_s)).sum(dim=1).mean()
    loss, logs = method.loss(logits, x, y, torch.arange(5), 2, True)
    assert kd.item() > 0
    assert loss.item() == pytest.approx(0.7 * ce.item() + 0.3 * kd.item(), rel=1e-5)
    assert logs["loss/kd"] == pytest.approx(kd.item(), rel=1e-5) and logs["ema/active"] == 1.0
    assert logs["ema/teacher_acc"] == pytest.approx((t_logits.argmax(1) == y).float().mean().item())
    assert logs["ema/agreement"] == pytest.approx((t_logits.argmax(1) == logits.argmax(1)).float().mean().item())
    loss.backward()
    assert logits.grad is not None and all(p.grad is None for p in method.teacher.parameters())
    # soft targets (mixup): the accuracy is measured against the argmax
    soft = torch.nn.functional.one_hot(y, 3).float() * 0.8 + 0.2 / 3
    _, logs = method.loss(logits, x, soft, torch.arange(5), 2, True)
    assert logs["ema/teacher_acc"] == pytest.approx((t_logits.argmax(1) == y).float().mean().item())
    assert method.loss(logits, x, y, torch.arange(5), 2, False)[1] == {}


def test_state_round_trip_gives_the_same_next_loss(registered):
    model = tiny_model()
    method = make(model, "ema.warmup_steps=2", "ema.decay=0.8")
    train_steps(method, model, 3)
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "method": method.state_dict()}, buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)  # tensors and plain containers only

    model2 = tiny_model(seed=7)  # a different start: everything must come from the state
    method2 = make(model2, "ema.warmup_steps=2", "ema.decay=0.8")
    assert method2.digest() != method.digest()
    model2.load_state_dict(state["model"])
    method2.load_state_dict(state["method"])
    assert method2.steps == 3 and method2.active and method2.digest() == method.digest()
    assert len(method.digest()) == 15

    x, y = torch.randn(6, 1, 5, 5), torch.tensor([0, 1, 2, 0, 1, 2])
    model.eval(), model2.eval()
    a, logs_a = method.loss(model(x), x, y, torch.arange(6), 0, True)
    b, logs_b = method2.loss(model2(x), x, y, torch.arange(6), 0, True)
    assert a.item() == b.item() and logs_a == logs_b and logs_a["loss/kd"] > 0
    # and the next update too: the teacher lists point at the loaded tensors
    train_steps(method, model, 1, seed=5)
    train_steps(method2, model2, 1, seed=5)
    assert method2.digest() == method.digest() and method2.steps == method.steps == 4


@pytest.mark.parametrize("option,message", [
    ("decay=1.0", "ema.decay"), ("decay=0", "ema.decay"),
    ("alpha=1.5", "ema.alpha"), ("alpha=-0.1", "ema.alpha"),
    ("tau=0", "ema.tau"), ("warmup_steps=-1", "ema.warmup_steps"),
])
def test_options_are_checked(registered, option, message):
    with pytest.raises(InputError, match=f"^{message}: "):
        load_experiment(None, ["data.kind=synthetic", "method=ema", f"ema.{option}"])


def test_hparams(registered):
    method = make(tiny_model(), "ema.alpha=0.25")
    assert method.hparams() == {"ema.decay": 0.999, "ema.decay_ramp": True, "ema.alpha": 0.25, "ema.tau": 3.0, "ema.warmup_steps": 100}


def test_engine_run_logs_and_resumes_exactly(registered, prepared, tmp_path):  # noqa: F811
    extra = ["method=ema", "ema.warmup_steps=2", "ema.decay=0.9", "train.epochs=2"]
    run_dir, straight = train_run(config(prepared, tmp_path / "a", *extra))
    assert straight["complete"] and straight["method"] == "ema"
    acc, teacher_acc = scalars(run_dir, "ema/teacher_acc")
    tags = set(acc.Tags()["scalars"])
    assert {"loss/ce", "loss/kd", "ema/teacher_acc", "ema/agreement", "ema/active"} <= tags
    assert teacher_acc and all(0.0 <= v <= 1.0 for v in teacher_acc)
    active = {e.step: e.value for e in acc.Scalars("ema/active")}
    assert len(active) > 2 and all(v == (1.0 if step > 2 else 0.0) for step, v in active.items())
    kd = {e.step: e.value for e in acc.Scalars("loss/kd")}
    assert all((v > 0) if step > 2 else (v == 0) for step, v in kd.items())

    trainer = Trainer(config(prepared, tmp_path / "b", *extra))
    partial = trainer.fit(stop_after=1)
    assert partial["epochs_done"] == 1 and not partial["complete"]
    _, resumed = resume_run(trainer.run_dir)
    assert resumed["complete"]
    assert [h["accuracy"] for h in resumed["history"]] == [h["accuracy"] for h in straight["history"]]
    assert resumed["last"]["log_loss"] == pytest.approx(straight["last"]["log_loss"], abs=1e-6)

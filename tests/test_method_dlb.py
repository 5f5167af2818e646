"""``method: dlb`` (Self-Distillation from the Last Mini-Batch): the repeated items, the loss by hand, the state
round trip and a short engine run with resume."""
import io
import math

import pytest
import torch

from audio_mrkd import methods
from audio_mrkd.config_loader import load_experiment
from audio_mrkd.data.splits import Batch
from audio_mrkd.errors import InputError
from audio_mrkd.methods.dlb import LastBatchDistillation
from audio_mrkd.runs.run import checkpoint_path
from audio_mrkd.train.engine import Trainer, resume_run, train_run
from tests.test_engine import config, prepared, scalars  # noqa: F401  (module-scoped fixture)

N_CLASSES = 4


@pytest.fixture
def dlb(monkeypatch):
    monkeypatch.setitem(methods.METHODS, "dlb", LastBatchDistillation)

    def make(*extra):
        cfg = load_experiment(None, ["data.kind=synthetic", "method=dlb", *extra])
        return LastBatchDistillation(cfg, None)
    return make


def batch(start, n, generator):
    return Batch(x=torch.randn(n, 1, 3, 5, generator=generator), y=torch.randint(0, N_CLASSES, (n,), generator=generator),
                 recording_device=torch.randint(0, 3, (n,), generator=generator),
                 index=torch.arange(start, start + n))


def test_before_batch_appends_the_last_half_of_the_previous_batch(dlb):
    method, g = dlb(), torch.Generator().manual_seed(0)
    first = batch(0, 5, g)
    out = method.before_batch(first)
    for f in ("x", "y", "recording_device", "index"):  # first step: nothing appended
        assert torch.equal(getattr(out, f), getattr(first, f))
    method.loss(torch.randn(5, N_CLASSES), out.x, out.y, out.index, 0, False)
    second = batch(5, 5, g)
    out = method.before_batch(second)
    assert len(out.index) == 5 + 3  # ⌈5/2⌉ = 3 repeated
    for f in ("x", "y", "recording_device", "index"):
        assert torch.equal(getattr(out, f)[:5], getattr(second, f))
        assert torch.equal(getattr(out, f)[5:], getattr(first, f)[2:])
    assert out.index.tolist() == [5, 6, 7, 8, 9, 2, 3, 4]
    method.loss(torch.randn(8, N_CLASSES), out.x, out.y, out.index, 0, False)
    third = method.before_batch(batch(10, 4, g))  # only new items are retained, never repeated ones
    assert third.index.tolist() == [10, 11, 12, 13, 7, 8, 9]


def kd_by_hand(student, teacher, tau):
    p_t = torch.softmax(teacher / tau, dim=1)
    kl = (p_t * (torch.log(p_t) - torch.log_softmax(student / tau, dim=1))).sum(dim=1).mean()
    return tau * tau * kl


def test_loss_by_hand_on_two_steps(dlb):
    method, g = dlb("dlb.alpha=0.7", "dlb.tau=2.5", "train.label_smoothing=0.1"), \
        torch.Generator().manual_seed(1)
    b1 = method.before_batch(batch(0, 6, g))
    logits1 = torch.randn(6, N_CLASSES, generator=g, requires_grad=True)
    loss1, logs1 = method.loss(logits1, b1.x, b1.y, b1.index, 0, True)
    ce1 = torch.nn.functional.cross_entropy(logits1, b1.y, label_smoothing=0.1)
    assert loss1.item() == pytest.approx(ce1.item(), rel=1e-6)  # first step: CE alone
    assert logs1["loss/kd"] == 0.0 and logs1["dlb/repeated"] == 0.0 and "dlb/agreement" not in logs1

    b2 = method.before_batch(batch(6, 6, g))
    logits2 = torch.randn(9, N_CLASSES, generator=g, requires_grad=True)
    loss2, logs2 = method.loss(logits2, b2.x, b2.y, b2.index, 0, True)
    ce2 = torch.nn.functional.cross_entropy(logits2, b2.y, label_smoothing=0.1)  # over all 9 rows
    kd2 = kd_by_hand(logits2[6:], logits1[3:].detach(), 2.5)  # repeated rows vs the first step's logits
    assert loss2.item() == pytest.approx((ce2 + 0.7 * kd2).item(), rel=1e-5)
    assert logs2["loss/ce"] == pytest.approx(ce2.item(), rel=1e-6)
    assert logs2["loss/kd"] == pytest.approx(kd2.item(), rel=1e-5) and logs2["dlb/repeated"] == 3.0
    agree = (logits2[6:].argmax(1) == logits1[3:].argmax(1)).float().mean().item()
    assert logs2["dlb/agreement"] == pytest.approx(agree)
    loss2.backward()  # the stored logits are detached: no gradient reaches the first step's logits
    assert logits1.grad is None and logits2.grad[6:].abs().sum() > 0
    assert torch.equal(method.stored_logits, logits2[3:6].detach())  # the new rows repeated next step


def test_state_round_trip_gives_the_same_next_batch_and_loss(dlb):
    g = torch.Generator().manual_seed(2)
    method = dlb()
    assert method.state_dict()["index"].numel() == 0  # empty state before any step
    for start in (0, 8):
        b = method.before_batch(batch(start, 8, g))
        method.loss(torch.randn(len(b.index), N_CLASSES, generator=g), b.x, b.y, b.index, 0, False)
    buffer = io.BytesIO()
    torch.save(method.state_dict(), buffer)
    buffer.seek(0)
    restored = dlb()
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    nxt = batch(16, 8, g)
    a, b = method.before_batch(nxt), restored.before_batch(nxt)
    for f in ("x", "y", "recording_device", "index"):
        assert torch.equal(getattr(a, f), getattr(b, f))
    logits = torch.randn(12, N_CLASSES, generator=g)
    la, logs_a = method.loss(logits, a.x, a.y, a.index, 1, True)
    lb, logs_b = restored.loss(logits, b.x, b.y, b.index, 1, True)
    assert la.item() == lb.item() and logs_a == logs_b and logs_a["loss/kd"] > 0
    empty = dlb()
    empty.load_state_dict(dlb().state_dict())
    assert empty.retained is None


@pytest.mark.parametrize("option,value", [("alpha", "-1"), ("tau", "0"), ("tau", "nan")])
def test_options_are_checked(dlb, option, value):
    with pytest.raises(InputError, match=f"^dlb.{option}: "):
        dlb(f"dlb.{option}={value}")


@pytest.mark.parametrize("mixup", [[], ["augment.mixup_alpha=0.4"]], ids=["plain", "mixup"])
def test_engine_run_logs_and_resumes_exactly(prepared, tmp_path, monkeypatch, mixup):  # noqa: F811
    monkeypatch.setitem(methods.METHODS, "dlb", LastBatchDistillation)
    extra = ["method=dlb", "train.epochs=2", "dlb.alpha=0.5", *mixup]
    run_dir, straight = train_run(config(prepared, tmp_path / "a", *extra))
    assert straight["complete"] and straight["method"] == "dlb"
    acc, repeated = scalars(run_dir, "dlb/repeated")
    assert repeated[0] == 0 and set(repeated[1:]) == {4.0}  # batch 8: ⌈8/2⌉ = 4 repeated, also across epochs
    assert {"loss/ce", "loss/kd", "dlb/agreement"} <= set(acc.Tags()["scalars"])
    state = torch.load(checkpoint_path(run_dir, "last"), weights_only=True)["method"]
    assert state["index"].numel() == 4 and state["logits"].shape[0] == 4

    trainer = Trainer(config(prepared, tmp_path / "b", *extra))
    trainer.fit(stop_after=1)
    _, resumed = resume_run(trainer.run_dir)
    assert [h["accuracy"] for h in resumed["history"]] == [h["accuracy"] for h in straight["history"]]
    assert resumed["last"]["log_loss"] == pytest.approx(straight["last"]["log_loss"], abs=1e-6)
    assert not math.isnan(resumed["last"]["log_loss"])

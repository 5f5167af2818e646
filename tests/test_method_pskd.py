"""``method: pskd`` (Progressive Self-Knowledge Distillation): the target and loss by hand, the α schedule,
the state round trip, and a short engine run that logs, checkpoints and resumes exactly."""
import json
from types import SimpleNamespace

import pytest
import torch

from audio_mrkd import methods
from audio_mrkd.config_loader import load_experiment
from audio_mrkd.errors import InputError
from audio_mrkd.methods.pskd import ProgressiveSelfKD
from audio_mrkd.train.engine import Trainer, resume_run, train_run
from tests.test_engine import config, prepared, scalars  # noqa: F401  (module-scoped fixture)


@pytest.fixture
def registered(monkeypatch):
    monkeypatch.setitem(methods.METHODS, "pskd", ProgressiveSelfKD)


def make(*extra, n_classes=3, average_grads=None):
    cfg = load_experiment(None, ["data.kind=synthetic", "method=pskd", *extra])
    ctx = SimpleNamespace(model=None, n_classes=n_classes, torch_device=torch.device("cpu"), runtime=None,
                          infer_train=None, average_grads=average_grads, sync_buffers=lambda: None)
    return ProgressiveSelfKD(cfg, ctx)


def soft_ce(logits, target):
    return -(target * torch.log_softmax(logits, dim=1)).sum(dim=1).mean()


def test_loss_by_hand_over_two_epochs(registered):
    method = make("train.epochs=4", "pskd.alpha_T=0.6", "train.label_smoothing=0.1")
    y = torch.tensor([0, 2, 1])
    index = torch.tensor([5, 0, 2])
    first = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.1, 0.3], [0.0, 1.0, 0.0]])
    onehot = torch.eye(3)[y]
    loss0, logs0 = method.loss(first, None, y, index, 0, True)
    # epoch 0: nothing stored yet, so the target is y whatever α is (label smoothing is not applied)
    assert loss0.item() == pytest.approx(soft_ce(first, onehot).item(), rel=1e-6)
    assert logs0["pskd/alpha"] == pytest.approx(0.6 * 1 / 4) and "pskd/prev_agreement" not in logs0
    assert logs0["loss/ce"] == pytest.approx(logs0["loss/pskd"], rel=1e-6)

    second = torch.tensor([[1.0, 1.0, 0.0], [0.0, -1.0, 2.0], [0.3, 0.2, 0.1]])
    loss1, logs1 = method.loss(second, None, y, index, 1, True)
    alpha = 0.6 * 2 / 4
    target = (1 - alpha) * onehot + alpha * torch.softmax(first, dim=1)
    assert loss1.item() == pytest.approx(soft_ce(second, target).item(), rel=1e-6)
    assert logs1["loss/pskd"] == pytest.approx(loss1.item())
    assert logs1["loss/ce"] == pytest.approx(soft_ce(second, onehot).item(), rel=1e-6)
    # stored argmax of `first`: 0, 0, 1 against labels 0, 2, 1 → 2 of 3 agree
    assert logs1["pskd/prev_agreement"] == pytest.approx(2 / 3)
    assert logs1["pskd/alpha"] == pytest.approx(alpha)
    assert torch.allclose(method.predictions[index], torch.softmax(second, dim=1))
    assert method.predictions.shape == (6, 3) and method.seen.tolist() == [True, False, True, False, False, True]
    _, no_logs = method.loss(second, None, y, index, 2, False)
    assert no_logs == {}


def test_alpha_schedule_and_unseen_items_use_the_label(registered):
    method = make("train.epochs=5", "pskd.alpha_T=0.5")
    assert [method.alpha(e) for e in range(5)] == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.5])
    assert make("train.epochs=5").alpha(4) == pytest.approx(0.8)  # the default alpha_T
    logits = torch.tensor([[3.0, 0.0, 0.0], [0.0, 0.0, 3.0]])
    method.loss(logits, None, torch.tensor([1, 1]), torch.tensor([0, 1]), 0, False)
    # item 7 (never seen; the store grows) uses y, item 1 the stored softmax; a soft (mixup) y as well
    later = torch.tensor([[0.2, 0.1, 0.0], [1.0, 0.0, 0.5]])
    y = torch.tensor([[0.0, 0.7, 0.3], [0.4, 0.6, 0.0]])
    loss, logs = method.loss(later, None, y, torch.tensor([7, 1]), 3, True)
    alpha = 0.4
    prev = torch.stack([y[0], torch.softmax(logits[1], dim=0)])
    assert loss.item() == pytest.approx(soft_ce(later, (1 - alpha) * y + alpha * prev).item(), rel=1e-6)
    assert logs["pskd/prev_agreement"] == 0.0  # item 1's stored argmax is 2, its label's argmax 1
    assert method.predictions.shape == (8, 3) and method.seen.tolist() == [True, True] + [False] * 5 + [True]


def test_state_round_trip_gives_the_same_next_loss(registered):
    torch.manual_seed(0)
    a = make("train.epochs=3")
    y, index = torch.tensor([0, 1, 2, 1]), torch.tensor([3, 1, 0, 2])
    a.loss(torch.randn(4, 3), None, y, index, 0, False)
    state = a.state_dict()
    b = make("train.epochs=3")
    b.load_state_dict(state)
    nxt = torch.randn(4, 3)
    loss_a, _ = a.loss(nxt, None, y, index, 1, False)
    loss_b, _ = b.loss(nxt, None, y, index, 1, False)
    assert loss_a.item() == loss_b.item()
    assert not torch.equal(state["predictions"], a.predictions)  # the saved state is a copy, not the live store
    assert make("train.epochs=3").state_dict() == {}
    assert a.hparams() == {"pskd.alpha_T": 0.8, "pskd.store": "dominant"}


def test_options_and_one_process_only(registered):
    with pytest.raises(InputError, match=r"^pskd\.alpha_T: must be a finite number in \[0, 1\], got 1.5$"):
        load_experiment(None, ["data.kind=synthetic", "method=pskd", "pskd.alpha_T=1.5"])
    with pytest.raises(InputError, match="^method pskd: one process only"):
        make(average_grads=lambda grads: None)


def test_engine_run_logs_and_resumes_exactly(registered, prepared, tmp_path):  # noqa: F811
    extra = ["method=pskd", "train.epochs=2", "pskd.alpha_T=0.6", "augment.mixup_alpha=0.3"]
    run_dir, straight = train_run(config(prepared, tmp_path / "a", *extra))
    assert straight["complete"] and straight["method"] == "pskd"
    acc, alpha = scalars(run_dir, "pskd/alpha")
    assert sorted(set(alpha)) == pytest.approx([0.3, 0.6])
    assert {"loss/ce", "loss/pskd", "pskd/prev_agreement"} <= set(acc.Tags()["scalars"])
    trainer = Trainer(config(prepared, tmp_path / "b", *extra))
    assert not trainer.fit(stop_after=1)["complete"]
    _, resumed = resume_run(trainer.run_dir)
    assert [h["accuracy"] for h in resumed["history"]] == [h["accuracy"] for h in straight["history"]]
    assert resumed["last"]["log_loss"] == pytest.approx(straight["last"]["log_loss"], abs=1e-6)
    assert json.loads((trainer.run_dir / "metrics.json").read_text())["complete"]

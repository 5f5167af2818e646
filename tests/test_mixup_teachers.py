"""Under mixup, a teacher that gives one item's view is mixed like the label: for the row λ·x_i + (1 − λ)·x_j the
KD target is λ·p_t(i) + (1 − λ)·p_t(j) at the distillation temperature, for every per-item teacher signal —
teacher-logits files and cached teacher runs (``kd``, MrKD's teacher term and ensembler input), MrKD's cached
snapshots, PS-KD's stored predictions. Knowledge Adjustment and the accuracy logs use the mixed label's dominant
class. Hand-computed cases, then the engine handing the mixing to the method on the eager and the static step."""
import math

import pytest
import torch
import torch.nn.functional as F

from audio_mrkd.data.augment import Mixing
from audio_mrkd.distill.mrkd_objective import MrKD
from audio_mrkd.distill.teachers import TeacherSignal
from audio_mrkd.methods.mrkd import MemoryReplay
from audio_mrkd.methods.pskd import ProgressiveSelfKD
from audio_mrkd.train.engine import Trainer
from tests.test_engine import config, prepared  # noqa: F401  (the tiny prepared DCASE tree, a module fixture)
from tests.test_method_kd import _kd_method, teachers  # noqa: F401  (hand-written teacher file; teacher runs)
from tests.test_method_pskd import make as make_pskd

# the three clips of _kd_method's teacher-logits file, and a batch holding each once: row r mixes item r with
# item PERM[r]
TABLE = torch.tensor([[math.log(3), 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 2.0, 0.0]])
INDEX = torch.tensor([0, 1, 2])
LABELS = torch.tensor([0, 1, 2])
PERM = torch.tensor([1, 2, 0])


def mixing(lam: float) -> Mixing:
    return Mixing(PERM, torch.tensor(lam), LABELS)


def mixed_label(lam: float) -> torch.Tensor:
    return mixing(lam).rows(F.one_hot(LABELS, 3).float())


def mixed_target(z: torch.Tensor, lam: float, tau: float) -> torch.Tensor:
    """λ·softmax(z_i/τ) + (1 − λ)·softmax(z_j/τ), row by row, written out."""
    p = torch.softmax(z.double() / tau, dim=1)
    return torch.stack([lam * p[r] + (1 - lam) * p[PERM[r]] for r in range(len(z))])


def kd_term(target: torch.Tensor, student: torch.Tensor, tau: float) -> float:
    """τ²·KL(target ‖ softmax(student/τ)), mean over rows."""
    log_q = torch.log_softmax(student.double() / tau, dim=1)
    return float(tau ** 2 * (target * (target.log() - log_q)).sum(dim=1).mean())


STUDENT = torch.tensor([[0.5, -1.0, 0.2], [0.0, 0.3, 1.0], [-0.4, 0.1, 0.0]])


@pytest.mark.parametrize("tau", [1.0, 3.0])
def test_kd_from_a_teacher_logits_file_distils_the_mixed_teacher(tmp_path, tau):
    method = _kd_method(tmp_path, "teacher.alpha=1.0", f"teacher.tau={tau}")
    _, logs = method.loss(STUDENT, None, mixed_label(0.7), INDEX, 0, True, mixing=mixing(0.7))
    assert logs["loss/kd"] == pytest.approx(kd_term(mixed_target(TABLE, 0.7, tau), STUDENT, tau), rel=1e-5)
    # the item's own view alone (what a cached teacher gave before) is a different target
    assert logs["loss/kd"] != pytest.approx(kd_term(mixed_target(TABLE, 1.0, tau), STUDENT, tau), rel=1e-3)


def test_without_mixup_the_target_is_the_items_own(tmp_path):
    method = _kd_method(tmp_path, "teacher.alpha=1.0", "teacher.tau=3")
    _, logs = method.loss(STUDENT, None, LABELS, INDEX, 0, True)
    assert logs["loss/kd"] == pytest.approx(kd_term(torch.softmax(TABLE.double() / 3, 1), STUDENT, 3), rel=1e-5)


def test_knowledge_adjustment_and_accuracy_use_the_mixed_labels_dominant_class(tmp_path):
    """λ 0.3: each row's dominant class is its partner's label. The mixed teacher of row 0 (items a, b) puts
    0.3·(3/5, 1/5, 1/5) + 0.7·(1/3, 1/3, 1/3) on top of class 0, the dominant class is b's (1): KA swaps 0 and 1."""
    method = _kd_method(tmp_path, "kd.alpha=1.0", "kd.tau=1", "kd.ka=true")
    _, logs = method.loss(STUDENT, None, mixed_label(0.3), INDEX, 0, True, mixing=mixing(0.3))
    target = mixed_target(TABLE, 0.3, 1.0)
    dominant = LABELS[PERM]
    top = target.argmax(dim=1)
    adjusted = target.clone()
    for r in range(3):
        if top[r] != dominant[r]:
            adjusted[r, top[r]], adjusted[r, dominant[r]] = target[r, dominant[r]], target[r, top[r]]
    assert logs["loss/kd"] == pytest.approx(kd_term(adjusted, STUDENT, 1.0), rel=1e-5)
    wrong = (top != dominant).double().mean().item()
    assert wrong > 0 and logs["kd/ka_rate"] == pytest.approx(wrong)
    assert logs["kd/teacher_acc/0"] == pytest.approx(1 - wrong) == logs["kd/ensemble_acc"]


def test_kd_from_cached_teacher_runs_distils_their_mixed_mean(prepared, tmp_path, teachers):  # noqa: F811
    trainer = Trainer(config(prepared, tmp_path, "method=kd", f"teacher.runs=[{teachers[0]},{teachers[1]}]",
                             "kd.alpha=1.0", "kd.tau=3"))
    table = trainer.method.term.teachers.table  # T×N×C: each run's logits on every clean train item
    assert table.shape[0] == 2
    _, logs = trainer.method.loss(STUDENT, None, mixed_label(0.6), INDEX, 0, True, mixing=mixing(0.6))
    expected = mixed_target(table[:, INDEX].mean(dim=0), 0.6, 3.0)
    assert logs["loss/kd"] == pytest.approx(kd_term(expected, STUDENT, 3.0), rel=1e-5)


def bank_of(tables: list[torch.Tensor], *extra, external=None) -> MrKD:
    """A MrKD objective (cached teachers) whose bank is full of snapshots with the given logits tables."""
    queue = list(tables)
    cfg = MemoryReplay.Options(k=len(tables), teacher_input="cached", alpha=1.0, ka=False, **dict(extra))
    mrkd = MrKD(cfg, 3, torch.device("cpu"), infer_all=lambda model: queue.pop(0), external=external)
    for _ in tables:
        mrkd.backup(torch.nn.Linear(1, 3))
    return mrkd


@pytest.mark.parametrize("tau", [1.0, 3.0])
@pytest.mark.parametrize("ensemble", ["mean", "fcn"])
def test_mrkd_cached_snapshots_are_mixed_after_the_ensembler(tau, ensemble):
    """The ensembler combines each item's clean teacher logits (the FCN, zero-initialised, starts as the mean),
    then the combination is mixed."""
    older, newer = TABLE, TABLE.flip(1) * 0.5
    mrkd = bank_of([older, newer], ("tau", tau), ("ensemble", ensemble))
    _, logs = mrkd.loss(STUDENT, None, mixed_label(0.8), INDEX, mixing=mixing(0.8))
    expected = mixed_target((older + newer) / 2, 0.8, tau)
    assert logs["loss/kd"] == pytest.approx(kd_term(expected, STUDENT, tau), rel=1e-5)
    assert logs["mrkd/ensemble_acc"] == pytest.approx((expected.argmax(1) == LABELS).double().mean().item())


def test_mrkd_external_teacher_before_the_bank_is_full_is_mixed():
    external = TeacherSignal(table=TABLE[None])
    cfg = MemoryReplay.Options(k=2, teacher_input="same", alpha=1.0, ka=False, tau=3.0)
    mrkd = MrKD(cfg, 3, torch.device("cpu"), external=external)
    _, logs = mrkd.loss(STUDENT, None, mixed_label(0.7), INDEX, mixing=mixing(0.7))
    assert logs["loss/kd"] == pytest.approx(kd_term(mixed_target(TABLE, 0.7, 3.0), STUDENT, 3.0), rel=1e-5)


def test_mrkd_ensembler_input_mixes_a_cached_teacher_beside_teachers_on_the_mixed_batch():
    """Snapshots on the (mixed) batch and a cached external teacher: the external one enters the ensembler as its
    own mixed view (logits whose softmax at τ is the mixed probabilities)."""
    external = TeacherSignal(table=TABLE[None])
    cfg = MemoryReplay.Options(k=1, teacher_input="same", ensemble="mean", alpha=1.0, ka=False, tau=3.0)
    mrkd = MrKD(cfg, 3, torch.device("cpu"), external=external)
    snapshot = torch.nn.Linear(3, 3)
    mrkd.backup(snapshot)
    x = torch.randn(3, 3)
    _, logs = mrkd.loss(STUDENT, x, mixed_label(0.7), INDEX, mixing=mixing(0.7))
    with torch.no_grad():
        on_batch = mrkd.bank.teachers()[0](x)
    mixed_external = 3.0 * mixed_target(TABLE, 0.7, 3.0).log()
    expected = torch.softmax((on_batch.double() + mixed_external) / 2 / 3.0, dim=1)
    assert logs["loss/kd"] == pytest.approx(kd_term(expected, STUDENT, 3.0), rel=1e-4)


@pytest.mark.parametrize("tau", [1.0, 3.0])
def test_mrkd_teacher_term_distils_the_mixed_teacher(tmp_path, tau):
    """``mrkd.with_teacher: term`` with a teacher-logits file: the second KD term's target is the mixed teacher."""
    method = _kd_method(tmp_path, "method=mrkd", "mrkd.with_teacher=term", "kd.alpha=1.0", f"kd.tau={tau}",
                        "mrkd.teacher_input=same")
    _, logs = method.loss(STUDENT, torch.zeros(3, 1), mixed_label(0.7), INDEX, 0, True, mixing=mixing(0.7))
    assert logs["loss/kd_teacher"] == pytest.approx(kd_term(mixed_target(TABLE, 0.7, tau), STUDENT, tau), rel=1e-5)


@pytest.mark.parametrize("lam, owners", [(0.7, [0, 1, 2]), (0.2, [1, 2, 0])])
def test_pskd_mixes_the_stored_predictions_and_stores_for_the_dominant_item(lam, owners):
    method = make_pskd("train.epochs=4", "pskd.alpha_T=0.8")
    stored = torch.softmax(torch.tensor([[1.0, 0.0, -1.0], [0.0, 2.0, 0.0], [0.5, 0.5, 1.5]]), dim=1)
    method._ensure(3, 3)
    method.predictions[:] = stored
    method.seen[:] = True
    y = mixed_label(lam)
    loss, _ = method.loss(STUDENT, None, y, INDEX, 1, True, mixing=mixing(lam))
    alpha = 0.8 * 2 / 4
    target = (1 - alpha) * y.double() + alpha * mixed_target(stored.log(), lam, 1.0)
    expected = -(target * torch.log_softmax(STUDENT.double(), 1)).sum(1).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    # each row's prediction is stored for the item with the larger weight in it
    new = torch.softmax(STUDENT, dim=1)
    assert torch.allclose(method.predictions[torch.tensor(owners)], new)


class BatchStatNet(torch.nn.Module):
    """A network whose output depends on each row alone in eval mode but on the batch in training mode (BatchNorm):
    what a forward on the un-mixed rows must reproduce, without moving the running statistics."""

    def __init__(self):
        super().__init__()
        self.norm = torch.nn.BatchNorm1d(2)
        self.linear = torch.nn.Linear(2, 3)
        with torch.no_grad():
            self.linear.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.5]]))
            self.linear.bias.zero_()

    def forward(self, x):
        return self.linear(self.norm(x))


CLEAN = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])  # the three rows before mixing


def _pskd_with_store(store: str) -> ProgressiveSelfKD:
    method = make_pskd("train.epochs=4", "pskd.alpha_T=0.8", f"pskd.store={store}")
    method.ctx.model = BatchStatNet().train()
    method._ensure(3, 3)
    method.predictions[:] = OLD
    method.seen[:] = True
    return method


OLD = torch.full((3, 3), 1 / 3)


@pytest.mark.parametrize("lam", [0.95, 0.7, 0.2, 0.05])
def test_pskd_store_choices_under_mixup(lam):
    """dominant: the mixed row's prediction for its dominant item; confident: the same only when one clip weighs
    >= 0.9, else the old predictions stay; clean: each item's prediction on its own un-mixed row, computed by hand
    (batch statistics of the clean rows), with the BatchNorm running statistics left as they were."""
    mix = Mixing(PERM, torch.tensor(lam), LABELS, CLEAN)
    owners = INDEX if lam >= 0.5 else INDEX[PERM]
    on_mix = torch.softmax(STUDENT, dim=1)

    dominant = _pskd_with_store("dominant")
    dominant.loss(STUDENT, None, mixed_label(lam), INDEX, 1, False, mixing=mix)
    assert torch.allclose(dominant.predictions[owners], on_mix)

    confident = _pskd_with_store("confident")
    confident.loss(STUDENT, None, mixed_label(lam), INDEX, 1, False, mixing=mix)
    weak = max(lam, 1 - lam) < 0.9
    assert torch.allclose(confident.predictions[owners], OLD if weak else on_mix)

    clean = _pskd_with_store("clean")
    net = clean.ctx.model
    running = net.norm.running_mean.clone(), net.norm.running_var.clone(), net.norm.num_batches_tracked.clone()
    clean.loss(STUDENT, None, mixed_label(lam), INDEX, 1, False, mixing=mix)
    normed = (CLEAN - CLEAN.mean(0)) / torch.sqrt(CLEAN.var(0, unbiased=False) + net.norm.eps)
    by_hand = torch.softmax(normed @ net.linear.weight.detach().T, dim=1)
    assert torch.allclose(clean.predictions[INDEX], by_hand, atol=1e-6)  # every item, its own row
    assert not torch.allclose(by_hand, on_mix)
    for before, after in zip(running, (net.norm.running_mean, net.norm.running_var, net.norm.num_batches_tracked)):
        assert torch.equal(before, after)


def test_pskd_store_is_checked():
    with pytest.raises(Exception, match="pskd.store: 'newest' is not one of 'dominant', 'confident', 'clean'"):
        make_pskd("pskd.store=newest")


def test_pskd_mixes_an_unseen_items_label_into_its_partners_prediction():
    method = make_pskd("train.epochs=4", "pskd.alpha_T=0.8")
    method._ensure(3, 3)
    method.predictions[0] = torch.tensor([0.2, 0.2, 0.6])
    method.seen[0] = True
    y = mixed_label(0.6)
    loss, _ = method.loss(STUDENT, None, y, INDEX, 1, False, mixing=mixing(0.6))
    prev = F.one_hot(LABELS, 3).double()
    prev[0] = torch.tensor([0.2, 0.2, 0.6], dtype=torch.float64)
    alpha = 0.8 * 2 / 4
    target = (1 - alpha) * y.double() + alpha * (0.6 * prev + 0.4 * prev[PERM])
    expected = -(target * torch.log_softmax(STUDENT.double(), 1)).sum(1).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


@pytest.mark.parametrize("step_graph", ["false", "true"])
def test_the_engine_hands_the_mixing_to_the_method(prepared, tmp_path, step_graph):
    """Eager and static step alike: the method gets the pairing and weight that made the batch's soft labels."""
    trainer = Trainer(config(prepared, tmp_path, "method=mrkd", "mrkd.teacher_input=cached", "mrkd.k=1",
                             "augment.mixup_alpha=0.4", f"train.step_graph={step_graph}", "train.log_every=1000"))
    seen = []
    loss_fn = trainer.method.loss

    def spy(logits, x, y, index, epoch, with_logs, mixing=None):
        seen.append((y.detach().clone(), mixing))
        return loss_fn(logits, x, y, index, epoch, with_logs, mixing=mixing)
    trainer.method.loss = spy
    trainer.model.train()
    batch = next(iter(trainer.train_loader))
    for _ in range(2):
        trainer.step(batch)
    for y, mix in seen:
        assert mix is not None and torch.equal(mix.labels, batch.y)
        assert torch.allclose(y, mix.rows(F.one_hot(batch.y, trainer.n_classes).float()))
    assert not torch.equal(seen[0][1].perm, seen[1][1].perm) or seen[0][1].lam != seen[1][1].lam


def _dlb(tau: float):
    from types import SimpleNamespace

    from audio_mrkd.methods.dlb import LastBatchDistillation
    from audio_mrkd.config_loader import load_experiment
    cfg = load_experiment(None, ["data.kind=synthetic", "method=dlb", "dlb.alpha=1.0", f"dlb.tau={tau}"])
    return LastBatchDistillation(cfg, SimpleNamespace(model=BatchStatNet().train(), runtime=None))


def _dlb_step(method, x, y, index, logits, perm, lam):
    """One DLB step as the engine runs it: before_batch, mixup inside the groups the method names, the loss."""
    from audio_mrkd.data.splits import Batch
    batch = method.before_batch(Batch(x=x, y=y, recording_device=torch.zeros_like(y), index=index))
    groups = method.mixup_groups()
    rows = torch.tensor(perm)
    for start, size in zip([0, groups[0]], groups):  # the pairing stays inside each group
        assert sorted(rows[start:start + size].tolist()) == list(range(start, start + size))
    mix = Mixing(rows, torch.tensor(lam), batch.y, batch.x)
    soft = mix.rows(F.one_hot(batch.y, 3).float())
    return method.loss(logits, mix.lam * batch.x + (1 - mix.lam) * batch.x[rows], soft, batch.index, 0, True,
                       mixing=mix), groups


@pytest.mark.parametrize("lam", [0.8, 0.3])
@pytest.mark.parametrize("tau", [1.0, 3.0])
def test_dlb_under_mixup_distils_the_earlier_outputs_on_the_content_the_row_holds(lam, tau):
    """Step 1: four new clips (the last two are retained). Step 2: four new clips + the two repeated ones, the
    repeated rows mixed with each other (weight λ). The KD target of a repeated row is the network's step-1 output on
    each of its two clips alone (by hand: BatchNorm over the two clean rows, then the linear layer), mixed with
    step 2's pairing and weight at τ — not the step-1 output on the mixed row that clip sat in."""
    method = _dlb(tau)
    g = torch.Generator().manual_seed(3)
    x1, x2 = torch.randn(4, 2, generator=g), torch.randn(4, 2, generator=g)
    y1, y2 = torch.tensor([0, 1, 2, 0]), torch.tensor([1, 2, 0, 1])
    logits1 = torch.randn(4, 3, generator=g)
    (_, logs1), groups1 = _dlb_step(method, x1, y1, torch.arange(4), logits1, [1, 0, 3, 2], 0.6)
    assert groups1 == (4, 0) and logs1["loss/kd"] == 0.0

    net = method.ctx.model
    clean = x1[2:]  # the retained clips, each on its own
    normed = (clean - clean.mean(0)) / torch.sqrt(clean.var(0, unbiased=False) + net.norm.eps)
    outputs = normed @ net.linear.weight.detach().T  # the network's step-1 output on each retained clip
    logits2 = torch.randn(6, 3, generator=g)
    (_, logs2), groups2 = _dlb_step(method, x2, y2, torch.arange(4, 8), logits2, [2, 3, 0, 1, 5, 4], lam)
    assert groups2 == (4, 2)
    p = torch.softmax(outputs.double() / tau, dim=1)
    target = torch.stack([lam * p[0] + (1 - lam) * p[1], lam * p[1] + (1 - lam) * p[0]])
    assert logs2["loss/kd"] == pytest.approx(kd_term(target, logits2[4:], tau), rel=1e-5)
    # the former target — step 1's output on the mixed rows the clips sat in — is another one
    former = torch.softmax(logits1[2:].double() / tau, dim=1)
    assert logs2["loss/kd"] != pytest.approx(kd_term(former, logits2[4:], tau), rel=1e-3)


def test_mixup_pairs_within_groups_and_one_group_draws_as_before():
    from audio_mrkd.data.augment import mixup
    x, y = torch.randn(6, 1, 2, 2), torch.tensor([0, 1, 2, 0, 1, 2])
    _, _, whole = mixup(x, y, 3, 0.4, torch.Generator().manual_seed(5))
    _, _, one = mixup(x, y, 3, 0.4, torch.Generator().manual_seed(5), groups=(6,))
    g = torch.Generator().manual_seed(5)
    from audio_mrkd.data.augment import beta
    beta(0.4, (), x, g)
    assert torch.equal(whole.perm, torch.randperm(6, generator=g)) and torch.equal(whole.perm, one.perm)
    for seed in range(20):
        _, _, split = mixup(x, y, 3, 0.4, torch.Generator().manual_seed(seed), groups=(4, 2))
        assert sorted(split.perm[:4].tolist()) == [0, 1, 2, 3] and sorted(split.perm[4:].tolist()) == [4, 5]
    assert torch.equal(one.inputs, x)

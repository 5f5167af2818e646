"""Tests of the MrKD building blocks (audio_mrkd.distill): KA, KD loss, snapshot bank, ensembler, MrKD."""

import dataclasses
import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from audio_mrkd import config_io
from audio_mrkd.distill.adjust import knowledge_adjust
from audio_mrkd.distill.ensemble import FCNEnsembler, combine_teachers
from audio_mrkd.distill.losses import kd_loss
from audio_mrkd.distill.mrkd_objective import MrKD
from audio_mrkd.distill.snapshots import BackupSchedule, SnapshotBank
from audio_mrkd.errors import InputError
from audio_mrkd.methods.mrkd import MemoryReplay
from audio_mrkd.runtime import Runtime

CPU = torch.device("cpu")
N_IN, N_CLS = 4, 3


def make_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(N_IN, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, N_CLS))


def marked(value: float) -> nn.Module:
    """A model whose first weight is filled with `value`, to recognise snapshots."""
    model = make_model()
    with torch.no_grad():
        model[0].weight.fill_(value)
    return model


def mark(model: nn.Module) -> float:
    return model[0].weight[0, 0].item()


def train_a_bit(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int = 1) -> None:
    """Real SGD steps (train mode), so that each backup differs from the previous one."""
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    model.train()
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(1)
    return torch.randn(6, N_IN, generator=g), torch.randint(0, N_CLS, (6,), generator=g)


# ---- Knowledge Adjustment -------------------------------------------------------------------------------------
def test_ka_swaps_only_wrong_rows():
    logits = torch.tensor([[3.0, 1.0, 0.5, -1.0],   # target 0, correct
                           [0.2, 2.5, -0.3, 1.0],   # target 3, wrong: swap 1 and 3
                           [1.0, 4.0, 1.0, 0.0]])   # target 2 ties with index 0 but argmax is 1: swap 1 and 2
    target = torch.tensor([0, 3, 2])
    before = logits.clone()
    out, mask = knowledge_adjust(logits, target)
    assert torch.equal(logits, before), "input must not be modified"
    assert mask.tolist() == [False, True, True]
    assert torch.equal(out[0], logits[0])
    assert out[1].tolist() == pytest.approx([0.2, 1.0, -0.3, 2.5])
    assert out[2].tolist() == pytest.approx([1.0, 1.0, 4.0, 0.0])


def test_ka_tie_with_target_counts_as_correct():
    logits = torch.tensor([[2.0, 2.0, 0.0], [2.0, 2.0, 0.0]])
    out, mask = knowledge_adjust(logits, torch.tensor([1, 0]))
    assert mask.tolist() == [False, False]
    assert torch.equal(out, logits)


def test_ka_random_rows_become_permutations_with_target_on_top():
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(200, 7, generator=g)
    target = torch.randint(0, 7, (200,), generator=g)
    out, mask = knowledge_adjust(logits, target)
    assert torch.equal(out.argmax(1), target)
    assert torch.equal(out.sort(1).values, logits.sort(1).values)
    assert torch.equal(mask, logits.argmax(1) != target)
    assert torch.equal(out[~mask], logits[~mask])
    assert ((out != logits).sum(1)[mask] == 2).all()


def test_ka_rejects_bad_shapes():  # internal checks: a bug, not user input
    with pytest.raises(AssertionError, match="knowledge_adjust"):
        knowledge_adjust(torch.zeros(2, 3), torch.zeros(3, dtype=torch.long))
    with pytest.raises(AssertionError, match="knowledge_adjust"):
        knowledge_adjust(torch.zeros(2, 3), torch.zeros(2))


# ---- KD loss ------------------------------------------------------------------------------------------------
def test_kd_loss_matches_hand_computation():
    s = torch.tensor([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]])
    t = torch.tensor([[2.0, 0.0, 1.0], [1.0, 1.0, 1.5]])
    tau = 2.0
    p_t = torch.softmax(t / tau, dim=1)
    p_s = torch.softmax(s / tau, dim=1)
    hand = tau**2 * (p_t * (p_t.log() - p_s.log())).sum(1).mean()
    assert kd_loss(s, t, tau).item() == pytest.approx(hand.item(), rel=1e-6)
    assert hand.item() > 0.01


def test_kd_loss_zero_for_identical_and_grad_to_student_only():
    s = torch.randn(4, 5, requires_grad=True)
    assert kd_loss(s, s.detach(), 3.0).item() == pytest.approx(0.0, abs=1e-6)
    t = torch.randn(4, 5)
    kd_loss(s, t, 3.0).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    with pytest.raises(AssertionError, match="kd_loss: tau"):
        kd_loss(s, t, 0.0)


# ---- schedule and bank --------------------------------------------------------------------------------------
def test_backup_schedule_epoch_and_step_units():
    by_epoch = BackupSchedule(2, "epoch")
    assert [e for e in range(0, 9) if by_epoch.due_after_epoch(e)] == [2, 4, 6, 8]
    assert not any(by_epoch.due_after_step(s) for s in range(0, 20))
    by_step = BackupSchedule(3, "step")
    assert [s for s in range(0, 10) if by_step.due_after_step(s)] == [3, 6, 9]
    assert not any(by_step.due_after_epoch(e) for e in range(0, 5))
    assert [e for e in range(1, 4) if BackupSchedule(1, "epoch").due_after_epoch(e)] == [1, 2, 3]
    with pytest.raises(AssertionError, match="mrkd.interval_unit"):
        BackupSchedule(1, "batch")
    with pytest.raises(AssertionError, match="mrkd.interval"):
        BackupSchedule(0, "epoch")


def test_bank_fifo_newest_first():
    bank = SnapshotBank(3)
    seen = []
    for i in range(1, 6):
        bank.push(marked(float(i)))
        seen.append(([mark(m) for m in bank.teachers()], bank.full, len(bank)))
    assert seen == [([1.0], False, 1), ([2.0, 1.0], False, 2), ([3.0, 2.0, 1.0], True, 3),
                    ([4.0, 3.0, 2.0], True, 3), ([5.0, 4.0, 3.0], True, 3)]


def test_bank_exponential_spacing_ages():
    bank = SnapshotBank(3, spacing="exponential")  # ages 1, 2, 4
    exposed = []
    for i in range(1, 7):
        bank.push(marked(float(i)))
        exposed.append(([mark(m) for m in bank.teachers()], bank.full))
    assert exposed == [([1.0], False), ([2.0, 1.0], False), ([3.0, 2.0], False),
                       ([4.0, 3.0, 1.0], True), ([5.0, 4.0, 2.0], True), ([6.0, 5.0, 3.0], True)]
    assert bank.n_stored == 4


def test_snapshots_frozen_independent_eval(batch):
    x, y = batch
    student = make_model()
    train_a_bit(student, x, y, steps=2)
    bank = SnapshotBank(2)
    bank.push(student)
    snap = bank.teachers()[0]
    before = {k: v.clone() for k, v in snap.state_dict().items()}
    assert torch.equal(before["1.running_mean"], student[1].running_mean)
    train_a_bit(student, x, y, steps=3)  # changes weights and BN running stats of the student
    assert not torch.equal(student[1].running_mean, before["1.running_mean"])
    for key, value in snap.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert student.training and not snap.training
    assert all(not p.requires_grad and p.grad is None for p in snap.parameters())
    z = bank.logits(x)
    assert z.shape == (1, 6, N_CLS) and not z.requires_grad
    reference = make_model()
    reference.load_state_dict(before)
    assert torch.allclose(z[0], reference.eval()(x))  # eval-mode BN (running stats)


# ---- ensembler ----------------------------------------------------------------------------------------------
def test_fcn_shape_and_mean_at_init():
    z = torch.randn(4, 5, 10)
    fcn = FCNEnsembler(4, 10, hidden=16)
    out = fcn(z)
    assert out.shape == (5, 10)
    assert torch.allclose(out, z.mean(0))
    assert torch.equal(combine_teachers(z, "mean", None), z.mean(0))
    assert torch.equal(combine_teachers(z, "newest", None), z[0])
    with pytest.raises(AssertionError, match="combine_teachers"):
        combine_teachers(z, "fcn", None)


def test_fcn_learns_on_separable_toy_problem():
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 3, (256,), generator=g)
    good = F.one_hot(y, 3).float() * 2.0 + 0.1 * torch.randn(256, 3, generator=g)
    bad = -F.one_hot(y, 3).float() * 4.0 + 0.1 * torch.randn(256, 3, generator=g)  # mean points away from y
    z = torch.stack([good, bad])
    fcn = FCNEnsembler(2, 3, hidden=32)
    opt = torch.optim.Adam(fcn.parameters(), lr=1e-2)
    acc = lambda: (fcn(z).argmax(1) == y).float().mean().item()  # noqa: E731
    start = acc()
    for _ in range(60):
        opt.zero_grad()
        F.cross_entropy(fcn(z), y).backward()
        opt.step()
    assert start < 0.2 and acc() > 0.95


# ---- MrKD ---------------------------------------------------------------------------------------------------
def filled_mrkd(cfg: MemoryReplay.Options, x, y, infer_all=None, seed: int = 0):
    """A student and an MrKD whose bank was filled by real training between epoch backups."""
    student = make_model(seed)
    mrkd = MrKD(cfg, N_CLS, CPU, infer_all=infer_all)
    epoch = 0
    while not mrkd.active:
        train_a_bit(student, x, y)
        epoch += 1
        mrkd.after_epoch(student, epoch)
    return student, mrkd, epoch


def hand_loss(z_s, y, t, alpha, tau):
    return (1 - alpha) * F.cross_entropy(z_s, y) + alpha * kd_loss(z_s, t, tau)


def test_loss_is_ce_while_inactive(batch):
    x, y = batch
    student = make_model()
    mrkd = MrKD(MemoryReplay.Options(k=2), N_CLS, CPU)
    assert mrkd.after_epoch(student, 1) and not mrkd.active
    z_s = student(x)
    loss, logs = mrkd.loss(z_s, x, y)
    assert torch.equal(loss, F.cross_entropy(z_s, y))
    assert logs["mrkd/active"] == 0.0 and logs["loss/ce"] == pytest.approx(loss.item())


@pytest.mark.parametrize("ka", [False, True])
def test_active_loss_matches_hand_formula(batch, ka):
    x, y = batch
    cfg = MemoryReplay.Options(k=2, ensemble="mean", ka=ka, alpha=0.3, tau=2.0)
    student, mrkd, epoch = filled_mrkd(cfg, x, y)
    z_s = student(x)
    loss, logs = mrkd.loss(z_s, x, y, epoch=epoch)
    teachers = mrkd.bank.teachers()
    t = torch.stack([m(x) for m in teachers]).mean(0).detach()
    if ka:
        t = knowledge_adjust(t, y)[0]
    assert loss.item() == pytest.approx(hand_loss(z_s, y, t, 0.3, 2.0).item(), rel=1e-5)
    assert logs["mrkd/active"] == 1.0 and logs["loss/kd"] > 0
    newest_acc = (teachers[0](x).argmax(1) == y).float().mean().item()
    assert logs["mrkd/teacher_acc/0"] == pytest.approx(newest_acc)
    assert set(logs) >= {"loss/ce", "loss/kd", "loss/fcn", "mrkd/teacher_acc/1", "mrkd/ensemble_acc",
                         "mrkd/mean_acc", "mrkd/ka_rate", "mrkd/teacher_time"}


def test_no_gradient_to_teachers_or_fcn(batch):
    x, y = batch
    student, mrkd, epoch = filled_mrkd(MemoryReplay.Options(k=2, ensemble="fcn", ka_per_teacher=True), x, y)
    fcn_before = [p.detach().clone() for p in mrkd.ensembler.fcn.parameters()]
    student.zero_grad()
    loss, logs = mrkd.loss(student(x), x, y, epoch=epoch)
    fcn_params = list(mrkd.ensembler.fcn.parameters())
    assert all(g is None for g in torch.autograd.grad(loss, fcn_params, retain_graph=True, allow_unused=True))
    fcn_grads = [p.grad.clone() for p in fcn_params]  # from the FCN's own CE step inside loss()
    loss.backward()
    assert all(torch.equal(p.grad, g) for p, g in zip(fcn_params, fcn_grads))
    assert any(not torch.equal(p, b) for p, b in zip(fcn_params, fcn_before)), "the FCN took its own step"
    for teacher in mrkd.bank.teachers():
        assert all(not p.requires_grad and p.grad is None for p in teacher.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())
    assert logs["loss/fcn"] > 0


def test_cached_teacher_input_gathers_by_index(batch):
    x, y = batch
    calls = []

    def infer_all(model):
        calls.append(model)
        return model(x)  # "all training items" = the 6 rows of x

    cfg = MemoryReplay.Options(k=2, ensemble="mean", ka=False, teacher_input="cached")
    student, mrkd, epoch = filled_mrkd(cfg, x, y, infer_all=infer_all)
    train_a_bit(student, x, y)
    assert mrkd.after_epoch(student, epoch + 1)
    assert len(calls) == epoch + 1, "infer_all runs once per backup"
    store = mrkd.cached_logits
    teachers = mrkd.bank.teachers()
    assert calls[-1] is teachers[0]
    assert store.shape == (2, 6, N_CLS)
    assert torch.allclose(store, torch.stack([m(x) for m in teachers]))
    index = torch.tensor([4, 1, 5])
    z_s = student(x[index] + 0.5)  # augmented input for the student; teachers use their stored rows
    loss, _ = mrkd.loss(z_s, None, y[index], index=index, epoch=epoch + 1)
    t = store[:, index].mean(0)
    assert loss.item() == pytest.approx(hand_loss(z_s, y[index], t, 0.5, 3.0).item(), rel=1e-5)
    with pytest.raises(AssertionError, match="cached. needs .index."):  # a bug, not user input
        mrkd.loss(z_s, None, y[index])


@pytest.mark.parametrize("spacing,teacher_input", [("uniform", "same"), ("exponential", "cached")])
def test_state_dict_round_trip(batch, spacing, teacher_input):
    x, y = batch
    infer_all = lambda m: m(x)  # noqa: E731
    cfg = MemoryReplay.Options(k=2, spacing=spacing, teacher_input=teacher_input, alpha_ramp_epochs=3)
    student, mrkd, epoch = filled_mrkd(cfg, x, y, infer_all=infer_all)
    index = torch.arange(6)
    for _ in range(3):  # move the FCN and its Adam state away from their init
        mrkd.loss(student(x), x, y, index=index, epoch=epoch)
    buf = io.BytesIO()
    torch.save(mrkd.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    fresh = MrKD(cfg, N_CLS, CPU, infer_all=infer_all)
    fresh.load_state_dict(state, make_model(seed=7))
    z_s = student(x).detach()
    for step in range(2):  # identical loss, also after one more FCN step on each side
        a, logs_a = mrkd.loss(z_s, x, y, index=index, epoch=epoch + 1)
        b, logs_b = fresh.loss(z_s, x, y, index=index, epoch=epoch + 1)
        assert torch.equal(a, b), step
        assert logs_a["mrkd/alpha"] == logs_b["mrkd/alpha"] < cfg.alpha
    bad = MrKD(MemoryReplay.Options(k=3), N_CLS, CPU)
    with pytest.raises(InputError, match="mrkd.k"):
        bad.load_state_dict(state, make_model())


def test_alpha_ramp(batch):
    x, y = batch
    cfg = MemoryReplay.Options(k=1, ensemble="mean", ka=False, alpha=0.6, alpha_ramp_epochs=3)
    student, mrkd, first = filled_mrkd(cfg, x, y)
    z_s = student(x)
    t = mrkd.bank.teachers()[0](x).detach()
    for offset, alpha in [(0, 0.2), (1, 0.4), (2, 0.6), (5, 0.6)]:
        loss, logs = mrkd.loss(z_s, x, y, epoch=first + offset)
        assert logs["mrkd/alpha"] == pytest.approx(alpha)
        assert loss.item() == pytest.approx(hand_loss(z_s, y, t, alpha, cfg.tau).item(), rel=1e-5)


def test_step_backups_and_soft_labels(batch):
    x, y = batch
    student = make_model()
    mrkd = MrKD(MemoryReplay.Options(k=2, interval=2, interval_unit="step", ensemble="newest"), N_CLS, CPU)
    done = [mrkd.after_step(student, s) for s in range(1, 6)]
    assert done == [False, True, False, True, False] and mrkd.active
    assert not mrkd.after_epoch(student, 1)
    soft = 0.7 * F.one_hot(y, N_CLS).float() + 0.3 * F.one_hot((y + 1) % N_CLS, N_CLS).float()
    z_s = student(x)
    loss, _ = mrkd.loss(z_s, x, soft)
    t = knowledge_adjust(mrkd.bank.teachers()[0](x).detach(), y)[0]  # KA on the class of larger weight
    hand = 0.5 * F.cross_entropy(z_s, soft) + 0.5 * kd_loss(z_s, t, 3.0)
    assert loss.item() == pytest.approx(hand.item(), rel=1e-5)


@pytest.mark.parametrize("key,value", [
    ("k", 0), ("k", 2.0), ("interval", 0), ("interval_unit", "batch"), ("tau", 0.0), ("tau", float("nan")),
    ("alpha", 1.5), ("alpha", -0.1), ("ensemble", "max"), ("fcn_hidden", 0), ("fcn_lr", 0.0), ("ka", "yes"),
    ("ka_per_teacher", 1), ("teacher_input", "clean"), ("spacing", "log"), ("fcn_label_smoothing", 1.0),
    ("alpha_ramp_epochs", -1), ("alpha_ramp_epochs", True),
])
def test_validate_errors(key, value):
    cfg = MemoryReplay.Options(**{key: value})
    with pytest.raises(InputError, match=f"^mrkd.{key}: "):
        config_io.check(cfg, "mrkd")


def test_validate_defaults_and_cached_needs_infer_all():
    config_io.check(MemoryReplay.Options(), "mrkd")
    with pytest.raises(InputError, match="mrkd.teacher_input"):
        MrKD(MemoryReplay.Options(teacher_input="cached"), N_CLS, CPU)


def test_loss_under_autocast_casts_teachers_to_float32(batch):
    x, y = batch
    student, mrkd, epoch = filled_mrkd(MemoryReplay.Options(k=2), x, y)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        z_s = student(x)
        assert mrkd.bank.logits(x).dtype == torch.bfloat16  # teachers run in the student's autocast dtype
        loss, logs = mrkd.loss(z_s, x, y, epoch=epoch)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert all(p.dtype == torch.float32 and p.grad.dtype == torch.float32 for p in mrkd.ensembler.fcn.parameters())
    loss.backward()
    assert all(p.grad is not None for p in student.parameters())


def test_fused_teachers_match_the_plain_copies():
    """BatchNorm folded into the convolutions: the same logits as the plain frozen copies (fp32 rounding)."""
    from audio_mrkd.distill.snapshots import SnapshotBank
    from audio_mrkd.models import build_model
    torch.manual_seed(0)
    student = build_model("cp_mobile", 5, 1, base_channels=8)
    student.train()
    student(torch.randn(16, 1, 32, 20))  # non-trivial BatchNorm running statistics
    fused, plain = SnapshotBank(2, fuse=True), SnapshotBank(2, fuse=False)
    for bank in (fused, plain):
        bank.push(student)
        bank.push(student)
    x = torch.randn(4, 1, 32, 20)
    assert fused._fast[0] is not fused._store[0]  # really a fused module
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused._fast[0].modules())
    assert torch.allclose(fused.logits(x), plain.logits(x), atol=1e-5)


def _bn_student(seed: int = 0) -> nn.Module:
    from audio_mrkd.models import build_model
    torch.manual_seed(seed)
    student = build_model("cp_mobile", 5, 1, base_channels=8)
    student.train()
    student(torch.randn(16, 1, 32, 20))  # non-trivial BatchNorm running statistics
    return student


def test_bf16_channels_last_teachers_match_the_plain_loop_within_bf16_tolerance():
    """The GPU teacher format (bfloat16 weights, channels_last), run here on the CPU: same logits as the plain
    fp32 per-snapshot loop within bf16 rounding."""
    fast, plain = SnapshotBank(2, dtype=torch.bfloat16, channels_last=True), SnapshotBank(2, fuse=False)
    for seed in (0, 1):  # two different snapshots, the same in both banks
        student = _bn_student(seed)
        fast.push(student)
        plain.push(student)
    x = torch.randn(8, 1, 32, 20)
    got, ref = fast.logits(x), plain.logits(x)
    assert got.dtype == torch.bfloat16 and got.shape == ref.shape == (2, 8, 5)
    assert next(fast._fast[0].parameters()).dtype == torch.bfloat16
    rel = (got.float() - ref).norm() / ref.norm()
    assert rel < 2e-2, rel


def test_loss_without_logs_is_the_same_loss(batch):
    """with_logs=False (the engine's non-logging steps: no host sync) changes nothing but the logs."""
    x, y = batch
    cfg = MemoryReplay.Options(k=2, ensemble="mean")
    student, mrkd, epoch = filled_mrkd(cfg, x, y)
    z_s = student(x)
    with_logs, logs = mrkd.loss(z_s, x, y, epoch=epoch)
    without, none = mrkd.loss(z_s, x, y, epoch=epoch, with_logs=False)
    assert none == {} and logs["mrkd/active"] == 1.0
    assert torch.equal(with_logs, without)


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")


@needs_cuda
def test_cuda_graph_teachers_equal_the_loop_and_follow_new_snapshots():
    student = _bn_student().cuda()
    graphed = SnapshotBank(3, dtype=torch.bfloat16, channels_last=True, graph=True)
    looped = SnapshotBank(3, dtype=torch.bfloat16, channels_last=True, graph=False)
    reference = SnapshotBank(3, fuse=False)
    x = torch.randn(8, 1, 32, 20, device="cuda")
    for round_ in range(4):  # the graph is re-captured after every push and sees the new teachers
        for bank in (graphed, looped, reference):
            bank.push(student)
        with torch.no_grad():
            for p in student.parameters():
                p.add_(0.05 * torch.randn_like(p))
        for batch in (x, torch.randn_like(x), x[:5]):  # new data, and a second (last-batch) shape
            got = graphed.logits(batch).clone()
            loop = looped.logits(batch)
            assert ((got.float() - loop.float()).norm() / loop.float().norm()) < 1e-3
            ref = reference.logits(batch)
            assert ((got.float() - ref).norm() / ref.norm()) < 2e-2
    assert len(graphed.runner._graphs) == 2


@needs_cuda
def test_cuda_compiled_graphed_teachers_equal_the_plain_loop_and_compile_once():
    """teacher_compile: unfused copies of the student's class, compiled once for every snapshot."""
    from torch._dynamo.utils import counters
    student = _bn_student().cuda()
    compiled = SnapshotBank(2, dtype=torch.bfloat16, channels_last=True, graph=True, compile=True)
    reference = SnapshotBank(2, fuse=False)
    x = torch.randn(8, 1, 32, 20, device="cuda")
    counters.clear()
    for _ in range(3):
        for bank in (compiled, reference):
            bank.push(student)
        with torch.no_grad():
            for p in student.parameters():
                p.add_(0.05 * torch.randn_like(p))
        got, ref = compiled.logits(x).float(), reference.logits(x)
        assert ((got - ref).norm() / ref.norm()) < 2e-2
    assert counters["stats"]["unique_graphs"] == 1


def test_compiled_loss_tail_equals_the_eager_one(batch):
    """A runtime that compiles (the engine's choice under train.compile on CUDA; torch.compile works on the CPU too): the same
    total loss, student gradient and FCN update as the eager functions, over several steps."""
    x, y = batch
    results = []
    for compile_tail in (False, True):
        student = make_model(0)
        runtime = dataclasses.replace(Runtime.plain(CPU), compile=compile_tail)
        mrkd = MrKD(MemoryReplay.Options(k=2), N_CLS, CPU, runtime)
        for epoch in (1, 2):
            train_a_bit(student, x, y)
            mrkd.after_epoch(student, epoch)
        losses = []
        for _ in range(3):
            student.zero_grad()
            loss, _ = mrkd.loss(student(x), x, y, epoch=2, with_logs=False)
            loss.backward()
            losses.append(loss.detach())
        results.append((torch.stack(losses), student[0].weight.grad.clone(),
                        [p.detach().clone() for p in mrkd.ensembler.fcn.parameters()]))
    (l0, g0, f0), (l1, g1, f1) = results
    assert torch.allclose(l0, l1, atol=1e-6) and torch.allclose(g0, g1, atol=1e-6)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(f0, f1))


def test_compiled_teachers_on_cpu_equal_the_plain_loop_and_compile_once():
    """The teacher_compile path itself (the engine enables it on CUDA only), checked with torch.compile on the CPU:
    unfused copies of the student's class, the same logits as the plain copies, one graph for every snapshot."""
    from torch._dynamo.utils import counters
    compiled, reference = SnapshotBank(2, compile=True), SnapshotBank(2, fuse=False)
    x = torch.randn(4, 1, 32, 20)
    counters.clear()
    for seed in (0, 1, 2):
        student = _bn_student(seed)
        compiled.push(student)
        reference.push(student)
        assert torch.allclose(compiled.logits(x), reference.logits(x), atol=1e-4)
    assert counters["stats"]["unique_graphs"] == 1

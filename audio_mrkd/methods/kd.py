"""``method: kd`` — knowledge distillation from a teacher stronger than the student (Hinton et al., 2015).

The teacher signal comes from ``kd.teachers`` (finished runs of this product) or ``kd.teacher_logits`` (a file
a user brings); see :mod:`audio_mrkd.distill.teachers`. With several teachers their logits are combined by the
mean or by MrKD's learned FCN ensembler (``kd.ensemble``), optionally Knowledge-Adjusted (``kd.ka``), and the
student trains on

    (1 − α)·CE(z_s, y) + α·τ²·KL(softmax(z_t/τ) ‖ softmax(z_s/τ)).

``train.label_smoothing`` applies to the CE term. TensorBoard: ``loss/ce``, ``loss/kd``, ``kd/teacher_acc/<i>``
(each teacher on the batch), ``kd/ensemble_acc``, ``kd/ka_rate`` and, with the FCN, ``loss/fcn``.
"""
from __future__ import annotations

import torch
from torch import Tensor

from audio_mrkd import config as config_io
from audio_mrkd.data.augment import Mixing
from audio_mrkd.distill.ensemble import LearnedEnsemble, fcn_objective
from audio_mrkd.distill.losses import distill_objective, hard_labels, mix_teacher_logits
from audio_mrkd.distill.teachers import TeacherSignal, build_teacher_signal
from audio_mrkd.errors import InputError
from audio_mrkd.methods.base import Method, TrainContext, soft_cross_entropy


class TeacherDistillation(Method):
    def __init__(self, cfg, ctx: TrainContext) -> None:
        super().__init__(cfg, ctx)
        self.teachers: TeacherSignal = build_teacher_signal(cfg.kd, ctx)
        self.ensembler = teacher_ensembler(cfg.kd, self.teachers.n_teachers, ctx)

    def loss(self, logits: Tensor, x: Tensor, y: Tensor, index: Tensor, epoch: int,
             with_logs: bool, mixing: Mixing | None = None) -> tuple[Tensor, dict[str, float]]:
        kcfg = self.cfg.kd
        z_s = logits.float()
        y_hard = hard_labels(y, z_s)
        ce = soft_cross_entropy(z_s, y, self.cfg.train.label_smoothing)
        z, z_t, l_fcn = teacher_view(self.teachers, self.ensembler, x, index, y_hard, mixing, kcfg.tau)
        total, kd, adjusted = distill_objective(z_s, ce, z_t, y_hard, kcfg.alpha, kcfg.tau, kcfg.ka)
        return total, (teacher_logs(z, z_t, y_hard, adjusted, ce, kd, l_fcn) if with_logs else {})

    def graph_key(self, epoch: int):
        """Capture-safe with the teachers' mean (a gather or the teachers' forwards); the learned ensembler's own
        optimiser step stays eager."""
        return () if self.ensembler is None else None

    def state_dict(self) -> dict:
        return teachers_state(self.teachers, self.ensembler)

    def load_state_dict(self, state: dict) -> None:
        load_teachers_state(state, self.teachers, self.ensembler)

    def hparams(self) -> dict:
        return kd_hparams(self.cfg.kd)


def kd_hparams(kcfg) -> dict:
    """The ``kd.*`` settings, flat, for TensorBoard's hparams."""
    return {f"kd.{k}": (str(v) if isinstance(v, list) else v) for k, v in config_io.to_dict(kcfg).items()}


def teachers_state(teachers: TeacherSignal, ensembler: LearnedEnsemble | None) -> dict:
    """What a checkpoint keeps of a teacher term: the teachers' digest and the learned ensembler."""
    return {"teachers": teachers.digest(), **(ensembler.state_dict() if ensembler is not None else {})}


def load_teachers_state(state: dict, teachers: TeacherSignal, ensembler: LearnedEnsemble | None) -> None:
    check_same_teachers(state.get("teachers", "none"), teachers)
    if ensembler is not None:
        ensembler.load_state_dict(state)


def teacher_ensembler(kcfg, n_teachers: int, ctx: TrainContext) -> LearnedEnsemble | None:
    """The learned ensembler of ``kd.ensemble: fcn`` (None for the mean or a single teacher)."""
    if kcfg.ensemble != "fcn" or n_teachers < 2:
        return None
    return LearnedEnsemble(n_teachers, ctx.n_classes, kcfg.fcn_hidden, kcfg.fcn_lr, ctx.torch_device,
                           fused=ctx.runtime.cuda or None, objective=fcn_objective, grad_sync=ctx.average_grads)


def combine(z: Tensor, y: Tensor, ensembler: LearnedEnsemble | None) -> tuple[Tensor, Tensor | None]:
    """T×B×C teacher logits → B×C (mean, or the learned ensembler after its step) and the ensembler's CE."""
    if ensembler is None:
        return z.mean(dim=0), None
    return ensembler.step(z, y)


def teacher_view(teachers: TeacherSignal, ensembler: LearnedEnsemble | None, x: Tensor, index: Tensor,
                 y_hard: Tensor, mixing: Mixing | None, tau: float) -> tuple[Tensor, Tensor, Tensor | None]:
    """Each teacher's logits for the batch's rows (T×B×C), their combination (B×C) and the ensembler's CE. Cached
    teachers give one item's view: under mixup the ensembler learns on the rows' own items and labels, then every
    teacher and the combination are mixed like the label (:func:`mix_teacher_logits` at ``tau``)."""
    z = teachers.logits(x, index)
    per_item = mixing is not None and teachers.cached
    z_t, l_fcn = combine(z, mixing.labels if per_item else y_hard, ensembler)
    if per_item:
        z, z_t = mix_teacher_logits(z, mixing, tau), mix_teacher_logits(z_t, mixing, tau)
    return z, z_t, l_fcn


def teacher_logs(z: Tensor, z_t: Tensor, y: Tensor, adjusted: Tensor, ce: Tensor, kd: Tensor,
                 l_fcn: Tensor | None) -> dict[str, float]:
    """Float logs of a distillation step, fetched from the device in one transfer."""
    accs = (z.argmax(dim=-1) == y).float().mean(dim=-1)
    head = [ce.detach(), kd.detach(), (z_t.argmax(dim=1) == y).float().mean(), adjusted.float().mean()]
    names = ["loss/ce", "loss/kd", "kd/ensemble_acc", "kd/ka_rate"]
    if l_fcn is not None:
        head.append(l_fcn)
        names.append("loss/fcn")
    values = torch.cat([torch.stack(head), accs]).tolist()
    names += [f"kd/teacher_acc/{i}" for i in range(z.shape[0])]
    return dict(zip(names, values))


def check_same_teachers(saved: str, teachers: TeacherSignal) -> None:
    """A resumed run must distil from the teachers it started with."""
    if saved != teachers.digest():
        raise InputError("kd.teachers / kd.teacher_logits: not the teachers this run was started with "
                         "(their logits or weights differ from the checkpoint's)")


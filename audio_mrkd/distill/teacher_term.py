"""The KD term toward a stronger teacher, the building block of ``method: kd`` and of ``method: mrkd``'s
``with_teacher: term``: the teachers' logits, their combination (mean, or a learned ensembler), Knowledge Adjustment
and the KD loss, weighted against the caller's own loss as

    (1 − α)·base + α·τ²·KL(softmax(z_t/τ) ‖ softmax(z_s/τ))

with every setting from the ``teacher:`` section (:class:`~audio_mrkd.config_schema.TeacherConfig`: the source, and
the term's alpha, tau, ka, ensemble, fcn_*; ``base``: the CE to the labels for ``kd``, MrKD's loss for ``mrkd``).
:func:`teacher_view` — the teachers' logits for a batch, combined, mixed like the label under mixup — is also how
MrKD reads an external teacher before its bank is full.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from audio_mrkd import config_io
from audio_mrkd.config_schema import TeacherConfig
from audio_mrkd.data.augment import Mixing
from audio_mrkd.distill.ensemble import LearnedEnsemble, fcn_objective
from audio_mrkd.distill.losses import distill_objective, mix_teacher_logits
from audio_mrkd.distill.teachers import TeacherSignal, build_teacher_signal
from audio_mrkd.errors import InputError


@dataclass
class TermResult:
    """One step of the term: the total loss and what its logs are computed from."""

    total: Tensor              # (1 − α)·base + α·KD
    kd: Tensor                 # the KD term
    z: Tensor                  # each teacher's logits, T×B×C
    z_t: Tensor                # their combination, B×C
    adjusted: Tensor           # rows Knowledge Adjustment changed
    l_fcn: Tensor | None       # the learned ensembler's CE (None for the mean)


class TeacherTerm:
    """KD toward the teachers ``teacher`` names, weighted by its alpha, tau and ka, for the run ``ctx``."""

    def __init__(self, teacher: TeacherConfig, ctx) -> None:
        self.cfg = teacher
        self.teachers: TeacherSignal = build_teacher_signal(teacher, ctx)
        self.ensembler = teacher_ensembler(teacher, self.teachers.n_teachers, ctx)

    @property
    def capture_safe(self) -> bool:
        """The teachers' mean (a gather or the teachers' forwards) can be captured; a learned ensembler's own
        optimiser step stays eager."""
        return self.ensembler is None

    def apply(self, z_s: Tensor, base: Tensor, x: Tensor, index: Tensor, y_hard: Tensor,
              mixing: Mixing | None) -> TermResult:
        """The term on a batch: ``z_s`` the student's float32 logits, ``y_hard`` the labels' classes."""
        z, z_t, l_fcn = teacher_view(self.teachers, self.ensembler, x, index, y_hard, mixing, self.cfg.tau)
        total, kd, adjusted = distill_objective(z_s, base, z_t, y_hard, self.cfg.alpha, self.cfg.tau, self.cfg.ka)
        return TermResult(total, kd, z, z_t, adjusted, l_fcn)

    def logs(self, result: TermResult, ce: Tensor, y_hard: Tensor) -> dict[str, float]:
        """Float logs of a step (``loss/ce``: ``ce``), fetched from the device in one transfer."""
        accs = (result.z.argmax(dim=-1) == y_hard).float().mean(dim=-1)
        head = [ce.detach(), result.kd.detach(), (result.z_t.argmax(dim=1) == y_hard).float().mean(),
                result.adjusted.float().mean()]
        names = ["loss/ce", "loss/kd", "kd/ensemble_acc", "kd/ka_rate"]
        if result.l_fcn is not None:
            head.append(result.l_fcn)
            names.append("loss/fcn")
        values = torch.cat([torch.stack(head), accs]).tolist()
        names += [f"kd/teacher_acc/{i}" for i in range(result.z.shape[0])]
        return dict(zip(names, values))

    def state_dict(self) -> dict:
        """What a checkpoint keeps: the teachers' digest and the learned ensembler."""
        return {"teachers": self.teachers.digest(),
                **(self.ensembler.state_dict() if self.ensembler is not None else {})}

    def load_state_dict(self, state: dict) -> None:
        """A resumed run must distil from the teachers it started with."""
        if state.get("teachers", "none") != self.teachers.digest():
            raise InputError("teacher.runs / teacher.logits: not the teachers this run was started with "
                             "(their logits or weights differ from the checkpoint's)")
        if self.ensembler is not None:
            self.ensembler.load_state_dict(state)

    def hparams(self) -> dict:
        """The ``teacher.*`` settings the term reads, flat, for TensorBoard's hparams."""
        return flat_hparams("teacher", self.cfg)


def flat_hparams(section: str, options, leave_out: tuple[str, ...] = ()) -> dict:
    """A config section's settings (those its choices read, but ``leave_out``) as ``{"<section>.<key>": value}`` for
    TensorBoard's hparams (lists as text)."""
    return {f"{section}.{k}": (str(v) if isinstance(v, list) else v)
            for k, v in config_io.to_dict(options, read_only=True).items() if k not in leave_out}


def teacher_ensembler(tcfg: TeacherConfig, n_teachers: int, ctx) -> LearnedEnsemble | None:
    """The learned ensembler of ``teacher.ensemble: fcn`` (None for the mean or a single teacher)."""
    if tcfg.ensemble != "fcn" or n_teachers < 2:
        return None
    return LearnedEnsemble(n_teachers, ctx.n_classes, tcfg.fcn_hidden, tcfg.fcn_lr, ctx.torch_device,
                           fused=ctx.runtime.cuda or None, objective=fcn_objective, grad_sync=ctx.average_grads,
                           dtype=ctx.runtime.input_dtype)


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

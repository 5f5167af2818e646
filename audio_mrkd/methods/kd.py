"""``method: kd`` — knowledge distillation from a teacher stronger than the student (Hinton et al., 2015).

The teacher and the term toward it are the ``teacher:`` section (the method has no section of its own): finished
runs of this product (``teacher.runs``) or a file a user brings (``teacher.logits``); see
:mod:`audio_mrkd.distill.teachers`. With several teachers their logits are combined by the mean or by MrKD's learned
FCN ensembler (``teacher.ensemble``), optionally Knowledge-Adjusted (``teacher.ka``), and the student trains on

    (1 − α)·CE(z_s, y) + α·τ²·KL(softmax(z_t/τ) ‖ softmax(z_s/τ))          (α, τ: teacher.alpha, teacher.tau).

``train.label_smoothing`` applies to the CE term. TensorBoard: ``loss/ce``, ``loss/kd``, ``kd/teacher_acc/<i>``
(each teacher on the batch), ``kd/ensemble_acc``, ``kd/ka_rate`` and, with the FCN, ``loss/fcn``.
"""
from __future__ import annotations

from torch import Tensor

from audio_mrkd.data.augment import Mixing
from audio_mrkd.distill.losses import hard_labels
from audio_mrkd.distill.teacher_term import TeacherTerm
from audio_mrkd.methods.base import Method, TrainContext, soft_cross_entropy
from audio_mrkd.runtime import loss_precision


class TeacherDistillation(Method):
    uses_teacher = "required"

    def __init__(self, cfg, ctx: TrainContext) -> None:
        super().__init__(cfg, ctx)
        self.term = TeacherTerm(cfg.teacher, ctx)

    def loss(self, logits: Tensor, x: Tensor, y: Tensor, index: Tensor, epoch: int,
             with_logs: bool, mixing: Mixing | None = None) -> tuple[Tensor, dict[str, float]]:
        z_s = loss_precision(logits)
        y_hard = hard_labels(y, z_s)
        ce = soft_cross_entropy(z_s, y, self.cfg.train.label_smoothing)
        result = self.term.apply(z_s, ce, x, index, y_hard, mixing)
        return result.total, (self.term.logs(result, ce, y_hard) if with_logs else {})

    def graph_key(self, epoch: int):
        """Capture-safe with the teachers' mean; a learned ensembler's own optimiser step stays eager."""
        return () if self.term.capture_safe else None

    def state_dict(self) -> dict:
        return self.term.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.term.load_state_dict(state)

    def hparams(self) -> dict:
        return self.term.hparams()

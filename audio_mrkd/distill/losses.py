"""Knowledge-distillation losses: the Hinton KD term and the student objective built on it."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from audio_mrkd.distill.adjust import knowledge_adjust
from audio_mrkd.runtime import loss_precision


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, tau: float) -> Tensor:
    """tau² · KL(softmax(t/τ) ‖ softmax(s/τ)), summed over classes, mean over the batch; computed in float32
    (float64 when either input is float64: ``train.precision=64``).

    Gradient flows into `student_logits` only when the teacher is detached (the caller's job).
    """
    if not (isinstance(tau, (int, float)) and math.isfinite(tau) and tau > 0):
        raise AssertionError(f"kd_loss: tau must be a finite number > 0, got {tau!r}")
    if student_logits.dim() != 2 or student_logits.shape != teacher_logits.shape:
        raise AssertionError(
            "kd_loss: student and teacher logits must both be B×C of the same shape, got "
            f"{tuple(student_logits.shape)} and {tuple(teacher_logits.shape)}"
        )
    dtype = torch.promote_types(loss_precision(student_logits).dtype, loss_precision(teacher_logits).dtype)
    log_p_s = F.log_softmax(student_logits.to(dtype) / tau, dim=1)
    log_p_t = F.log_softmax(teacher_logits.to(dtype) / tau, dim=1)
    kl = F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True)
    return kl * (tau * tau)


def mix_teacher_logits(z: Tensor, mixing, tau: float) -> Tensor:
    """One item's teacher logits (…×B×C) for the rows of a mixup batch: logits whose softmax at temperature τ is
    ``λ·softmax(z[r]/τ) + (1 − λ)·softmax(z[perm[r]]/τ)`` — the teacher's probabilities mixed with the label's
    pairing and weight (``mixing``: :class:`audio_mrkd.data.augment.Mixing`). Computed in log space,
    τ·log(mixture), so Knowledge Adjustment, an ensembler and the KD loss take them as ordinary logits."""
    log_p = F.log_softmax(loss_precision(z) / tau, dim=-1)
    lam = mixing.lam.to(log_p.dtype)
    return tau * torch.logaddexp(lam.log() + log_p, torch.log1p(-lam) + log_p[..., mixing.perm, :])


def hard_labels(y: Tensor, student_logits: Tensor) -> Tensor:
    """Class indices from y: B integer labels, or B×C soft targets (mixup) → the class of largest weight."""
    b, c = student_logits.shape
    if y.dim() == 1 and y.shape[0] == b and not y.dtype.is_floating_point and y.dtype != torch.bool:
        return y.long()
    if y.dim() == 2 and tuple(y.shape) == (b, c) and y.dtype.is_floating_point:
        return y.argmax(dim=1)
    raise AssertionError(f"y: expected {b} integer labels or {b}×{c} soft targets, got {tuple(y.shape)} {y.dtype}")


def distill_objective(z_s: Tensor, ce: Tensor, z_t: Tensor, y: Tensor, alpha: float, tau: float,
                      ka: bool) -> tuple[Tensor, Tensor, Tensor]:
    """(1 − α)·CE + α·KD(z_s ‖ KA(z_t)), the KD term, and the mask of KA-adjusted rows."""
    t, adjusted = knowledge_adjust(z_t, y) if ka else (z_t, torch.zeros_like(y, dtype=torch.bool))
    kd = kd_loss(z_s, t, tau)
    return (1.0 - alpha) * ce + alpha * kd, kd, adjusted

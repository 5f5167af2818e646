"""Knowledge-distillation loss (Hinton form)."""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor



def kd_loss(student_logits: Tensor, teacher_logits: Tensor, tau: float) -> Tensor:
    """tau² · KL(softmax(t/τ) ‖ softmax(s/τ)), summed over classes, mean over the batch; computed in float32.

    Gradient flows into `student_logits` only when the teacher is detached (the caller's job).
    """
    if not (isinstance(tau, (int, float)) and math.isfinite(tau) and tau > 0):
        raise AssertionError(f"mrkd.tau: must be a finite number > 0, got {tau!r}")
    if student_logits.dim() != 2 or student_logits.shape != teacher_logits.shape:
        raise AssertionError(
            "mrkd.kd_loss: student and teacher logits must both be B×C of the same shape, got "
            f"{tuple(student_logits.shape)} and {tuple(teacher_logits.shape)}"
        )
    log_p_s = F.log_softmax(student_logits.float() / tau, dim=1)
    log_p_t = F.log_softmax(teacher_logits.float() / tau, dim=1)
    kl = F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True)
    return kl * (tau * tau)

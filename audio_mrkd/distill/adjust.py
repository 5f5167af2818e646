"""Knowledge Adjustment (KA, Wen et al. 2019): put the ground-truth class on top of a teacher's logits."""

from __future__ import annotations

import torch
from torch import Tensor



def _check(logits: Tensor, target: Tensor) -> None:
    if logits.dim() != 2:
        raise AssertionError(f"knowledge_adjust: logits must be B×C, got shape {tuple(logits.shape)}")
    if target.dim() != 1 or target.shape[0] != logits.shape[0]:
        raise AssertionError(
            f"knowledge_adjust: target must be a vector of {logits.shape[0]} labels, got shape {tuple(target.shape)}"
        )
    if target.dtype.is_floating_point or target.dtype == torch.bool:
        raise AssertionError(f"knowledge_adjust: target must hold integer class indices, got {target.dtype}")


def knowledge_adjust(logits: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """KA per row: if argmax(logits) != target, swap the values at argmax and at target; else unchanged.

    A row whose target value ties with the maximum counts as correct (unchanged). Returns
    (adjusted logits as a new tensor, bool mask of the adjusted rows). Free of host syncs.
    """
    _check(logits, target)
    target = target.long()
    top = logits.argmax(dim=1)
    top_val = logits.gather(1, top[:, None]).squeeze(1)
    tgt_val = logits.gather(1, target[:, None]).squeeze(1)
    mask = tgt_val < top_val
    out = logits.clone()
    out.scatter_(1, top[:, None], torch.where(mask, tgt_val, top_val)[:, None])
    out.scatter_(1, target[:, None], torch.where(mask, top_val, tgt_val)[:, None])
    return out, mask

"""The training step — augment, student forward, the method's loss, backward, optimiser step — written once, for
the eager path of the engine and for the static step of ``train.step_graph`` (:mod:`audio_mrkd.train.step_graph`)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import torch

if TYPE_CHECKING:
    from lightning_fabric import Fabric

    from audio_mrkd.data.augment import Mixing
    from audio_mrkd.methods.base import Method


@dataclass(frozen=True)
class TrainingStep:
    """What a step uses, built once by the trainer. ``augment``: (x, y) → (x, y, mixing), drawing from the run's
    generator; ``forward``: the student in its training-time (Fabric-wrapped, maybe compiled) form; ``method``: whose
    loss is back-propagated (looked up at each call, so ``method.loss`` may be wrapped later); ``fabric``: autocast
    and backward."""

    augment: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor, Mixing | None]]
    forward: Callable[[torch.Tensor], torch.Tensor]
    method: Method
    optimizer: torch.optim.Optimizer
    fabric: Fabric

    def __call__(self, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor, epoch: int, with_logs: bool, *,
                 set_to_none: bool = True) -> tuple[torch.Tensor, dict[str, float]]:
        """One optimiser step on inputs ``x``, labels ``y`` and train-split positions ``index`` after ``epoch``
        completed epochs. Returns the loss (detached: the static step's one output, which a captured graph
        rewrites on each replay) and the method's logs (asked for by ``with_logs``). ``set_to_none``: free the old
        gradients (the eager step); False zeroes them in place, which the static step needs because captured
        gradients live in fixed tensors."""
        x, y, mixing = self.augment(x, y)
        with self.fabric.autocast():
            logits = self.forward(x)
        loss, logs = self.method.loss(logits, x, y, index, epoch, with_logs, mixing=mixing)
        self.optimizer.zero_grad(set_to_none=set_to_none)
        self.fabric.backward(loss)
        self.optimizer.step()
        return loss.detach(), logs

"""``method: ema`` — a mean teacher used as a self-distillation teacher.

Tarvainen & Valpola, "Mean teachers are better role models: Weight-averaged consistency targets improve
semi-supervised deep learning results", NeurIPS 2017. The teacher is an exponential moving average of the
student's weights; here it is used on labelled data only, as a distillation teacher for the student itself:

    teacher ← decay·teacher + (1 − decay)·student          after every optimiser step
    loss    = (1 − α)·CE(logits, y) + α·kd_loss(logits, teacher(x), τ)

with ``kd_loss`` the Hinton form ``τ²·KL(softmax(t/τ) ‖ softmax(s/τ))`` (:func:`audio_mrkd.distill.losses.kd_loss`)
and CE the engine's cross-entropy with ``train.label_smoothing``.

Choices:

* The teacher averages parameters AND floating-point buffers (BatchNorm running means / variances), so it is a
  self-consistent network in eval mode; integer buffers (``num_batches_tracked``) are copied from the student.
  It starts as a frozen deep copy of the student (eval mode, ``requires_grad=False``) and is always run in eval
  mode, without gradient.
* Warm-up: for the first ``warmup_steps`` optimiser steps the loss is the plain CE (α = 0), so the student is not
  pulled towards a random teacher; the teacher is averaged from step 1 all the same. ``decay_ramp`` (on by
  default, as in the mean-teacher code): the n-th update uses min(decay, 1 − 1/(n + 1)), so early on the teacher
  is the plain average of the weights so far and does not keep its random start (with a constant decay d the
  start keeps a share dⁿ after n updates: 0.999¹⁰⁰ ≈ 0.90).
* The teacher sees the same (augmented, possibly mixed-up) input as the student; under mixup ``y`` is soft and
  the accuracies in the logs are measured against its argmax.
* Under mixed precision (CUDA or CPU) the teacher's forward runs under the same autocast dtype; its weights stay in the
  student's dtype (float32) so the average accumulates exactly. The teacher is not compiled.
* Data parallel: the student's weights are identical in every process but its BatchNorm statistics are not;
  before each update every process takes rank 0's statistics (``ctx.sync_buffers``), so the teachers stay equal
  (checked through :meth:`digest`).

Options (the ``ema:`` section): ``decay`` (0.999, in (0, 1)), ``decay_ramp`` (true), ``alpha`` (0.5, in [0, 1]), ``tau`` (3.0, > 0),
``warmup_steps`` (100, ≥ 0). Logs: ``loss/ce`` (the CE term), ``loss/kd`` (the KD term; 0 during warm-up),
``ema/teacher_acc``, ``ema/agreement`` (teacher / student argmax agreement), ``ema/active``.
"""
from __future__ import annotations

import copy
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from audio_mrkd.config_io import setting
from audio_mrkd.data.augment import Mixing
from audio_mrkd.distill.losses import kd_loss
from audio_mrkd.methods.base import Method, TrainContext, modules_digest, soft_cross_entropy
from audio_mrkd.runtime import loss_precision


class MeanTeacher(Method):
    @dataclass
    class Options:
        decay: float = setting(0.999, above=0, below=1)
        decay_ramp: bool = True
        alpha: float = setting(0.5, at_least=0, at_most=1)
        tau: float = setting(3.0, above=0)
        warmup_steps: int = setting(100, at_least=0)

    def __init__(self, cfg, ctx: TrainContext) -> None:
        super().__init__(cfg, ctx)
        self.teacher = self._copy(ctx.model)
        self.steps = 0  # optimiser steps taken (after_step calls), so the warm-up survives a resume
        self._pairs()

    def _copy(self, model: nn.Module) -> nn.Module:
        teacher = copy.deepcopy(model)
        if self.ctx.runtime is not None and self.ctx.runtime.channels_last:
            teacher = teacher.to(memory_format=torch.channels_last)
        teacher.eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
        return teacher

    def _pairs(self) -> None:
        """(teacher, student) tensor lists: averaged (float parameters and buffers) and copied (the rest)."""
        student = self.ctx.model
        t_params, s_params = list(self.teacher.parameters()), list(student.parameters())
        t_bufs, s_bufs = list(self.teacher.buffers()), list(student.buffers())
        if len(t_params) != len(s_params) or len(t_bufs) != len(s_bufs):
            raise AssertionError("ema: the teacher and the student have different structures")
        self._avg_t, self._avg_s, self._copy_t, self._copy_s = [], [], [], []
        for t, s in zip(t_params + t_bufs, s_params + s_bufs):
            if t.is_floating_point():
                self._avg_t.append(t)
                self._avg_s.append(s)
            else:
                self._copy_t.append(t)
                self._copy_s.append(s)

    @property
    def active(self) -> bool:
        return self.steps >= self.options.warmup_steps

    def _autocast(self):
        return nullcontext() if self.ctx.runtime is None else self.ctx.runtime.autocast()

    @torch.no_grad()
    def teacher_logits(self, x: Tensor) -> Tensor:
        with self._autocast():
            return loss_precision(self.teacher(x))

    def loss(self, logits: Tensor, x: Tensor, y: Tensor, index: Tensor, epoch: int,
             with_logs: bool, mixing: Mixing | None = None) -> tuple[Tensor, dict[str, float]]:
        logits = loss_precision(logits)
        ce = soft_cross_entropy(logits, y, self.cfg.train.label_smoothing)
        active = self.active
        teacher = self.teacher_logits(x) if (active or with_logs) else None
        if active:
            alpha = float(self.options.alpha)
            kd = kd_loss(logits, teacher, float(self.options.tau))
            loss = (1.0 - alpha) * ce + alpha * kd
        else:
            kd, loss = None, ce
        if not with_logs:
            return loss, {}
        labels = y if y.dim() == 1 else y.argmax(dim=1)
        t_pred = teacher.argmax(dim=1)
        return loss, {
            "loss/ce": ce.item(),
            "loss/kd": kd.item() if kd is not None else 0.0,
            "ema/teacher_acc": (t_pred == labels).float().mean().item(),
            "ema/agreement": (t_pred == logits.argmax(dim=1)).float().mean().item(),
            "ema/active": float(active),
        }

    @torch.no_grad()
    def update(self) -> None:
        """teacher ← decay·teacher + (1 − decay)·student (float tensors); integer buffers copied."""
        decay = float(self.options.decay)
        if self.options.decay_ramp:
            decay = min(decay, 1.0 - 1.0 / (self.steps + 2))  # the (steps + 1)-th update
        weight = 1.0 - decay
        if self._avg_t:
            torch._foreach_lerp_(self._avg_t, [s.detach() for s in self._avg_s], weight)
        for t, s in zip(self._copy_t, self._copy_s):
            t.copy_(s)

    def after_step(self, global_step: int) -> None:
        if self.ctx.average_grads is not None:  # data parallel: every process averages rank 0's statistics
            self.ctx.sync_buffers()
        self.update()
        self.steps += 1

    def state_dict(self) -> dict:
        return {"teacher": self.teacher.state_dict(), "steps": self.steps}

    def load_state_dict(self, state: dict) -> None:
        if not state:
            return
        self.teacher.load_state_dict(state["teacher"])
        self.steps = int(state["steps"])

    def hparams(self) -> dict:
        o = self.options
        return {"ema.decay": o.decay, "ema.decay_ramp": o.decay_ramp, "ema.alpha": o.alpha, "ema.tau": o.tau, "ema.warmup_steps": o.warmup_steps}

    def digest(self) -> str:
        """Hash of the teacher's tensors (equal in every process when data-parallel training is right)."""
        return modules_digest([self.teacher])

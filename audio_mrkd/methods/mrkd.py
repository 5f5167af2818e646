"""``method: mrkd`` — Memory-replay Knowledge Distillation as a training method.

The objective itself (snapshot bank, backup schedule, FCN ensembler with its own optimiser, Knowledge
Adjustment, KD loss) is :class:`audio_mrkd.distill.mrkd_objective.MrKD`, configured by the ``mrkd:`` section
(:class:`MemoryReplay.Options`, here beside the method); this module connects it to the engine's hooks: backups after
the steps / epochs its schedule names, with every process's BatchNorm statistics made equal first.

With a teacher (the ``teacher:`` section) historical and external teachers combine, as ``mrkd.with_teacher``
says: "ensembler" — the teacher's logits are one more input of MrKD's ensembler (alone until the bank is full);
"term" — a second KD term, (1 − teacher.alpha)·L_MrKD + teacher.alpha·KD toward the teacher (the term of
``method: kd``, :class:`~audio_mrkd.distill.teacher_term.TeacherTerm`, with its settings from the ``teacher:`` section;
TensorBoard: ``loss/kd_teacher``, ``kd/*``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from torch import Tensor

from audio_mrkd.config_io import group_fields, setting
from audio_mrkd.config_schema import TERM, TeacherConfig
from audio_mrkd.data.augment import Mixing
from audio_mrkd.distill.ensemble import Mode
from audio_mrkd.distill.losses import hard_labels
from audio_mrkd.distill.mrkd_objective import MrKD
from audio_mrkd.distill.snapshots import Spacing, Unit
from audio_mrkd.distill.teacher_term import TeacherTerm, flat_hparams
from audio_mrkd.distill.teachers import build_teacher_signal
from audio_mrkd.errors import InputError
from audio_mrkd.methods.base import Method, TrainContext, modules_digest
from audio_mrkd.runtime import loss_precision


class MemoryReplay(Method):
    @dataclass
    class Options:
        """The ``mrkd.*`` keys: MrKD's own snapshot teachers. All defaults are this project's starting choices (the
        paper's values are unknown).

        k: teachers in the bank. interval / interval_unit: back the student up every `interval` epochs or steps
        ("epoch" | "step"), the first at the end of the first interval. tau: distillation temperature.
        alpha: KD weight; the student loss is (1 − α)·CE + α·τ²·KL. ensemble: how the K teachers are combined,
        "fcn" (learned ensembler, MrKD) | "mean" | "newest" (ablations). fcn_hidden / fcn_lr: FCN hidden width and
        its Adam learning rate. ka: Knowledge Adjustment of the combined teacher signal. ka_per_teacher: KA on each
        teacher before combining as well. teacher_input: "same" (teachers see the student's augmented batch) |
        "cached" (each snapshot's logits on the un-augmented items, computed once when it enters the bank).
        spacing: "uniform" (the latest k backups) | "exponential" (backups of age 1, 2, 4, …, 2**(k-1) intervals).
        fcn_label_smoothing: label smoothing of the FCN's CE (an FCN that sharpens the target less).
        fuse_teachers: teacher forwards on BatchNorm-folded copies (same outputs, faster; off = the plain copies).
        teacher_graph: on CUDA, replay the K teacher forwards as one captured CUDA graph (off = a plain loop).
        teacher_compile: on CUDA, torch.compile the teachers' inference copies (the compiler fuses BatchNorm and
        ReLU; compiled once for all snapshots).
        alpha_ramp_epochs: α rises linearly over this many epochs once the bank is full (0 = off): in the n-th
        active epoch (n = 1, 2, …) α_eff = α · min(1, n / alpha_ramp_epochs).
        alpha_schedule: "constant" | "linear" (PS-KD style, over the whole run: in epoch e = 0, 1, …, E − 1,
        α_eff = α · (e + 1) / E, so the teachers are phased in rather than switched on at full weight).
        interval_unit "percent": back up every `interval` % of the run's optimiser steps (e.g. 5 on a 150-epoch run:
        teachers 7.5 epochs apart), whatever the run's length.
        with_teacher: how a stronger teacher (the ``teacher:`` section) joins, when one is given: "ensembler" (one more
        input of the ensembler; alone until the bank is full; the teacher term's settings are then not read) or
        "term" (a second KD term, the teacher term of ``method: kd`` with its settings from ``teacher:``:
        (1 − teacher.alpha)·L_MrKD + teacher.alpha·KD toward the teacher).
        """

        k: int = setting(4, at_least=1)
        interval: int = setting(1, at_least=1)
        interval_unit: Unit = "epoch"
        tau: float = setting(3.0, above=0)
        alpha: float = setting(0.5, at_least=0, at_most=1)
        ensemble: Mode = "fcn"
        fcn_hidden: int = setting(128, at_least=1)
        fcn_lr: float = setting(1e-3, above=0)
        ka: bool = True
        ka_per_teacher: bool = False
        teacher_input: Literal["same", "cached"] = "same"
        spacing: Spacing = "uniform"
        fcn_label_smoothing: float = setting(0.0, at_least=0, below=1)
        alpha_ramp_epochs: int = setting(0, at_least=0)
        alpha_schedule: Literal["constant", "linear"] = "constant"
        fuse_teachers: bool = True
        teacher_graph: bool = True
        teacher_compile: bool = True
        with_teacher: Literal["ensembler", "term"] = "ensembler"

        def validate(self) -> None:
            """The checks between keys (each key's own bounds are declared with it)."""
            if self.interval_unit == "percent" and self.interval > 100:
                raise InputError(f"mrkd.interval: a percentage of the run (1-100) with interval_unit percent, "
                                 f"got {self.interval}")

    uses_teacher = "optional"

    @classmethod
    def teacher_term_unread(cls, options) -> str | None:
        if options.with_teacher == "term":
            return None
        return ("mrkd.with_teacher is 'ensembler': the teacher's logits join MrKD's ensembler and mrkd.alpha, mrkd.tau "
                "and mrkd.ka weight them (mrkd.with_teacher=term adds the teacher term, with these settings)")

    def __init__(self, cfg, ctx: TrainContext) -> None:
        super().__init__(cfg, ctx)
        as_term = cfg.teacher.given and self.options.with_teacher == "term"
        self.term = TeacherTerm(cfg.teacher, ctx) if as_term else None
        external = build_teacher_signal(cfg.teacher, ctx) if cfg.teacher.given and not as_term else None
        self.objective = MrKD(self.options, ctx.n_classes, ctx.torch_device, ctx.runtime, infer_all=ctx.infer_train,
                              grad_sync=ctx.average_grads, label_smoothing=cfg.train.label_smoothing,
                              run_epochs=ctx.run_epochs, steps_per_epoch=ctx.steps_per_epoch, external=external)

    def loss(self, logits: Tensor, x: Tensor, y: Tensor, index: Tensor, epoch: int,
             with_logs: bool, mixing: Mixing | None = None) -> tuple[Tensor, dict[str, float]]:
        total, logs = self.objective.loss(loss_precision(logits), x, y, index=index, epoch=epoch, with_logs=with_logs,
                                          mixing=mixing)
        if self.term is None:
            return total, logs
        z_s = loss_precision(logits)
        y_hard = hard_labels(y, z_s)
        result = self.term.apply(z_s, total, x, index, y_hard, mixing)
        if not with_logs:
            return result.total, logs
        term = self.term.logs(result, result.total, y_hard)
        term["loss/kd_teacher"] = term.pop("loss/kd")
        term.pop("loss/ce")
        if "loss/fcn" in term:
            term["loss/fcn_teacher"] = term.pop("loss/fcn")
        return result.total, logs | term

    def graph_key(self, epoch: int):
        """Capture-safe once its Python-level state is fixed: whether the bank is full, which snapshots it holds
        and α this epoch (a new snapshot or α means a new capture). The teacher term (``mrkd.with_teacher: term``)
        with a learned ensembler is left eager."""
        if self.term is not None and not self.term.capture_safe:
            return None
        return (self.objective.active, self.objective.backups, self.objective.alpha_at(epoch))

    def after_step(self, global_step: int) -> None:
        if self.objective.schedule.due_after_step(global_step):
            self._backup()

    def after_epoch(self, epoch: int) -> None:
        if self.objective.schedule.due_after_epoch(epoch):
            self._backup()

    def _backup(self) -> None:
        self.ctx.sync_buffers()  # the snapshot is then the same model in every process
        self.objective.backup(self.ctx.model)

    def state_dict(self) -> dict:
        state = self.objective.state_dict()
        if self.term is not None:
            state["teacher_term"] = self.term.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.objective.load_state_dict(state, template=self.ctx.model)
        if self.term is not None:
            self.term.load_state_dict(state.get("teacher_term", {}))

    def hparams(self) -> dict:
        params = flat_hparams("mrkd", self.options)
        if self.term is not None:
            return params | self.term.hparams()
        source = flat_hparams("teacher", self.cfg.teacher, leave_out=group_fields(TeacherConfig, TERM))
        return params | (source if self.cfg.teacher.given else {})

    def digest(self) -> str:
        """Hash of the snapshot bank's tensors (equal in every process when data-parallel training is right)."""
        return modules_digest(self.objective.bank.teachers())

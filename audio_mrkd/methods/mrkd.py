"""``method: mrkd`` — Memory-replay Knowledge Distillation as a training method.

The objective itself (snapshot bank, backup schedule, FCN ensembler with its own optimiser, Knowledge
Adjustment, KD loss) is :class:`audio_mrkd.distill.mrkd.MrKD`; this module connects it to the engine's hooks:
backups after the steps / epochs its schedule names, with every process's BatchNorm statistics made equal first.

With a teacher (``kd.teachers`` or ``kd.teacher_logits``) historical and external teachers combine, as
``kd.with_mrkd`` says: "ensembler" — the teacher's logits are one more input of MrKD's ensembler (alone until
the bank is full); "term" — a second KD term, (1 − kd.alpha)·L_MrKD + kd.alpha·KD toward the teacher (teachers
combined as ``kd.ensemble`` says, KA if ``kd.ka``; TensorBoard: ``loss/kd_teacher``, ``kd/*``).
"""
from __future__ import annotations

import dataclasses

from torch import Tensor

from audio_mrkd import config as config_io
from audio_mrkd.data.augment import Mixing
from audio_mrkd.distill.losses import distill_objective, hard_labels
from audio_mrkd.distill.mrkd import MrKD
from audio_mrkd.distill.teachers import build_teacher_signal
from audio_mrkd.methods.base import Method, TrainContext, modules_digest
from audio_mrkd.methods.kd import (kd_hparams, load_teachers_state, teacher_ensembler, teacher_logs,
                                   teacher_view, teachers_state)


class MemoryReplay(Method):
    def __init__(self, cfg, ctx: TrainContext) -> None:
        super().__init__(cfg, ctx)
        runtime = ctx.runtime
        teachers = build_teacher_signal(cfg.kd, ctx) if cfg.kd.given else None
        as_term = teachers is not None and cfg.kd.with_mrkd == "term"
        self.teachers = teachers if as_term else None  # the second KD term's teachers
        self.term_ensembler = teacher_ensembler(cfg.kd, teachers.n_teachers, ctx) if as_term else None
        # inside a captured step the teachers run as plain forwards (a graph cannot replay inside a capture)
        mrkd_cfg = dataclasses.replace(cfg.mrkd, teacher_graph=False) if runtime.step_graph else cfg.mrkd
        self.objective = MrKD(mrkd_cfg, ctx.n_classes, ctx.torch_device, infer_all=ctx.infer_train,
                              grad_sync=ctx.average_grads, teacher_dtype=runtime.teacher_dtype,
                              channels_last=runtime.channels_last, compile=runtime.compile,
                              cuda_speedups=runtime.cuda, label_smoothing=cfg.train.label_smoothing,
                              run_epochs=ctx.run_epochs, steps_per_epoch=ctx.steps_per_epoch,
                              external=None if as_term else teachers, capturable=runtime.capture)

    def loss(self, logits: Tensor, x: Tensor, y: Tensor, index: Tensor, epoch: int,
             with_logs: bool, mixing: Mixing | None = None) -> tuple[Tensor, dict[str, float]]:
        total, logs = self.objective.loss(logits.float(), x, y, index=index, epoch=epoch, with_logs=with_logs,
                                          mixing=mixing)
        if self.teachers is None:
            return total, logs
        return self._with_teacher_term(total, logs, logits.float(), x, y, index, with_logs, mixing)

    def _with_teacher_term(self, total: Tensor, logs: dict, z_s: Tensor, x: Tensor, y: Tensor, index: Tensor,
                           with_logs: bool, mixing: Mixing | None) -> tuple[Tensor, dict[str, float]]:
        """(1 − kd.alpha)·L_MrKD + kd.alpha·KD(z_s ‖ teacher)."""
        kcfg = self.cfg.kd
        y_hard = hard_labels(y, z_s)
        z, z_t, l_fcn = teacher_view(self.teachers, self.term_ensembler, x, index, y_hard, mixing, kcfg.tau)
        total, kd, adjusted = distill_objective(z_s, total, z_t, y_hard, kcfg.alpha, kcfg.tau, kcfg.ka)
        if not with_logs:
            return total, logs
        term = teacher_logs(z, z_t, y_hard, adjusted, total, kd, l_fcn)
        term["loss/kd_teacher"] = term.pop("loss/kd")
        term.pop("loss/ce")
        if "loss/fcn" in term:
            term["loss/fcn_teacher"] = term.pop("loss/fcn")
        return total, logs | term

    def graph_key(self, epoch: int):
        """Capture-safe once its Python-level state is fixed: whether the bank is full, which snapshots it holds
        and α this epoch (a new snapshot or α means a new capture). The teacher term (``kd.with_mrkd: term``) with
        a learned ensembler is left eager."""
        if self.term_ensembler is not None:
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
        if self.teachers is not None:
            state["teacher_term"] = teachers_state(self.teachers, self.term_ensembler)
        return state

    def load_state_dict(self, state: dict) -> None:
        self.objective.load_state_dict(state, template=self.ctx.model)
        if self.teachers is not None:
            load_teachers_state(state.get("teacher_term", {}), self.teachers, self.term_ensembler)

    def hparams(self) -> dict:
        params = {f"mrkd.{k}": v for k, v in config_io.to_dict(self.cfg.mrkd).items()}
        return params | (kd_hparams(self.cfg.kd) if self.cfg.kd.given else {})

    def digest(self) -> str:
        """Hash of the snapshot bank's tensors (equal in every process when data-parallel training is right)."""
        return modules_digest(self.objective.bank.teachers())

"""``method: mrkd`` — Memory-replay Knowledge Distillation as a training method.

The objective itself (snapshot bank, backup schedule, FCN ensembler with its own optimiser, Knowledge
Adjustment, KD loss) is :class:`audio_mrkd.distill.mrkd_objective.MrKD`, configured by the ``mrkd:`` section; this module
connects it to the engine's hooks: backups after the steps / epochs its schedule names, with every process's
BatchNorm statistics made equal first.

With a teacher (the ``teacher:`` section) historical and external teachers combine, as ``mrkd.with_teacher``
says: "ensembler" — the teacher's logits are one more input of MrKD's ensembler (alone until the bank is full);
"term" — a second KD term, (1 − kd.alpha)·L_MrKD + kd.alpha·KD toward the teacher (the term of ``method: kd``,
:class:`~audio_mrkd.distill.teacher_term.TeacherTerm`, configured by the ``kd:`` section; TensorBoard:
``loss/kd_teacher``, ``kd/*``).
"""
from __future__ import annotations

from torch import Tensor

from audio_mrkd.data.augment import Mixing
from audio_mrkd.distill.losses import hard_labels
from audio_mrkd.distill.mrkd_objective import MrKD, MrKDConfig
from audio_mrkd.distill.teacher_term import TeacherTerm, flat_hparams
from audio_mrkd.distill.teachers import build_teacher_signal
from audio_mrkd.methods.base import Method, TrainContext, modules_digest
from audio_mrkd.runtime import loss_precision


class MemoryReplay(Method):
    Options = MrKDConfig
    uses_teacher = "optional"

    def __init__(self, cfg, ctx: TrainContext) -> None:
        super().__init__(cfg, ctx)
        as_term = cfg.teacher.given and self.options.with_teacher == "term"
        self.term = TeacherTerm(cfg.teacher, cfg.options("kd"), ctx) if as_term else None
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
        return params | (flat_hparams("teacher", self.cfg.teacher) if self.cfg.teacher.given else {})

    def digest(self) -> str:
        """Hash of the snapshot bank's tensors (equal in every process when data-parallel training is right)."""
        return modules_digest(self.objective.bank.teachers())

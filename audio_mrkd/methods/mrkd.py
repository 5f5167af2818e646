"""``method: mrkd`` — Memory-replay Knowledge Distillation as a training method.

The objective itself (snapshot bank, backup schedule, FCN ensembler with its own optimiser, Knowledge
Adjustment, KD loss) is :class:`audio_mrkd.distill.mrkd.MrKD`; this module connects it to the engine's hooks:
backups after the steps / epochs its schedule names, with every process's BatchNorm statistics made equal first.
"""
from __future__ import annotations

from torch import Tensor

from audio_mrkd import config as config_io
from audio_mrkd.distill.mrkd import MrKD
from audio_mrkd.methods.base import Method, TrainContext, modules_digest


class MemoryReplay(Method):
    def __init__(self, cfg, ctx: TrainContext) -> None:
        super().__init__(cfg, ctx)
        runtime = ctx.runtime
        self.objective = MrKD(cfg.mrkd, ctx.n_classes, ctx.torch_device, infer_all=ctx.infer_train,
                              grad_sync=ctx.average_grads, teacher_dtype=runtime.teacher_dtype,
                              channels_last=runtime.channels_last, compile=runtime.compile,
                              cuda_speedups=runtime.cuda, label_smoothing=cfg.train.label_smoothing,
                              run_epochs=ctx.run_epochs, steps_per_epoch=ctx.steps_per_epoch)

    def loss(self, logits: Tensor, x: Tensor, y: Tensor, index: Tensor, epoch: int,
             with_logs: bool) -> tuple[Tensor, dict[str, float]]:
        return self.objective.loss(logits.float(), x, y, index=index, epoch=epoch, with_logs=with_logs)

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
        return self.objective.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.objective.load_state_dict(state, template=self.ctx.model)

    def hparams(self) -> dict:
        return {f"mrkd.{k}": v for k, v in config_io.to_dict(self.cfg.mrkd).items()}

    def digest(self) -> str:
        """Hash of the snapshot bank's tensors (equal in every process when data-parallel training is right)."""
        return modules_digest(self.objective.bank.teachers())

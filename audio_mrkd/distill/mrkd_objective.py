"""The MrKD objective: snapshot bank + backup schedule + ensembler (own Adam) + KA + KD loss.

Spec: docs/mrkd_method.md. Its settings are the ``mrkd:`` section, declared beside the method that uses them
(:class:`audio_mrkd.methods.mrkd.MemoryReplay.Options`); this module reads them and knows no config.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from audio_mrkd.distill.adjust import knowledge_adjust
from audio_mrkd.distill.ensemble import LearnedEnsemble, combine_teachers, fcn_objective
from audio_mrkd.distill.losses import distill_objective, hard_labels, mix_teacher_logits
from audio_mrkd.distill.snapshots import BackupSchedule, SnapshotBank
from audio_mrkd.distill.teacher_term import teacher_view
from audio_mrkd.distill.teachers import TeacherSignal
from audio_mrkd.errors import InputError
from audio_mrkd.runtime import Runtime, loss_precision

# Keys that must agree between a checkpoint and the config it is resumed with.
_STATE_KEYS = ("k", "spacing", "ensemble", "teacher_input", "fcn_hidden")


def _schedule(cfg, run_epochs: int | None, steps_per_epoch: int | None) -> BackupSchedule:
    """The backup schedule; an interval in percent of the run becomes a number of steps (at least 1)."""
    if cfg.interval_unit != "percent":
        return BackupSchedule(cfg.interval, cfg.interval_unit)
    assert run_epochs and steps_per_epoch, "interval_unit 'percent' needs the run's length"
    return BackupSchedule(max(1, round(cfg.interval / 100 * run_epochs * steps_per_epoch)), "step")


def _accuracy(logits: Tensor, y: Tensor) -> Tensor:
    """Share of rows whose argmax is y, over the last-but-one dim (…×B×C → …)."""
    return (logits.argmax(dim=-1) == y).float().mean(dim=-1)


class MrKD:
    """The MrKD objective: bank + schedule + ensembler (own Adam optimiser) + KA + KD loss, with the settings ``cfg``
    (the ``mrkd:`` section).

    infer_all(model) -> N×C logits of `model` on every un-augmented training item (row order = item index);
    provided by the engine, required when teacher_input == "cached". Pass the plain student module (not a
    torch.compile / DDP wrapper) to after_step/after_epoch and as the load_state_dict template.
    """

    def __init__(self, cfg, n_classes: int, device: torch.device, runtime: Runtime | None = None,
                 infer_all: Callable[[nn.Module], Tensor] | None = None,
                 grad_sync: Callable[[list[Tensor]], None] | None = None, label_smoothing: float = 0.0,
                 run_epochs: int | None = None, steps_per_epoch: int | None = None,
                 external: TeacherSignal | None = None) -> None:
        """runtime: the run's device choices (default: plain float32 on ``device``, no CUDA-only speed-ups) —
        the teacher copies' dtype and memory format, whether the per-step tensor work after the teachers (FCN
        objective; KA + KD + mixing) is compiled, whether the CUDA-only switches (compiled teachers, fused Adam for
        the FCN) apply, and whether the step is captured as a CUDA graph (``train.step_graph``: the FCN's Adam keeps
        its step count on the device, the teachers run as plain forwards inside the capture).
        grad_sync: averages the FCN's gradients across processes (data-parallel training), so that every rank's
        ensembler takes the same step. label_smoothing: of the student's CE term (``train.label_smoothing``).
        run_epochs / steps_per_epoch: the run's length (needed by alpha_schedule "linear" and interval_unit
        "percent"). external: teachers from outside the trajectory (``teacher:``, with_teacher "ensembler"): their
        logits join the bank's as the last inputs of the ensembler; until the bank is full the student distils from
        them alone (their mean)."""
        assert n_classes >= 2, n_classes
        if cfg.teacher_input == "cached" and infer_all is None:
            raise InputError("mrkd.teacher_input: 'cached' needs the engine's infer_all function")
        runtime = runtime or Runtime.plain(device)
        if runtime.step_graph:  # a graph cannot replay inside a capture: the teachers run as plain forwards
            cfg = dataclasses.replace(cfg, teacher_graph=False)
        self.cfg, self.n_classes, self.device = cfg, n_classes, torch.device(device)
        self.dtype = runtime.input_dtype  # of teacher logits, the ensembler and the losses: float32, or float64
        self.cuda_speedups = runtime.cuda
        self.label_smoothing = label_smoothing
        self.infer_all = infer_all
        self.grad_sync = grad_sync
        self.bank = SnapshotBank(cfg.k, cfg.spacing, fuse=cfg.fuse_teachers, dtype=runtime.teacher_dtype,
                                 channels_last=runtime.channels_last, graph=cfg.teacher_graph,
                                 compile=cfg.teacher_compile and self.cuda_speedups)
        self.run_epochs = run_epochs
        self.schedule = _schedule(cfg, run_epochs, steps_per_epoch)
        self.external = external
        self.capturable = runtime.capture
        self.backups = 0  # snapshots taken in this process: a new one means a new step-graph capture
        self.ensembler = self._make_ensemble(cfg.k + self.n_external, runtime.compile)
        self._cache_all: list[Tensor] = []  # cached mode: N×C per kept backup, aligned with the bank, newest first
        self._cache_stack: Tensor | None = None  # the exposed ones stacked (one gather per batch)
        self._active_epoch = -1  # completed epochs at the first loss() with a full bank (alpha ramp origin)
        self._distill = torch.compile(distill_objective) if runtime.compile else distill_objective

    def _make_ensemble(self, n_teachers: int, compile: bool) -> LearnedEnsemble | None:
        if self.cfg.ensemble != "fcn":
            return None
        return LearnedEnsemble(n_teachers, self.n_classes, self.cfg.fcn_hidden, self.cfg.fcn_lr, self.device,
                               dtype=self.dtype, fused=self.cuda_speedups or None,
                               objective=torch.compile(fcn_objective) if compile else fcn_objective,
                               grad_sync=self.grad_sync, capturable=self.capturable)

    @property
    def n_external(self) -> int:
        return self.external.n_teachers if self.external is not None else 0

    @property
    def active(self) -> bool:
        """True once the bank holds all k teachers."""
        return self.bank.full

    @property
    def cached_logits(self) -> Tensor | None:
        """Cached mode: K×N×C logits of the exposed teachers, newest first (None before the first backup)."""
        slots = self.bank.exposed_slots()
        return torch.stack([self._cache_all[i] for i in slots]) if self._cache_all and slots else None

    def alpha_at(self, epoch: int) -> float:
        """Effective α at `epoch` completed epochs (the ramp counts from the first active epoch)."""
        alpha = self.cfg.alpha
        if self.cfg.alpha_schedule == "linear":
            assert self.run_epochs, "alpha_schedule 'linear' needs run_epochs"
            alpha *= min(1.0, (epoch + 1) / self.run_epochs)
        ramp = self.cfg.alpha_ramp_epochs
        if ramp == 0 or self._active_epoch < 0:
            return alpha
        return alpha * min(1.0, max(0, epoch - self._active_epoch + 1) / ramp)

    # ---- the loss -------------------------------------------------------------------------------------------
    def loss(self, student_logits: Tensor, x: Tensor | None, y: Tensor, index: Tensor | None = None,
             epoch: int = 0, with_logs: bool = True, mixing=None) -> tuple[Tensor, dict[str, float]]:
        """Total student loss and float logs. Inactive: plain CE. Active: (1 − α)·CE + α·KD toward KA(g(Z)).

        y: B class indices, or B×C soft targets (mixup: CE on the soft targets; FCN, KA and accuracies use the
        class of largest weight). index: item indices of the batch (cached mode). epoch: completed epochs,
        used by the alpha ramp. One optimiser step of the FCN is taken here (on detached teacher logits).
        with_logs=False returns no logs and never waits for the device (no host sync inside the step).
        mixing: how a mixup batch was made (:class:`audio_mrkd.data.augment.Mixing`); teachers that give one item's
        view (cached) are then mixed like the label (see :meth:`_teacher_logits`).
        """
        assert student_logits.dim() == 2 and student_logits.shape[1] == self.n_classes, student_logits.shape
        y_hard = hard_labels(y, student_logits)
        z_s = loss_precision(student_logits)
        ce = F.cross_entropy(z_s, y if y.dim() == 1 else y.to(z_s.dtype), label_smoothing=self.label_smoothing)
        if not self.active and self.external is not None:
            return self._external_only_loss(z_s, ce, x, y_hard, index, epoch, with_logs, mixing)
        if not self.active:
            return ce, ({"loss/ce": ce.item(), "loss/kd": 0.0, "loss/fcn": 0.0, "mrkd/active": 0.0,
                         "mrkd/alpha": 0.0, "mrkd/teacher_time": 0.0} if with_logs else {})
        if self._active_epoch < 0:
            self._active_epoch = epoch
        if with_logs and z_s.is_cuda:
            torch.cuda.synchronize(z_s.device)  # time the teachers alone
        start = time.perf_counter()
        z, per_item = self._teacher_logits(x, index, z_s.shape[0], mixing)
        if with_logs and z.is_cuda:
            torch.cuda.synchronize(z.device)
        teacher_time = time.perf_counter() - start
        with torch.autocast(device_type=z_s.device.type, enabled=False):
            total, logs = self._active_loss(z_s, ce, z, y_hard, epoch, mixing if per_item else None)
        return total, (self._logs(*logs, teacher_time) if with_logs else {})

    def _external_only_loss(self, z_s: Tensor, ce: Tensor, x: Tensor | None, y: Tensor, index: Tensor | None,
                            epoch: int, with_logs: bool, mixing) -> tuple[Tensor, dict[str, float]]:
        """Before the bank is full: (1 − α)·CE + α·KD toward the external teachers' mean (mixed like the label
        when cached under mixup)."""
        z_t = teacher_view(self.external, None, x, index, y, mixing, self.cfg.tau)[1]
        alpha = self.alpha_at(epoch)
        total, kd, adjusted = distill_objective(z_s, ce, z_t, y, alpha, self.cfg.tau, self.cfg.ka)
        if not with_logs:
            return total, {}
        values = torch.stack([ce.detach(), kd.detach(), adjusted.float().mean(), _accuracy(z_t, y)])
        names = ["loss/ce", "loss/kd", "mrkd/ka_rate", "mrkd/ensemble_acc"]
        return total, dict(zip(names, values.tolist())) | {"loss/fcn": 0.0, "mrkd/active": 0.0,
                                                           "mrkd/alpha": float(alpha), "mrkd/teacher_time": 0.0}

    def _teacher_logits(self, x: Tensor | None, index: Tensor | None, batch: int, mixing) -> tuple[Tensor, bool]:
        """(K + external)×B×C float32 teacher logits as an ordinary (non-inference, detached) tensor, and whether
        every one of them is one item's view (cached), to be mixed like the label after the ensembler. Under
        mixup, when one source is cached and the other sees the mixed batch, the cached one is mixed first."""
        z = self._bank_logits(x, index, batch)
        per_item = self.cfg.teacher_input == "cached"
        if self.external is None:
            return z, per_item
        external = self.external.logits(x, index)
        if mixing is not None and per_item != self.external.cached:
            if per_item:
                z = mix_teacher_logits(z, mixing, self.cfg.tau)
            else:
                external = mix_teacher_logits(external, mixing, self.cfg.tau)
            per_item = False
        return torch.cat([z, external]), per_item

    def _bank_logits(self, x: Tensor | None, index: Tensor | None, batch: int) -> Tensor:
        """K×B×C float32 logits of the snapshot bank."""
        if self.cfg.teacher_input == "same":
            assert x is not None, "teacher_input 'same' needs the input batch x"
            z = self.bank.logits(x).to(self.dtype, copy=True)  # copy: leaves inference mode
        else:
            assert index is not None and index.shape == (batch,) and not index.dtype.is_floating_point, \
                f"teacher_input 'cached' needs `index`, {batch} integer item indices"
            if self._cache_stack is None:  # K×N×C of the exposed teachers, rebuilt after each backup
                self._cache_stack = self.cached_logits
            z = self._cache_stack[:, index.to(self._cache_stack.device, torch.long)]
        return z

    def _active_loss(self, z_s: Tensor, ce: Tensor, z: Tensor, y: Tensor, epoch: int,
                     mixing) -> tuple[Tensor, tuple]:
        """The total loss and the tensors the logs are computed from (see _logs). ``mixing``: the teachers are one
        item's view each: the ensembler (and per-teacher KA) work on the rows' own items and labels, then the
        teachers and their combination are mixed like the label."""
        raw = z
        own = y if mixing is None else mixing.labels
        if self.cfg.ka_per_teacher:
            k, b, c = z.shape
            z = knowledge_adjust(z.reshape(k * b, c), own.repeat(k))[0].reshape(k, b, c)
        z_t, l_fcn = self._ensemble_step(z, own)
        if mixing is not None:
            raw, z_t = mix_teacher_logits(raw, mixing, self.cfg.tau), mix_teacher_logits(z_t, mixing, self.cfg.tau)
        alpha = self.alpha_at(epoch)
        total, kd, adjusted = self._distill(z_s, ce, z_t, y, alpha, self.cfg.tau, self.cfg.ka)
        return total, (raw, y, z_t, adjusted, ce, kd, l_fcn, alpha)

    def _ensemble_step(self, z: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """Combined teacher logits (detached) and the ensembler's CE; one FCN Adam step in fcn mode."""
        smoothing = self.cfg.fcn_label_smoothing
        if self.ensembler is None:
            z_t = combine_teachers(z, self.cfg.ensemble, None)
            return z_t, F.cross_entropy(z_t, y, label_smoothing=smoothing)
        return self.ensembler.step(z, y, smoothing)

    def _logs(self, raw: Tensor, y: Tensor, z_t: Tensor, adjusted: Tensor, ce: Tensor, kd: Tensor,
              l_fcn: Tensor, alpha: float, teacher_time: float) -> dict[str, float]:
        """All scalar logs fetched from the device in one transfer."""
        head = [ce.detach(), kd.detach(), l_fcn, _accuracy(z_t, y), _accuracy(raw.mean(dim=0), y),
                adjusted.float().mean()]
        values = torch.cat([torch.stack(head), _accuracy(raw, y)]).tolist()
        names = ["loss/ce", "loss/kd", "loss/fcn", "mrkd/ensemble_acc", "mrkd/mean_acc", "mrkd/ka_rate"]
        names += [f"mrkd/teacher_acc/{i}" for i in range(raw.shape[0])]
        logs = dict(zip(names, values))
        logs.update({"mrkd/active": 1.0, "mrkd/alpha": float(alpha), "mrkd/teacher_time": teacher_time})
        return logs

    # ---- backups --------------------------------------------------------------------------------------------
    def after_step(self, model: nn.Module, global_step: int) -> bool:
        """Back the student up if the schedule says so after `global_step` completed steps; True if it did."""
        if not self.schedule.due_after_step(global_step):
            return False
        self.backup(model)
        return True

    def after_epoch(self, model: nn.Module, epoch: int) -> bool:
        """Back the student up if the schedule says so after `epoch` completed epochs; True if it did."""
        if not self.schedule.due_after_epoch(epoch):
            return False
        self.backup(model)
        return True

    def backup(self, model: nn.Module) -> None:
        """Push a frozen copy of ``model`` into the bank (and, cached mode, its logits on the train items)."""
        self.bank.push(model)
        self.backups += 1
        if self.cfg.teacher_input == "cached":
            self._cache_all.insert(0, self._infer(self.bank.teachers()[0]))
            del self._cache_all[self.bank.capacity :]
            self._cache_stack = None

    def _infer(self, snapshot: nn.Module) -> Tensor:
        """The snapshot's N×C logits on all un-augmented items, as float32 on the training device."""
        with torch.inference_mode():
            out = self.infer_all(snapshot)
        out = out.to(self.device, self.dtype, copy=True)  # copy: leaves inference mode
        n_items = self._cache_all[0].shape[0] if self._cache_all else out.shape[0]
        assert out.shape == (n_items, self.n_classes), f"infer_all gave {tuple(out.shape)}, not {n_items}×{self.n_classes}"
        return out

    # ---- checkpointing --------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Tensors and plain containers only (loadable with torch.load(weights_only=True))."""
        return {
            "meta": self._meta(),
            "bank": self.bank.state_dict(),
            **(self.ensembler.state_dict() if self.ensembler is not None
               else {"fcn": {}, "fcn_opt": {}}),
            "cache": list(self._cache_all),
            "active_epoch": self._active_epoch,
        }

    def _meta(self) -> dict:
        """What a checkpoint must agree on with the config it is resumed with."""
        external = self.external.digest() if self.external is not None else "none"
        return {key: getattr(self.cfg, key) for key in _STATE_KEYS} | {"n_classes": self.n_classes,
                                                                        "external": external}

    def load_state_dict(self, state: dict, template: nn.Module) -> None:
        """Restore from state_dict(); `template` is any instance of the student's architecture."""
        for key, value in self._meta().items():
            saved = state["meta"].get(key, "none" if key == "external" else None)
            if key == "external" and saved != value:
                raise InputError("teacher.runs / teacher.logits: not the teachers this run was started with "
                                 f"(external teachers {saved!r} in the checkpoint, {value!r} now)")
            if saved != value:
                raise InputError(f"mrkd.{key}: the checkpoint was made with {state['meta'].get(key)!r}, "
                                 f"the config says {value!r}")
        self.bank.load_state_dict(state["bank"], template)
        if self.ensembler is not None:
            self.ensembler.load_state_dict(state)
        self._cache_all = [c.to(self.device, self.dtype) for c in state["cache"]]
        self._cache_stack = None
        if self.cfg.teacher_input == "cached" and len(self._cache_all) != self.bank.n_stored:
            raise InputError(f"mrkd.teacher_input: checkpoint has {len(self._cache_all)} cached logit sets "
                             f"for {self.bank.n_stored} snapshots")
        self._active_epoch = int(state["active_epoch"])

"""``method: dlb`` — Self-Distillation from the Last Mini-Batch (Shen et al., CVPR 2022; code: Meta-knowledge-Lab/DLB).

Each item is trained on in two consecutive iterations; in the second the network is pulled (KD) toward its own
detached predictions on that item from the first. In this engine:

* The loader yields B new items per step. :meth:`LastBatchDistillation.before_batch` appends the previous step's
  retained items — the last ⌈B/2⌉ new items of the previous batch, un-augmented (``x``, ``y``,
  ``recording_device``, ``index``) — after the B new ones, so a step trains on **1.5·B rows (the effective batch
  is 1.5·B)** and every item meets fresh augmentation in each of its two iterations (augmentation runs after
  ``before_batch``). Only the last ⌈B/2⌉ of each batch's new items are repeated; the first ⌊B/2⌋ are seen once.
* Loss = CE over all rows (``train.label_smoothing``) + α · ``kd_loss(repeated rows, stored logits, τ)``, where the
  stored logits are the previous iteration's detached logits for those same items (matched by position: the
  repeated rows are the last R rows, in the order they were retained). ``distill.losses.kd_loss`` is
  τ²·KL(softmax(t/τ) ‖ softmax(s/τ)), summed over classes, averaged over the repeated rows (``batchmean``): the τ²
  scaling is inside it, so α weights it directly, as DLB's ``loss = CE + α·τ²·KL``.
* First step of a run: no repeated rows, KD term 0. At an epoch boundary the retained items carry over into the
  next epoch's first step (as in DLB), and they are part of :meth:`state_dict`, so a resumed run is exact.
* With mixup the KD target of a repeated row is the network's earlier output on the content that row now holds.
  A repeated row holds two clips, ``λ·x_r + (1 − λ)·x_k``, and last step's output on a mixed row belonged to
  another pair, so storing it (the former behaviour) pulled the row toward a mix that was mostly another clip
  whenever λ < 0.5. Instead:

  - mixup pairs the repeated rows only among themselves (and the new rows among themselves:
    :meth:`mixup_groups`), so both clips of a repeated row were retained last step;
  - what is stored for each retained clip is the network's output on that clip alone — its un-mixed, otherwise
    augmented row — from a forward without gradient at the step's weights
    (:func:`~audio_mrkd.methods.base.unmixed_logits`; it costs one forward pass over ⌈B/2⌉ rows per step);
  - the target of the row is the stored outputs mixed with this step's pairing and weight, as probabilities at τ
    (:func:`~audio_mrkd.distill.losses.mix_teacher_logits`, as for every per-item teacher signal).

  The alternative of re-mixing each repeated clip with its former partner and weight would need per-row weights
  in mixup and would keep a clip's partner for two steps; pairing within the group keeps mixup as it is.
* Data parallel: each process retains and repeats the last ⌈b/2⌉ of its own share b of the batch.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from audio_mrkd.config_io import setting
from audio_mrkd.data.augment import Mixing
from audio_mrkd.data.splits import Batch
from audio_mrkd.distill.losses import kd_loss, mix_teacher_logits
from audio_mrkd.methods.base import Method, TrainContext, soft_cross_entropy, unmixed_logits
from audio_mrkd.runtime import loss_precision

_FIELDS = ("x", "y", "recording_device", "index")


class LastBatchDistillation(Method):
    """DLB: CE on B new + ⌈B/2⌉ repeated rows, plus α·KD of the repeated rows toward last step's logits."""

    @dataclass
    class Options:
        alpha: float = setting(1.0, at_least=0)   # weight of the KD term (DLB's α)
        tau: float = setting(3.0, above=0)        # distillation temperature (DLB's T)

    def __init__(self, cfg, ctx: TrainContext) -> None:
        super().__init__(cfg, ctx)
        self.retained: dict[str, Tensor] | None = None  # raw fields of the items to repeat next step
        self.stored_logits: Tensor | None = None         # their detached logits from the last step (on each clip alone
                                                         # under mixup)
        self._pending: dict | None = None                # set by before_batch, consumed by loss

    # ---- the batch ------------------------------------------------------------------------------------------
    def before_batch(self, batch: Batch) -> Batch:
        n_new = len(batch.index)
        keep = (n_new + 1) // 2  # ⌈B/2⌉: the last `keep` new items are repeated next step
        to_retain = {f: getattr(batch, f)[n_new - keep:].detach().clone() for f in _FIELDS}
        n_rep = 0 if self.retained is None else len(self.retained["index"])
        if n_rep:
            device = batch.x.device
            batch = Batch(**{f: torch.cat([getattr(batch, f), self.retained[f].to(device)]) for f in _FIELDS})
        self._pending = {"n_new": n_new, "n_rep": n_rep, "keep": keep, "retain": to_retain}
        return batch

    def mixup_groups(self) -> tuple[int, ...] | None:
        """New rows pair with new rows, repeated rows with repeated rows (so both clips of a repeated row have a
        stored output)."""
        return None if self._pending is None else (self._pending["n_new"], self._pending["n_rep"])

    # ---- the loss -------------------------------------------------------------------------------------------
    def loss(self, logits: Tensor, x: Tensor, y: Tensor, index: Tensor, epoch: int,
             with_logs: bool, mixing: Mixing | None = None) -> tuple[Tensor, dict[str, float]]:
        pending, self._pending = self._pending, None
        if pending is None:
            raise AssertionError("dlb: loss() without before_batch() for this batch")
        n_new, n_rep, keep = pending["n_new"], pending["n_rep"], pending["keep"]
        if logits.shape[0] != n_new + n_rep:
            raise AssertionError(f"dlb: {logits.shape[0]} logits rows for a batch of {n_new} new + {n_rep} repeated")
        ce = soft_cross_entropy(logits, y, self.cfg.train.label_smoothing)
        if n_rep:
            current = logits[n_new:]
            stored = self.stored_logits.to(logits.device)
            if mixing is not None:  # the stored clips' outputs mixed like the repeated rows now are
                stored = mix_teacher_logits(stored, _group(mixing, n_new), self.options.tau)
            kd = kd_loss(current, stored, self.options.tau)
            loss = ce + self.options.alpha * kd
        else:
            kd, loss = None, ce
        logs = {}
        if with_logs:
            logs = {"loss/ce": ce.item(), "loss/kd": kd.item() if kd is not None else 0.0,
                    "dlb/repeated": float(n_rep)}
            if n_rep:  # undefined without repeated rows (first step): not logged then
                agree = (current.detach().argmax(dim=1) == stored.argmax(dim=1)).float().mean()
                logs["dlb/agreement"] = agree.item()
        # the last `keep` new rows are repeated next step: keep their raw fields and this iteration's logits
        self.retained = pending["retain"]
        if mixing is None:
            self.stored_logits = loss_precision(logits[n_new - keep:n_new].detach()).clone()
        else:
            clips = mixing.inputs[n_new - keep:n_new]
            self.stored_logits = loss_precision(unmixed_logits(self.ctx.model, clips, self.ctx.runtime))
        return loss, logs

    # ---- checkpoint -----------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        if self.retained is None:
            return {"x": torch.empty(0), "y": torch.empty(0, dtype=torch.long),
                    "recording_device": torch.empty(0, dtype=torch.long), "index": torch.empty(0, dtype=torch.long),
                    "logits": torch.empty(0)}
        return {**{f: self.retained[f] for f in _FIELDS}, "logits": self.stored_logits}

    def load_state_dict(self, state: dict) -> None:
        self._pending = None
        if not state or len(state["index"]) == 0:
            self.retained, self.stored_logits = None, None
            return
        self.retained = {f: state[f] for f in _FIELDS}
        self.stored_logits = loss_precision(state["logits"])

    def hparams(self) -> dict:
        return {"dlb.alpha": float(self.options.alpha), "dlb.tau": float(self.options.tau)}


def _group(mixing: Mixing, start: int) -> Mixing:
    """The mixing of rows ``start…`` (a group paired within itself), with partners counted from ``start``."""
    return mixing._replace(perm=mixing.perm[start:] - start, labels=mixing.labels[start:],
                           inputs=None if mixing.inputs is None else mixing.inputs[start:])

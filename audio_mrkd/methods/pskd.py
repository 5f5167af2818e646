"""``method: pskd`` — Progressive Self-Knowledge Distillation (PS-KD).

Kim, Ji, Yoon, Hwang, "Self-Knowledge Distillation with Progressive Refinement of Targets", ICCV 2021; public
code: lgcnsai/PS-KD-Pytorch. The model is its own teacher: for every item ``i`` of the train split the method
keeps the model's softmax prediction from the last time it was trained on that item, and trains on the target

    t_i = (1 − α_t)·y_i + α_t·p_prev(i),        α_t = alpha_T · (epoch + 1) / train.epochs

where ``epoch`` is the number of completed epochs, so α_t rises linearly over the run and reaches ``alpha_T`` in
the last epoch. The loss is the soft cross-entropy of the logits (float32) to ``t_i``; afterwards the batch's
``softmax(logits)`` replaces the stored predictions of its items.

Choices:

* An item never predicted before uses ``p_prev(i) = y_i`` (PS-KD's epoch-0 behaviour: the target is the label).
* ``train.label_smoothing`` is NOT applied on top of the PS-KD target (the target is already soft; the paper's
  method has no label smoothing). ``loss/ce`` is plain cross-entropy to ``y`` (unsmoothed, no gradient), for
  comparison with the other methods.
* Mixup: the stored predictions are one item's each, so the row made of items i and j (weights λ, 1 − λ) gets
  ``p_prev = λ·p_prev(i) + (1 − λ)·p_prev(j)`` — mixed with the label's pairing and weight — and the target
  mixes the row's soft label with it. What is stored after a mixup step is ``pskd.store`` (PS-KD's own code has
  no mixup path, so this is the project's choice, measured on Drums-5: README, "Mixup and per-item teachers"):

  - ``dominant``: the prediction on a mixed row is stored for the item with the larger weight in it (i when
    λ ≥ 0.5, else j; with one λ per batch each item owns exactly one row): an item keeps the model's view of the
    mix it dominated — with Beta(0.4, 0.4) on average 16 % of it is another clip. No extra cost.
  - ``confident``: as ``dominant``, but only in steps whose dominant weight is at least
    :data:`CONFIDENT_WEIGHT` (0.9: about half the steps at Beta(0.4, 0.4)); otherwise the items keep their
    earlier predictions. No extra cost.
  - ``clean``: each item's prediction on its own un-mixed (otherwise augmented) input, from a forward without
    gradient at the step's weights (:func:`~audio_mrkd.methods.base.unmixed_logits`): exactly the quantity PS-KD
    stores without mixup, for one more forward pass over the batch per step.

  Without mixup the three are the same (the step's own prediction for each item).
* Per-item predictions live in one process (an N×C float32 tensor on the training device, indexed by the items'
  positions in the train split, grown as larger positions arrive); data-parallel training is refused because
  the predictions of items seen by other processes would be missing.

Options (the ``pskd:`` section): ``alpha_T`` (default 0.8, in [0, 1]); ``store`` (under mixup, see above).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from audio_mrkd.config_io import setting
from audio_mrkd.data.augment import Mixing
from audio_mrkd.errors import InputError
from audio_mrkd.methods.base import Method, TrainContext, soft_cross_entropy, unmixed_logits
from audio_mrkd.runtime import loss_precision

Store = Literal["dominant", "confident", "clean"]  # pskd.store (module docstring)
CONFIDENT_WEIGHT = 0.9  # store="confident": a mixed row's prediction is kept when one clip weighs at least this


class ProgressiveSelfKD(Method):
    @dataclass
    class Options:
        alpha_T: float = setting(0.8, at_least=0, at_most=1)
        store: Store = "dominant"  # under mixup: what is stored as an item's prediction (module docstring)

    def __init__(self, cfg, ctx: TrainContext) -> None:
        super().__init__(cfg, ctx)
        if ctx is not None and ctx.average_grads is not None:
            raise InputError("method pskd: one process only (per-item predictions are not shared across processes)")
        self.device = ctx.torch_device if ctx is not None else torch.device("cpu")
        runtime = getattr(ctx, "runtime", None)
        self.dtype = runtime.input_dtype if runtime is not None else torch.float32  # of the stored predictions
        self.predictions: Tensor | None = None  # N×C: the last softmax per item
        self.seen: Tensor | None = None         # N bool: the item has a stored prediction
        info = getattr(ctx, "data_info", None)
        self.n_items = int(info.n_train) if info else 0
        self.n_classes = getattr(ctx, "n_classes", 0)
        if self.n_items:  # the whole store up front: no item index is read back to size it
            self._ensure(self.n_items, self.n_classes)

    def alpha(self, epoch: int) -> float:
        """α_t after ``epoch`` completed epochs."""
        return float(self.options.alpha_T) * (epoch + 1) / self.cfg.train.epochs

    def _ensure(self, size: int, n_classes: int) -> None:
        """The store holds at least ``size`` items (grown with zeros / unseen)."""
        if self.predictions is None:
            self.predictions = torch.zeros(size, n_classes, dtype=self.dtype, device=self.device)
            self.seen = torch.zeros(size, dtype=torch.bool, device=self.device)
        elif size > self.predictions.shape[0]:
            extra = size - self.predictions.shape[0]
            self.predictions = torch.cat([self.predictions, self.predictions.new_zeros(extra, n_classes)])
            self.seen = torch.cat([self.seen, self.seen.new_zeros(extra)])

    def loss(self, logits: Tensor, x: Tensor, y: Tensor, index: Tensor, epoch: int,
             with_logs: bool, mixing: Mixing | None = None) -> tuple[Tensor, dict[str, float]]:
        logits = loss_precision(logits)
        n_classes = logits.shape[1]
        index = index.to(self.device, torch.long)
        if not self.n_items:  # built without the run's size (unit tests): grow as larger indices arrive
            self._ensure(int(index.max().item()) + 1, n_classes)
        onehot = (F.one_hot(y, n_classes) if y.dim() == 1 else y).to(logits.dtype)
        seen, prev = self._previous(index, onehot, mixing)
        alpha = self.alpha(epoch)
        target = (1.0 - alpha) * onehot + alpha * prev
        loss = soft_cross_entropy(logits, target)
        logs: dict[str, float] = {}
        if with_logs:
            labels = y if y.dim() == 1 else y.argmax(dim=1)
            n_seen = int(seen.sum().item())
            logs = {"loss/ce": soft_cross_entropy(logits.detach(), y).item(), "loss/pskd": loss.item(),
                    "pskd/alpha": alpha}
            if n_seen:  # no items seen before (the first epoch): nothing to agree with, no log
                agree = (prev.argmax(dim=1) == labels) & seen
                logs["pskd/prev_agreement"] = agree.sum().item() / n_seen
        self._store(logits.detach(), index, mixing)
        return loss, logs

    def _store(self, logits: Tensor, index: Tensor, mixing: Mixing | None) -> None:
        """Keep this step's predictions as the items' previous ones (``pskd.store`` under mixup)."""
        store = self.options.store
        if mixing is None or store == "clean":
            if mixing is not None:
                logits = loss_precision(unmixed_logits(self.ctx.model, mixing.inputs, self.ctx.runtime))
            self.predictions[index] = torch.softmax(logits, dim=1)
            self.seen[index] = True
            return
        owner = torch.where(mixing.lam >= 0.5, index, index[mixing.perm])
        probabilities = torch.softmax(logits, dim=1)
        if store == "confident":  # on the device, no host sync: a weak mix writes the old values back
            keep = torch.maximum(mixing.lam, 1 - mixing.lam) >= CONFIDENT_WEIGHT
            probabilities = torch.where(keep, probabilities, self.predictions[owner])
            self.seen[owner] = self.seen[owner] | keep
        else:
            self.seen[owner] = True
        self.predictions[owner] = probabilities

    def _previous(self, index: Tensor, onehot: Tensor, mixing: Mixing | None) -> tuple[Tensor, Tensor]:
        """(rows whose items all have a stored prediction, each row's previous prediction): an item never seen
        counts as its label; under mixup the two items' predictions are mixed like the label."""
        seen = self.seen[index]
        if mixing is None:
            return seen, torch.where(seen[:, None], self.predictions[index], onehot)
        own = F.one_hot(mixing.labels, onehot.shape[1]).to(onehot.dtype)
        prev = torch.where(seen[:, None], self.predictions[index], own)
        return seen & seen[mixing.perm], mixing.rows(prev)

    def graph_key(self, epoch: int):
        """Capture-safe when the store is sized up front; α changes every epoch (one capture per epoch)."""
        return (self.alpha(epoch),) if self.n_items else None

    def state_dict(self) -> dict:
        if self.predictions is None:
            return {}
        return {"predictions": self.predictions.clone(), "seen": self.seen.clone()}

    def load_state_dict(self, state: dict) -> None:
        if not state:
            self.predictions = self.seen = None
            if self.n_items:
                self._ensure(self.n_items, self.n_classes)
            return
        self.predictions = state["predictions"].to(self.device, self.dtype).clone()
        self.seen = state["seen"].to(self.device, torch.bool).clone()

    def hparams(self) -> dict:
        return {"pskd.alpha_T": float(self.options.alpha_T), "pskd.store": self.options.store}

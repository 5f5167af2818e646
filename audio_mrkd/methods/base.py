"""What a training method is to the engine: :class:`Method`, and what the engine offers it: :class:`TrainContext`.

The engine runs the loop (forward, backward, optimiser and scheduler steps, evaluation, checkpoints); a method
supplies the loss on a batch and reacts to two hooks, after each optimiser step and after each epoch. Its own
state (teachers, auxiliary networks and their optimisers) goes into the checkpoint through
:meth:`Method.state_dict` and must hold tensors and plain containers only.
"""
from __future__ import annotations

import hashlib
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from audio_mrkd.data.augment import Mixing
from audio_mrkd.data.info import DataInfo
from audio_mrkd.runtime import Runtime, loss_precision


@dataclass
class TrainContext:
    """The network and the hooks a method may use; built by the engine once per run."""

    model: nn.Module                                   # the plain network (not a compiled or DDP wrapper)
    n_classes: int
    torch_device: torch.device
    runtime: Runtime
    infer_train: Callable[[nn.Module], Tensor]         # a model's N×C logits on every un-augmented train item
    average_grads: Callable[[list[Tensor]], None] | None  # data parallel: mean of gradients over processes
    sync_buffers: Callable[[], None]                   # rank 0's BatchNorm statistics to every process
    run_epochs: int = 0                                # the run's length: train.epochs …
    steps_per_epoch: int = 0                           # … of this many optimiser steps
    data_info: DataInfo | None = None                  # the run's data description (name, classes, input shape, norm)
    train_filenames: list[str] | None = None           # the train items' file names, in item-index order
    open_run: Callable | None = None                   # run_dir → its Run (.info: DataInfo, .model("best" | "last"))


class Method:
    """Plain cross-entropy behaviour; subclasses override what they change.

    ``Options``: a dataclass of the method's own settings, or None. Its config section is named after the method
    (``pskd: {alpha_T: 0.7}``); the config loader finds it through the registry and validates it; the method reads
    it as ``self.options``. ``uses_teacher``: whether the method reads the shared ``teacher:`` section — "none",
    "optional" or "required" (the loader refuses a teacher given to a method that uses none, and a missing one)."""

    Options: type | None = None
    uses_teacher: Literal["none", "optional", "required"] = "none"

    @classmethod
    def teacher_term_unread(cls, options) -> str | None:
        """Why a run of this method that has a teacher leaves the teacher term's settings (``teacher.alpha``, ``tau``,
        ``ka``, ``ensemble``, ``fcn_*``) unread, given its ``options``; None (the default) when it distils toward the
        teacher through that term. The loader refuses such a setting when given, and a run folder leaves it out."""
        return None

    def __init__(self, cfg, ctx: TrainContext) -> None:
        self.cfg, self.ctx = cfg, ctx
        self.options = cfg.options()

    def before_batch(self, batch):
        """The batch to train on, given the loader's (before augmentation); a method may add items (e.g. repeat
        the previous batch's). Fields: ``x``, ``y``, ``recording_device``, ``index`` (see data.splits.Batch)."""
        return batch

    def loss(self, logits: Tensor, x: Tensor, y: Tensor, index: Tensor, epoch: int,
             with_logs: bool, mixing: Mixing | None = None) -> tuple[Tensor, dict[str, float]]:
        """The loss to back-propagate for a batch and (when ``with_logs``) its float logs. ``y``: class indices
        or soft targets (mixup); ``index``: the items' positions in the train split; ``epoch``: completed epochs;
        ``mixing``: under mixup, how the rows were paired and weighted (a teacher that gives one item's view — a
        cached logit, a stored prediction — must be mixed the same way as the label).
        A log named ``…_time`` is seconds spent inside the step: the engine reports it as ``…_time_share``."""
        loss = soft_cross_entropy(logits, y, self.cfg.train.label_smoothing)
        return loss, ({"loss/ce": loss.item()} if with_logs else {})

    def mixup_groups(self) -> tuple[int, ...] | None:
        """Under mixup, the sizes of consecutive row groups of this step's batch whose rows are paired only within
        their group (None: any row with any other)."""
        return None

    def graph_key(self, epoch: int):
        """None if this method's step cannot be captured as a CUDA graph (host syncs, Python branches on values);
        else a hashable key of the Python-level state its step depends on — a new key means a new capture."""
        return None

    def after_step(self, global_step: int) -> None:
        """Called after each optimiser step (``global_step`` steps done)."""

    def after_epoch(self, epoch: int) -> None:
        """Called after each epoch (``epoch`` epochs done), before evaluation."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`'s output."""

    def hparams(self) -> dict:
        """The method's settings for TensorBoard's hparams (flat, plain values)."""
        return {}

    def digest(self) -> str:
        """A hash of state that must agree across data-parallel processes ("" when there is none)."""
        return ""


def soft_cross_entropy(logits: Tensor, y: Tensor, label_smoothing: float = 0.0) -> Tensor:
    """Cross-entropy to class indices, or to B×C soft targets (mixup), computed in float32 (float64 under
    ``train.precision=64``), with optional label smoothing (``train.label_smoothing``)."""
    logits = loss_precision(logits)
    return F.cross_entropy(logits, y if y.dim() == 1 else y.to(logits.dtype), label_smoothing=label_smoothing)


def unmixed_logits(model: nn.Module, x: Tensor, runtime: Runtime | None = None) -> Tensor:
    """The network's logits on rows ``x`` (the un-mixed rows of a mixup batch), as the training step computes them
    (training mode, the step's autocast) but without gradient and without touching its BatchNorm statistics (the
    forward updates copies of the buffers: the live ones are saved for the step's backward and must not change):
    the network's view of each clip on its own, at the step's weights."""
    copies = {name: buffer.clone() for name, buffer in model.named_buffers()}
    with torch.no_grad(), (runtime.autocast() if runtime is not None else nullcontext()):
        return torch.func.functional_call(model, copies, (x,))


def modules_digest(modules: list[nn.Module]) -> str:
    """Hash of the modules' tensors, 15 hex digits (fits an int64 for the engine's all_gather)."""
    digest = hashlib.sha256()
    for module in modules:
        for tensor in module.state_dict().values():
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:15]

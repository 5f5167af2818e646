"""``train.step_graph``: the whole training step as one replayable unit.

The step — :class:`~audio_mrkd.train.step.TrainingStep`, the eager path's own step: augmentation (on-device draws
from the run's generator), student forward, the method's loss, backward and the optimiser step — runs on static
buffers: each batch is copied into fixed input tensors, gradients are zeroed in place, and nothing is read back to
the host. On CUDA the step is captured once as a CUDA graph and replayed for every full batch (after a few eager
steps: the run's first ones, and one for each new key); elsewhere the same function runs uncaptured (that is what
the CPU tests compare with the eager step). The learning rate of a captured step is a device tensor the scheduler
updates in place, so LR changes never need a new capture.

A method takes part when :meth:`~audio_mrkd.methods.base.Method.graph_key` returns a key (None: its step is not
capture-safe, it runs eagerly); a new key (e.g. a state change of the method between epochs) means a new capture.
Steps that log, and the last, smaller batch of an epoch, take the eager path. A capture that fails is reported in
one line and the run goes on eagerly.
"""
from __future__ import annotations

import sys

import torch

from audio_mrkd.train.step import TrainingStep

WARM_UP_STEPS = 3  # eager steps before the run's first capture (torch's CUDA-graph notes ask for a few)
# eager steps before each later capture: a new key runs code no step has run yet (MrKD's teachers, its FCN and the
# FCN optimiser's state once the bank fills; cuDNN's algorithm search and torch.compile's first call on the teacher
# copies), and none of that may happen for the first time inside a capture
REWARM_STEPS = 1


class StaticStep:
    """``step`` on static buffers (``capture``: record and replay it as a CUDA graph), for batches of ``full_batch``
    rows (this process's rows of a full batch); ``generator``: the one the step's augmentation draws from."""

    def __init__(self, step: TrainingStep, capture: bool, full_batch: int, generator: torch.Generator) -> None:
        self.step, self.capture, self.full_batch, self.generator = step, capture, full_batch, generator
        self.inputs: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        self.loss: torch.Tensor | None = None
        self.graph = None
        self.key = None
        self.failed = False
        self.warm_up = 0            # eager steps taken so far
        self.warm_key, self.warm_key_steps = None, 0  # the key of the latest steps, and its eager steps

    def accepts(self, batch, key) -> bool:
        """A full batch and a method that is capture-safe right now."""
        return not self.failed and key is not None and batch.x.shape[0] == self.full_batch

    def run(self, batch, key, epoch: int) -> torch.Tensor:
        """One optimiser step on ``batch`` after ``epoch`` completed epochs; returns the loss as a device tensor (not
        read back)."""
        if self.inputs is None:
            self.inputs = tuple(t.clone() for t in (batch.x, batch.y, batch.index))
        for static, new in zip(self.inputs, (batch.x, batch.y, batch.index)):
            static.copy_(new)
        if not self.capture:
            self.loss = self._body(epoch)
        elif self._warming(key):  # real steps, eager, on a side stream (allocates optimiser state)
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                self.loss = self._body(epoch)
            torch.cuda.current_stream().wait_stream(stream)
        else:
            if self.graph is None or key != self.key:
                self._record(key, epoch)
            self.graph.replay()
        return self.loss

    def _warming(self, key) -> bool:
        """Whether this step runs eagerly before a capture: the run's first WARM_UP_STEPS steps, and the first
        REWARM_STEPS steps of each new key."""
        if key != self.warm_key:
            self.warm_key, self.warm_key_steps = key, 0
        warm = self.warm_up < WARM_UP_STEPS or self.warm_key_steps < REWARM_STEPS
        if warm:
            self.warm_up, self.warm_key_steps = self.warm_up + 1, self.warm_key_steps + 1
        return warm

    def _body(self, epoch: int) -> torch.Tensor:
        """The step on the static inputs, without logs; returns its loss. Gradients are zeroed in place: the
        captured gradients live in fixed tensors."""
        return self.step(*self.inputs, epoch, False, set_to_none=False)[0]

    def _record(self, key, epoch: int) -> None:
        """Capture the step; it runs when the graph is replayed."""
        try:
            self.graph = torch.cuda.CUDAGraph()
            # torch 2.11 lets a capture draw only from generators registered with its graph (the device's default
            # one is); the augmentation draws from the run's own generator
            self.graph.register_generator_state(self.generator)
            with torch.cuda.graph(self.graph):
                self.loss = self._body(epoch)
            self.key = key
        except Exception as exc:  # a step torch cannot capture: run eagerly from here on
            self.failed, self.graph = True, None
            print(f"train.step_graph: capture failed ({str(exc).splitlines()[0]}); training on eagerly",
                  file=sys.stderr)
            raise CaptureFailed from exc


class CaptureFailed(Exception):
    """Raised after a failed capture so that the engine redoes the step eagerly."""

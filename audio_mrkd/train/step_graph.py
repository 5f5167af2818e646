"""``train.step_graph``: the whole training step as one replayable unit.

The step — augmentation (on-device draws from the run's generator), student forward, the method's loss, backward
and the optimiser step — runs on static buffers: each batch is copied into fixed input tensors, gradients are
zeroed in place, and nothing is read back to the host. On CUDA the step is captured once as a CUDA graph and
replayed for every full batch (after a few eager steps: the run's first ones, and one for each new key); elsewhere
the same function runs uncaptured (that is what the CPU tests compare with the eager step). The learning rate of a
captured step is a device tensor the scheduler updates in place, so LR changes never need a new capture.

A method takes part when :meth:`~audio_mrkd.methods.base.Method.graph_key` returns a key (None: its step is not
capture-safe, it runs eagerly); a new key (e.g. a state change of the method between epochs) means a new capture.
Steps that log, and the last, smaller batch of an epoch, take the eager path. A capture that fails is reported in
one line and the run goes on eagerly.
"""
from __future__ import annotations

import sys

import torch

WARM_UP_STEPS = 3  # eager steps before the run's first capture (torch's CUDA-graph notes ask for a few)
# eager steps before each later capture: a new key runs code no step has run yet (MrKD's teachers, its FCN and the
# FCN optimiser's state once the bank fills; cuDNN's algorithm search and torch.compile's first call on the teacher
# copies), and none of that may happen for the first time inside a capture
REWARM_STEPS = 1


class StaticStep:
    """The step on static buffers, for one trainer (``capture``: record and replay it as a CUDA graph)."""

    def __init__(self, trainer, capture: bool) -> None:
        self.trainer, self.capture = trainer, capture
        self.inputs: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        self.loss: torch.Tensor | None = None
        self.graph = None
        self.key = None
        self.failed = False
        self.warm_up = 0            # eager steps taken so far
        self.warm_key, self.warm_key_steps = None, 0  # the key of the latest steps, and its eager steps

    def accepts(self, batch, key) -> bool:
        """A full batch and a method that is capture-safe right now."""
        return not self.failed and key is not None and batch.x.shape[0] == self.trainer.cfg.train.batch_size \
            // self.trainer.fabric.world_size

    def run(self, batch, key) -> torch.Tensor:
        """One optimiser step on ``batch``; returns the loss as a device tensor (not read back)."""
        if self.inputs is None:
            self.inputs = tuple(t.clone() for t in (batch.x, batch.y, batch.index))
        for static, new in zip(self.inputs, (batch.x, batch.y, batch.index)):
            static.copy_(new)
        if not self.capture:
            self.loss = self._body()
        elif self._warming(key):  # real steps, eager, on a side stream (allocates optimiser state)
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                self.loss = self._body()
            torch.cuda.current_stream().wait_stream(stream)
        else:
            if self.graph is None or key != self.key:
                self._record(key)
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

    def _body(self) -> torch.Tensor:
        t = self.trainer
        x, y, mixing = t.augment(self.inputs[0], self.inputs[1])
        with t.fabric.autocast():
            logits = t.forward(x)
        loss, _ = t.method.loss(logits, x, y, self.inputs[2], t.epoch, False, mixing=mixing)
        t.optimizer.zero_grad(set_to_none=False)  # the captured gradients live in fixed tensors
        t.fabric.backward(loss)
        t.optimizer.step()
        return loss.detach()

    def _record(self, key) -> None:
        """Capture the step; it runs when the graph is replayed."""
        try:
            self.graph = torch.cuda.CUDAGraph()
            # torch 2.11 lets a capture draw only from generators registered with its graph (the device's default
            # one is); the augmentation draws from the run's own generator
            self.graph.register_generator_state(self.trainer.augment_rng)
            with torch.cuda.graph(self.graph):
                self.loss = self._body()
            self.key = key
        except Exception as exc:  # a step torch cannot capture: run eagerly from here on
            self.failed, self.graph = True, None
            print(f"train.step_graph: capture failed ({str(exc).splitlines()[0]}); training on eagerly",
                  file=sys.stderr)
            raise CaptureFailed from exc


class CaptureFailed(Exception):
    """Raised after a failed capture so that the engine redoes the step eagerly."""

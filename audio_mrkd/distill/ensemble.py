"""Combining the K teachers' logits: FCN ensembler (MrKD), plain mean or the newest teacher (ablations)."""

from __future__ import annotations

import typing
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn


Mode = Literal["fcn", "mean", "newest"]
MODES = typing.get_args(Mode)


def _check_z(z: Tensor, k: int | None = None, n_classes: int | None = None) -> None:
    if z.dim() != 3:
        raise AssertionError(f"combine_teachers: teacher logits must be K×B×C, got shape {tuple(z.shape)}")
    if (k is not None and z.shape[0] != k) or (n_classes is not None and z.shape[2] != n_classes):
        raise AssertionError(f"combine_teachers: expected {k}×B×{n_classes} teacher logits, got {tuple(z.shape)}")


class FCNEnsembler(nn.Module):
    """mean_k Z + MLP(Z concatenated newest first: K·C → hidden → C, ReLU) for Z of shape K×B×C.

    The last Linear starts at zero, so the ensembler starts as plain averaging and learns corrections.
    """

    def __init__(self, k: int, n_classes: int, hidden: int = 128) -> None:
        super().__init__()
        self.k, self.n_classes = k, n_classes
        self.mlp = nn.Sequential(nn.Linear(k * n_classes, hidden), nn.ReLU(), nn.Linear(hidden, n_classes))
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)

    def forward(self, z: Tensor) -> Tensor:
        _check_z(z, self.k, self.n_classes)
        flat = z.transpose(0, 1).reshape(z.shape[1], -1)  # B × (K·C), newest teacher first
        return z.mean(dim=0) + self.mlp(flat)


def combine_teachers(z: Tensor, mode: str, fcn: FCNEnsembler | None) -> Tensor:
    """B×C teacher signal from K×B×C logits: `fcn` (needs the ensembler), `mean` or `newest`."""
    _check_z(z)
    if mode == "mean":
        return z.mean(dim=0)
    if mode == "newest":
        return z[0]
    if mode == "fcn":
        if fcn is None:
            raise AssertionError("combine_teachers: mode 'fcn' needs an FCNEnsembler")
        return fcn(z)
    raise AssertionError(f"combine_teachers: mode must be one of {', '.join(MODES)}, got {mode!r}")


class LearnedEnsemble:
    """An :class:`FCNEnsembler` with its own Adam optimiser, trained on the fly: each :meth:`step` combines
    detached teacher logits and takes one optimiser step on the ensembler's cross-entropy to the labels.

    grad_sync: averages the ensembler's gradients across processes (data-parallel training). objective: the
    function computing (g(Z), CE) — ``fcn_objective`` or its compiled form. capturable: the Adam step may be
    captured in a CUDA graph (``train.step_graph``)."""

    def __init__(self, n_teachers: int, n_classes: int, hidden: int, lr: float, device: torch.device,
                 fused: bool | None, objective, grad_sync=None, capturable: bool = False,
                 dtype: torch.dtype = torch.float32) -> None:
        with torch.random.fork_rng(devices=[]):  # the init must not shift the run's global RNG stream
            self.fcn = FCNEnsembler(n_teachers, n_classes, hidden).to(device, dtype)
        self.opt = torch.optim.Adam(self.fcn.parameters(), lr=lr, fused=fused, capturable=capturable)
        self.objective, self.grad_sync = objective, grad_sync

    def step(self, z: Tensor, y: Tensor, smoothing: float = 0.0) -> tuple[Tensor, Tensor]:
        """Combined teacher logits g(Z) (detached) and the ensembler's CE, after one Adam step."""
        with torch.enable_grad():
            z_t, loss = self.objective(self.fcn, z.detach(), y, smoothing)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            if self.grad_sync is not None:
                self.grad_sync([p.grad for p in self.fcn.parameters() if p.grad is not None])
            self.opt.step()
        return z_t.detach(), loss.detach()

    def state_dict(self) -> dict:
        return {"fcn": self.fcn.state_dict(), "fcn_opt": self.opt.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.fcn.load_state_dict(state["fcn"])
        self.opt.load_state_dict(state["fcn_opt"])


def fcn_objective(fcn: FCNEnsembler, z: Tensor, y: Tensor, smoothing: float) -> tuple[Tensor, Tensor]:
    """The ensembler's output g(Z) (B×C) and its cross-entropy to the labels."""
    z_t = combine_teachers(z, "fcn", fcn)
    return z_t, F.cross_entropy(z_t, y, label_smoothing=smoothing)

"""Combining the K teachers' logits: FCN ensembler (MrKD), plain mean or the newest teacher (ablations)."""

from __future__ import annotations

import typing
from typing import Literal

from torch import Tensor, nn


Mode = Literal["fcn", "mean", "newest"]
MODES = typing.get_args(Mode)


def _check_z(z: Tensor, k: int | None = None, n_classes: int | None = None) -> None:
    if z.dim() != 3:
        raise AssertionError(f"mrkd.ensemble: teacher logits must be K×B×C, got shape {tuple(z.shape)}")
    if (k is not None and z.shape[0] != k) or (n_classes is not None and z.shape[2] != n_classes):
        raise AssertionError(f"mrkd.ensemble: expected {k}×B×{n_classes} teacher logits, got {tuple(z.shape)}")


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
            raise AssertionError("mrkd.ensemble: mode 'fcn' needs an FCNEnsembler")
        return fcn(z)
    raise AssertionError(f"mrkd.ensemble: must be one of {', '.join(MODES)}, got {mode!r}")

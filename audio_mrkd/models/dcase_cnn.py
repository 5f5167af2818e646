"""The DCASE'21/'22 Task 1A baseline CNN (Tampere, originally Keras), in PyTorch.

Layout: [conv7×7-BN-ReLU] ×2 (16 ch) → max-pool 5×5 → dropout → conv7×7-BN-ReLU (32 ch) → max-pool
to 2 frequency bands × 1 time step → dropout → flatten → dense 100 (ReLU) → dropout → dense n_classes.

Choices: the original second pool is a fixed 4×100 window sized for a 40×500 input (giving 2×1);
here it is an adaptive max-pool to 2×1 (``BandMaxPool``) so any input size works. The 5×5 pool uses ``ceil_mode`` so
inputs smaller than 5 bins still work. With 10 classes and 1 input channel the model has
**46,118** trainable parameters at any input size (Keras reports 46,246 because it also counts the
BatchNorm running statistics).
"""

from __future__ import annotations

import torch
from torch import nn

from audio_mrkd.errors import InputError
from audio_mrkd.models import check_dropout, check_int, register_model

FREQ_BANDS = 2  # output bands of BandMaxPool


class BandMaxPool(nn.Module):
    """Max over time, then over two frequency halves: ``AdaptiveMaxPool2d((2, 1))`` in plain ops.

    Written out because ONNX has no adaptive max-pool; slicing and ``amax`` export with any
    (dynamic) input size under both ONNX exporters.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        per_bin = x.amax(dim=3, keepdim=True)
        height = per_bin.shape[2]
        low = per_bin[:, :, : (height + 1) // 2].amax(dim=2, keepdim=True)
        high = per_bin[:, :, height // 2 :].amax(dim=2, keepdim=True)
        return torch.cat([low, high], dim=2)


def conv_block(c_in: int, c_out: int, kernel: int) -> list[nn.Module]:
    """'Same'-padded conv (with bias, as in Keras), BatchNorm, ReLU."""
    return [nn.Conv2d(c_in, c_out, kernel, padding=kernel // 2), nn.BatchNorm2d(c_out), nn.ReLU()]


class DcaseCNN(nn.Module):
    """Three conv layers, two max-pools, a 100-unit dense layer and a linear classifier."""

    def __init__(self, n_classes: int, in_channels: int, channels: tuple[int, int],
                 hidden: int, kernel: int, dropout: float):
        super().__init__()
        c1, c2 = channels
        self.features = nn.Sequential(
            *conv_block(in_channels, c1, kernel),
            *conv_block(c1, c1, kernel),
            nn.MaxPool2d(5, ceil_mode=True),
            nn.Dropout(dropout),
            *conv_block(c1, c2, kernel),
            BandMaxPool(),
            nn.Dropout(dropout),
            nn.Flatten(1),
        )
        self.classifier = nn.Sequential(
            nn.Linear(c2 * FREQ_BANDS, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, n_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


@register_model("dcase_cnn")
def dcase_cnn(n_classes: int, in_channels: int, *, channels: int = 16, hidden: int = 100,
              kernel_size: int = 7, dropout: float = 0.3) -> DcaseCNN:
    """DCASE'21 Task 1A baseline; ``channels`` is the first width (the third layer has twice it)."""
    check_int("model.channels", channels)
    check_int("model.hidden", hidden)
    check_int("model.kernel_size", kernel_size)
    if kernel_size % 2 == 0:
        raise InputError(f"model.kernel_size: must be odd, got {kernel_size}")
    check_dropout("model.dropout", dropout)
    return DcaseCNN(n_classes, in_channels, (channels, 2 * channels), hidden, kernel_size, dropout)

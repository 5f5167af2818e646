"""CIFAR-style residual networks: ResNet-18, He et al.'s ResNet-20/32/56 and Wide ResNets.

All share one network skeleton (3×3 stride-1 stem, no max-pool, stages of residual blocks whose
first block halves the resolution from stage 2 on, global average pooling, linear classifier) and
one shortcut builder:

* option ``"A"``: parameter-free; subsample by striding and zero-pad the new channels (He et al.,
  CIFAR experiments). Default of ``resnet20/32/56``: ResNet-20 has 269,722 parameters for 10 classes
  (272,474 with option B).
* option ``"B"``: 1×1 conv + BatchNorm projection where the shape changes, identity elsewhere.
  Used by ``resnet18`` (11,173,962 parameters for 10 classes).

``resnet18`` to ``resnet56`` use the post-activation ``BasicBlock``. ``wrn16_k``/``wrn28_k``
(Zagoruyko & Komodakis) use ``PreActBlock`` (BN-ReLU-conv, dropout between the convs, 1×1 conv
projection without BN); WRN-28-10 has 36,479,194 parameters for 10 classes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from audio_mrkd.errors import InputError
from audio_mrkd.models import check_dropout, check_int, register_model

SHORTCUTS = ("A", "B")


def conv3x3(c_in: int, c_out: int, stride: int = 1) -> nn.Conv2d:
    """Bias-free 3×3 convolution with padding 1."""
    return nn.Conv2d(c_in, c_out, 3, stride, padding=1, bias=False)


class PadShortcut(nn.Module):
    """Option-A shortcut: spatial subsampling by ``stride`` and zero channels up to ``c_out``."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.stride = stride
        extra = c_out - c_in
        self.pad = (0, 0, 0, 0, extra // 2, extra - extra // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x[:, :, :: self.stride, :: self.stride], self.pad)


def make_shortcut(c_in: int, c_out: int, stride: int, kind: str, norm: bool = True) -> nn.Module:
    """Identity when the shape is kept, else an option-A pad or option-B 1×1 projection."""
    if stride == 1 and c_in == c_out:
        return nn.Identity()
    if kind == "A" and c_out >= c_in:
        return PadShortcut(c_in, c_out, stride)
    projection = nn.Conv2d(c_in, c_out, 1, stride, bias=False)
    return nn.Sequential(projection, nn.BatchNorm2d(c_out)) if norm else projection


class BasicBlock(nn.Module):
    """Post-activation residual block: conv-BN-ReLU-conv-BN, add the shortcut, ReLU."""

    def __init__(self, c_in: int, c_out: int, stride: int, shortcut: str = "B"):
        super().__init__()
        self.body = nn.Sequential(
            conv3x3(c_in, c_out, stride), nn.BatchNorm2d(c_out), nn.ReLU(),
            conv3x3(c_out, c_out), nn.BatchNorm2d(c_out),
        )
        self.shortcut = make_shortcut(c_in, c_out, stride, shortcut)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.body(x) + self.shortcut(x))


class PreActBlock(nn.Module):
    """Wide-ResNet block: BN-ReLU-conv, BN-ReLU-dropout-conv; projection from the activated input."""

    def __init__(self, c_in: int, c_out: int, stride: int, dropout: float = 0.0):
        super().__init__()
        self.pre = nn.Sequential(nn.BatchNorm2d(c_in), nn.ReLU())
        self.body = nn.Sequential(
            conv3x3(c_in, c_out, stride), nn.BatchNorm2d(c_out), nn.ReLU(), nn.Dropout(dropout),
            conv3x3(c_out, c_out),
        )
        self.projects = stride != 1 or c_in != c_out
        self.shortcut = make_shortcut(c_in, c_out, stride, "B", norm=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        activated = self.pre(x)
        return self.body(activated) + self.shortcut(activated if self.projects else x)


BlockFactory = Callable[[int, int, int], nn.Module]


class CifarResNet(nn.Module):
    """Stem conv, residual stages (stride 2 from the second on), pooled linear classifier."""

    def __init__(self, n_classes: int, in_channels: int, stem_width: int, widths: Sequence[int],
                 depths: Sequence[int], block: BlockFactory, preact: bool = False):
        super().__init__()
        stem: list[nn.Module] = [conv3x3(in_channels, stem_width)]
        if not preact:
            stem += [nn.BatchNorm2d(stem_width), nn.ReLU()]
        self.stem = nn.Sequential(*stem)
        self.stages = nn.Sequential(*self._stages(stem_width, widths, depths, block))
        tail: list[nn.Module] = [nn.BatchNorm2d(widths[-1]), nn.ReLU()] if preact else []
        self.head = nn.Sequential(*tail, nn.AdaptiveAvgPool2d(1), nn.Flatten(1))
        self.classifier = nn.Linear(widths[-1], n_classes)
        self.apply(init_weights)

    @staticmethod
    def _stages(c_in: int, widths: Sequence[int], depths: Sequence[int], block: BlockFactory) -> list:
        stages = []
        for index, (width, depth) in enumerate(zip(widths, depths)):
            strides = [1 if index == 0 else 2] + [1] * (depth - 1)
            stages.append(nn.Sequential(*(block(w_in, width, s) for w_in, s in
                                          zip([c_in] + [width] * (depth - 1), strides))))
            c_in = width
        return stages

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.head(self.stages(self.stem(x))))


def init_weights(module: nn.Module) -> None:
    """Kaiming-normal (fan-out, ReLU) convs, unit/zero BatchNorm; linear layers keep torch's default."""
    if isinstance(module, nn.Conv2d):
        nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def _check_shortcut(shortcut: object) -> str:
    if shortcut not in SHORTCUTS:
        raise InputError(f"model.shortcut: must be one of {', '.join(SHORTCUTS)}, got {shortcut!r}")
    return str(shortcut)


def _post_act_block(shortcut: str) -> BlockFactory:
    return lambda c_in, c_out, stride: BasicBlock(c_in, c_out, stride, shortcut)


@register_model("resnet18")
def resnet18(n_classes: int, in_channels: int, *, shortcut: str = "B") -> CifarResNet:
    """ResNet-18, CIFAR variant: 64-channel 3×3 stride-1 stem, BasicBlock [2, 2, 2, 2], 64..512 ch."""
    block = _post_act_block(_check_shortcut(shortcut))
    return CifarResNet(n_classes, in_channels, 64, (64, 128, 256, 512), (2, 2, 2, 2), block)


def _he_resnet(depth: int) -> Callable[..., CifarResNet]:
    def build(n_classes: int, in_channels: int, *, shortcut: str = "A") -> CifarResNet:
        block = _post_act_block(_check_shortcut(shortcut))
        n = (depth - 2) // 6
        return CifarResNet(n_classes, in_channels, 16, (16, 32, 64), (n, n, n), block)

    build.__doc__ = f"He et al. CIFAR ResNet-{depth}: 3 stages × {(depth - 2) // 6} blocks, 16/32/64 channels."
    return build


for _depth in (20, 32, 56):
    register_model(f"resnet{_depth}")(_he_resnet(_depth))


def _wide_resnet(depth: int, default_widen: int) -> Callable[..., CifarResNet]:
    def build(n_classes: int, in_channels: int, *, widen: int = default_widen,
              dropout: float = 0.0) -> CifarResNet:
        k = check_int("model.widen", widen)
        p = check_dropout("model.dropout", dropout)
        n = (depth - 4) // 6
        return CifarResNet(n_classes, in_channels, 16, (16 * k, 32 * k, 64 * k), (n, n, n),
                           lambda c_in, c_out, stride: PreActBlock(c_in, c_out, stride, p), preact=True)

    build.__doc__ = f"Wide ResNet-{depth}-k (pre-activation, 16k/32k/64k channels; default k={default_widen})."
    return build


register_model("wrn16_k")(_wide_resnet(16, 4))
register_model("wrn28_k")(_wide_resnet(28, 10))

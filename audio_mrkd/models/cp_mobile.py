"""Simplified CP-Mobile: the network class of the DCASE'24/'25 Task 1 baseline (CPJKU).

Layout: a stem of two stride-2 3×3 conv-BN-ReLU layers (``base/4`` then ``base`` channels), stages
of inverted-bottleneck blocks (1×1 expand, 3×3 depthwise with optional stride, 1×1 project; a
residual connection, average-pooled when strided, wherever input and output widths agree; ReLU
after the sum), and a head of 1×1 conv to ``n_classes``, BatchNorm and global average pooling.

The default configuration (10 classes, 1 input channel, base_channels 32, channels_multiplier 1.8,
expansion_rate 2.1, n_blocks (3, 2, 1), strides b2=(1,1) b3=(1,2) b4=(2,1)) has 61,148 parameters
and 29,419,156 multiply-accumulates for one 1×256×65 input, as counted by ``torchinfo.summary``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from audio_mrkd.errors import InputError
from audio_mrkd.models import check_float, check_int, register_model

Stride = tuple[int, int]
DEFAULT_STRIDES: dict[str, Stride] = {"b2": (1, 1), "b3": (1, 2), "b4": (2, 1)}


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round ``value`` to the nearest multiple of ``divisor``, never more than 10 % below it."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def conv_bn(c_in: int, c_out: int, kernel: int, stride: Stride | int = 1, groups: int = 1,
            relu: bool = True) -> nn.Sequential:
    """Bias-free ``kernel``×``kernel`` conv ('same'-style padding), BatchNorm, optional ReLU."""
    layers: list[nn.Module] = [
        nn.Conv2d(c_in, c_out, kernel, stride, padding=kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(c_out),
    ]
    if relu:
        layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class InvertedBottleneck(nn.Module):
    """Expand (1×1) → depthwise 3×3 (strided) → project (1×1), residual where widths match."""

    def __init__(self, c_in: int, c_out: int, expansion_rate: float, stride: Stride):
        super().__init__()
        hidden = make_divisible(c_in * expansion_rate, 8)
        self.body = nn.Sequential(
            conv_bn(c_in, hidden, 1),
            conv_bn(hidden, hidden, 3, stride, groups=hidden),
            conv_bn(hidden, c_out, 1, relu=False),
        )
        self.residual = c_in == c_out
        strided = tuple(stride) != (1, 1)
        self.shortcut = nn.AvgPool2d(3, stride, padding=1) if self.residual and strided else nn.Identity()
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(x)
        if self.residual:
            out = out + self.shortcut(x)
        return self.act(out)


class CPMobile(nn.Module):
    """CP-Mobile (DCASE'24 baseline class): stem, inverted-bottleneck stages, 1×1-conv head."""

    def __init__(self, n_classes: int, in_channels: int, stage_channels: Sequence[int],
                 n_blocks: Sequence[int], expansion_rate: float, strides: Mapping[str, Stride]):
        super().__init__()
        base = stage_channels[0]
        self.stem = nn.Sequential(conv_bn(in_channels, base // 4, 3, 2), conv_bn(base // 4, base, 3, 2))
        self.stages = nn.Sequential()
        block_id = 0
        for stage_id, count in enumerate(n_blocks):
            stage = nn.Sequential()
            c_in, c_out = stage_channels[stage_id], stage_channels[stage_id + 1]
            for _ in range(count):
                block_id += 1
                stride = strides.get(f"b{block_id}", (1, 1))
                stage.add_module(f"b{block_id}", InvertedBottleneck(c_in, c_out, expansion_rate, stride))
                c_in = c_out
            self.stages.add_module(f"s{stage_id + 1}", stage)
        self.head = nn.Sequential(
            nn.Conv2d(stage_channels[-1], n_classes, 1, bias=False),
            nn.BatchNorm2d(n_classes),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(1),
        )
        self.apply(init_weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stages(self.stem(x)))


def init_weights(module: nn.Module) -> None:
    """Kaiming-normal (fan-out) convs, unit/zero BatchNorm, small-normal linear layers."""
    if isinstance(module, nn.Conv2d):
        nn.init.kaiming_normal_(module.weight, mode="fan_out")
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, 0.0, 0.01)
        nn.init.zeros_(module.bias)


def stage_widths(base_channels: int, channels_multiplier: float, n_stages: int) -> list[int]:
    """Channel counts: the stem output, then one per stage (``base · multiplier^stage``, /8)."""
    base = make_divisible(base_channels, 8)
    return [base] + [make_divisible(base * channels_multiplier ** s, 8) for s in range(n_stages)]


def parse_strides(strides: Mapping | None, total_blocks: int) -> dict[str, Stride]:
    """Validate ``{"bN": stride}`` (N = 1-based block index; stride int or (freq, time))."""
    if strides is None:
        return dict(DEFAULT_STRIDES)
    if not isinstance(strides, Mapping):
        raise InputError(f"model.strides: must be a mapping like {{'b3': [1, 2]}}, got {strides!r}")
    parsed = {}
    for key, value in strides.items():
        index = str(key)[1:]
        if not (str(key).startswith("b") and index.isdigit() and 1 <= int(index) <= total_blocks):
            raise InputError(f"model.strides: key {key!r} is not a block b1..b{total_blocks}")
        parsed[str(key)] = stride_pair(f"model.strides.{key}", value)
    return parsed


def stride_pair(key: str, value: object) -> Stride:
    """An int ``s`` means ``(s, s)``; a pair is (frequency, time); both must be positive integers."""
    pair = (value, value) if isinstance(value, int) else value
    if isinstance(pair, (str, bytes)) or not isinstance(pair, Sequence) or len(pair) != 2:
        raise InputError(f"{key}: must be an integer or a pair of integers, got {value!r}")
    return check_int(key, pair[0]), check_int(key, pair[1])


@register_model("cp_mobile")
def cp_mobile(n_classes: int, in_channels: int, *, base_channels: int = 32,
              channels_multiplier: float = 1.8, expansion_rate: float = 2.1,
              n_blocks: Sequence[int] = (3, 2, 1), strides: Mapping | None = None) -> CPMobile:
    """CP-Mobile with configurable width (base/multiplier/expansion) and depth (blocks per stage)."""
    check_int("model.base_channels", base_channels, minimum=8)
    check_float("model.channels_multiplier", channels_multiplier)
    check_float("model.expansion_rate", expansion_rate)
    if isinstance(n_blocks, (str, bytes)) or not isinstance(n_blocks, Sequence) or not n_blocks:
        raise InputError(f"model.n_blocks: must be a non-empty list of integers, got {n_blocks!r}")
    blocks = [check_int("model.n_blocks", n) for n in n_blocks]
    widths = stage_widths(base_channels, channels_multiplier, len(blocks))
    return CPMobile(n_classes, in_channels, widths, blocks, expansion_rate, parse_strides(strides, sum(blocks)))

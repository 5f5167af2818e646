"""Batch-level augmentations on the training device (B×C×H×W tensors; audio: H = mel bins, W = frames).

Every random draw comes from ``generator`` (a ``torch.Generator`` on the batch's device; None: torch's global RNG)
and stays on the device: nothing is read back to the host, no Python branch depends on a draw and every shape is
static, so a step that augments can be captured and replayed as one CUDA graph (``train.step_graph``). The engine
passes its own generator (seeded by the run's seed, saved in checkpoints), so runs are reproducible and resumable.
Mixup returns soft targets (B×classes) and its pairing and weight (:class:`Mixing`), which the engine hands to the
training method: a method whose teacher gives one item's view (cached teacher logits, stored predictions) mixes
that view with the same pairing and weight as the label.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from audio_mrkd.config_schema import AugmentConfig

GAMMA_TRIES = 16  # Marsaglia–Tsang candidates per draw; each is accepted with probability > 0.95


def _rand(shape, like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    return torch.rand(shape, device=like.device, generator=generator)


def gamma(alpha: float, shape: tuple[int, ...], like: torch.Tensor,
          generator: torch.Generator | None = None) -> torch.Tensor:
    """Gamma(alpha, 1) draws with static shapes (Marsaglia & Tsang 2000, with the U^(1/α) boost for α < 1): a fixed
    number of candidates, the first accepted one kept (all rejected: probability < 1e-20)."""
    a = alpha + 1.0 if alpha < 1.0 else alpha
    d = a - 1.0 / 3.0
    c = 1.0 / math.sqrt(9.0 * d)
    z = torch.randn((GAMMA_TRIES, *shape), device=like.device, generator=generator)
    u = _rand((GAMMA_TRIES, *shape), like, generator)
    v = (1.0 + c * z) ** 3
    accept = (v > 0) & (u.log() < 0.5 * z * z + d - d * v + d * v.clamp_min(1e-30).log())
    first = accept.to(torch.uint8).argmax(dim=0, keepdim=True)
    draw = d * v.gather(0, first).squeeze(0)
    if alpha < 1.0:
        draw = draw * _rand(shape, like, generator) ** (1.0 / alpha)
    return draw


def beta(alpha: float, shape: tuple[int, ...], like: torch.Tensor,
         generator: torch.Generator | None = None) -> torch.Tensor:
    """Beta(alpha, alpha) draws on ``like``'s device, as G₁ / (G₁ + G₂) of two Gamma(alpha) draws."""
    g1, g2 = gamma(alpha, shape, like, generator), gamma(alpha, shape, like, generator)
    return g1 / (g1 + g2)


def time_roll(x: torch.Tensor, max_fraction: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Circularly shift each item along time by up to ``max_fraction`` of the frames (either direction)."""
    frames = x.shape[-1]
    limit = int(frames * max_fraction)
    if limit == 0:
        return x
    shift = torch.randint(-limit, limit + 1, (x.shape[0], 1), device=x.device, generator=generator)
    index = (torch.arange(frames, device=x.device)[None] - shift) % frames
    return torch.gather(x, -1, index[:, None, None, :].expand_as(x))


def spec_mask(x: torch.Tensor, max_width: int, axis: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """SpecAugment-style mask, one band per item and channel: width uniform in [0, max_width), start uniform over
    what is left (torchaudio's ``mask_along_axis_iid`` arithmetic); axis 2 = freq, 3 = time."""
    if max_width <= 0:
        return x
    width = _rand(x.shape[:2], x, generator) * max_width
    start = _rand(x.shape[:2], x, generator) * (x.size(axis) - width)
    first, end = start.long()[..., None], (start.long() + width.long())[..., None]
    position = torch.arange(x.size(axis), device=x.device)
    band = (position >= first) & (position < end)  # B×C×size
    band = band[:, :, :, None] if axis == 2 else band[:, :, None, :]
    return x.masked_fill(band, 0.0)


def freq_mixstyle(x: torch.Tensor, p: float, alpha: float, eps: float = 1e-6,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Freq-MixStyle (DCASE'24 baseline idea): with probability ``p`` per batch, mix each item's per-frequency
    mean/std (over channels and time) with those of another item, weights ~ Beta(alpha, alpha). The coin and the
    mix are both computed on the device; the coin selects between them."""
    if p <= 0:
        return x
    apply = _rand((), x, generator) < p
    mu = x.mean(dim=(1, 3), keepdim=True)
    sig = (x.var(dim=(1, 3), keepdim=True) + eps).sqrt()
    lam = beta(alpha, (x.shape[0], 1, 1, 1), x, generator).to(x.dtype)
    perm = torch.randperm(x.shape[0], device=x.device, generator=generator)
    mu_mix = lam * mu + (1 - lam) * mu[perm]
    sig_mix = lam * sig + (1 - lam) * sig[perm]
    return torch.where(apply, (x - mu) / sig * sig_mix + mu_mix, x)


class Mixing(NamedTuple):
    """How a mixup batch was made: row r is ``lam·x[r] + (1 − lam)·x[perm[r]]``; ``labels`` are the rows' own
    (unmixed) class indices, ``inputs`` the rows before mixing (augmented otherwise), for a method that needs the
    network's view of each clip on its own. All stay on the device (no host sync, capture-safe)."""

    perm: Tensor    # B long: each row's partner
    lam: Tensor     # 0-dim float: the weight of the row's own item
    labels: Tensor  # B long: the rows' own labels
    inputs: Tensor | None = None  # B×…: the rows before mixing

    def rows(self, values: Tensor) -> Tensor:
        """Per-item values (…×B×C, e.g. probabilities) mixed like the inputs: λ·v[r] + (1 − λ)·v[perm[r]]."""
        lam = self.lam.to(values.dtype)
        return lam * values + (1 - lam) * values[..., self.perm, :]


def mixup(x: torch.Tensor, y: torch.Tensor, n_classes: int, alpha: float,
          generator: torch.Generator | None = None,
          groups: tuple[int, ...] | None = None) -> tuple[torch.Tensor, torch.Tensor, Mixing]:
    """Mixup with one Beta(alpha, alpha) weight per batch → (mixed x, soft targets B×n_classes, the mixing).
    ``groups``: sizes of consecutive row groups whose rows are paired only within their group (None: one group,
    the whole batch)."""
    lam = beta(alpha, (), x, generator).to(x.dtype)  # drawn in float32; float64 batches mix in float64
    perm = _pairing(x, groups, generator)
    onehot = torch.nn.functional.one_hot(y, n_classes).to(x.dtype if x.dtype == torch.float64 else torch.float32)
    return lam * x + (1 - lam) * x[perm], lam * onehot + (1 - lam) * onehot[perm], Mixing(perm, lam, y, x)


def _pairing(x: torch.Tensor, groups: tuple[int, ...] | None, generator: torch.Generator | None) -> torch.Tensor:
    """Each row's partner: a random permutation of the batch, or of each group of rows within itself."""
    if groups is None or len(groups) == 1:
        return torch.randperm(x.shape[0], device=x.device, generator=generator)
    if sum(groups) != x.shape[0] or min(groups) < 0:
        raise AssertionError(f"mixup: row groups {groups} do not partition a batch of {x.shape[0]}")
    starts = [sum(groups[:i]) for i in range(len(groups))]
    return torch.cat([start + torch.randperm(size, device=x.device, generator=generator)
                      for start, size in zip(starts, groups)])


def random_crop(x: torch.Tensor, padding: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Zero-pad by ``padding`` pixels and crop back to the original size at a random offset per item."""
    if padding <= 0:
        return x
    b, c, h, w = x.shape
    padded = torch.nn.functional.pad(x, (padding, padding, padding, padding))
    dy = torch.randint(0, 2 * padding + 1, (b,), device=x.device, generator=generator)
    dx = torch.randint(0, 2 * padding + 1, (b,), device=x.device, generator=generator)
    rows = (dy[:, None] + torch.arange(h, device=x.device)[None])[:, None, :, None].expand(b, c, h, w + 2 * padding)
    cropped = torch.gather(padded, 2, rows)
    cols = (dx[:, None] + torch.arange(w, device=x.device)[None])[:, None, None, :].expand(b, c, h, w)
    return torch.gather(cropped, 3, cols)


def random_hflip(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Flip each item left-right with probability 1/2."""
    flip = _rand(x.shape[0], x, generator) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


def augment_batch(x: torch.Tensor, y: torch.Tensor, cfg: AugmentConfig, n_classes: int,
                  generator: torch.Generator | None = None,
                  groups: tuple[int, ...] | None = None) -> tuple[torch.Tensor, torch.Tensor, Mixing | None]:
    """Apply the configured augmentations; returns (x, y, mixing): under mixup y becomes soft targets and
    ``mixing`` says how the rows were paired (else None); ``groups``: see :func:`mixup`."""
    x = time_roll(x, cfg.roll, generator) if cfg.roll > 0 else x
    x = freq_mixstyle(x, cfg.mixstyle_p, cfg.mixstyle_alpha, generator=generator)
    x = spec_mask(x, cfg.freq_mask, axis=2, generator=generator)
    x = spec_mask(x, cfg.time_mask, axis=3, generator=generator)
    x = random_crop(x, cfg.crop_padding, generator)
    x = random_hflip(x, generator) if cfg.hflip else x
    if cfg.mixup_alpha > 0:
        return mixup(x, y, n_classes, cfg.mixup_alpha, generator, groups)
    return x, y, None

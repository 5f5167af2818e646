"""Batch-level augmentations on the training device (B×C×H×W tensors; audio: H = mel bins, W = frames).

Each function draws from torch's global RNG on the batch's device, so runs are reproducible from the seed and
resumable from the saved RNG state. Mixup returns soft targets (B×classes).
"""
from __future__ import annotations

import torch
import torchaudio.functional as AF

from audio_mrkd.experiment import AugmentConfig


def time_roll(x: torch.Tensor, max_fraction: float) -> torch.Tensor:
    """Circularly shift each item along time by up to ``max_fraction`` of the frames (either direction)."""
    frames = x.shape[-1]
    limit = int(frames * max_fraction)
    if limit == 0:
        return x
    shift = torch.randint(-limit, limit + 1, (x.shape[0], 1), device=x.device)
    index = (torch.arange(frames, device=x.device)[None] - shift) % frames
    return torch.gather(x, -1, index[:, None, None, :].expand_as(x))


def spec_mask(x: torch.Tensor, max_width: int, axis: int) -> torch.Tensor:
    """SpecAugment-style mask (one band per item, width uniform in [0, max_width)); axis 2 = freq, 3 = time."""
    if max_width <= 0:
        return x
    return AF.mask_along_axis_iid(x, max_width, 0.0, axis)


def freq_mixstyle(x: torch.Tensor, p: float, alpha: float, eps: float = 1e-6) -> torch.Tensor:
    """Freq-MixStyle (DCASE'24 baseline idea): with probability ``p`` per batch, mix each item's per-frequency
    mean/std (over channels and time) with those of another item, weights ~ Beta(alpha, alpha)."""
    if p <= 0 or torch.rand(()) > p:
        return x
    mu = x.mean(dim=(1, 3), keepdim=True)
    sig = (x.var(dim=(1, 3), keepdim=True) + eps).sqrt()
    normed = (x - mu) / sig
    conc = torch.full((x.shape[0], 1, 1, 1), float(alpha), device=x.device)
    lam = torch.distributions.Beta(conc, conc).sample()  # drawn on x's device: no host-to-device copy per batch
    perm = torch.randperm(x.shape[0], device=x.device)
    mu_mix = lam * mu + (1 - lam) * mu[perm]
    sig_mix = lam * sig + (1 - lam) * sig[perm]
    return normed * sig_mix + mu_mix


def mixup(x: torch.Tensor, y: torch.Tensor, n_classes: int, alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Mixup with one Beta(alpha, alpha) weight per batch → (mixed x, soft targets B×n_classes)."""
    lam = float(torch.distributions.Beta(alpha, alpha).sample())
    perm = torch.randperm(x.shape[0], device=x.device)
    onehot = torch.nn.functional.one_hot(y, n_classes).float()
    return lam * x + (1 - lam) * x[perm], lam * onehot + (1 - lam) * onehot[perm]


def random_crop(x: torch.Tensor, padding: int) -> torch.Tensor:
    """Zero-pad by ``padding`` pixels and crop back to the original size at a random offset per item."""
    if padding <= 0:
        return x
    b, c, h, w = x.shape
    padded = torch.nn.functional.pad(x, (padding, padding, padding, padding))
    dy = torch.randint(0, 2 * padding + 1, (b,), device=x.device)
    dx = torch.randint(0, 2 * padding + 1, (b,), device=x.device)
    rows = (dy[:, None] + torch.arange(h, device=x.device)[None])[:, None, :, None].expand(b, c, h, w + 2 * padding)
    cropped = torch.gather(padded, 2, rows)
    cols = (dx[:, None] + torch.arange(w, device=x.device)[None])[:, None, None, :].expand(b, c, h, w)
    return torch.gather(cropped, 3, cols)


def random_hflip(x: torch.Tensor) -> torch.Tensor:
    """Flip each item left-right with probability 1/2."""
    flip = torch.rand(x.shape[0], device=x.device) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


def augment_batch(x: torch.Tensor, y: torch.Tensor, cfg: AugmentConfig,
                  n_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply the configured augmentations; returns (x, y) where y may become soft targets (mixup)."""
    x = time_roll(x, cfg.roll) if cfg.roll > 0 else x
    x = freq_mixstyle(x, cfg.mixstyle_p, cfg.mixstyle_alpha)
    x = spec_mask(x, cfg.freq_mask, axis=2)
    x = spec_mask(x, cfg.time_mask, axis=3)
    x = random_crop(x, cfg.crop_padding)
    x = random_hflip(x) if cfg.hflip else x
    if cfg.mixup_alpha > 0:
        x, y = mixup(x, y, n_classes, cfg.mixup_alpha)
    return x, y

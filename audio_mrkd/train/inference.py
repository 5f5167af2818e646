"""A trained network's logits on a split, on the CPU: how the commands on a finished run (evaluate, finetune's routed
evaluation, teacher-logits) score it. The engine scores its own model on its training device instead."""
from __future__ import annotations

import torch

from audio_mrkd.data.splits import BatchLoader, FeatureSplit
from audio_mrkd.progress import progress


def run_logits(model: torch.nn.Module, split: FeatureSplit, bar_desc: str | None = None) -> torch.Tensor:
    """A run's network on every item of ``split`` (normalised as the split says), on the CPU → N×C float32."""
    loader = BatchLoader(split, 256, "cpu", normalize=split.norm_mean is not None)
    batches = progress(loader, desc=bar_desc, unit="batch") if bar_desc else loader
    with torch.inference_mode():
        return torch.cat([model(b.x).float() for b in batches])

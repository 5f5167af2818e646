"""The optimiser and the learning-rate schedule of a run, both built from ``train.*`` with torch's own classes."""
from __future__ import annotations

import torch
from torch.optim import lr_scheduler

from audio_mrkd.config_schema import TrainConfig


def make_optimizer(params, tcfg: TrainConfig, fused: bool | None = None) -> torch.optim.Optimizer:
    """SGD (momentum, optional Nesterov) or AdamW, with weight decay; ``fused`` kernels where the runtime allows."""
    if tcfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=tcfg.lr, momentum=tcfg.momentum, nesterov=tcfg.nesterov,
                               weight_decay=tcfg.weight_decay, fused=fused)
    return torch.optim.AdamW(params, lr=tcfg.lr, weight_decay=tcfg.weight_decay, fused=fused)


def use_device_lr(optimizer: torch.optim.Optimizer, device: torch.device) -> None:
    """Learning rates as device tensors (the schedulers then update them in place) and capturable optimiser steps:
    what a CUDA graph of the whole step needs to replay with a changing learning rate."""
    for group in optimizer.param_groups:
        group["lr"] = torch.tensor(float(group["lr"]), device=device)
        if "capturable" in group:
            group["capturable"] = True


def make_lr_scheduler(optimizer: torch.optim.Optimizer, tcfg: TrainConfig,
                      steps_per_epoch: int) -> lr_scheduler.LRScheduler:
    """A per-step schedule: linear warm-up over ``train.warmup_steps`` or ``train.warmup_epochs`` (the first step at
    1/warm-up of the peak),
    then cosine to zero at the end of the run, ×``gamma`` at each milestone, or constant. Milestones are epochs, or
    with ``train.milestone_unit: percent`` percentages of the run's steps (rounded down to a step), so that a step
    decay keeps its shape when ``train.epochs`` changes."""
    total = tcfg.epochs * steps_per_epoch
    warmup = tcfg.warmup_steps or int(tcfg.warmup_epochs * steps_per_epoch)
    if tcfg.schedule == "cosine":
        main = lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, total - warmup))
    elif tcfg.schedule == "multistep":
        steps = [m * total // 100 if tcfg.milestone_unit == "percent" else m * steps_per_epoch
                 for m in tcfg.milestones]
        main = lr_scheduler.MultiStepLR(optimizer, milestones=[max(0, s - warmup) for s in steps], gamma=tcfg.gamma)
    else:
        main = lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)
    if warmup <= 0:
        return main
    ramp = lr_scheduler.LinearLR(optimizer, start_factor=1.0 / warmup, end_factor=1.0,
                                 total_iters=max(1, warmup - 1))
    return lr_scheduler.SequentialLR(optimizer, [ramp, main], milestones=[warmup])

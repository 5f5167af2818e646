"""Which items a run trains and evaluates on: a train and an evaluated :class:`FeatureSplit` from the dataset kind
``data.kind`` names (:mod:`audio_mrkd.data.datasets`), limited to ``data.train_devices`` and ``data.train_limit``."""
from __future__ import annotations

import numpy as np

from audio_mrkd.config_schema import DataConfig
from audio_mrkd.data.datasets import DataBundle, dataset
from audio_mrkd.data.splits import FeatureSplit, stratified_holdout
from audio_mrkd.errors import InputError

__all__ = ["DataBundle", "evaluated_name", "load_data", "only_devices"]


def load_data(cfg: DataConfig) -> DataBundle:
    """The train and evaluated splits named by ``cfg`` (train limited to ``cfg.train_limit`` items if set)."""
    bundle = dataset(cfg.kind).load(cfg)
    if cfg.train_devices:
        bundle.train = only_devices(bundle.train, cfg.train_devices)
    if 0 < cfg.train_limit < len(bundle.train):
        bundle.train = bundle.train.subset(stratified_holdout(bundle.train.labels, cfg.train_limit, seed=1))
    return bundle


def only_devices(split: FeatureSplit, devices: list[str]) -> FeatureSplit:
    """The items of ``split`` recorded with one of ``devices`` (one line if a device has none)."""
    names = np.asarray(split.device_names)[split.recording_devices]
    for device in devices:
        if device not in split.device_names or not (names == device).any():
            raise InputError(f"data.train_devices: no train clip of device {device!r} "
                             f"(the split has {', '.join(split.device_names)})")
    return split.subset(np.flatnonzero(np.isin(names, devices)))


def evaluated_name(dcfg: DataConfig) -> str:
    """What a run evaluates on, in words: a split, or a cross-validation fold."""
    if dcfg.cv_folds:
        return f"fold {dcfg.cv_fold} of {dcfg.cv_folds} (pool {dcfg.cv_pool})"
    return dcfg.eval_split

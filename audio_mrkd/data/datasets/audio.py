"""``data.kind: audio``: a dataset prepared by ``audio-mrkd prepare`` (DCASE layout, feature cache).

``data.cv_folds > 0`` pools its train split (``cv_pool: all`` adds the evaluated split) and holds out one
recording-grouped fold (``identifier``: a location, kit or recording never sits in both parts).
"""
from __future__ import annotations

import numpy as np

from audio_mrkd.data.datasets.base import DataBundle, DatasetKind
from audio_mrkd.data.dcase import DEVICE_GROUPS
from audio_mrkd.data.splits import FeatureSplit, concat_splits, load_split


def with_train_stats(split: FeatureSplit, axis: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Mean/std of ``split`` over ``axis`` (kept as size-1 dims), computed in float64."""
    data = np.asarray(split.features, dtype=np.float64)
    mean = data.mean(axis=axis, keepdims=True)[0]
    std = np.maximum(data.std(axis=axis, keepdims=True)[0], 1e-5)
    return mean.astype(np.float32), std.astype(np.float32)


def cv_split(pool: FeatureSplit, folds: int, fold: int) -> tuple[FeatureSplit, FeatureSplit]:
    """Recording-grouped, class-stratified fold ``fold`` of ``folds`` (fixed assignment, independent of seed)."""
    from sklearn.model_selection import StratifiedGroupKFold  # here: the config schema imports this registry
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=0)
    groups = pool.items["identifier"].astype(str).to_numpy()
    train_idx, eval_idx = list(splitter.split(np.zeros(len(pool)), pool.labels, groups))[fold]
    train, held = pool.subset(train_idx), pool.subset(eval_idx)
    mean, std = with_train_stats(train, axis=(0, 1, 3))  # per mel bin, as prepare computes it
    for part in (train, held):
        part.norm_mean, part.norm_std = mean[None], std[None]
    return train, held


class PreparedAudio(DatasetKind):
    family = "audio"
    source_key = "name"
    frontend = True
    recording_devices = True
    device_groups = DEVICE_GROUPS

    def load(self, cfg) -> DataBundle:
        train, held = self.split(cfg, cfg.train_split), self.split(cfg, cfg.eval_split)
        if cfg.cv_folds:
            pool = concat_splits(train, held) if cfg.cv_pool == "all" else train
            train, held = cv_split(pool, cfg.cv_folds, cfg.cv_fold)
        return DataBundle(train, held, self.family, self.device_groups, train.info.get("features"))

    def split(self, cfg, name: str) -> FeatureSplit:
        return load_split(cfg.name, name, cfg.manifest_dir)

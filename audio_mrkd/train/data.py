"""What the engine trains on: a train and an evaluated :class:`FeatureSplit` from any adapter.

Audio reads a prepared dataset; ``data.cv_folds > 0`` pools its train split (``cv_pool: all`` adds the evaluated
split) and holds out one recording-grouped fold (``identifier``: a location, kit or recording never sits in both parts); images come from
the image adapters; ``synthetic`` makes separable random features for tests and benchmarks.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

from audio_mrkd.data.dataset import FeatureSplit, load_split, stratified_holdout
from audio_mrkd.data.dcase import DEVICE_GROUPS
from audio_mrkd.errors import InputError
from audio_mrkd.experiment import DataConfig


@dataclass
class DataBundle:
    train: FeatureSplit
    eval: FeatureSplit
    kind: str                      # "audio" | "image" | "synthetic"
    device_groups: dict[str, str]  # device name → reporting group (audio)
    frontend: dict | None = None   # the front-end config the features came from (audio)
    test: FeatureSplit | None = None   # images with data.final_test: the official test split, scored once at the end

    @property
    def class_names(self) -> list[str]:
        return self.train.class_names


def concat_splits(a: FeatureSplit, b: FeatureSplit) -> FeatureSplit:
    """Two splits of the same dataset as one (items in order a, then b)."""
    return FeatureSplit(np.concatenate([np.asarray(a.features), np.asarray(b.features)]),
                        np.concatenate([a.labels, b.labels]), a.class_names,
                        np.concatenate([a.recording_devices, b.recording_devices]), a.device_names,
                        np.concatenate([a.rows, b.rows]), pd.concat([a.items, b.items], ignore_index=True),
                        a.norm_mean, a.norm_std, a.info)


def with_train_stats(split: FeatureSplit, axis: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Mean/std of ``split`` over ``axis`` (kept as size-1 dims), computed in float64."""
    data = np.asarray(split.features, dtype=np.float64)
    mean = data.mean(axis=axis, keepdims=True)[0]
    std = np.maximum(data.std(axis=axis, keepdims=True)[0], 1e-5)
    return mean.astype(np.float32), std.astype(np.float32)


def cv_split(pool: FeatureSplit, folds: int, fold: int) -> tuple[FeatureSplit, FeatureSplit]:
    """Recording-grouped, class-stratified fold ``fold`` of ``folds`` (fixed assignment, independent of seed)."""
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=0)
    groups = pool.items["identifier"].astype(str).to_numpy()
    train_idx, eval_idx = list(splitter.split(np.zeros(len(pool)), pool.labels, groups))[fold]
    train, held = pool.subset(train_idx), pool.subset(eval_idx)
    mean, std = with_train_stats(train, axis=(0, 1, 3))  # per mel bin, as prepare computes it
    for part in (train, held):
        part.norm_mean, part.norm_std = mean[None], std[None]
    return train, held


def synthetic_splits(cfg: DataConfig, seed: int = 1234, shape=(1, 32, 16), n_classes: int = 4):
    """Separable Gaussian blobs: each class lifts a different band of rows (deterministic)."""
    rng = np.random.default_rng(seed)

    def make(n: int) -> FeatureSplit:
        labels = np.arange(n) % n_classes
        x = rng.normal(0, 1, size=(n, *shape)).astype(np.float16)
        band = shape[1] // n_classes
        for c in range(n_classes):
            x[labels == c, :, c * band:(c + 1) * band] += 1.5
        recording_devices = np.arange(n) % 2
        items = pd.DataFrame({"filename": [f"synthetic/{i}.wav" for i in range(n)],
                              "scene_label": [f"c{c}" for c in labels], "identifier": [f"g{i % 8}" for i in range(n)],
                              "source_label": np.where(recording_devices == 0, "a", "s1"), "device_group": "n/a"})
        return FeatureSplit(x, labels.astype(np.int64), [f"c{c}" for c in range(n_classes)],
                            recording_devices.astype(np.int64), ["a", "s1"], np.arange(n), items)

    return make(cfg.synthetic_items), make(max(cfg.synthetic_items // 2, n_classes))


def load_data(cfg: DataConfig) -> DataBundle:
    """The train and evaluated splits named by ``cfg`` (train limited to ``cfg.train_limit`` items if set)."""
    bundle = _load(cfg)
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


def run_bundle(info: dict, cfg) -> DataBundle:
    """The train and evaluated data a finished run used — its config's data section (splits, CV fold and pool,
    hold-out, subset) — with the run's own normalisation statistics (data.json). Used by evaluate and export."""
    bundle = load_data(cfg.data)
    if list(bundle.class_names) != list(info["class_names"]):
        raise InputError(f"data.json: the run's classes {info['class_names']} differ from those of its dataset now "
                         f"({bundle.class_names}); was it prepared again?")
    for part in (bundle.train, bundle.eval):
        with_run_norm(part, info)
    return bundle


def with_run_norm(split: FeatureSplit, info: dict) -> FeatureSplit:
    """``split`` normalised with a run's own train statistics (its data.json), not the manifest's."""
    if info.get("norm_mean") is not None:
        split.norm_mean = np.asarray(info["norm_mean"], dtype=np.float32)
        split.norm_std = np.asarray(info["norm_std"], dtype=np.float32)
    return split


def evaluated_name(dcfg: DataConfig) -> str:
    """What a run evaluates on, in words: a split, or a cross-validation fold."""
    if dcfg.cv_folds:
        return f"fold {dcfg.cv_fold} of {dcfg.cv_folds} (pool {dcfg.cv_pool})"
    return dcfg.eval_split


def _load(cfg: DataConfig) -> DataBundle:
    if cfg.kind == "audio":
        train = load_split(cfg.name, cfg.train_split, cfg.manifest_dir)
        held = load_split(cfg.name, cfg.eval_split, cfg.manifest_dir)
        if cfg.cv_folds:
            pool = concat_splits(train, held) if cfg.cv_pool == "all" else train
            train, held = cv_split(pool, cfg.cv_folds, cfg.cv_fold)
        return DataBundle(train, held, "audio", DEVICE_GROUPS, train.info.get("features"))
    if cfg.kind == "synthetic":
        train, held = synthetic_splits(cfg)
        return DataBundle(train, held, "synthetic", {"a": "real", "s1": "seen_sim"})
    from audio_mrkd.data.images import load_image_splits
    # the held-back selection split is the same for every seed, so runs stay paired
    splits = load_image_splits(cfg.kind, cfg.root, holdout=cfg.holdout, seed=0, coarse_labels=cfg.coarse_labels)
    if cfg.eval_split not in ("evaluate", "test"):
        raise InputError(f"data.eval_split: {cfg.eval_split!r} is not an evaluated split of {cfg.kind} "
                         f"(evaluate: the held-back items, or the official test split without data.holdout; test: "
                         f"the official test split)")
    # eval_split=test with a holdout: trained exactly as the selection runs, scored once on the official test split
    return DataBundle(splits["train"], splits[cfg.eval_split], "image", {},
                      test=splits["test"] if cfg.final_test else None)

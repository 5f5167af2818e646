"""``data.kind: synthetic``: separable random features for tests and benchmarks (no files)."""
from __future__ import annotations

import numpy as np
import pandas as pd

from audio_mrkd.data.datasets.base import DataBundle, DatasetKind
from audio_mrkd.data.splits import FeatureSplit, concat_splits
from audio_mrkd.errors import InputError


def synthetic_splits(cfg, seed: int = 1234, shape=(1, 32, 16), n_classes: int = 4):
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


class Synthetic(DatasetKind):
    family = "synthetic"
    device_groups = {"a": "real", "s1": "seen_sim"}  # two made-up devices, so the device metrics have groups

    def load(self, cfg) -> DataBundle:
        train, held = synthetic_splits(cfg)
        return DataBundle(train, held, self.family, self.device_groups)

    def split(self, cfg, name: str) -> FeatureSplit:
        train, held = synthetic_splits(cfg)
        splits = {"train": train, "evaluate": held, "all": concat_splits(train, held)}
        if name not in splits:
            raise InputError(f"split {name!r}: not one of {', '.join(splits)}")
        return splits[name]

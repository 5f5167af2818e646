"""The image kinds (CIFAR-10, CIFAR-100, CINIC-10, Fashion-MNIST): one class, one instance per kind, each given its
reader from :mod:`audio_mrkd.data.image_readers` in its registry line (adding an image dataset: a reader + a line).

Splits: ``train``; ``evaluate`` (``data.holdout`` train items held back, or else the official test split — CINIC-10:
its ``valid`` split); ``test`` (the official test split); ``all`` (train, held-back and test items).
"""
from __future__ import annotations

import functools

from audio_mrkd.data.datasets.base import DataBundle, DatasetKind
from audio_mrkd.data.image_readers import Reader, load_image_splits
from audio_mrkd.data.splits import FeatureSplit, concat_splits
from audio_mrkd.errors import InputError


class ImageKind(DatasetKind):
    family = "image"
    source_key = "root"
    official_test = True

    def __init__(self, kind: str, read: Reader, evaluated: str = "test", coarse_labels: bool = False) -> None:
        self.kind, self.read = kind, read  # its name, and the reader of its on-disk format
        self.evaluated = evaluated  # the official split evaluated without a hold-out (CINIC-10: its validation split)
        self.coarse_labels = coarse_labels  # it has coarse labels too (CIFAR-100's superclasses)

    def read_splits(self, root, coarse_labels: bool = False, **options) -> dict[str, FeatureSplit]:
        """The train / evaluate / test splits of the dataset in ``root`` (``options``: holdout, seed, cache_dir, log
        of :func:`~audio_mrkd.data.image_readers.load_image_splits`)."""
        if coarse_labels and not self.coarse_labels:
            raise InputError(f"data.coarse_labels: only cifar100 has coarse labels, not {self.kind}")
        return load_image_splits(self.kind, self.read, root, coarse_labels=coarse_labels, evaluated=self.evaluated,
                                 **options)

    def splits(self, cfg) -> dict[str, FeatureSplit]:
        # the held-back selection split is the same for every seed, so runs stay paired
        return self.read_splits(cfg.root, holdout=cfg.holdout, seed=0, coarse_labels=cfg.coarse_labels)

    def load(self, cfg) -> DataBundle:
        splits = self.splits(cfg)
        if cfg.eval_split not in ("evaluate", "test"):
            raise InputError(f"data.eval_split: {cfg.eval_split!r} is not an evaluated split of {cfg.kind} "
                             f"(evaluate: the held-back items, or the official test split without data.holdout; "
                             f"test: the official test split)")
        # eval_split=test with a holdout: trained exactly as the selection runs, scored once on the official test split
        return DataBundle(splits["train"], splits[cfg.eval_split], self.family, self.device_groups,
                          test=splits["test"] if cfg.final_test else None)

    def split(self, cfg, name: str) -> FeatureSplit:
        splits = self.splits(cfg)
        if name not in (*splits, "all"):
            raise InputError(f"split {name!r}: not one of {', '.join([*splits, 'all'])}")
        if name == "all":  # without a hold-out, "evaluate" is the test split itself
            parts = ["train", "evaluate", "test"] if cfg.holdout else ["train", "test"]
            return functools.reduce(concat_splits, [splits[part] for part in parts])
        return splits[name]

    def final_test_is_evaluated(self, cfg) -> bool:
        return cfg.eval_split == "test" or (not cfg.holdout and self.evaluated == "test")

"""A run's data description (its ``data.json``) as a typed record: where the data came from, its classes and input
shape, the run's normalisation statistics, and which fields make two runs "the same dataset" or "scored on the
same split".

It sits low in the layers so that ``distill/`` and ``methods/`` can type against it; reading and writing a run
folder is :class:`audio_mrkd.runs.run.Run`'s job alone.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

#: The fields that make two runs' items the same dataset: same source, class order and input shape.
SAME_DATASET = ("kind", "name", "class_names", "input_shape")
#: The fields that decide which items a run is scored on (and so chooses its best epoch on).
SAME_SPLIT = ("kind", "name", "root", "train_split", "eval_split", "cv_folds", "cv_fold", "cv_pool", "holdout")


@dataclass
class DataInfo:
    """The content of ``data.json``, field for field in the file's order (a field an older file lacks is None)."""

    kind: str | None = None                  # "audio" | "image" | "synthetic" (the dataset's family)
    name: str | None = None                  # data.name (a prepared audio dataset)
    root: str | None = None                  # data.root (an image dataset folder)
    manifest_dir: str | None = None
    train_split: str | None = None
    eval_split: str | None = None
    class_names: list[str] | None = None
    device_names: list[str] | None = None
    input_shape: list[int] | None = None     # one item, C×H×W
    norm_mean: list | None = None            # the run's train statistics (None: not normalised)
    norm_std: list | None = None
    features: dict | None = None             # the audio front-end's configuration
    n_train: int | None = None
    n_eval: int | None = None
    cv_folds: int | None = None
    cv_fold: int | None = None
    cv_pool: str | None = None
    holdout: int | None = None
    train_limit: int | None = None

    @classmethod
    def of(cls, dcfg, data) -> "DataInfo":
        """The description of ``data`` (a DataBundle) loaded as ``dcfg`` (a DataConfig) says."""
        split = data.train

        def stat(values):
            return None if not dcfg.normalize or values is None else np.asarray(values).tolist()

        return cls(kind=data.kind, name=dcfg.name, root=dcfg.root, manifest_dir=dcfg.manifest_dir,
                   train_split=dcfg.train_split, eval_split=dcfg.eval_split, class_names=split.class_names,
                   device_names=split.device_names, input_shape=list(split.item_shape),
                   norm_mean=stat(split.norm_mean), norm_std=stat(split.norm_std), features=data.frontend,
                   n_train=len(split), n_eval=len(data.eval), cv_folds=dcfg.cv_folds, cv_fold=dcfg.cv_fold,
                   cv_pool=dcfg.cv_pool, holdout=dcfg.holdout, train_limit=dcfg.train_limit)

    def to_json(self) -> dict:
        """The ``data.json`` content (keys in the file's order)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def from_json(cls, content: dict) -> "DataInfo":
        """The record of a ``data.json`` content; keys this version does not know are ignored."""
        return cls(**{f.name: content.get(f.name) for f in dataclasses.fields(cls)})

    @property
    def normalized(self) -> bool:
        return self.norm_mean is not None

    def norm_arrays(self) -> tuple[np.ndarray, np.ndarray] | None:
        """(mean, std) as float32 arrays, or None when the run did not normalise."""
        if self.norm_mean is None:
            return None
        return np.asarray(self.norm_mean, dtype=np.float32), np.asarray(self.norm_std, dtype=np.float32)

    def dataset_difference(self, other: "DataInfo") -> str | None:
        """The first :data:`SAME_DATASET` field on which the two runs differ, or None (the same dataset)."""
        return next((key for key in SAME_DATASET if getattr(self, key) != getattr(other, key)), None)

    def scored_on_the_same_split(self, other: "DataInfo") -> bool:
        """True when both runs were evaluated — and chose their ``best`` epoch — on the same items."""
        return all(getattr(self, key) == getattr(other, key) for key in SAME_SPLIT)

"""The dataset API the training engine uses, the same for audio and images.

A :class:`FeatureSplit` holds one split as arrays (features N×C×H×W, labels, recording devices, cache rows).
Items come out as ``(features, label, recording_device, row)``; whole batches come from :class:`BatchLoader`, which
can keep the split resident in RAM or on the GPU and gathers batches by index (no DataLoader workers, no per-item
Python). In this module ``torch_device`` is where tensors live; ``recording_device(s)`` is the DCASE recording device.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
import torch

from audio_mrkd.data import cache
from audio_mrkd.errors import InputError
from audio_mrkd.paths import MANIFEST_DIR


@dataclass
class FeatureSplit:
    """One split: ``features`` N×C×H×W (float16 log-mels or uint8 images), labels and per-item metadata."""

    features: np.ndarray
    labels: np.ndarray                      # int64 class index
    class_names: list[str]
    recording_devices: np.ndarray           # int64 index into device_names (DCASE recording device)
    device_names: list[str]
    rows: np.ndarray                        # row in the source array (cache row / image index)
    items: pd.DataFrame                     # per-item metadata (filename, identifier, device_group, …)
    norm_mean: np.ndarray | None = None     # broadcastable to one item (C×H×W), from the train split
    norm_std: np.ndarray | None = None
    info: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, int, int]:
        x = torch.from_numpy(np.asarray(self.features[i], dtype=np.float32))
        return x, int(self.labels[i]), int(self.recording_devices[i]), int(self.rows[i])

    @property
    def item_shape(self) -> tuple[int, ...]:
        return tuple(self.features.shape[1:])

    def subset(self, positions: np.ndarray) -> "FeatureSplit":
        """A new split holding only ``positions`` (used by k-fold cross-validation)."""
        positions = np.asarray(positions)
        return FeatureSplit(self.features[positions], self.labels[positions], self.class_names,
                            self.recording_devices[positions], self.device_names, self.rows[positions],
                            self.items.iloc[positions].reset_index(drop=True), self.norm_mean, self.norm_std,
                            self.info)


def concat_splits(a: FeatureSplit, b: FeatureSplit) -> FeatureSplit:
    """Two splits of the same dataset as one (items in order a, then b)."""
    return FeatureSplit(np.concatenate([np.asarray(a.features), np.asarray(b.features)]),
                        np.concatenate([a.labels, b.labels]), a.class_names,
                        np.concatenate([a.recording_devices, b.recording_devices]), a.device_names,
                        np.concatenate([a.rows, b.rows]), pd.concat([a.items, b.items], ignore_index=True),
                        a.norm_mean, a.norm_std, a.info)


def stratified_holdout(labels: np.ndarray, holdout: int, seed: int) -> np.ndarray:
    """Sorted positions of ``holdout`` items drawn per class in proportion to the class sizes (largest
    remainder), at random within each class with ``numpy.random.default_rng(seed)``."""
    labels = np.asarray(labels)
    classes, counts = np.unique(labels, return_counts=True)
    quota = holdout * counts / counts.sum()
    take = np.floor(quota).astype(np.int64)
    short = holdout - int(take.sum())
    if short:
        order = np.lexsort((classes, -(quota - take)))  # largest remainder first, ties by class index
        take[order[:short]] += 1
    rng = np.random.default_rng(seed)
    picked = [rng.permutation(np.flatnonzero(labels == c))[:k] for c, k in zip(classes, take)]
    return np.sort(np.concatenate(picked)) if picked else np.zeros(0, dtype=np.int64)


def read_manifest_info(name: str, manifest_dir: str | Path = MANIFEST_DIR) -> dict:
    path = Path(manifest_dir) / name / "features.json"
    if not path.is_file():
        raise InputError(f"data.name '{name}': {path} not found; run `audio-mrkd prepare --name {name}` first")
    return json.loads(path.read_text())


def load_split(name: str, split: str, manifest_dir: str | Path = MANIFEST_DIR,
               in_memory: bool = True) -> FeatureSplit:
    """Load split ``split`` (train | evaluate | test | all) of a prepared audio dataset from its cache."""
    info = read_manifest_info(name, manifest_dir)
    manifest = Path(manifest_dir) / name / f"{split}.csv"
    if not manifest.is_file():
        raise InputError(f"data.name '{name}': split '{split}' not found ({manifest})")
    items = pd.read_csv(manifest, dtype={"source_label": str, "identifier": str})
    array = cache.open_features(Path(info["cache_entry"]))
    rows = items["row"].to_numpy(np.int64)
    if len(rows) and rows.max() >= len(array):
        raise InputError(f"{manifest}: row {rows.max()} beyond the cache's {len(array)} rows; prepare again")
    features = _LazyRows(array, rows)
    if in_memory:
        features = features[np.arange(len(rows))]
    class_index = {c: i for i, c in enumerate(info["class_names"])}
    recording_device_index = {d: i for i, d in enumerate(info["device_names"])}
    mean = np.asarray(info["train_mean"], dtype=np.float32)[None, :, None]
    std = np.asarray(info["train_std"], dtype=np.float32)[None, :, None]
    return FeatureSplit(
        features=features, labels=items["scene_label"].map(class_index).to_numpy(np.int64),
        class_names=list(info["class_names"]),
        recording_devices=items["source_label"].map(recording_device_index).to_numpy(np.int64),
        device_names=list(info["device_names"]), rows=rows, items=items, norm_mean=mean,
        norm_std=np.maximum(std, 1e-5), info=info)


class _LazyRows:
    """Memory-mapped view of selected cache rows with an added channel axis (for sets larger than RAM)."""

    def __init__(self, array: np.ndarray, rows: np.ndarray):
        self.array, self.rows = array, rows
        self.shape = (len(rows), 1, *array.shape[1:])
        self.dtype = array.dtype

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index):
        picked = self.rows[index]
        if np.ndim(picked) == 0:
            return np.asarray(self.array[picked])[None]
        order = np.argsort(picked)
        out = np.empty((len(picked), *self.array.shape[1:]), dtype=self.array.dtype)
        out[order] = self.array[picked[order]]
        return out[:, None]


@dataclass
class Batch:
    x: torch.Tensor                  # float32 B×C×H×W on the loader's torch device (normalised if asked)
    y: torch.Tensor                  # int64 labels
    recording_device: torch.Tensor   # int64 recording-device index (into the split's device_names)
    index: torch.Tensor              # int64 position in the split (for cached teacher logits and predictions)


class BatchLoader:
    """Batches of a :class:`FeatureSplit` on ``torch_device``, gathered by index.

    With ``world_size > 1`` every process draws the same global order and takes its share (``rank::world_size``)
    of each global batch of ``batch_size`` items, so N processes see exactly the batches one process would.

    ``resident=True`` copies the whole split to ``torch_device`` once (float16/uint8, as stored) and gathers batches
    there; otherwise each batch is read from the (memory-mapped) array and copied. Shuffling uses its own
    ``torch.Generator`` so runs are reproducible and resumable (``state_dict``).
    """

    def __init__(self, split: FeatureSplit, batch_size: int, torch_device: torch.device | str = "cpu",
                 shuffle: bool = False, drop_last: bool = False, seed: int = 0, resident: bool = True,
                 normalize: bool = True, rank: int = 0, world_size: int = 1, dtype: torch.dtype = torch.float32):
        if batch_size % world_size:
            raise InputError(f"train.batch_size: {batch_size} is not divisible by the {world_size} processes")
        self.split, self.batch_size, self.dtype = split, batch_size, dtype
        self.rank, self.world_size = rank, world_size
        self.torch_device = torch.device(torch_device)
        self.shuffle, self.drop_last = shuffle, drop_last
        self.generator = torch.Generator().manual_seed(seed)
        self.epoch_start: torch.Tensor | None = None  # the generator's state before this epoch's permutation
        self.position = 0  # batches handed out in the current epoch (0 between epochs)
        self.resident = resident
        self.features = (torch.from_numpy(np.ascontiguousarray(split.features)).to(self.torch_device) if resident
                         else None)
        self.labels = torch.from_numpy(np.array(split.labels)).to(self.torch_device)
        self.recording_devices = torch.from_numpy(np.array(split.recording_devices)).to(self.torch_device)
        self.normalize = normalize and split.norm_mean is not None
        if self.normalize:
            self.mean = torch.as_tensor(split.norm_mean, device=self.torch_device)
            self.inv_std = 1.0 / torch.as_tensor(split.norm_std, device=self.torch_device)

    def __len__(self) -> int:
        n = len(self.split)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def features_at(self, index: torch.Tensor) -> torch.Tensor:
        """The (normalised) features of the items at ``index``, on the loader's torch device: normalised in float32,
        then in the loader's dtype (float64 for ``train.precision=64``)."""
        if self.resident:
            x = self.features[index.to(self.torch_device)]
        else:
            x = torch.from_numpy(np.asarray(self.split.features[index.cpu().numpy()])).to(self.torch_device,
                                                                                               non_blocking=True)
        x = x.float()
        if self.normalize:
            x = (x - self.mean) * self.inv_std
        return x if self.dtype == torch.float32 else x.to(self.dtype)

    def __iter__(self) -> Iterator[Batch]:
        n = len(self.split)
        skip, self.position = self.position, 0  # resumed inside an epoch: its first `skip` batches are done
        self.epoch_start = self.generator.get_state()
        order = torch.randperm(n, generator=self.generator) if self.shuffle else torch.arange(n)
        stop = n - n % self.batch_size if self.drop_last else n
        for number, start in enumerate(range(0, stop, self.batch_size)):
            if number < skip:
                continue
            index = order[start:start + self.batch_size][self.rank::self.world_size]
            placed = index.to(self.torch_device)
            self.position = number + 1
            yield Batch(self.features_at(index), self.labels[placed], self.recording_devices[placed], placed)
        self.position, self.epoch_start = 0, None

    def state_dict(self) -> dict:
        """Between epochs: the generator. Inside one: the generator as the epoch began and the batches done, so
        that a resumed loader replays the same order and continues with the next batch."""
        if self.position:
            return {"generator": self.epoch_start.clone(), "position": self.position}
        return {"generator": self.generator.get_state(), "position": 0}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        self.position = int(state.get("position", 0))

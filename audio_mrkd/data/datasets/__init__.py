"""Dataset registry: ``data.kind`` → a :class:`DatasetKind` (its loader, its splits, its properties).

Adding a dataset = one module (or one more instance of a class with parameters) + one line in :data:`DATASETS`;
``load_data``, evaluate, finetune and export ask the registry instead of branching on the kind.
"""
from __future__ import annotations

from audio_mrkd.data.datasets.audio import PreparedAudio
from audio_mrkd.data.datasets.base import DataBundle, DatasetKind
from audio_mrkd.data.datasets.images import ImageKind
from audio_mrkd.data.datasets.synthetic import Synthetic
from audio_mrkd.data.image_readers import read_cifar10, read_cifar100, read_cinic10, read_fashion_mnist
from audio_mrkd.errors import InputError

DATASETS: dict[str, DatasetKind] = {
    "audio": PreparedAudio(),                       # a dataset prepared by `audio-mrkd prepare` (DCASE layout)
    "cifar10": ImageKind("cifar10", read_cifar10),
    "cifar100": ImageKind("cifar100", read_cifar100, coarse_labels=True),
    "cinic10": ImageKind("cinic10", read_cinic10, evaluated="valid"),
    "fashion_mnist": ImageKind("fashion_mnist", read_fashion_mnist),
    "synthetic": Synthetic(),                       # random separable features (tests, benchmarks)
}


def dataset(kind: str) -> DatasetKind:
    """The registered dataset kind ``kind`` (one line naming the known ones otherwise)."""
    if kind not in DATASETS:
        raise InputError(f"data.kind: {kind!r} is not one of {', '.join(map(repr, DATASETS))}")
    return DATASETS[kind]


__all__ = ["DATASETS", "DataBundle", "DatasetKind", "dataset"]

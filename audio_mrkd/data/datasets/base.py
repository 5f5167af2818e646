"""What every dataset kind gives the engine: a :class:`DataBundle` (train and evaluated splits), any split by name,
and the properties the commands ask instead of branching on ``data.kind``."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from audio_mrkd.data.splits import FeatureSplit

if TYPE_CHECKING:
    from audio_mrkd.config_schema import DataConfig


@dataclass
class DataBundle:
    train: FeatureSplit
    eval: FeatureSplit
    kind: str                      # the dataset's family (DatasetKind.family): "audio" | "image" | "synthetic"
    device_groups: dict[str, str]  # device name → reporting group (audio)
    frontend: dict | None = None   # the front-end config the features came from (audio)
    test: FeatureSplit | None = None   # images with data.final_test: the official test split, scored once at the end

    @property
    def class_names(self) -> list[str]:
        return self.train.class_names


class DatasetKind:
    """One ``data.kind``: its loader, its splits and its properties (class attributes a kind overrides)."""

    #: What a run's data.json records as ``kind`` (shared by the four image kinds).
    family: ClassVar[str]
    #: The data key naming the dataset, required by the kind ("name": a prepared dataset, "root": a folder), or None.
    source_key: ClassVar[str | None] = None
    #: An official test split apart from the evaluated one (``data.final_test`` scores it once at the end).
    official_test: ClassVar[bool] = False
    #: Its items are log-mels of an audio front-end (``export``, ``package``: graphs that take them or waveforms).
    frontend: ClassVar[bool] = False
    #: Its items carry real recording devices (``finetune`` per device; ``evaluate`` reports device groups).
    recording_devices: ClassVar[bool] = False
    #: Device name → reporting group, for the metrics of training.
    device_groups: ClassVar[dict[str, str]] = {}

    def load(self, cfg: "DataConfig") -> DataBundle:
        """The train and evaluated splits ``cfg`` names (before ``data.train_devices`` and ``data.train_limit``)."""
        raise NotImplementedError

    def split(self, cfg: "DataConfig", name: str) -> FeatureSplit:
        """Split ``name`` of the dataset ``cfg`` names: train, evaluate, test or all (every item)."""
        raise NotImplementedError

    def final_test_is_evaluated(self, cfg: "DataConfig") -> bool:
        """With ``data.final_test``: True when the evaluated split already is the official test split."""
        return True

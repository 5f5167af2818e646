"""A configuration checked against the registries it picks from: the training methods (each with its own section)
and the datasets.

:mod:`audio_mrkd.experiment` defines the sections every run has and knows no method or dataset; this module hands
it the registries. Load experiment configs through here.
"""
from __future__ import annotations

from pathlib import Path

from audio_mrkd import experiment
from audio_mrkd.data.datasets import DATASETS
from audio_mrkd.experiment import ExperimentConfig
from audio_mrkd.methods import METHODS


def load_experiment(path: str | Path | None, overrides: list[str] | None = None) -> ExperimentConfig:
    """Experiment YAML (optional) + dotted overrides → validated :class:`ExperimentConfig`; a deprecated key is
    read with one line on stderr."""
    return experiment.load_experiment(path, overrides, METHODS, DATASETS)


def experiment_from_dict(data: dict, quiet: bool = False) -> ExperimentConfig:
    """A validated :class:`ExperimentConfig` from a mapping; ``quiet``: deprecated keys read without a line (a run
    folder written by an earlier release)."""
    return experiment.experiment_from_dict(data, METHODS, DATASETS, None if quiet else experiment.deprecation_line)

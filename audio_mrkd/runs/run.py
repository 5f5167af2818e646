"""A run folder, read and written in one place: :class:`Run` owns its resolved config (``config.yaml``), its data
description (``data.json`` as a :class:`~audio_mrkd.data.info.DataInfo`), its checkpoints (``checkpoints/last.pt``,
``checkpoints/best.pt``) and the models in them, its metrics (``metrics.json``), its predictions, its evaluations,
its fine-tuned device models (``finetuned/``), its data and splits normalised with its own statistics, and its
front-end (audio).

This is the one module that names a run's files (a test scans the package's string literals for them); the engine,
the post-run commands, the studies and the pictures ask :class:`Run`. ``distill/`` and ``methods/`` sit below this
module and are handed :class:`Run` as an opener (``TrainContext.open_run``).
"""
from __future__ import annotations

import json
import shutil
from datetime import datetime
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml

from audio_mrkd import config_io
from audio_mrkd import fileio
from audio_mrkd.config_loader import experiment_from_dict, run_config
from audio_mrkd.config_schema import ExperimentConfig
from audio_mrkd.data.datasets import DataBundle, DatasetKind, dataset
from audio_mrkd.data.frontend import FrontendConfig
from audio_mrkd.data.info import DataInfo
from audio_mrkd.data.selection import load_data
from audio_mrkd.data.splits import FeatureSplit
from audio_mrkd.errors import InputError
from audio_mrkd.models import build_model
from audio_mrkd.runs.checkpoint import load_model_weights, model_state
from audio_mrkd.versions import versions

CONFIG_FILE, DATA_FILE, METRICS_FILE, VERSIONS_FILE, SEED_FILE = \
    "config.yaml", "data.json", "metrics.json", "versions.json", "seed"
CHECKPOINT_DIR, CHECKPOINTS = "checkpoints", ("last", "best")
#: the predictions of a run, by what they are of: the evaluated split at the last epoch and at the best one, and the
#: official test split (``data.final_test``)
PREDICTIONS = {"last": "predictions.csv", "best": "predictions_best.csv", "test": "predictions_test.csv"}
FINETUNED_DIR = "finetuned"
#: every name above: what :class:`Run` alone may name (tests/test_run.py scans the package for them)
RUN_FILES = (CONFIG_FILE, DATA_FILE, METRICS_FILE, VERSIONS_FILE, CHECKPOINT_DIR, *PREDICTIONS.values(),
             FINETUNED_DIR, *(f"{which}.pt" for which in CHECKPOINTS))


def checkpoint_path(run_dir: str | Path, which: str = "last") -> Path:
    """The ``last`` or ``best`` checkpoint file of the run in ``run_dir`` (one line for any other name)."""
    if which not in CHECKPOINTS:
        raise InputError(f"checkpoint '{which}': expected one of {', '.join(CHECKPOINTS)}")
    return Path(run_dir) / CHECKPOINT_DIR / f"{which}.pt"


def init_weights(source: str | Path) -> Path:
    """``train.init_from``: a checkpoint file, or a run directory (its ``best`` checkpoint)."""
    source = Path(source)
    if source.is_dir():
        return checkpoint_path(source, "best")
    if not source.is_file():
        raise InputError(f"train.init_from: {source}: neither a run directory nor a checkpoint file")
    return source


class Run:
    """A finished (or running) run's folder. Each file is read once, when first asked for; a missing one is one
    InputError line naming the folder."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)

    def __repr__(self) -> str:
        return f"Run({str(self.folder)!r})"

    # ---- what the folder holds ---------------------------------------------------------------------------------
    @cached_property
    def config(self) -> ExperimentConfig:
        """The resolved experiment config the run was trained with (a former layout's reads quietly)."""
        path = self.folder / CONFIG_FILE
        if not path.is_file():
            raise InputError(f"{self.folder}: not a run directory (no {CONFIG_FILE})")
        return experiment_from_dict(yaml.safe_load(path.read_text()), run_folder=True)

    @cached_property
    def info(self) -> DataInfo:
        """What the run was trained on: source, classes, input shape, normalisation (its data.json)."""
        path = self.folder / DATA_FILE
        if not path.is_file():
            raise InputError(f"{self.folder}: not a run directory (no {DATA_FILE})")
        return DataInfo.from_json(json.loads(path.read_text()))

    @property
    def dataset(self) -> DatasetKind:
        """The registered kind of the run's data (``data.kind`` of its config)."""
        return dataset(self.config.data.kind)

    def checkpoint(self, which: str = "last") -> Path:
        """The path of checkpoint ``which`` ("last" | "best"), whether or not it is there yet."""
        return checkpoint_path(self.folder, which)

    def remove_checkpoints(self) -> None:
        """Delete the run's checkpoints (a study keeps only its teachers')."""
        shutil.rmtree(self.folder / CHECKPOINT_DIR, ignore_errors=True)

    def model(self, which: str = "best") -> torch.nn.Module:
        """The trained network of checkpoint ``which`` (eval mode, CPU)."""
        cfg, info = self.config, self.info
        model = build_model(cfg.model.name, n_classes=len(info.class_names), in_channels=info.input_shape[0],
                            **cfg.model.options)
        path = self.checkpoint(which)
        load_model_weights(model, model_state(path), path, cfg.model.name)
        return model.eval()

    def metrics(self) -> dict | None:
        """The run's summary (``metrics.json``: last and best epoch, history, ``complete``), read afresh each time (a
        running run rewrites it after every evaluation); None when it has none yet or it cannot be read."""
        try:
            return json.loads((self.folder / METRICS_FILE).read_text())
        except (OSError, ValueError):
            return None

    @property
    def finetuned(self) -> "Finetuned":
        """The default output folder of ``audio-mrkd finetune`` for this run."""
        return Finetuned(self.folder / FINETUNED_DIR)

    # ---- its data, normalised with its own train statistics ----------------------------------------------------
    def data(self) -> DataBundle:
        """The train and evaluated data the run used — its config's data section (splits, CV fold and pool, hold-out,
        subset) — with the run's own normalisation statistics."""
        bundle = load_data(self.config.data)
        if list(bundle.class_names) != list(self.info.class_names):
            raise InputError(f"{DATA_FILE}: the run's classes {self.info.class_names} differ from those of its "
                             f"dataset now ({bundle.class_names}); was it prepared again?")
        for part in (bundle.train, bundle.eval):
            self.normalized(part)
        return bundle

    def split(self, name: str) -> FeatureSplit:
        """Split ``name`` (train, evaluate, test, all) of the run's dataset, normalised with the run's statistics."""
        return self.normalized(self.dataset.split(self.config.data, name))

    def normalized(self, split: FeatureSplit) -> FeatureSplit:
        """``split`` normalised with the run's own train statistics, not the manifest's (changed in place)."""
        stats = self.info.norm_arrays()
        if stats is not None:
            split.norm_mean, split.norm_std = stats
        return split

    def frontend(self) -> FrontendConfig:
        """The audio front-end the run's features were made with, checked against its input shape (one line naming
        data.json otherwise, e.g. for an image run)."""
        where, info = str(self.folder / DATA_FILE), self.info
        if not self.dataset.frontend:
            raise InputError(f"{where}: kind '{info.kind}': export supports audio runs only "
                             "(the exported graphs take log-mels or waveforms)")
        if not isinstance(info.features, dict):
            raise InputError(f"{where}: 'features' (the front-end configuration) missing")
        feat_cfg = config_io.from_dict(FrontendConfig, info.features, "features")
        input_shape = list(info.input_shape or [])
        if input_shape != [1, *feat_cfg.shape]:
            raise InputError(f"{where}: input_shape {input_shape} does not match the front-end's "
                             f"[1, {feat_cfg.n_mels}, {feat_cfg.n_frames}]")
        return feat_cfg

    # ---- writing a run ------------------------------------------------------------------------------------------
    def write_start(self, cfg: ExperimentConfig, data: DataBundle) -> None:
        """Write the files a run starts with: config.yaml (the sections the run reads:
        :func:`~audio_mrkd.config_loader.run_config`), versions.json, seed, data.json."""
        self.folder.mkdir(parents=True, exist_ok=True)
        fileio.write_text(self.folder / CONFIG_FILE, yaml.safe_dump(run_config(cfg), sort_keys=False))
        fileio.write_json(self.folder / VERSIONS_FILE, versions())
        fileio.write_text(self.folder / SEED_FILE, f"{cfg.seed}\n")
        fileio.write_json(self.folder / DATA_FILE, DataInfo.of(cfg.data, data).to_json())

    def write_metrics(self, summary: dict) -> None:
        """``metrics.json``: the run's summary so far (rewritten after every evaluation and at the end)."""
        fileio.write_json(self.folder / METRICS_FILE, summary)

    def write_evaluation(self, tag: str, which: str, metrics: dict) -> Path:
        """``eval-<tag>-<which>.json``: ``audio-mrkd evaluate``'s metrics of checkpoint ``which`` on ``tag`` (a split,
        or ``fold<k>of<n>``); returns its path."""
        path = self.folder / f"eval-{tag}-{which}.json"
        fileio.write_json(path, metrics)
        return path

    def write_predictions(self, of: str, probs: np.ndarray, split: FeatureSplit) -> None:
        """The predictions ``of`` (a key of :data:`PREDICTIONS`): TAB-separated DCASE submission layout (filename,
        scene_label, one probability column per class) plus the true label."""
        frame = pd.DataFrame({"filename": split.items["filename"].astype(str).str.replace("audio/", "", regex=False),
                              "scene_label": [split.class_names[i] for i in probs.argmax(axis=1)]})
        for i, class_name in enumerate(split.class_names):
            frame[class_name] = probs[:, i].round(6)
        frame["true_label"] = [split.class_names[i] for i in split.labels]
        fileio.write_csv(self.folder / PREDICTIONS[of], frame, sep="\t")

    @staticmethod
    def named_dir(cfg) -> Path | None:
        """``<out_dir>/<train.run_name>`` (``-seed<s>`` added per seed when several run), or None without a run
        name."""
        return cfg.out_dir / cfg.train.run_name if cfg.train.run_name else None

    @staticmethod
    def new_dir(cfg) -> Path:
        """``<out_dir>/<timestamp>-<run_label>-seed<seed>[-fold<k>]`` (``run_label``: the method, ``ce_ls`` with
        label smoothing), unique (or the fixed :meth:`named_dir`)."""
        if cfg.train.run_name:
            return Run.named_dir(cfg)
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        name = f"{stamp}-{cfg.run_label}-seed{cfg.seed}" + (f"-fold{cfg.data.cv_fold}" if cfg.data.cv_folds else "")
        base = cfg.out_dir / name
        run_dir, n = base, 1
        while run_dir.exists():
            run_dir, n = base.with_name(f"{base.name}-{n}"), n + 1
        return run_dir


def run_folders(parent: str | Path) -> list[Run]:
    """The runs directly inside ``parent`` that have written their metrics, in name order."""
    return [Run(path.parent) for path in sorted(Path(parent).glob(f"*/{METRICS_FILE}"))]


class Finetuned:
    """The output folder of ``audio-mrkd finetune``: one run per recording device and the routed evaluation
    (``metrics.json``: ``device_runs`` names each device's run folder)."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)

    def device_dir(self, device: str) -> Path:
        """Where the device's runs go (``train.out_dir`` of its fine-tuning)."""
        return self.folder / device

    def write_report(self, report: dict) -> None:
        fileio.write_json(self.folder / METRICS_FILE, report)

    def report(self) -> dict:
        """The routed evaluation; one line naming the folder when it holds none."""
        path = self.folder / METRICS_FILE
        if not path.is_file():
            raise InputError(f"--finetuned {self.folder}: no {METRICS_FILE} (the output folder of "
                             f"`audio-mrkd finetune`)")
        return json.loads(path.read_text())

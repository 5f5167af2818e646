"""A run folder, read and written in one place: :class:`Run` owns its resolved config (``config.yaml``), its data
description (``data.json`` as a :class:`~audio_mrkd.data.info.DataInfo`), its models (``best``/``last``
checkpoints), its data and splits normalised with its own statistics, its front-end (audio), and the files training
writes into it (config, versions, seed, data.json, predictions).

Nothing else parses a run's ``config.yaml`` or ``data.json``; ``distill/`` and ``methods/`` sit below this module
and are handed :class:`Run` as an opener (``TrainContext.open_run``).
"""
from __future__ import annotations

import json
from datetime import datetime
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml

from audio_mrkd import config as config_io
from audio_mrkd import fileio
from audio_mrkd.data.dataset import FeatureSplit
from audio_mrkd.data.datasets import DataBundle, DatasetKind, dataset
from audio_mrkd.data.frontend import FrontendConfig
from audio_mrkd.data.info import DataInfo
from audio_mrkd.errors import InputError
from audio_mrkd.experiment import ExperimentConfig
from audio_mrkd.registry import experiment_from_dict
from audio_mrkd.models import build_model
from audio_mrkd.train.checkpoint import checkpoint_path, load_model_weights, model_state
from audio_mrkd.train.data import load_data
from audio_mrkd.versions import versions

CONFIG_FILE, DATA_FILE = "config.yaml", "data.json"


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
        """The resolved experiment config the run was trained with."""
        path = self.folder / CONFIG_FILE
        if not path.is_file():
            raise InputError(f"{self.folder}: not a run directory (no {CONFIG_FILE})")
        return experiment_from_dict(yaml.safe_load(path.read_text()), quiet=True)

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

    def model(self, which: str = "best") -> torch.nn.Module:
        """The trained network of checkpoint ``which`` (eval mode, CPU)."""
        cfg, info = self.config, self.info
        model = build_model(cfg.model.name, n_classes=len(info.class_names), in_channels=info.input_shape[0],
                            **cfg.model.options)
        path = checkpoint_path(self.folder, which)
        load_model_weights(model, model_state(path), path, cfg.model.name)
        return model.eval()

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
        """Write the files a run starts with: config.yaml, versions.json, seed, data.json."""
        self.folder.mkdir(parents=True, exist_ok=True)
        fileio.write_text(self.folder / CONFIG_FILE, yaml.safe_dump(config_io.to_dict(cfg), sort_keys=False))
        fileio.write_json(self.folder / "versions.json", versions())
        fileio.write_text(self.folder / "seed", f"{cfg.seed}\n")
        fileio.write_json(self.folder / DATA_FILE, DataInfo.of(cfg.data, data).to_json())

    def write_predictions(self, name: str, probs: np.ndarray, split: FeatureSplit) -> None:
        """``<folder>/<name>``: TAB-separated DCASE submission layout (filename, scene_label, one probability column
        per class) plus the true label."""
        frame = pd.DataFrame({"filename": split.items["filename"].astype(str).str.replace("audio/", "", regex=False),
                              "scene_label": [split.class_names[i] for i in probs.argmax(axis=1)]})
        for i, class_name in enumerate(split.class_names):
            frame[class_name] = probs[:, i].round(6)
        frame["true_label"] = [split.class_names[i] for i in split.labels]
        fileio.write_csv(self.folder / name, frame, sep="\t")

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

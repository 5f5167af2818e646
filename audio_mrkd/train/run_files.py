"""What a run directory holds besides checkpoints and events: the resolved config, versions, seed, a description
of the data (``data.json``, what export and evaluate read back) and the DCASE-layout predictions."""
from __future__ import annotations

from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from audio_mrkd import config as config_io
from audio_mrkd import fileio
from audio_mrkd.versions import versions


def named_run_dir(cfg) -> Path | None:
    """``<out_dir>/<train.run_name>`` (``-seed<s>`` added per seed when several run), or None without a run name."""
    return cfg.out_dir / cfg.train.run_name if cfg.train.run_name else None


def new_run_dir(cfg) -> Path:
    """``<out_dir>/<timestamp>-<run_label>-seed<seed>[-fold<k>]`` (``run_label``: the method, ``ce_ls`` with label
    smoothing), unique (or the fixed :func:`named_run_dir`)."""
    if cfg.train.run_name:
        return named_run_dir(cfg)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    name = f"{stamp}-{cfg.run_label}-seed{cfg.seed}" + (f"-fold{cfg.data.cv_fold}" if cfg.data.cv_folds else "")
    base = cfg.out_dir / name
    run_dir, n = base, 1
    while run_dir.exists():
        run_dir, n = base.with_name(f"{base.name}-{n}"), n + 1
    return run_dir


def data_info(cfg, data) -> dict:
    """The content of ``data.json``: where the data came from, names, input shape, normalisation."""
    split, dcfg = data.train, cfg.data

    def stat(values):
        return None if not dcfg.normalize or values is None else np.asarray(values).tolist()

    return {
        "kind": data.kind, "name": dcfg.name, "root": dcfg.root, "manifest_dir": dcfg.manifest_dir,
        "train_split": dcfg.train_split, "eval_split": dcfg.eval_split, "class_names": split.class_names,
        "device_names": split.device_names, "input_shape": list(split.item_shape),
        "norm_mean": stat(split.norm_mean), "norm_std": stat(split.norm_std),
        "features": data.frontend, "n_train": len(split), "n_eval": len(data.eval),
        "cv_folds": dcfg.cv_folds, "cv_fold": dcfg.cv_fold, "cv_pool": dcfg.cv_pool, "holdout": dcfg.holdout,
        "train_limit": dcfg.train_limit,
    }


def write_run_files(run_dir: Path, cfg, data) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    fileio.write_text(run_dir / "config.yaml", yaml.safe_dump(config_io.to_dict(cfg), sort_keys=False))
    fileio.write_json(run_dir / "versions.json", versions())
    fileio.write_text(run_dir / "seed", f"{cfg.seed}\n")
    fileio.write_json(run_dir / "data.json", data_info(cfg, data))


def write_predictions(path: Path, probs: np.ndarray, split) -> None:
    """TAB-separated DCASE submission layout (filename, scene_label, one probability column per class) plus the
    true label."""
    frame = pd.DataFrame({"filename": split.items["filename"].astype(str).str.replace("audio/", "", regex=False),
                          "scene_label": [split.class_names[i] for i in probs.argmax(axis=1)]})
    for i, name in enumerate(split.class_names):
        frame[name] = probs[:, i].round(6)
    frame["true_label"] = [split.class_names[i] for i in split.labels]
    fileio.write_csv(path, frame, sep="\t")

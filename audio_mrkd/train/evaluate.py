"""``audio-mrkd evaluate RUN_DIR``: a trained run's checkpoint on a split, with the same metrics as training."""
from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch

from audio_mrkd import fileio
from audio_mrkd.errors import InputError
from audio_mrkd.data.dataset import BatchLoader, FeatureSplit, load_split
from audio_mrkd.data.dcase import DEVICE_GROUPS
from audio_mrkd.train.checkpoint import load_run_model
from audio_mrkd.train.data import evaluated_name, run_bundle
from audio_mrkd.train.metrics import classification_metrics, with_counts

#: Up to this many classes, ``evaluate`` prints one line per class (always in ``eval-<split>-<which>.json``).
MAX_CLASS_LINES = 20


def run_split(info: dict, cfg, split: str) -> FeatureSplit:
    """Split ``split`` of the data a run was trained on, normalised with the run's own train statistics.
    ``all``: every item (audio: the prepared dataset's all.csv; images: train, held-back and test items)."""
    if info["kind"] == "audio":
        data = load_split(info["name"], split, info["manifest_dir"])
    else:
        from audio_mrkd.data.images import load_image_splits
        from audio_mrkd.train.data import concat_splits
        splits = load_image_splits(cfg.data.kind, cfg.data.root, holdout=cfg.data.holdout, seed=0,
                                   coarse_labels=cfg.data.coarse_labels)
        if split not in (*splits, "all"):
            raise InputError(f"split {split!r}: not one of {', '.join([*splits, 'all'])}")
        if split == "all":  # without a hold-out, "evaluate" is the test split itself
            parts = ["train", "evaluate", "test"] if cfg.data.holdout else ["train", "test"]
            data = functools.reduce(concat_splits, [splits[name] for name in parts])
        else:
            data = splits[split]
    if info["norm_mean"] is not None:  # the run's own train statistics, not the manifest's
        data.norm_mean = np.asarray(info["norm_mean"], dtype=np.float32)
        data.norm_std = np.asarray(info["norm_std"], dtype=np.float32)
    return data


def evaluate_run(run_dir: str | Path, split: str | None = None, which: str = "best", log=print) -> dict:
    """Metrics of checkpoint ``which`` on ``split`` (default: the items the run evaluated on, a CV fold included);
    written to ``RUN_DIR/eval-<split>-<which>.json`` (``eval-fold<k>of<n>-…`` for a fold)."""
    run_dir = Path(run_dir)
    model, info, cfg = load_run_model(run_dir, which)
    if split is None:  # exactly the items the run evaluated on (its split, or its cross-validation fold)
        dcfg = cfg.data
        tag = f"fold{dcfg.cv_fold}of{dcfg.cv_folds}" if dcfg.cv_folds else dcfg.eval_split
        split, data = evaluated_name(dcfg), run_bundle(info, cfg).eval
    else:
        tag, data = split, run_split(info, cfg, split)
    loader = BatchLoader(data, 256, "cpu", normalize=info["norm_mean"] is not None)
    with torch.inference_mode():
        probs = torch.cat([torch.softmax(model(b.x), 1) for b in loader]).numpy()
    metrics = classification_metrics(probs, data.labels, data.class_names, data.recording_devices, data.device_names,
                                     DEVICE_GROUPS if info["kind"] == "audio" else None)
    fileio.write_json(run_dir / f"eval-{tag}-{which}.json", metrics)
    log(f"{run_dir.name} [{which}] on {split} ({len(data)} items): accuracy {metrics['accuracy']:.4f}, "
        f"macro accuracy {metrics['macro_accuracy']:.4f}, log loss {metrics['log_loss']:.4f}")
    groups = [("per_device", "device"), ("per_device_group", "device group")]
    if len(metrics["per_class"]) <= MAX_CLASS_LINES:  # CIFAR-100's hundred classes stay in the JSON file only
        groups.insert(0, ("per_class", "class"))
    for group, what in groups:
        for name, acc in with_counts(metrics, group):
            log(f"  {what} {name}: {acc}")
    return metrics

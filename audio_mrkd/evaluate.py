"""``audio-mrkd evaluate RUN_DIR``: a trained run's checkpoint on a split, with the same metrics as training."""
from __future__ import annotations

from pathlib import Path

import torch

from audio_mrkd.data.selection import evaluated_name
from audio_mrkd.runs.run import Run
from audio_mrkd.train.inference import run_logits
from audio_mrkd.train.metrics import classification_metrics, with_counts

#: Up to this many classes, ``evaluate`` prints one line per class (always in ``eval-<split>-<which>.json``).
MAX_CLASS_LINES = 20


def evaluate_run(run_dir: str | Path, split: str | None = None, which: str = "best", log=print) -> dict:
    """Metrics of checkpoint ``which`` on ``split`` (default: the items the run evaluated on, a CV fold included);
    written to ``RUN_DIR/eval-<split>-<which>.json`` (``eval-fold<k>of<n>-…`` for a fold)."""
    run_dir = Path(run_dir)
    run = Run(run_dir)
    model = run.model(which)
    if split is None:  # exactly the items the run evaluated on (its split, or its cross-validation fold)
        dcfg = run.config.data
        tag = f"fold{dcfg.cv_fold}of{dcfg.cv_folds}" if dcfg.cv_folds else dcfg.eval_split
        split, data = evaluated_name(dcfg), run.data().eval
    else:
        tag, data = split, run.split(split)
    probs = torch.softmax(run_logits(model, data), 1).numpy()
    device_groups = run.dataset.device_groups if run.dataset.recording_devices else None
    metrics = classification_metrics(probs, data.labels, data.class_names, data.recording_devices, data.device_names,
                                     device_groups)
    run.write_evaluation(tag, which, metrics)
    log(f"{run_dir.name} [{which}] on {split} ({len(data)} items): accuracy {metrics['accuracy']:.4f}, "
        f"macro accuracy {metrics['macro_accuracy']:.4f}, log loss {metrics['log_loss']:.4f}")
    groups = [("per_device", "device"), ("per_device_group", "device group")]
    if len(metrics["per_class"]) <= MAX_CLASS_LINES:  # CIFAR-100's hundred classes stay in the JSON file only
        groups.insert(0, ("per_class", "class"))
    for group, what in groups:
        for name, acc in with_counts(metrics, group):
            log(f"  {what} {name}: {acc}")
    return metrics

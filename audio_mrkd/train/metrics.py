"""Evaluation metrics (design.md §6): accuracy, macro (class-wise) accuracy — the DCASE ranking metric —,
multi-class log loss, top-5, expected calibration error, per-class, per-device and device-group accuracy (each with
the number of clips it rests on: ``per_class_count``, ``per_device_count``, ``per_device_group_count``), confusion
matrix; and mean ± std summaries over seeds."""
from __future__ import annotations

import warnings

import numpy as np
from sklearn.metrics import balanced_accuracy_score, confusion_matrix, log_loss

#: Scalar metrics; the rest are per-class / per-device mappings and the confusion matrix.
SCALARS = ("accuracy", "macro_accuracy", "log_loss", "top5", "ece")


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = 15) -> float:
    """ECE with ``bins`` equal-width confidence bins (Guo et al. 2017)."""
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        in_bin = (confidence > lo) & (confidence <= hi)
        if in_bin.any():
            ece += in_bin.mean() * abs(correct[in_bin].mean() - confidence[in_bin].mean())
    return float(ece)


def macro_accuracy(labels: np.ndarray, pred: np.ndarray) -> float:
    """Macro (class-wise) accuracy, the DCASE ranking metric: the mean over the classes present in ``labels`` of the
    accuracy on their items (scikit-learn's ``balanced_accuracy_score``); nan without items."""
    if len(labels) == 0:
        return float("nan")
    with warnings.catch_warnings():  # a predicted class without items of its own is left out, as intended
        warnings.filterwarnings("ignore", message="y_pred contains classes not in y_true")
        return float(balanced_accuracy_score(labels, pred))


#: The per-group accuracies and, for each, the key of its clip counts (same names, only groups with clips).
GROUPS = {"per_class": "per_class_count", "per_device": "per_device_count",
          "per_device_group": "per_device_group_count"}


def _group_accuracy(correct: np.ndarray, groups: np.ndarray, names: list[str]) -> tuple[dict[str, float],
                                                                                        dict[str, int]]:
    """Accuracy and number of clips of each group ``names[i]`` (``groups == i``) that has any clips."""
    counts = np.bincount(groups[groups >= 0], minlength=len(names))
    present = [(i, name) for i, name in enumerate(names) if counts[i]]
    return ({name: float(correct[groups == i].mean()) for i, name in present},
            {name: int(counts[i]) for i, name in present})


def classification_metrics(probs: np.ndarray, labels: np.ndarray, class_names: list[str],
                           recording_devices: np.ndarray | None = None, device_names: list[str] | None = None,
                           device_groups: dict[str, str] | None = None) -> dict:
    """All metrics for class probabilities ``probs`` (N×C) and integer ``labels`` (N); with ``recording_devices``
    (N indices into ``device_names``) also the per-device and (with ``device_groups``) device-group accuracy."""
    n_classes = len(class_names)
    probs = np.asarray(probs, dtype=np.float64)
    probs = probs / probs.sum(axis=1, keepdims=True)
    pred = probs.argmax(axis=1)
    correct = pred == labels
    per_class, per_class_count = _group_accuracy(correct, labels, class_names)
    top5 = np.argsort(-probs, axis=1)[:, :5]
    out = {
        "accuracy": float(correct.mean()),
        "macro_accuracy": macro_accuracy(labels, pred),
        "log_loss": float(log_loss(labels, np.clip(probs, 1e-15, 1.0), labels=list(range(n_classes)))),
        "top5": float((top5 == labels[:, None]).any(axis=1).mean()),
        "ece": expected_calibration_error(probs, labels),
        "n_items": int(len(labels)),
        "per_class": per_class,
        "per_class_count": per_class_count,
        "confusion": confusion_matrix(labels, pred, labels=list(range(n_classes))).tolist(),
    }
    if recording_devices is not None and device_names is not None:
        out["per_device"], out["per_device_count"] = _group_accuracy(correct, recording_devices, device_names)
        if device_groups:
            group_names = sorted(set(device_groups.values()))
            group_of = np.array([group_names.index(device_groups.get(d, "other")) if d in device_groups else -1
                                 for d in device_names])
            groups = group_of[recording_devices]
            out["per_device_group"], out["per_device_group_count"] = _group_accuracy(correct, groups, group_names)
    return out


def with_counts(metrics: dict, group: str, digits: int = 4) -> list[tuple[str, str]]:
    """``(name, "0.8125 (n=16)")`` for each entry of ``metrics[group]`` (e.g. ``"per_device"``); metrics written
    before the counts were kept (older ``metrics.json``) give the accuracy alone."""
    counts = metrics.get(GROUPS[group], {})
    return [(name, f"{acc:.{digits}f}" + (f" (n={counts[name]})" if name in counts else ""))
            for name, acc in metrics.get(group, {}).items()]


def mean_std(values: list[float]) -> dict[str, float]:
    """Mean and sample standard deviation (ddof=1; 0 for a single value)."""
    arr = np.asarray(values, dtype=float)
    return {"mean": float(arr.mean()), "std": float(arr.std(ddof=1)) if len(arr) > 1 else 0.0, "n": len(arr)}

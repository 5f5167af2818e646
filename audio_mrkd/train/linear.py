"""The linear reference: per-mel-band mean and std over time → standardised → logistic regression."""
from __future__ import annotations

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from audio_mrkd.data.splits import FeatureSplit
from audio_mrkd.train.metrics import classification_metrics


def band_stats(split: FeatureSplit) -> np.ndarray:
    """N × 2F: mean and std of each mel band over time."""
    x = np.asarray(split.features, dtype=np.float32).reshape(len(split), -1, split.features.shape[-1])
    return np.concatenate([x.mean(axis=2), x.std(axis=2)], axis=1)


def linear_baseline(train: FeatureSplit, held: FeatureSplit, c: float = 1.0) -> dict:
    """Fit on ``train``, return the standard metrics on ``held``."""
    model = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=2000))
    model.fit(band_stats(train), train.labels)
    probs = np.zeros((len(held), len(train.class_names)))
    probs[:, model.classes_] = model.predict_proba(band_stats(held))
    return classification_metrics(probs, held.labels, held.class_names, held.recording_devices, held.device_names)

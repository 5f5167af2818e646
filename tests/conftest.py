"""Shared fixtures: small DCASE-layout trees made of tones and noise, written by the tests themselves.

Every test runs with ``$AUDIO_MRKD_CACHE`` pointing into pytest's temporary folder (one per session, so the slow
tests download each Debian/PyPI package once per session): nothing is written into the user's own cache.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf



@pytest.fixture(scope="session", autouse=True)
def private_cache(tmp_path_factory) -> Path:
    """``$AUDIO_MRKD_CACHE`` → a session-wide temporary folder (restored afterwards)."""
    root = tmp_path_factory.mktemp("audio_mrkd_cache")
    saved = os.environ.get("AUDIO_MRKD_CACHE")
    os.environ["AUDIO_MRKD_CACHE"] = str(root)
    yield root
    if saved is None:
        os.environ.pop("AUDIO_MRKD_CACHE", None)
    else:
        os.environ["AUDIO_MRKD_CACHE"] = saved


RATES = (16000, 44100, 48000)
DEVICES = ("a", "b", "c", "s1", "s2", "s4")
LABELS = ("park", "street", "metro")
TONES = {"park": 440.0, "street": 1500.0, "metro": 3000.0}


def write_clip(path: Path, label: str, rate: int, seconds: float, stereo: bool, seed: int) -> None:
    """A tone per class plus noise; stereo files carry the tone at two gains."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(rate * seconds)) / rate
    x = 0.3 * np.sin(2 * np.pi * TONES[label] * t) + 0.05 * rng.standard_normal(t.size)
    if stereo:
        x = np.stack([x, 0.5 * x], axis=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, x, rate)


def make_dcase_tree(root: Path, n: int = 36, seconds: float = 1.0, source_label: bool = True) -> Path:
    """A DCASE Task 1 development-set tree: audio/, meta.csv, evaluation_setup/fold1_{train,evaluate,test}.csv.

    Items cycle through labels, rates (16/44.1/48 kHz), devices; every 4th file is stereo; identifiers
    ``loc0…loc5``: loc4 and loc5 form the evaluate split (grouped by location as DCASE does).
    """
    meta = ["filename\tscene_label\tidentifier" + ("\tsource_label" if source_label else "")]
    train, evaluate = ["filename\tscene_label"], ["filename\tscene_label"]
    test = ["filename"]
    for i in range(n):
        label = LABELS[i % 3]
        name = f"audio/{label}-{i:03d}.wav"
        write_clip(root / name, label, RATES[i % 3], seconds, stereo=i % 4 == 0, seed=i)
        ident = f"loc{(i // 3) % 6}"
        row = f"{name}\t{label}\t{ident}" + (f"\t{DEVICES[i % len(DEVICES)]}" if source_label else "")
        meta.append(row)
        if ident in ("loc4", "loc5"):
            evaluate.append(f"{name}\t{label}")
            test.append(name)
        else:
            train.append(f"{name}\t{label}")
    (root / "evaluation_setup").mkdir(parents=True, exist_ok=True)
    (root / "meta.csv").write_text("\n".join(meta) + "\n")
    (root / "evaluation_setup" / "fold1_train.csv").write_text("\n".join(train) + "\n")
    (root / "evaluation_setup" / "fold1_evaluate.csv").write_text("\n".join(evaluate) + "\n")
    (root / "evaluation_setup" / "fold1_test.csv").write_text("\n".join(test) + "\n")
    return root


@pytest.fixture
def dcase_tree(tmp_path: Path) -> Path:
    return make_dcase_tree(tmp_path / "dev")


@pytest.fixture
def dirs(tmp_path: Path) -> dict:
    return {"cache": tmp_path / "cache", "manifests": tmp_path / "manifests"}

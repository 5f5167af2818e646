"""``audio-mrkd predict``: WAV files → scene labels through an exported ONNX model (ONNX Runtime, CPU).

Each file is decoded with soundfile and turned into a log-mel by the package's one front-end (``load_clip`` +
``LogMel``) configured by the ``features.yaml`` that ``export`` wrote next to the model; class names come from
``labels.json`` next to it. A model whose input is a waveform (``model_with_frontend.onnx``, rank-2 input) gets the
decoded clips directly. Output: a table (file, label, probability) on stdout and, with ``--csv``, the DCASE
submission file: TAB-separated ``filename  scene_label  <one probability column per class>``, the filename as given
on the command line. A file that cannot be decoded is reported on stderr (one line naming it); the others are
still processed and the exit code is 1.
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import numpy as np
import pandas as pd
import torch

from audio_mrkd import fileio
from audio_mrkd.data.frontend import FrontendConfig, LogMel, Resampler, load_clip, load_frontend_config
from audio_mrkd.errors import InputError
from audio_mrkd.progress import progress as progress_bar

FEATURES_FILE = "features.yaml"
LABELS_FILE = "labels.json"


@dataclass
class ExportedModel:
    path: Path
    session: object            # onnxruntime.InferenceSession
    features: FrontendConfig
    class_names: list[str]
    waveform_input: bool       # True: B×samples in; False: B×1×F×T log-mel in

    def logits(self, batch: np.ndarray) -> np.ndarray:
        name = self.session.get_inputs()[0].name
        return self.session.run(None, {name: np.ascontiguousarray(batch, dtype=np.float32)})[0]


def read_labels(path: Path) -> list[str]:
    if not path.is_file():
        raise InputError(f"{path}: not found (export writes labels.json next to the model)")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: not valid JSON ({exc})") from None
    names = data.get("class_names") if isinstance(data, dict) else None
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise InputError(f"{path}: expected {{\"class_names\": [\"…\", …]}}")
    return names


def load_exported(model_path: str | Path, threads: int = 0) -> ExportedModel:
    """The ONNX model plus the features.yaml and labels.json beside it, checked against each other."""
    from audio_mrkd.export.onnx import onnx_session

    path = Path(model_path)
    if not path.is_file():
        raise InputError(f"{path}: model file not found")
    features_path = path.parent / FEATURES_FILE
    if not features_path.is_file():
        raise InputError(f"{features_path}: not found (export writes the feature config next to the model)")
    cfg = load_frontend_config(features_path)
    class_names = read_labels(path.parent / LABELS_FILE)
    try:
        session = onnx_session(path, threads)
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
        raise InputError(f"{path}: not a loadable ONNX model ({str(exc).splitlines()[0]})") from None
    shape = session.get_inputs()[0].shape
    if len(shape) == 2:
        waveform, expected = True, [cfg.n_samples]
    elif len(shape) == 4:
        waveform, expected = False, [1, *cfg.shape]
    else:
        raise InputError(f"{path}: input of rank {len(shape)}; expected B×samples or B×1×F×T")
    fixed = [d if isinstance(d, int) else None for d in shape[1:]]
    if any(d is not None and d != e for d, e in zip(fixed, expected)):
        raise InputError(f"{path}: input shape {shape[1:]} does not match {features_path} ({expected})")
    n_out = session.get_outputs()[0].shape[-1]
    if isinstance(n_out, int) and n_out != len(class_names):
        raise InputError(f"{path}: {n_out} outputs but {path.parent / LABELS_FILE} names {len(class_names)} classes")
    return ExportedModel(path, session, cfg, class_names, waveform)


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def predict_files(model: ExportedModel, files: list[str], batch_size: int = 32,
                  err: TextIO | None = None, progress: bool = True) -> tuple[pd.DataFrame, list[str]]:
    """Probabilities for every decodable file → (submission frame, failed files). Errors go to ``err``."""
    err = err if err is not None else sys.stderr
    frontend = LogMel(model.features)
    resampler = Resampler(model.features.sample_rate)
    names, probs, failed = [], [], []
    bar = progress_bar(total=len(files), desc="predict", unit="file", enabled=progress, min_interval=5)
    for start in range(0, len(files), batch_size):
        waves, chunk_names = [], []
        for name in files[start:start + batch_size]:
            try:
                if not Path(name).is_file():
                    raise InputError(f"{name}: audio file not found")
                waves.append(load_clip(name, model.features, resampler))
                chunk_names.append(name)
            except InputError as exc:
                print(f"audio-mrkd predict: error: {exc}", file=err)
                failed.append(name)
        if waves:
            batch = torch.stack(waves)
            if not model.waveform_input:
                with torch.inference_mode():
                    batch = frontend(batch).unsqueeze(1)
            probs.append(softmax(model.logits(batch.numpy())))
            names.extend(chunk_names)
        bar.update(len(files[start:start + batch_size]))
    bar.close()
    p = np.concatenate(probs) if probs else np.zeros((0, len(model.class_names)))
    frame = pd.DataFrame(p, columns=model.class_names)
    frame.insert(0, "scene_label", [model.class_names[i] for i in p.argmax(1)] if len(p) else [])
    frame.insert(0, "filename", names)
    return frame, failed


def format_table(frame: pd.DataFrame) -> str:
    """file / label / probability of the label, aligned."""
    rows = [(str(f), str(lab), f"{frame.loc[i, lab]:.4f}")
            for i, (f, lab) in enumerate(zip(frame["filename"], frame["scene_label"]))]
    header = ("file", "label", "probability")
    widths = [max([len(header[c])] + [len(r[c]) for r in rows]) for c in range(3)]
    lines = [f"{header[0]:<{widths[0]}}  {header[1]:<{widths[1]}}  {header[2]:>{widths[2]}}"]
    lines += [f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:>{widths[2]}}" for r in rows]
    return "\n".join(lines)


def write_submission(path: str | Path, frame: pd.DataFrame) -> None:
    """DCASE Task 1 submission: TAB-separated, header ``filename scene_label <classes…>``."""
    fileio.write_csv(path, frame, sep="\t", float_format="%.6f")


def predict(model_path: str | Path, files: list[str], csv: str | Path | None = None, batch_size: int = 32,
            out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Run the whole command; returns the exit code (0, or 1 when any file failed)."""
    out = out if out is not None else sys.stdout
    err = err if err is not None else sys.stderr
    if batch_size < 1:
        raise InputError(f"--batch-size: must be >= 1, got {batch_size}")
    model = load_exported(model_path)
    frame, failed = predict_files(model, list(files), batch_size, err)
    if len(frame):
        print(format_table(frame), file=out)
        if csv:
            write_submission(csv, frame)
            print(f"predict: {len(frame)} rows → {csv}", file=out)
    if failed:
        print(f"audio-mrkd predict: {len(failed)} of {len(files)} file(s) failed", file=err)
        return 1
    return 0

"""``audio-mrkd teacher-logits RUN_DIR… --out FILE``: a teacher ensemble's logits for every item of its dataset.

The runs (e.g. one teacher recipe trained with ``seeds=[…]``) must share a dataset (name, class order, input
shape); each scores every item with its own normalisation and the file holds the mean of their logits, in the
format ``teacher.logits`` reads (:func:`audio_mrkd.distill.teachers.write_teacher_logits`).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from audio_mrkd.distill.teachers import write_teacher_logits
from audio_mrkd.errors import InputError
from audio_mrkd.train.evaluate import run_logits
from audio_mrkd.train.run import Run


def ensemble_logits(run_dirs: list[str | Path], which: str = "last",
                    split: str = "all") -> tuple[list[str], list[str], np.ndarray]:
    """(file names, class names, N×C mean logits of the runs) for every item of ``split``."""
    total, names, first = None, None, None
    for run_dir in run_dirs:
        run = Run(run_dir)
        model, info = run.model(which), run.info
        first = first or (run_dir, info)
        key = info.dataset_difference(first[1])
        if key is not None:
            raise InputError(f"{run_dir}: {key} {getattr(info, key)!r} differs from {first[0]}'s "
                             f"{getattr(first[1], key)!r}: an ensemble's teachers share one dataset")
        data = run.split(split)
        logits = run_logits(model, data, bar_desc=Path(run_dir).name).numpy().astype(np.float64)
        names = data.items["filename"].astype(str).tolist()
        total = logits if total is None else total + logits
    return names, list(first[1].class_names), (total / len(run_dirs)).astype(np.float32)


def write_ensemble_logits(run_dirs: list[str | Path], out: str | Path, which: str = "last", split: str = "all",
                          log=print) -> Path:
    if not run_dirs:
        raise InputError("teacher-logits: give at least one run directory")
    names, classes, logits = ensemble_logits(run_dirs, which, split)
    write_teacher_logits(out, names, classes, logits)
    log(f"wrote {out}: {len(names)} clips × {len(classes)} classes, mean logits of {len(run_dirs)} run(s) "
        f"({which} checkpoints)")
    return Path(out)

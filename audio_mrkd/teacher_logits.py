"""``audio-mrkd teacher-logits RUN_DIR… --out FILE``: a teacher ensemble's logits for every item of its dataset.

The runs (e.g. one teacher recipe trained with ``seeds=[…]``) must share a dataset (name, class order, input
shape); each scores every item with its own normalisation and the file holds the mean of their logits, in the
format ``teacher.logits`` reads (:func:`audio_mrkd.distill.teachers.write_teacher_logits`). Its origin is
written beside it (``FILE.origin.json``, :class:`audio_mrkd.distill.teachers.LogitsOrigin`): the runs, the
checkpoint, the split scored and each run's data description, so that ``kd`` from the file warns of a ``best``
epoch chosen on the split the student is scored on, as ``kd`` from the runs does.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from audio_mrkd.data.info import DataInfo
from audio_mrkd.distill.teachers import LogitsOrigin, origin_path, write_teacher_logits
from audio_mrkd.errors import InputError
from audio_mrkd.runs.run import Run
from audio_mrkd.train.inference import run_logits


def ensemble_logits(run_dirs: list[str | Path], which: str = "last",
                    split: str = "all") -> tuple[list[str], list[str], np.ndarray, list[DataInfo]]:
    """(file names, class names, N×C mean logits of the runs, the runs' data descriptions) for every item of
    ``split``."""
    total, names, first, infos = None, None, None, []
    for run_dir in run_dirs:
        run = Run(run_dir)
        model, info = run.model(which), run.info
        infos.append(info)
        first = first or (run_dir, info)
        key = info.dataset_difference(first[1])
        if key is not None:
            raise InputError(f"{run_dir}: {key} {getattr(info, key)!r} differs from {first[0]}'s "
                             f"{getattr(first[1], key)!r}: an ensemble's teachers share one dataset")
        data = run.split(split)
        logits = run_logits(model, data, bar_desc=Path(run_dir).name).numpy().astype(np.float64)
        names = data.items["filename"].astype(str).tolist()
        total = logits if total is None else total + logits
    return names, list(first[1].class_names), (total / len(run_dirs)).astype(np.float32), infos


def write_ensemble_logits(run_dirs: list[str | Path], out: str | Path, which: str = "last", split: str = "all",
                          log=print) -> Path:
    if not run_dirs:
        raise InputError("teacher-logits: give at least one run directory")
    names, classes, logits, infos = ensemble_logits(run_dirs, which, split)
    origin = LogitsOrigin([str(Path(r).resolve()) for r in run_dirs], which, split, infos)
    write_teacher_logits(out, names, classes, logits, origin)
    log(f"wrote {out}: {len(names)} clips × {len(classes)} classes, mean logits of {len(run_dirs)} run(s) "
        f"({which} checkpoints; origin in {origin_path(out).name})")
    return Path(out)

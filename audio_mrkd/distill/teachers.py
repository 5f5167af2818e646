"""External teachers: finished runs of this product, or a teacher-logits file, as logits for the student's items.

Two sources (the ``teacher.*`` keys, read by every method that uses a teacher: ``kd``, and ``mrkd`` when given):

* ``teacher.runs: [RUN_DIR, …]`` — runs trained by this product on the same prepared dataset (any registered
  model). Each teacher sees inputs normalised with its own run's statistics. ``teacher.input: cached``: each
  teacher's logits on every un-augmented train item, computed once when training starts; ``same``: the teachers
  run on the student's augmented batch every step.
* ``teacher.logits: FILE`` — logits a user brings (an ensemble trained elsewhere): a CSV file with a
  ``filename`` column and one column per class, named by class (the header is the class order), one row per
  clip (see README, "Distillation from a teacher"). Always cached.

Cached logits follow the items through shuffles and resumes: they are indexed by the items' positions in the
train split (``Batch.index``). A cached teacher gives one item's view: under mixup the methods mix it with the
label's pairing and weight (:func:`audio_mrkd.distill.losses.mix_teacher_logits`).
"""
from __future__ import annotations

import csv
import hashlib
import sys
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from audio_mrkd import fileio
from audio_mrkd.data.info import DataInfo
from audio_mrkd.errors import InputError
from audio_mrkd.experiment import TeacherConfig


# ---- the teacher-logits file -----------------------------------------------------------------------------------
def write_teacher_logits(path: str | Path, filenames: list[str], class_names: list[str], logits: np.ndarray) -> None:
    """The documented CSV: ``filename,<class 1>,…,<class C>``, one row per clip, floats written exactly."""
    assert logits.shape == (len(filenames), len(class_names)), logits.shape
    with fileio.atomic_path(path) as tmp, tmp.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["filename", *class_names])
        for name, row in zip(filenames, np.asarray(logits, dtype=np.float32)):
            writer.writerow([name, *(repr(float(v)) for v in row)])


def read_teacher_logits(path: str | Path, filenames: list[str], class_names: list[str]) -> np.ndarray:
    """N×C float32 logits for ``filenames`` (the train items, in order) from a teacher-logits CSV.

    Class columns are matched by name (any order). A clip may be keyed as in the dataset's meta.csv or without
    its leading folder (``audio/``). Every fault is one line naming the file and the row or clip."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"teacher.logits: {path}: file not found")
    try:
        table = _read_rows(path, class_names)
    except (UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"{path}: not a UTF-8 CSV file ({str(exc).splitlines()[0]})") from None
    out = np.empty((len(filenames), len(class_names)), dtype=np.float32)
    missing = []
    for i, name in enumerate(filenames):
        found = table.get(name, table.get(name.split("/", 1)[-1]))
        if found is None:
            missing.append(name)
        else:
            out[i] = found
    if missing:
        raise InputError(f"{path}: no row for clip {missing[0]!r} ({len(missing)} of the {len(filenames)} "
                         f"train clips have none)")
    return out


def _read_rows(path: Path, class_names: list[str]) -> dict[str, np.ndarray]:
    """clip name → its logits in the dataset's class order, every row checked."""
    table: dict[str, np.ndarray] = {}
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        order = _class_columns(path, header, class_names)
        for line, row in enumerate(reader, start=2):
            if not row:
                continue
            if len(row) != len(header):
                raise InputError(f"{path}: line {line} ({row[0]!r}): {len(row)} fields, the header has {len(header)}")
            values = _finite_row(path, line, row, header)
            if row[0] in table:
                raise InputError(f"{path}: line {line}: clip {row[0]!r} appears twice")
            table[row[0]] = values[order]
    return table


def _class_columns(path: Path, header: list[str] | None, class_names: list[str]) -> list[int]:
    """Positions (in the numeric columns) of the dataset's classes, in the dataset's order."""
    if not header or header[0] != "filename":
        raise InputError(f"{path}: the first column must be 'filename' (header: {','.join(header or [])!r})")
    columns = header[1:]
    missing = [c for c in class_names if c not in columns]
    extra = [c for c in columns if c not in class_names]
    if missing or extra or len(set(columns)) != len(columns):
        raise InputError(f"{path}: class columns {columns} do not match the dataset's classes {class_names}"
                         + (f" (missing: {', '.join(missing)})" if missing else "")
                         + (f" (not in the dataset: {', '.join(extra)})" if extra else ""))
    return [columns.index(c) for c in class_names]


def _finite_row(path: Path, line: int, row: list[str], header: list[str]) -> np.ndarray:
    try:
        values = np.array([float(v) for v in row[1:]], dtype=np.float64)
    except ValueError:
        bad = next(i for i, v in enumerate(row[1:], start=1) if not _is_float(v))
        raise InputError(f"{path}: line {line} (clip {row[0]!r}): column {header[bad]!r} is {row[bad]!r}, "
                         f"not a number") from None
    if not np.isfinite(values).all():
        bad = int(np.flatnonzero(~np.isfinite(values))[0]) + 1
        raise InputError(f"{path}: line {line} (clip {row[0]!r}): column {header[bad]!r} is {row[bad]!r}, "
                         f"not a finite number")
    return values.astype(np.float32)


def _is_float(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


# ---- teacher runs ----------------------------------------------------------------------------------------------
class Renormalized(nn.Module):
    """A teacher run's model fed inputs normalised with the student's statistics: they are brought to the
    teacher's own (x·σ_s + μ_s − μ_t) / σ_t first."""

    def __init__(self, model: nn.Module, student_norm: tuple, teacher_norm: tuple) -> None:
        super().__init__()
        self.model = model
        (mu_s, sd_s), (mu_t, sd_t) = (_norm_tensors(*n) for n in (student_norm, teacher_norm))
        self.register_buffer("scale", sd_s / sd_t)
        self.register_buffer("shift", (mu_s - mu_t) / sd_t)

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x * self.scale.to(x.dtype) + self.shift.to(x.dtype))


def _norm_tensors(mean, std) -> tuple[Tensor, Tensor]:
    """(mean, std) as tensors; None (not normalised) is the identity."""
    if mean is None:
        return torch.zeros(()), torch.ones(())
    return torch.as_tensor(np.asarray(mean, np.float32)), torch.as_tensor(np.asarray(std, np.float32))


def load_teacher_run(run_dir: str | Path, which: str, student_info: DataInfo, open_run) -> tuple[nn.Module, DataInfo]:
    """A finished run's network (eval mode, CPU) taking the student's normalised inputs, and the run's data
    description; the run must have been trained on the student's dataset (same kind, name, class order and input
    shape). ``open_run(run_dir)`` → the run (``.info``, ``.model(which)``): the engine's run reader."""
    run = open_run(Path(run_dir))
    try:
        info = run.info
    except InputError as exc:
        raise InputError(f"teacher.runs: {exc}") from None
    model = run.model(which)
    key = info.dataset_difference(student_info)
    if key is not None:
        raise InputError(f"teacher.runs: {run_dir}: trained with {key} {getattr(info, key)!r}, this run has "
                         f"{getattr(student_info, key)!r}")
    student_norm = (student_info.norm_mean, student_info.norm_std)
    teacher_norm = (info.norm_mean, info.norm_std)
    if _same_norm(student_norm, teacher_norm):
        return model, info
    return Renormalized(model, student_norm, teacher_norm).eval(), info


def warn_if_best_leaks(tcfg: TeacherConfig, teacher_infos: list[DataInfo], student_info: DataInfo, log) -> None:
    """One warning line when ``teacher.checkpoint: best`` distils an epoch chosen on the split the student is scored
    on."""
    if tcfg.checkpoint != "best":
        return
    leaking = [run for run, info in zip(tcfg.runs, teacher_infos) if info.scored_on_the_same_split(student_info)]
    if leaking:
        log(f"teacher.checkpoint: warning: 'best' distils the epoch {len(leaking)} of the {len(tcfg.runs)} teacher "
            f"run(s) (e.g. {leaking[0]}) chose on the split this run is scored on, so that split leaks into the "
            f"student through its teacher; teacher.checkpoint=last does not")


def _same_norm(a: tuple, b: tuple) -> bool:
    if a[0] is None or b[0] is None:
        return a[0] is None and b[0] is None
    return all(np.array_equal(np.asarray(x, np.float32), np.asarray(y, np.float32)) for x, y in zip(a, b))


# ---- the signal the methods read -------------------------------------------------------------------------------
class TeacherSignal:
    """T×B×C float32 teacher logits for a batch: from a T×N×C table indexed by the items' train positions
    (cached), or from the teacher networks run on the batch (same)."""

    def __init__(self, table: Tensor | None = None, models: list[nn.Module] | None = None,
                 dtype: torch.dtype | None = None) -> None:
        assert (table is None) != (models is None), "a table or models"
        self.table, self.models, self.dtype = table, models, dtype

    @property
    def cached(self) -> bool:
        """The logits are one item's each (a table), not the teachers run on the (possibly mixed) batch."""
        return self.table is not None

    @property
    def n_teachers(self) -> int:
        return self.table.shape[0] if self.table is not None else len(self.models)

    def logits(self, x: Tensor | None, index: Tensor | None) -> Tensor:
        if self.table is not None:
            assert index is not None and not index.dtype.is_floating_point, "cached teachers need item indices"
            return self.table[:, index.to(self.table.device, torch.long)]
        assert x is not None, "teachers on the batch need the input batch x"
        with torch.inference_mode():
            inputs = x.to(self.dtype) if self.dtype is not None else x
            out = torch.stack([m(inputs).float() for m in self.models])
        return out.clone()  # leaves inference mode: an ordinary tensor without grad

    def digest(self) -> str:
        """Identifies the teachers (their cached logits or weights): a resumed run must use the same ones."""
        digest = hashlib.sha256()
        tensors = [self.table] if self.table is not None else [t for m in self.models
                                                                 for t in m.state_dict().values()]
        for tensor in tensors:
            digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
        return digest.hexdigest()[:16]


def build_teacher_signal(tcfg: TeacherConfig, ctx) -> TeacherSignal:
    """The teacher signal ``teacher.*`` names, for the run ``ctx`` (a :class:`~audio_mrkd.methods.base.TrainContext`)."""
    if tcfg.logits:
        table = read_teacher_logits(tcfg.logits, ctx.train_filenames, ctx.data_info.class_names)
        return TeacherSignal(table=torch.from_numpy(table)[None].to(ctx.torch_device))
    loaded = [load_teacher_run(run, tcfg.checkpoint, ctx.data_info, ctx.open_run) for run in tcfg.runs]
    models = [model for model, _ in loaded]
    warn_if_best_leaks(tcfg, [info for _, info in loaded], ctx.data_info,
                       lambda line: print(line, file=sys.stderr, flush=True))
    if tcfg.input == "cached":
        with torch.inference_mode():
            table = torch.stack([ctx.infer_train(m.to(ctx.torch_device)).float() for m in models])
        return TeacherSignal(table=table.to(ctx.torch_device).clone())
    dtype = ctx.runtime.teacher_dtype
    for m in models:
        m.to(ctx.torch_device, dtype=dtype).requires_grad_(False)
        if ctx.runtime.channels_last:
            m.to(memory_format=torch.channels_last)
    return TeacherSignal(models=models, dtype=dtype)

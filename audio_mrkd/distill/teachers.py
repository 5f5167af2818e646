"""External teachers: finished runs of this product, or a teacher-logits file, as logits for the student's items.

Two sources (the ``teacher.*`` keys, read by every method that uses a teacher: ``kd``, and ``mrkd`` when given):

* ``teacher.runs: [RUN_DIR, …]`` — runs trained by this product on the same prepared dataset (any registered
  model). Each teacher sees inputs normalised with its own run's statistics. ``teacher.input: cached``: each
  teacher's logits on every un-augmented train item, computed once when training starts; ``same``: the teachers
  run on the student's augmented batch every step.
* ``teacher.logits: FILE`` — logits a user brings (an ensemble trained elsewhere): a CSV file with a
  ``filename`` column and one column per class, named by class (the header is the class order), one row per
  clip (see README, "Distillation from a teacher"). Always cached. A file written by ``audio-mrkd teacher-logits``
  carries its origin beside it (``FILE.origin.json``, :class:`LogitsOrigin`): the runs, their checkpoint and the
  split each chose its ``best`` epoch on, so that a leak is checked as for runs.

Cached logits follow the items through shuffles and resumes: they are indexed by the items' positions in the
train split (``Batch.index``). A cached teacher gives one item's view: under mixup the methods mix it with the
label's pairing and weight (:func:`audio_mrkd.distill.losses.mix_teacher_logits`).
"""
from __future__ import annotations

import csv
import hashlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from audio_mrkd import fileio
from audio_mrkd.config_schema import TeacherConfig
from audio_mrkd.data.info import SAME_SPLIT, DataInfo
from audio_mrkd.errors import InputError
from audio_mrkd.runtime import loss_precision


# ---- the teacher-logits file -----------------------------------------------------------------------------------
def write_teacher_logits(path: str | Path, filenames: list[str], class_names: list[str], logits: np.ndarray,
                         origin: "LogitsOrigin | None" = None) -> None:
    """The documented CSV: ``filename,<class 1>,…,<class C>``, one row per clip, floats written exactly; with
    ``origin``, its record beside it (:func:`origin_path`), else no record (a stale one is removed)."""
    assert logits.shape == (len(filenames), len(class_names)), logits.shape
    path = Path(path)
    with fileio.atomic_path(path) as tmp, tmp.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["filename", *class_names])
        for name, row in zip(filenames, np.asarray(logits, dtype=np.float32)):
            writer.writerow([name, *(repr(float(v)) for v in row)])
    if origin is None:
        origin_path(path).unlink(missing_ok=True)
    else:  # after the CSV: the record names the CSV's bytes, so a crash between the two leaves no false record
        fileio.write_json(origin_path(path), origin.to_json(_sha256(path)))


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

# ---- where a teacher-logits file came from ---------------------------------------------------------------------
ORIGIN_FORMAT = 1


def origin_path(path: str | Path) -> Path:
    """The origin record of the teacher-logits file ``path``: ``<path>.origin.json`` beside it.

    A sidecar, not a header inside the CSV: the CSV stays exactly the documented format, which users' own
    ensembles write and any CSV tool reads (an extra header line would be a data row to them, and an older version
    of this product would refuse it). The record holds the SHA-256 of the CSV's bytes, so a record that does not
    describe the file beside it (the CSV replaced or edited later, or a crash between the two atomic writes) is
    recognised and read as no record: a file's origin is never a wrong one."""
    path = Path(path)
    return path.with_name(path.name + ".origin.json")


@dataclass
class LogitsOrigin:
    """Where a teacher-logits file came from: the ``runs`` whose mean logits it holds, their ``checkpoint``
    ("last" | "best"), the items scored (``split``: "all" or a split's name) and each run's data description
    (``infos``; :data:`~audio_mrkd.data.info.SAME_SPLIT` says which split chose its best epoch). Plain JSON."""

    runs: list[str]
    checkpoint: str
    split: str
    infos: list[DataInfo]

    def to_json(self, logits_sha256: str) -> dict:
        return {"format": ORIGIN_FORMAT, "logits_sha256": logits_sha256, "checkpoint": self.checkpoint,
                "split": self.split,
                "runs": [{"run_dir": run, "data": info.to_json()} for run, info in zip(self.runs, self.infos)]}

    @classmethod
    def from_json(cls, where: Path, content) -> tuple["LogitsOrigin", str]:
        """(the origin, the SHA-256 of the CSV it describes) of a record's content; a fault is one InputError line
        naming the record ``where`` and the key."""
        def bad(key: str, what: str) -> InputError:
            return InputError(f"{where}: key {key!r}: {what}; write the teacher-logits file again, or remove this "
                              f"origin record")

        if not isinstance(content, dict):
            raise InputError(f"{where}: not an origin record (a JSON object); write the teacher-logits file again, "
                             f"or remove this origin record")
        for key in ("format", "logits_sha256", "checkpoint", "split", "runs"):
            if key not in content:
                raise bad(key, "missing")
        if content["format"] != ORIGIN_FORMAT:
            raise bad("format", f"{content['format']!r}, this version reads format {ORIGIN_FORMAT}")
        digest = content["logits_sha256"]
        if not (isinstance(digest, str) and len(digest) == 64 and all(c in "0123456789abcdef" for c in digest)):
            raise bad("logits_sha256", f"{digest!r} is not a SHA-256 (64 hex digits)")
        if content["checkpoint"] not in ("best", "last"):
            raise bad("checkpoint", f"{content['checkpoint']!r} is not 'best' or 'last'")
        if not isinstance(content["split"], str):
            raise bad("split", f"{content['split']!r} is not a split's name")
        runs = content["runs"]
        if not isinstance(runs, list) or not runs:
            raise bad("runs", "not a non-empty list of runs")
        dirs, infos = [], []
        for i, run in enumerate(runs):
            if not isinstance(run, dict) or not isinstance(run.get("run_dir"), str):
                raise bad(f"runs[{i}].run_dir", "missing or not a path")
            data = run.get("data")
            if not isinstance(data, dict):
                raise bad(f"runs[{i}].data", "missing or not a run's data description (a JSON object)")
            for key in SAME_SPLIT:  # what decides the split a run chose its best epoch on (absent: None)
                value = data.get(key)
                if value is not None and (isinstance(value, bool) or not isinstance(value, (str, int))):
                    raise bad(f"runs[{i}].data.{key}", f"{value!r} is not a name or a number")
            dirs.append(run["run_dir"])
            infos.append(DataInfo.from_json(data))
        return cls(dirs, content["checkpoint"], content["split"], infos), digest


def read_logits_origin(path: str | Path) -> tuple[LogitsOrigin | None, str]:
    """(the origin of the teacher-logits file ``path``, "") or (None, why it is unknown: no record, or one of
    another content of the file). A damaged record is one InputError line naming it and the key."""
    where = origin_path(path)
    if not where.is_file():
        return None, f"no {where.name} beside it"
    try:
        content = json.loads(where.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise InputError(f"{where}: not a UTF-8 JSON origin record; write the teacher-logits file again, or "
                         f"remove this origin record") from None
    except json.JSONDecodeError as exc:
        raise InputError(f"{where}: not a JSON origin record ({exc.msg} at line {exc.lineno}); write the "
                         f"teacher-logits file again, or remove this origin record") from None
    origin, digest = LogitsOrigin.from_json(where, content)
    if digest != _sha256(Path(path)):
        return None, f"{where.name} describes another content of the file, which changed after it was written"
    return origin, ""


def check_logits_origin(path: str | Path, student_info: DataInfo, log) -> None:
    """One line when the teacher-logits file ``path`` leaks the split the student is scored on (the same warning as
    teacher runs give, :func:`warn_if_best_leaks`), or when its origin is unknown, so that cannot be checked."""
    origin, unknown = read_logits_origin(path)
    if origin is None:
        log(f"teacher.logits: {path}: origin unknown ({unknown}), so whether its teachers' checkpoint leaks the "
            f"split this run is scored on cannot be checked")
        return
    warn_if_best_leaks(origin.checkpoint, origin.runs, origin.infos, student_info, log, logits_file=path)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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


def warn_if_best_leaks(checkpoint: str, runs: list[str], teacher_infos: list[DataInfo], student_info: DataInfo,
                       log, logits_file: str | Path | None = None) -> None:
    """One warning line when the ``best`` checkpoint of teacher ``runs`` is an epoch chosen on the split the student
    is scored on: runs distilled directly (``teacher.checkpoint``), or through the teacher-logits file
    ``logits_file`` they wrote (its :class:`LogitsOrigin`)."""
    if checkpoint != "best":
        return
    leaking = [run for run, info in zip(runs, teacher_infos) if info.scored_on_the_same_split(student_info)]
    if leaking:
        where, remedy = (("teacher.checkpoint", "teacher.checkpoint=last") if logits_file is None else
                         (f"teacher.logits: {logits_file}", "a file written by teacher-logits --checkpoint last"))
        log(f"{where}: warning: 'best' distils the epoch {len(leaking)} of the {len(runs)} teacher "
            f"run(s) (e.g. {leaking[0]}) chose on the split this run is scored on, so that split leaks into the "
            f"student through its teacher; {remedy} does not")


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
            out = torch.stack([loss_precision(m(inputs)) for m in self.models])
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
        check_logits_origin(tcfg.logits, ctx.data_info, _warn)
        return TeacherSignal(table=torch.from_numpy(table)[None].to(ctx.torch_device, ctx.runtime.input_dtype))
    loaded = [load_teacher_run(run, tcfg.checkpoint, ctx.data_info, ctx.open_run) for run in tcfg.runs]
    models = [model for model, _ in loaded]
    warn_if_best_leaks(tcfg.checkpoint, tcfg.runs, [info for _, info in loaded], ctx.data_info, _warn)
    if tcfg.input == "cached":
        with torch.inference_mode():
            table = torch.stack([loss_precision(ctx.infer_train(m.to(ctx.torch_device, ctx.runtime.input_dtype)))
                                 for m in models])
        return TeacherSignal(table=table.to(ctx.torch_device).clone())
    dtype = ctx.runtime.teacher_dtype
    for m in models:
        m.to(ctx.torch_device, dtype=dtype).requires_grad_(False)
        if ctx.runtime.channels_last:
            m.to(memory_format=torch.channels_last)
    return TeacherSignal(models=models, dtype=dtype)


def _warn(line: str) -> None:
    print(line, file=sys.stderr, flush=True)

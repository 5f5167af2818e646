"""DCASE Task 1 development-set reader (TAU Urban Acoustic Scenes 2019–2025 layout).

``meta.csv`` (TAB: filename, scene_label, identifier[, source_label]) plus ``evaluation_setup/fold1_*.csv``.
Every problem raises :class:`InputError` naming the file and line (line 1 is the header).
"""
from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from audio_mrkd.errors import InputError

#: Device → reporting group (DCASE'20–'25). 2025's extra unseen test devices are known too.
DEVICE_GROUPS = {
    "a": "real", "b": "real", "c": "real", "d": "real",
    "s1": "seen_sim", "s2": "seen_sim", "s3": "seen_sim",
    "s4": "unseen_sim", "s5": "unseen_sim", "s6": "unseen_sim",
    "s7": "unseen_sim", "s8": "unseen_sim", "s9": "unseen_sim", "s10": "unseen_sim",
}
META_COLUMNS = ["filename", "scene_label", "identifier", "source_label"]
SPLITS = ("train", "evaluate", "test")


@dataclass
class DcaseDataset:
    """The parsed development set: one row per clip, and the filenames of each split."""

    root: Path
    meta: pd.DataFrame                       # columns: filename, scene_label, identifier, source_label, device_group
    splits: dict[str, list[str]] = field(default_factory=dict)   # split → filenames (meta order)
    class_names: list[str] = field(default_factory=list)         # sorted scene labels (stable order)


def _read_tsv(path: Path) -> tuple[list[str], list[list[str]]]:
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    with path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle, delimiter="\t"))
    if not rows:
        raise InputError(f"{path}: empty file (expected a TAB-separated header)")
    return [c.strip() for c in rows[0]], rows[1:]


def safe_relative(root: Path, filename: str, where: str) -> Path:
    """Resolve ``filename`` inside ``root``; a path escaping the data directory is an error."""
    if not filename:
        raise InputError(f"{where}: empty filename")
    candidate = (root / filename).resolve()
    if Path(filename).is_absolute() or not candidate.is_relative_to(root.resolve()):
        raise InputError(f"{where}: filename '{filename}' escapes the data directory {root}")
    return candidate


def read_meta(root: Path) -> pd.DataFrame:
    """Parse and validate ``meta.csv``; adds ``line`` and ``device_group`` columns."""
    path = root / "meta.csv"
    header, rows = _read_tsv(path)
    expected_2019 = META_COLUMNS[:3]
    if header != META_COLUMNS and header != expected_2019:
        raise InputError(f"{path} line 1: wrong header {header!r}; expected TAB-separated {META_COLUMNS!r} "
                         f"(2019: {expected_2019!r})")
    records, first_line = [], {}
    for i, row in enumerate(rows, start=2):
        where = f"{path} line {i}"
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            raise InputError(f"{where}: expected {len(header)} TAB-separated fields, got {len(row)}")
        rec = dict(zip(header, (c.strip() for c in row)))
        rec.setdefault("source_label", "a")
        safe_relative(root, rec["filename"], where)
        if not rec["scene_label"]:
            raise InputError(f"{where}: empty scene_label")
        if rec["filename"] in first_line:
            raise InputError(f"{where}: duplicate filename '{rec['filename']}' (first at line "
                             f"{first_line[rec['filename']]})")
        if rec["source_label"] not in DEVICE_GROUPS:
            raise InputError(f"{where}: unknown device (source_label) '{rec['source_label']}'; known: "
                             f"{', '.join(DEVICE_GROUPS)}")
        first_line[rec["filename"]] = i
        rec["line"] = i
        records.append(rec)
    if not records:
        raise InputError(f"{path}: no rows")
    meta = pd.DataFrame.from_records(records, columns=META_COLUMNS + ["line"])
    meta["device_group"] = meta["source_label"].map(DEVICE_GROUPS)
    return meta


def read_split(path: Path, meta: pd.DataFrame, labelled: bool) -> list[str]:
    """Parse a fold file (``filename[\tscene_label]``); every row must exist in meta.csv with the same label."""
    header, rows = _read_tsv(path)
    want = ["filename", "scene_label"] if labelled else ["filename"]
    if header[: len(want)] != want:
        raise InputError(f"{path} line 1: wrong header {header!r}; expected {want!r}")
    labels = dict(zip(meta["filename"], meta["scene_label"]))
    known_labels = set(labels.values())
    names, seen = [], set()
    for i, row in enumerate(rows, start=2):
        where = f"{path} line {i}"
        if not any(cell.strip() for cell in row):
            continue
        name = row[0].strip()
        if name not in labels:
            raise InputError(f"{where}: filename '{name}' is not in meta.csv")
        if name in seen:
            raise InputError(f"{where}: duplicate filename '{name}'")
        if labelled:
            if len(row) < 2:
                raise InputError(f"{where}: missing scene_label")
            label = row[1].strip()
            if label not in known_labels:
                raise InputError(f"{where}: scene_label '{label}' does not occur in meta.csv")
            if label != labels[name]:
                raise InputError(f"{where}: {name}: scene_label '{label}' contradicts meta.csv ('{labels[name]}')")
        seen.add(name)
        names.append(name)
    if not names:
        raise InputError(f"{path}: no rows")
    return names


def resolve_split_file(root: Path, name: str) -> Path:
    """A split file given by the user: absolute, relative to cwd, or inside ``evaluation_setup/``."""
    for candidate in (Path(name), root / "evaluation_setup" / name, root / name):
        if candidate.is_file():
            return candidate
    raise InputError(f"--train-split: file '{name}' not found (looked in ., {root / 'evaluation_setup'})")


def read_dataset(root: str | Path, train_split: str | None = None) -> DcaseDataset:
    """Read meta.csv and the fold1 split files of a DCASE Task 1 development set."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{root}: data directory not found")
    meta = read_meta(root)
    setup = root / "evaluation_setup"
    train_file = resolve_split_file(root, train_split) if train_split else setup / "fold1_train.csv"
    splits = {
        "train": read_split(train_file, meta, labelled=True),
        "evaluate": read_split(setup / "fold1_evaluate.csv", meta, labelled=True),
    }
    test_file = setup / "fold1_test.csv"
    splits["test"] = read_split(test_file, meta, labelled=False) if test_file.is_file() else list(splits["evaluate"])
    overlap = set(splits["train"]) & set(splits["evaluate"])
    if overlap:
        raise InputError(f"{train_file}: {len(overlap)} file(s) also in fold1_evaluate.csv, e.g. '{sorted(overlap)[0]}'")
    return DcaseDataset(root=root, meta=meta, splits=splits, class_names=sorted(meta["scene_label"].unique()))

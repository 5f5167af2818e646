"""The records of a study's runs made as separate scheduler jobs (``ablate --slurm``): one file per run, written by
the job that ran it, gathered into ``runs.jsonl`` by that file's one writer.

Each job writes its record alone, atomically (:func:`fileio.write_json`: a temporary file renamed into place), into
``<out>/slurm/records/<variant>-fold<f>-seed<s>.json`` — the name of its run folder, so two jobs never share a file
and a job killed while writing leaves the previous state, never half a record. That needs nothing of the shared
file system but an atomic rename within one folder, which NFS and Lustre give; a lock on ``runs.jsonl``
(``filelock``) would rest on the file system's locking instead (``flock`` on NFS is emulated through the lock
manager, on Lustre a mount option), and a task killed while holding it would stall the others. ``runs.jsonl`` keeps
one writer at a time: the study's summary job (one at a time per study), or a command on a study with no job in
flight.
"""
from __future__ import annotations

import json
from pathlib import Path

from audio_mrkd import fileio
from audio_mrkd.errors import InputError
from audio_mrkd.studies import records as study_records

FOLDER = Path("slurm") / "records"


def key_of(record: dict) -> tuple:
    return record["variant"], record["fold"], record["seed"]


def path(out_dir: Path, key: tuple) -> Path:
    """Where the record of run ``key`` is written: named like its run folder."""
    variant, fold, seed = key
    return Path(out_dir) / FOLDER / f"{variant}-fold{fold}-seed{seed}.json"


def write(out_dir: Path, record: dict) -> Path:
    """Write one run's record (atomically); returns its path."""
    target = path(out_dir, key_of(record))
    fileio.write_json(target, record)
    return target


def read(out_dir: Path) -> dict[tuple, tuple[Path, dict]]:
    """Every record file of the study, by key: (its path, the record). A file that is not a record (cut short by a
    copy, edited by hand) is refused in one line naming it."""
    found = {}
    for file in sorted((Path(out_dir) / FOLDER).glob("*.json")):
        try:
            record = json.loads(file.read_text(encoding="utf-8"))
            found[key_of(record)] = (file, record)
        except (ValueError, KeyError, TypeError):
            raise InputError(f"{file}: not a run's record; remove it to run that run again") \
                from None
    return found


def unrecorded(out_dir: Path, recorded: dict[tuple, dict]) -> dict[tuple, dict]:
    """The records in files whose run has no line in ``runs.jsonl`` yet (``recorded``: its records by key)."""
    return {key: record for key, (_, record) in read(out_dir).items() if key not in recorded}


def gather(out_dir: Path, order: list[tuple]) -> int:
    """Append to ``runs.jsonl`` the record files whose run has no line there — in ``order`` (the study's keys, so
    that a study run whole has the lines of ``--jobs 1``), any others after —, then remove every record file whose
    run has its line. Returns the lines appended. The caller must be the file's only writer."""
    records_path = Path(out_dir) / "runs.jsonl"
    files = read(out_dir)
    if not files:
        return 0
    recorded = {key_of(r) for _, r in study_records.read_records(records_path)}
    rank = {key: n for n, key in enumerate(order)}
    appended = 0
    for key in sorted(files, key=lambda k: (rank.get(k, len(rank)), str(k))):
        file, record = files[key]
        if key not in recorded:
            fileio.append_line(records_path, json.dumps(record))
            appended += 1
        file.unlink()
    return appended

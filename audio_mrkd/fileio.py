"""Atomic writes: write a file (or build a folder) under a temporary name in the same folder, then rename it over
the target."""
from __future__ import annotations

import glob
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pandas as pd

from audio_mrkd import faults


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; if the block finishes, the file is fsynced, renamed over ``path``
    and the folder fsynced (so a crash leaves the old file or the new one, complete)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o644)
    try:
        yield tmp_path
        _fsync(tmp_path)
        os.replace(tmp_path, path)
        _fsync(path.parent)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | Path, data) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def append_line(path: str | Path, line: str) -> None:
    """Append one line with a single write and fsync it (a record log such as an ablation's runs.jsonl)."""
    with open(path, "a", encoding="utf-8") as handle:
        text = line.rstrip("\n") + "\n"
        handle.write(text[:len(text) // 2])
        handle.flush()
        faults.point("record")  # crash tests: die with half a line written
        handle.write(text[len(text) // 2:])
        handle.flush()
        os.fsync(handle.fileno())


def read_lines(path: str | Path, repair: bool = True) -> list[str]:
    """The complete lines of a record log. A last line cut short by a crash (no newline) is dropped from the file
    too (rewritten atomically), so that the next :func:`append_line` starts on a line of its own; ``repair=False``
    leaves the file as it is (another process's log, which may be growing)."""
    text = Path(path).read_text(encoding="utf-8")
    lines = [line for line in text.split("\n")[:-1] if line.strip()]
    if repair and text and not text.endswith("\n"):
        write_text(path, "".join(line + "\n" for line in lines))
    return lines


def write_csv(path: str | Path, frame: pd.DataFrame, **kwargs) -> None:
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False, **kwargs)


@contextmanager
def building_dir(final: str | Path) -> Iterator[Path]:
    """Yield a new empty folder (mode 0755) beside ``final`` to build in; when the block finishes, every file in
    it is fsynced and the folder is renamed to ``final``, replacing an older one. If the block raises, the folder
    is removed and ``final`` is left as it was. Nobody sees a half-built ``final``: write its completion marker
    last inside the block, and check for the marker when reading.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(final)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.{os.getpid()}.", suffix=".tmp", dir=final.parent))
    try:
        tmp.chmod(0o755)  # mkdtemp makes it private (0700); what is published is an ordinary folder
        yield tmp
        _fsync_tree(tmp)
        old = final.with_name(f".{final.name}.old")
        if old.exists():
            shutil.rmtree(old)
        faults.point("publish")
        if final.exists():
            os.replace(final, old)  # a folder cannot be renamed over a non-empty one
        os.replace(tmp, final)
        _fsync(final.parent)
        if old.exists():
            shutil.rmtree(old)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def remove_stale(target: Path) -> None:
    """Remove the temporary files and folders of ``target`` left by processes that died (killed while writing):
    their names carry the writer's pid, and only those of processes no longer alive are removed."""
    for leftover in target.parent.glob(f".{glob.escape(target.name)}.*.tmp"):
        pid = leftover.name[len(target.name) + 2:].split(".", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            if leftover.is_dir():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                leftover.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    """fsync every file and folder below ``root`` (folders after their contents, ``root`` last; links skipped)."""
    for folder, _, files in os.walk(root, topdown=False):
        for name in files:
            if not os.path.islink(os.path.join(folder, name)):
                _fsync(Path(folder) / name)
        _fsync(Path(folder))

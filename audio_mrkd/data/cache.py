"""Feature cache: one contiguous float16 array per prepared dataset, keyed by front-end config + file list.

Layout of ``<cache_dir>/<name>/<key>/``: ``features.npy`` (N×n_mels×frames float16, memory-mappable, no pickle),
``index.csv`` (row → filename, labels, device, identifier, split), ``cache.json`` (config, key, versions, shape) and
the ``COMPLETE`` marker, written last. The folder is built under a temporary name and renamed into place
(:func:`audio_mrkd.fileio.building_dir`), so an interrupted run never leaves a cache that reads as complete.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from audio_mrkd.errors import InputError

MARKER = "COMPLETE"
FEATURES = "features.npy"
INDEX = "index.csv"
INFO = "cache.json"


def default_cache_dir() -> Path:
    """``$AUDIO_MRKD_CACHE``, else ``~/.cache/audio_mrkd``."""
    env = os.environ.get("AUDIO_MRKD_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "audio_mrkd"


def cache_key(frontend_canonical: str, files: list[tuple[str, int, int]]) -> str:
    """Hash of the canonical front-end config and the sorted (filename, size, mtime_ns) list."""
    digest = hashlib.sha256(frontend_canonical.encode())
    for name, size, mtime in sorted(files):
        digest.update(f"\n{name}\t{size}\t{mtime}".encode())
    return digest.hexdigest()[:20]


def is_complete(entry: Path) -> bool:
    return (entry / MARKER).is_file() and (entry / FEATURES).is_file()


def ensure_writable(cache_dir: Path) -> None:
    """Create ``cache_dir`` and check that a file can be written there; one-line error otherwise."""
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        probe = cache_dir / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise InputError(f"--cache-dir {cache_dir}: not writable ({exc.strerror or exc})") from None


def create_array(folder: Path, n_rows: int, shape: tuple[int, int]) -> np.memmap:
    """Allocate ``features.npy`` (float16, N×F×T) as a writable memory map."""
    return np.lib.format.open_memmap(folder / FEATURES, mode="w+", dtype=np.float16, shape=(n_rows, *shape))


def finish(tmp: Path, info: dict) -> None:
    """Write cache.json and then the marker into ``tmp``, the folder being built (see
    :func:`audio_mrkd.fileio.building_dir`)."""
    (tmp / INFO).write_text(json.dumps(info, indent=2, default=str) + "\n")
    (tmp / MARKER).write_text(info["key"] + "\n")


def open_features(entry: Path, in_memory: bool = False) -> np.ndarray:
    """The cached array, memory-mapped read-only (or fully read into RAM)."""
    if not is_complete(entry):
        raise InputError(f"{entry}: feature cache is missing or incomplete; run `audio-mrkd prepare` again")
    return np.load(entry / FEATURES, mmap_mode=None if in_memory else "r", allow_pickle=False)

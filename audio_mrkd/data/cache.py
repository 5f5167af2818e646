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
    """Write cache.json (with the array's size and sampled checksum, checked on open) and then the marker into
    ``tmp``, the folder being built (see :func:`audio_mrkd.fileio.building_dir`)."""
    if (tmp / FEATURES).is_file():
        info = {**info, "array": array_record(tmp / FEATURES)}
    (tmp / INFO).write_text(json.dumps(info, indent=2, default=str) + "\n")
    (tmp / MARKER).write_text(info["key"] + "\n")


SAMPLE_BLOCKS, SAMPLE_BYTES = 16, 1 << 16  # the checksum reads 16 blocks of 64 KiB spread over the file


def array_record(path: Path) -> dict:
    """Size and a cheap checksum (SHA-256 of evenly spaced blocks) of a cached array, recorded at write time."""
    size = path.stat().st_size
    digest = hashlib.sha256(str(size).encode())
    with path.open("rb") as handle:
        for i in range(SAMPLE_BLOCKS):
            handle.seek(max(0, size - SAMPLE_BYTES) * i // (SAMPLE_BLOCKS - 1))
            digest.update(handle.read(SAMPLE_BYTES))
    return {"bytes": size, "sample_sha256": digest.hexdigest()}


def verify_features(entry: Path) -> None:
    """The array matches its own header (no truncation) and what cache.json recorded when it was written:
    shape, dtype, size and sampled checksum. One line naming the file otherwise."""
    path, again = entry / FEATURES, f"delete {entry} and run `audio-mrkd prepare` again"
    shape, dtype = check_npy(path, again)
    try:
        info = json.loads((entry / INFO).read_text())
    except (OSError, ValueError):
        raise InputError(f"{entry / INFO}: missing or not JSON; {again}") from None
    recorded = (info.get("shape"), info.get("dtype"))
    if recorded[0] is not None and (list(shape), str(dtype)) != (list(recorded[0]), recorded[1]):
        raise InputError(f"{path}: holds {list(shape)} {dtype}, cache.json recorded {recorded[0]} {recorded[1]}; "
                         f"{again}")
    if "array" in info and array_record(path) != info["array"]:
        raise InputError(f"{path}: its checksum differs from the one recorded when it was written "
                         f"(the file changed on disk); {again}")


def check_npy(path: Path, again: str) -> tuple[tuple, np.dtype]:
    """(shape, dtype) of a .npy file whose size matches its header; one line (ending with ``again``) if not."""
    try:
        with path.open("rb") as handle:
            major, _ = np.lib.format.read_magic(handle)
            read = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
            shape, _, dtype = read(handle)
            expected = handle.tell() + int(np.prod(shape)) * dtype.itemsize
    except (ValueError, OSError) as exc:
        raise InputError(f"{path}: not a readable feature array ({exc}); {again}") from None
    actual = path.stat().st_size
    if actual != expected:
        raise InputError(f"{path}: {actual} bytes where its header says {expected} (truncated or damaged); {again}")
    return shape, dtype


def open_features(entry: Path, in_memory: bool = False) -> np.ndarray:
    """The cached array, checked (:func:`verify_features`), memory-mapped read-only (or fully read into RAM)."""
    if not is_complete(entry):
        raise InputError(f"{entry}: feature cache is missing or incomplete; run `audio-mrkd prepare` again")
    verify_features(entry)
    return np.load(entry / FEATURES, mmap_mode=None if in_memory else "r", allow_pickle=False)

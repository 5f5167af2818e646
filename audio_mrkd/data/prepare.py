"""``audio-mrkd prepare``: DCASE development set → cached log-mel features + manifests.

Steps: read and validate meta.csv and the fold files; stat every audio file (the cache key); reuse a complete
cache with that key without decoding anything, or extract log-mels in parallel worker processes that write
straight into the memory-mapped array (and return per-clip sums for the statistics); compute per-mel-bin mean/std
of the train split; write
``data_manifests/<name>/{train,evaluate,test,all}.csv`` and ``features.json`` atomically.
"""
from __future__ import annotations

import multiprocessing as mp
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from filelock import FileLock

from audio_mrkd import config_io
from audio_mrkd import faults, fileio
from audio_mrkd.data import cache
from audio_mrkd.data.dcase import SPLITS, DcaseDataset, read_dataset
from audio_mrkd.data.frontend import FrontendConfig, LogMel, Resampler, load_clips, load_frontend_config
from audio_mrkd.errors import InputError
from audio_mrkd.paths import MANIFEST_DIR
from audio_mrkd.progress import progress
from audio_mrkd.versions import versions

CHUNK = 32  # clips per worker task: decoded, resampled and written together
MANIFEST_COLUMNS = ["row", "filename", "scene_label", "identifier", "source_label", "device_group"]


@dataclass
class PrepareResult:
    name: str
    manifest_dir: Path
    cache_entry: Path
    reused: bool
    n_clips: int
    seconds: float               # the whole command
    extract_seconds: float = 0.0 # decoding + log-mel only (0 when the cache was reused)


def _stat_files(ds: DcaseDataset) -> list[tuple[str, int, int]]:
    stats = []
    for filename, line in zip(ds.meta["filename"], ds.meta["line"]):
        try:
            st = (ds.root / filename).stat()
        except OSError:
            raise InputError(f"{ds.root / 'meta.csv'} line {line}: audio file '{filename}' not found") from None
        stats.append((filename, st.st_size, st.st_mtime_ns))
    return stats


# ---- worker side -----------------------------------------------------------------------------------------
_STATE: dict = {}


def _init_worker(array_path: str, cfg: FrontendConfig) -> None:
    torch.set_num_threads(1)
    _STATE["array"] = np.load(array_path, mmap_mode="r+")
    _STATE["cfg"] = cfg
    _STATE["frontend"] = LogMel(cfg)
    _STATE["resampler"] = Resampler(cfg.sample_rate)


def moments(features: torch.Tensor) -> np.ndarray:
    """Per clip and mel bin, the sum and the sum of squares over the frames (float64) → N×2×n_mels."""
    x = features.double()
    return torch.stack([x.sum(-1), x.square().sum(-1)], 1).numpy()


def _extract_chunk(task: tuple[int, list[tuple[str, str]]]) -> tuple[int, np.ndarray]:
    """Decode + log-mel rows ``start … start+len(items)``, write them into the shared array → (start, their
    :func:`moments`, of the float16 values as cached)."""
    start, items = task
    waves = load_clips([path for path, _ in items], _STATE["cfg"], _STATE["resampler"], [w for _, w in items])
    with torch.inference_mode():
        half = _STATE["frontend"](waves).half()
    _STATE["array"][start:start + len(items)] = half.numpy()
    return start, moments(half)


def _extract(ds: DcaseDataset, cfg: FrontendConfig, array_path: Path, workers: int, log) -> np.ndarray:
    """Fill the array at ``array_path`` → the :func:`moments` of every row."""
    meta_path = ds.root / "meta.csv"
    items = [(str(ds.root / f), f"{ds.root / f} (meta.csv line {line})")
             for f, line in zip(ds.meta["filename"], ds.meta["line"])]
    tasks = [(i, items[i:i + CHUNK]) for i in range(0, len(items), CHUNK)]
    out = np.zeros((len(items), 2, cfg.n_mels))
    bar = progress(total=len(items), desc=f"log-mel {meta_path.parent.name}", unit="clip", min_interval=5)

    def collect(results):
        for start, done in results:
            out[start:start + len(done)] = done
            bar.update(len(done))
            faults.point("extract")

    threads = torch.get_num_threads()
    try:
        if workers <= 1:  # in this process: its thread count is restored below (training after it depends on it)
            _init_worker(str(array_path), cfg)
            collect(map(_extract_chunk, tasks))
        else:
            ctx = mp.get_context("spawn" if torch.cuda.is_initialized() else "fork")  # no fork after CUDA init
            with ctx.Pool(workers, initializer=_init_worker, initargs=(str(array_path), cfg)) as pool:
                collect(pool.imap_unordered(_extract_chunk, tasks))
    finally:
        bar.close()
        _STATE.clear()
        torch.set_num_threads(threads)
    return out


# ---- main side -------------------------------------------------------------------------------------------
def cached_moments(features: np.ndarray, rows: np.ndarray, chunk: int = 512) -> np.ndarray:
    """:func:`moments` of ``rows`` read back from a cached array (sorted row order)."""
    rows = np.sort(rows)
    out = np.zeros((len(rows), 2, features.shape[1]))
    for i in range(0, len(rows), chunk):
        out[i:i + chunk] = moments(torch.from_numpy(np.asarray(features[rows[i:i + chunk]])))
    return out


def train_stats(row_moments: np.ndarray, n_frames: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-mel-bin mean and std over all frames of the clips whose :func:`moments` are given (float64)."""
    total, total_sq = row_moments.sum(axis=0)
    count = len(row_moments) * n_frames
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean ** 2, 0.0))
    return mean, std


def _index_frame(ds: DcaseDataset) -> pd.DataFrame:
    index = ds.meta.drop(columns=["line"]).copy()
    index.insert(0, "row", np.arange(len(index)))
    membership = {f: s for s in ("evaluate", "train") for f in ds.splits[s]}
    index["split"] = index["filename"].map(membership).fillna("unused")
    return index


def build_cache(ds: DcaseDataset, cfg: FrontendConfig, entry: Path, key: str, workers: int, log,
                versions_info: dict) -> np.ndarray:
    """Extract every meta.csv row into a new cache entry (staged, then renamed) → the :func:`moments` of every row.
    A failed write (a full disk) leaves earlier entries as they were and raises one OSError line naming the entry."""
    try:
        return _build_cache(ds, cfg, entry, key, workers, log, versions_info)
    except OSError as exc:
        reason = exc.strerror or str(exc).strip("'\"")
        raise OSError(f"{entry}: the feature cache could not be written ({reason}); earlier caches are kept") \
            from None


def _build_cache(ds: DcaseDataset, cfg: FrontendConfig, entry: Path, key: str, workers: int, log,
                 versions_info: dict) -> np.ndarray:
    with fileio.building_dir(entry) as tmp:
        array = cache.create_array(tmp, len(ds.meta), cfg.shape)
        del array  # workers reopen it
        row_moments = _extract(ds, cfg, tmp / cache.FEATURES, workers, log)
        _index_frame(ds).to_csv(tmp / cache.INDEX, index=False)
        info = {"key": key, "features": config_io.to_dict(cfg), "shape": [len(ds.meta), *cfg.shape],
                "dtype": "float16", "data_dir": str(ds.root.resolve()), "versions": versions_info}
        cache.finish(tmp, info)
    return row_moments


def write_manifests(ds: DcaseDataset, manifest_dir: Path, info: dict) -> None:
    """Write ``{train,evaluate,test,all}.csv`` + ``features.json`` into a staged folder and swap it in."""
    index = _index_frame(ds)
    by_name = index.set_index("filename")
    with fileio.building_dir(manifest_dir) as tmp:
        for split in SPLITS:
            rows = by_name.loc[ds.splits[split]].reset_index()
            rows[MANIFEST_COLUMNS].to_csv(tmp / f"{split}.csv", index=False)
        index[MANIFEST_COLUMNS].to_csv(tmp / "all.csv", index=False)
        fileio.write_json(tmp / "features.json", info)


def prepare(data_dir: str | Path, name: str, features: str | Path | None = None, cache_dir: str | Path | None = None,
            workers: int = 2, train_split: str | None = None, manifest_dir: str | Path = MANIFEST_DIR,
            overrides: list[str] | None = None, log=print) -> PrepareResult:
    """Prepare one DCASE development set; returns where things went and whether the cache was reused."""
    started = time.perf_counter()
    if not name or not name.replace("_", "").replace("-", "").isalnum():
        raise InputError(f"--name '{name}': use letters, digits, '-' and '_' only")
    cfg = load_frontend_config(features, overrides)
    ds = read_dataset(data_dir, train_split)
    cache_dir = Path(cache_dir) if cache_dir else cache.default_cache_dir()
    cache.ensure_writable(cache_dir)
    key = cache.cache_key(cfg.canonical(), _stat_files(ds))
    entry = cache_dir / name / key
    entry.parent.mkdir(parents=True, exist_ok=True)
    extract_seconds = 0.0
    versions_info = versions()
    with FileLock(str(entry.parent / f".{key}.lock")):
        reused = cache.is_complete(entry)
        if reused:
            log(f"prepare: reusing complete feature cache {entry} (key {key}); no audio decoded")
        else:
            log(f"prepare: extracting {len(ds.meta)} clips → {entry} with {workers} worker(s)")
            extract_started = time.perf_counter()
            row_moments = build_cache(ds, cfg, entry, key, workers, log, versions_info)
            extract_seconds = time.perf_counter() - extract_started
    features_arr = cache.open_features(entry)
    row_of = {f: i for i, f in enumerate(ds.meta["filename"])}
    rows = np.array([row_of[f] for f in ds.splits["train"]], dtype=np.int64)
    train_moments = cached_moments(features_arr, rows) if reused else row_moments[rows]
    mean, std = train_stats(train_moments, features_arr.shape[2])
    info = {
        "name": name, "key": key, "cache_entry": str(entry.resolve()), "data_dir": str(ds.root.resolve()),
        "features": config_io.to_dict(cfg), "shape": list(features_arr.shape), "dtype": "float16",
        "class_names": ds.class_names, "device_names": sorted(ds.meta["source_label"].unique()),
        "train_split": train_split or "fold1_train.csv",
        "split_sizes": {s: len(ds.splits[s]) for s in SPLITS},
        "train_mean": mean.round(6).tolist(), "train_std": std.round(6).tolist(),
        "versions": versions_info,
    }
    manifest_dir = Path(manifest_dir) / name
    write_manifests(ds, manifest_dir, info)
    seconds = time.perf_counter() - started
    log(f"prepare: {name}: {len(ds.meta)} clips, features {tuple(features_arr.shape)} float16 "
        f"({features_arr.nbytes / len(ds.meta):.0f} bytes/clip), manifests in {manifest_dir} ({seconds:.1f} s)")
    return PrepareResult(name, manifest_dir, entry, reused, len(ds.meta), seconds, extract_seconds)

"""Prepare throughput and epoch-read cost, side by side in one run (issue: prepare/cache).

    python benchmarks/bench_prepare.py [--clips 1000] [--workers 2]

Makes N one-second 44.1 kHz clips (tones + noise) in a DCASE layout, then measures:
  1. ``audio-mrkd prepare`` (fresh cache, N workers) vs a librosa loop (load + resample to 32 kHz +
     melspectrogram, the same front-end parameters), in clips/s;
  2. one epoch read through the real dataset API (load_split + BatchLoader, batch 256) vs decoding every WAV and
     computing the log-mel again the DCASE'24 baseline's way (soundfile + torchaudio Resample + MelSpectrogram,
     what it does every epoch), and with this package's own front-end, in seconds.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import librosa
import numpy as np
import soundfile as sf
import torch

from audio_mrkd.data.frontend import FrontendConfig, LogMel, Resampler, load_clip
from audio_mrkd.data.prepare import prepare
from audio_mrkd.data.splits import BatchLoader, load_split
from audio_mrkd.versions import versions


def make_tree(root: Path, n: int, rate: int = 44100) -> Path:
    rng = np.random.default_rng(0)
    t = np.arange(rate) / rate
    meta, train, evaluate = (["filename\tscene_label\tidentifier\tsource_label"], ["filename\tscene_label"],
                             ["filename\tscene_label"])
    (root / "audio").mkdir(parents=True)
    (root / "evaluation_setup").mkdir()
    for i in range(n):
        label = ("park", "street", "metro")[i % 3]
        x = 0.3 * np.sin(2 * np.pi * (300 + 200 * (i % 3)) * t) + 0.05 * rng.standard_normal(rate)
        name = f"audio/{label}-{i:05d}.wav"
        sf.write(root / name, x, rate, subtype="PCM_16")
        meta.append(f"{name}\t{label}\tloc{i % 10}\ta")
        (evaluate if i % 10 == 0 else train).append(f"{name}\t{label}")
    (root / "meta.csv").write_text("\n".join(meta) + "\n")
    (root / "evaluation_setup/fold1_train.csv").write_text("\n".join(train) + "\n")
    (root / "evaluation_setup/fold1_evaluate.csv").write_text("\n".join(evaluate) + "\n")
    return root


def librosa_loop(paths: list[Path], cfg: FrontendConfig) -> float:
    start = time.perf_counter()
    for path in paths:
        y, _ = librosa.load(path, sr=cfg.sample_rate, mono=True, duration=cfg.clip_seconds)
        y = librosa.util.fix_length(y, size=cfg.n_samples)
        mel = librosa.feature.melspectrogram(y=y, sr=cfg.sample_rate, n_fft=cfg.n_fft, win_length=cfg.win_length,
                                             hop_length=cfg.hop_length, n_mels=cfg.n_mels, htk=True, norm=None)
        np.log(mel + cfg.log_offset)
    return time.perf_counter() - start


def decode_epoch(paths: list[Path], cfg: FrontendConfig, batch: int = 256) -> float:
    """Decode + resample + log-mel every clip with the package's front-end, one file at a time as a training
    loader without a cache would, log-mel per batch of 256 (one process)."""
    frontend, resampler = LogMel(cfg), Resampler(cfg.sample_rate)
    start = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, len(paths), batch):
            waves = torch.stack([load_clip(p, cfg, resampler) for p in paths[i:i + batch]])
            frontend(waves)
    return time.perf_counter() - start


def dcase24_epoch(paths: list[Path], cfg: FrontendConfig, batch: int = 256) -> float:
    """What the DCASE'24 baseline does every epoch: decode each file (soundfile), then per batch torchaudio's
    Resample(44.1 → 32 kHz) + MelSpectrogram + log(x + 1e-5) (one process)."""
    import torchaudio
    resample = torchaudio.transforms.Resample(44100, cfg.sample_rate)
    mel = torchaudio.transforms.MelSpectrogram(cfg.sample_rate, n_fft=cfg.n_fft, win_length=cfg.win_length,
                                               hop_length=cfg.hop_length, n_mels=cfg.n_mels)
    start = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, len(paths), batch):
            waves = torch.stack([torch.from_numpy(sf.read(p, dtype="float32")[0]) for p in paths[i:i + batch]])
            (mel(resample(waves)) + cfg.log_offset).log()
    return time.perf_counter() - start


def cache_epoch(name: str, manifests: Path, batch: int = 256) -> tuple[float, float]:
    """(seconds to load the split from the memory-mapped cache + one epoch, seconds of a further epoch with
    the split resident in RAM — what every later epoch of training costs)."""
    start = time.perf_counter()
    split = load_split(name, "train", manifests)
    loader = BatchLoader(split, batch_size=batch, shuffle=True, seed=0)
    for b in loader:
        b.x.sum()  # touch the data
    first = time.perf_counter() - start
    start = time.perf_counter()
    for b in loader:
        b.x.sum()
    return first, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(1)
    cfg = FrontendConfig()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        tree = make_tree(tmp / "dev", args.clips)
        paths = sorted((tree / "audio").glob("*.wav"))
        result = prepare(tree, "bench", cache_dir=tmp / "cache", manifest_dir=tmp / "manifests",
                         workers=args.workers, log=lambda *_: None)
        ours = args.clips / result.seconds
        ours_extract = args.clips / result.extract_seconds
        lib = args.clips / librosa_loop(paths, cfg)
        train = load_split("bench", "train", tmp / "manifests")
        train_paths = [tree / f for f in train.items["filename"]]
        epochs = [cache_epoch("bench", tmp / "manifests") for _ in range(5)]
        cached_first, cached = min(e[0] for e in epochs), min(e[1] for e in epochs)
        decoded = decode_epoch(train_paths, cfg)
        baseline = dcase24_epoch(train_paths, cfg)
        bytes_per_clip = int(np.prod(cfg.shape)) * 2
    v = versions()
    print(f"# bench_prepare: {args.clips} one-second 44.1 kHz clips, {args.workers} workers, "
          f"torch {v['torch']}, torchaudio {v['torchaudio']}, librosa {v['librosa']}, {torch.get_num_threads()} "
          f"thread(s) in the main process")
    print(f"prepare (audio-mrkd, {args.workers} workers)   {ours:8.0f} clips/s  whole command (target >= 1000)")
    print(f"  of which decode + log-mel           {ours_extract:8.0f} clips/s")
    print(f"librosa loop (1 process)              {lib:8.0f} clips/s")
    print(f"ratio prepare / librosa               {ours / lib:8.1f} x")
    print(f"cache bytes per clip                  {bytes_per_clip:8d} (float16, {cfg.shape[0]}x{cfg.shape[1]})")
    print(f"epoch from cache, resident ({len(train)} clips) {cached:8.4f} s  (BatchLoader, batch 256, normalised)")
    print(f"first epoch incl. load_split from the memory map {cached_first:8.4f} s")
    print(f"epoch the DCASE'24 way ({len(train)} clips)  {baseline:8.3f} s  (soundfile + torchaudio Resample + "
          "MelSpectrogram per batch, 1 process)")
    print(f"epoch decode + this package's front-end {decoded:8.3f} s  (soundfile + audio_mrkd LogMel, 1 process)")
    print(f"ratio DCASE'24 epoch / cache epoch     {baseline / cached:8.0f} x  (target >= 100)")
    print(f"ratio DCASE'24 epoch / first epoch incl. load {baseline / cached_first:8.0f} x")
    print(f"ratio package decode / cache epoch     {decoded / cached:8.0f} x")


if __name__ == "__main__":
    main()

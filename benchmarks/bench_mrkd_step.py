"""MrKD vs CE training-step time through the real engine, side by side in one run.

    python benchmarks/bench_mrkd_step.py [--ks 1 2 4 8] [--batch 64] [--steps 20] [--model cp_mobile]

Synthetic log-mels of the default front-end shape (1×256×65); the snapshot bank is filled before timing, so every
timed MrKD step runs the K teacher forwards (teacher_input=same) or gathers cached logits (teacher_input=cached).
Prints ms/step, the ratio to CE and the teacher-forward share of the step.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from audio_mrkd.experiment import load_experiment
from audio_mrkd.train.data import DataBundle, synthetic_splits
from audio_mrkd.train.engine import Trainer
from audio_mrkd.versions import versions


def bench(method: str, k: int, args, teacher_input: str = "same") -> tuple[float, float]:
    cfg = load_experiment(None, [
        "data.kind=synthetic", f"model.name={args.model}", f"method={method}", f"mrkd.k={k}",
        f"mrkd.teacher_input={teacher_input}", f"train.batch_size={args.batch}", "train.progress=false",
        "train.log_every=1", "train.out_dir=/tmp/audio_mrkd_bench", "train.save_checkpoints=false"])
    train, held = synthetic_splits(cfg.data, shape=(1, 256, 65), n_classes=10)
    trainer = Trainer(cfg, DataBundle(train, held, "synthetic", {}))
    if trainer.mrkd:
        for _ in range(k):
            trainer.mrkd._backup(trainer.model)
    batches = list(trainer.train_loader)
    times, shares = [], []
    for i in range(args.steps + 3):
        batch = batches[i % len(batches)]
        start = time.perf_counter()
        logs = trainer._step(batch)
        if i >= 3:  # warm-up steps excluded
            times.append(time.perf_counter() - start)
            shares.append(logs.get("mrkd/teacher_time_share", 0.0))
    return 1000 * float(np.median(times)), float(np.median(shares))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ks", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--model", default="cp_mobile")
    args = parser.parse_args()
    v = versions()
    print(f"# bench_mrkd_step: {args.model}, batch {args.batch}, input 1x256x65, median of {args.steps} steps, "
          f"torch {v['torch']}, {torch.get_num_threads()} CPU threads, "
          f"device {'cuda' if torch.cuda.is_available() else 'cpu'}")
    ce, _ = bench("ce", 1, args)
    print(f"{'variant':28s} {'ms/step':>9s} {'/ CE':>6s} {'teacher share':>14s} {'samples/s':>10s}")
    print(f"{'CE':28s} {ce:9.1f} {1.0:6.2f} {'-':>14s} {1000 * args.batch / ce:10.0f}")
    for teacher_input in ("same", "cached"):
        for k in args.ks:
            ms, share = bench("mrkd", k, args, teacher_input)
            print(f"{f'MrKD K={k} teacher_input={teacher_input}':28s} {ms:9.1f} {ms / ce:6.2f} {share:14.2f} "
                  f"{1000 * args.batch / ms:10.0f}")


if __name__ == "__main__":
    main()

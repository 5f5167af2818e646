"""``audio-mrkd bench``: MrKD vs CE training-step cost through the real engine, side by side in one run.

Synthetic log-mels of the default front-end shape (1×256×65) and the real ``Trainer._step``; the snapshot bank is
filled before timing, so every timed MrKD step runs the K teacher forwards (``teacher_input: same``) or gathers
cached logits (``teacher_input: cached``). Printed per variant: ms/step (median), the ratio to CE, the
teacher-forward share of the step, the K teacher forwards timed alone, and the overhead ratio
(MrKD step − CE step) / (K teacher forwards alone); for the cached mode, the one inference pass per backup.
"""
from __future__ import annotations

import time

import numpy as np
import torch

from audio_mrkd.experiment import load_experiment
from audio_mrkd.train.data import DataBundle, synthetic_splits
from audio_mrkd.train.engine import Trainer
from audio_mrkd.versions import versions


def _trainer(method: str, k: int, model: str, batch: int, teacher_input: str, device: str,
             items: int) -> Trainer:
    cfg = load_experiment(None, [
        "data.kind=synthetic", f"model.name={model}", f"method={method}", f"mrkd.k={k}",
        f"mrkd.teacher_input={teacher_input}", f"train.batch_size={batch}", "train.progress=false",
        "train.log_every=1", "train.out_dir=/tmp/audio_mrkd_bench", "train.save_checkpoints=false",
        f"train.device={device}", f"data.synthetic_items={items}"])
    train, held = synthetic_splits(cfg.data, shape=(1, 256, 65), n_classes=10)
    return Trainer(cfg, DataBundle(train, held, "synthetic", {}))


def _median_ms(fn, steps: int, warmup: int = 3) -> float:
    times = []
    for i in range(steps + warmup):
        start = time.perf_counter()
        fn(i)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return 1000 * float(np.median(times))


def measure(method: str, k: int, model: str = "cp_mobile", batch: int = 64, steps: int = 20,
            teacher_input: str = "same", device: str = "auto") -> dict:
    """Median ms per training step (and, for MrKD, teacher share, teachers alone, backup pass)."""
    trainer = _trainer(method, k, model, batch, teacher_input, device, items=max(4 * batch, 256))
    out = {}
    if trainer.mrkd:
        start = time.perf_counter()
        for _ in range(k):
            trainer.mrkd._backup(trainer.model)
        out["backup_pass_ms"] = 1000 * (time.perf_counter() - start) / k
    batches = list(trainer.train_loader)
    shares = []

    def step(i: int) -> None:
        logs = trainer._step(batches[i % len(batches)])
        shares.append(logs.get("mrkd/teacher_time_share", 0.0))

    out["step_ms"] = _median_ms(step, steps)
    out["teacher_share"] = float(np.median(shares[3:])) if shares[3:] else 0.0
    if trainer.mrkd and teacher_input == "same":
        x = batches[0].x
        out["teachers_alone_ms"] = _median_ms(lambda i: trainer.mrkd.bank.logits(x), steps)
    return out


def run_bench(ks=(1, 2, 4, 8), model: str = "cp_mobile", batch: int = 64, steps: int = 20, device: str = "auto",
              log=print) -> list[dict]:
    v = versions()
    dev = "cuda" if (device == "cuda" or (device == "auto" and torch.cuda.is_available())) else "cpu"
    log(f"# audio-mrkd bench: {model}, batch {batch}, input 1x256x65, median of {steps} steps, device {dev}, "
        f"torch {v['torch']}, {torch.get_num_threads()} CPU threads")
    ce = measure("ce", 1, model, batch, steps, device=device)
    rows = [{"variant": "CE", **ce, "ratio": 1.0}]
    for teacher_input in ("same", "cached"):
        for k in ks:
            m = measure("mrkd", k, model, batch, steps, teacher_input, device)
            m.update(variant=f"MrKD K={k} {teacher_input}", ratio=m["step_ms"] / ce["step_ms"])
            if "teachers_alone_ms" in m:
                m["overhead_ratio"] = (m["step_ms"] - ce["step_ms"]) / m["teachers_alone_ms"]
            rows.append(m)
    log(f"{'variant':22s} {'ms/step':>8s} {'/ CE':>6s} {'teacher share':>13s} {'K fwd alone ms':>15s} "
        f"{'(MrKD-CE)/K fwd':>16s} {'backup pass ms':>15s} {'samples/s':>10s}")
    for r in rows:
        log(f"{r['variant']:22s} {r['step_ms']:8.1f} {r['ratio']:6.2f} {r.get('teacher_share', 0):13.2f} "
            f"{r.get('teachers_alone_ms', float('nan')):15.1f} {r.get('overhead_ratio', float('nan')):16.2f} "
            f"{r.get('backup_pass_ms', float('nan')):15.1f} {1000 * batch / r['step_ms']:10.0f}")
    return rows

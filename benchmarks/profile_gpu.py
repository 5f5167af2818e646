"""Where a training step and the teacher forwards spend GPU time (torch.profiler; top kernels by GPU time, and
GPU-busy time vs wall time, which tells a launch-bound step from a GPU-bound one).

    python benchmarks/profile_gpu.py [--batch 256]      # on a CUDA machine
"""
import argparse
import time

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

from audio_mrkd import bench

FAST_EAGER = ["train.precision=bf16-mixed", "train.channels_last=true", "train.cudnn_benchmark=true"]


def _profile(name: str, fn, rows: int, calls: int = 10) -> None:
    for _ in range(5):
        fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
        wall = time.perf_counter() - start
    events = prof.key_averages()
    # Only device-side rows (kernels, memsets, copies): an operator's row repeats its kernels' time.
    gpu = sum(e.self_device_time_total for e in events if e.device_type == DeviceType.CUDA) / 1000 / calls
    print(f"\n### {name}: wall {1000 * wall / calls:.2f} ms/call, GPU kernels {gpu:.2f} ms/call")
    print(events.table(sort_by="self_device_time_total", row_limit=rows, max_name_column_width=60))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--rows", type=int, default=18)
    args = parser.parse_args()
    bench._DEVICE["name"] = "cuda"
    common = ["model.name=cp_mobile", f"train.batch_size={args.batch}", *bench.DCASE_AUGMENT]
    for label, overrides in (("CE step, eager bf16 + channels_last + benchmark", FAST_EAGER),
                             ("CE step, compiled (reduce-overhead)", bench.GPU_FAST),
                             ("CE step, whole step as one CUDA graph (train.step_graph)", bench.STEP_GRAPH)):
        trainer = bench._trainer([*common, *overrides], items=8 * args.batch)
        batches = bench._cycle(trainer.train_loader)
        _profile(label, lambda: trainer.step(next(batches)), args.rows)
    trainer = bench._trainer([*common, *FAST_EAGER, "method=mrkd", "mrkd.k=1", "mrkd.teacher_graph=false"],
                             items=8 * args.batch)
    bench._fill_bank(trainer)
    x = next(iter(trainer.train_loader)).x
    _profile("one BN-folded bf16 teacher forward, eager", lambda: trainer.method.objective.bank.logits(x), args.rows)


if __name__ == "__main__":
    main()

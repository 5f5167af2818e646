"""Training-step cost of every registered method against CE, measured side by side in one run.

    python benchmarks/bench_methods.py [--batch 32] [--steps 10] [--shape 1 64 65]

The real ``Trainer._step`` on synthetic log-mels of the given shape (default: the demo's 64-mel front-end),
``cp_mobile``, fp32, on this machine's CPU (or CUDA when present); MrKD's bank is filled before timing, the EMA
teacher is active from the first step (``warmup_steps=0``); ``kd`` distils three teachers twice as wide
(``base_channels`` 64, one-epoch runs made first: their cost, not their accuracy, is measured). Prints ms/step and
the ratio to CE; DLB trains on 1.5 × the batch per step, so its samples/s column counts the loader's new items only.
"""
from __future__ import annotations

import argparse
import json

from audio_mrkd.bench import measure_trainer, teacher_runs

VARIANTS = {
    "ce": ["method=ce"],
    "mrkd (K 4, same batch)": ["method=mrkd"],
    "mrkd (K 4, cached)": ["method=mrkd", "mrkd.teacher_input=cached"],
    "pskd": ["method=pskd"],
    "dlb": ["method=dlb"],
    "ema": ["method=ema", "method_options.warmup_steps=0"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=32, help="loader batch size")
    parser.add_argument("--steps", type=int, default=10, help="steps per timed block (median of 3 blocks)")
    parser.add_argument("--shape", type=int, nargs=3, default=[1, 64, 65], help="item shape C F T")
    args = parser.parse_args()
    teachers = "kd.teachers=" + json.dumps(teacher_runs(3, "{base_channels: 64}", tuple(args.shape)))
    variants = VARIANTS | {
        "kd (3 teachers ×2 wide, cached)": ["method=kd", teachers],
        "kd (3 teachers ×2 wide, same batch)": ["method=kd", teachers, "kd.teacher_input=same"],
        "mrkd (K 4, same) + 3 cached teachers": ["method=mrkd", teachers],
    }
    rows = {name: measure_trainer(["augment.mixup_alpha=0", *overrides], args.batch, args.steps,
                                  shape=tuple(args.shape))["step_ms"]
            for name, overrides in variants.items()}
    print(f"| method | ms/step (batch {args.batch}) | / CE | new items/s |")
    print("|---|---|---|---|")
    for name, ms in rows.items():
        print(f"| {name} | {ms:.1f} | {ms / rows['ce']:.2f} | {1000 * args.batch / ms:.0f} |")


if __name__ == "__main__":
    main()

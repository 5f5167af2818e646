"""A training step in fp32 and under bf16 autocast, side by side in one run, through the real ``Trainer.step``.

    OMP_NUM_THREADS=1 python benchmarks/bench_cpu_precision.py --config configs/experiments/fmnist_cpu_recipe.yaml \
        --shape 3 32 32 --batch 128

On a CPU with bf16 units (AMX, AVX512-BF16) bf16 autocast is the faster of the two; on one without them it is
emulated and slower. The Fashion-MNIST studies train in bf16 on this project's machine because of this ratio.
"""
from __future__ import annotations

import argparse

from audio_mrkd.bench import measure_trainer, ratio_table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", help="recipe YAML (model, optimiser, augmentation); default: built-in")
    parser.add_argument("--batch", type=int, default=128, help="loader batch size")
    parser.add_argument("--steps", type=int, default=10, help="steps per timed block (median of 3 blocks)")
    parser.add_argument("--shape", type=int, nargs=3, default=[3, 32, 32], help="item shape C H W (or C F T)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="overrides for both rows")
    args = parser.parse_args()
    rows = {precision: measure_trainer([f"train.precision={precision}", *args.overrides], args.batch, args.steps,
                                       shape=tuple(args.shape), config=args.config)["step_ms"]
            for precision in ("32", "bf16-mixed")}
    print(ratio_table(rows, "precision", args.batch, "32", "fp32"))


if __name__ == "__main__":
    main()

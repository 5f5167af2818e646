"""Training-step cost of every registered method against CE, measured side by side in one run.

    python benchmarks/bench_methods.py [--batch 32] [--steps 10] [--shape 1 64 65] [--config RECIPE.yaml]
        [--mixup ALPHA] [--rows NAME ...] [--teacher KEY=VALUE ...] [KEY=VALUE ...]

The real ``Trainer.step`` on synthetic items of the given shape (default: the demo's 64-mel log-mels), with the
recipe's model, optimiser, augmentation and precision (default: the built-in defaults, ``cp_mobile`` in fp32) plus
the trailing overrides, on this machine's CPU (or CUDA when present); MrKD's bank is filled before timing, the EMA
teacher is active from the first step (``warmup_steps=0``); ``kd`` distils three teachers made by the ``--teacher``
overrides (default: ``cp_mobile`` twice as wide; one-epoch runs made first: their cost, not their accuracy, is
measured). ``--mixup ALPHA`` trains every row under mixup (default 0: none), where PS-KD's ``clean`` store and DLB
add a forward without gradient (PS-KD over the batch, DLB over half of it). Prints ms/step and the ratio to CE; DLB trains on 1.5 × the batch per step, so its samples/s column counts
the loader's new items only. The Fashion-MNIST study's recipe (docs/results.md):

    OMP_NUM_THREADS=1 python benchmarks/bench_methods.py --config configs/experiments/fmnist_cpu_recipe.yaml \
        --shape 3 32 32 --batch 128 --teacher model.name=resnet56 -- train.precision=bf16-mixed
"""
from __future__ import annotations

import argparse
import json

from audio_mrkd.bench import measure_trainer, ratio_table, teacher_runs

VARIANTS = {
    "ce": ["method=ce"],
    "mrkd (K 4, same batch)": ["method=mrkd"],
    "mrkd (K 4, cached)": ["method=mrkd", "mrkd.teacher_input=cached"],
    "pskd": ["method=pskd"],
    "pskd (store clean)": ["method=pskd", "pskd.store=clean"],
    "dlb": ["method=dlb"],
    "ema": ["method=ema", "ema.warmup_steps=0"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=32, help="loader batch size")
    parser.add_argument("--steps", type=int, default=10, help="steps per timed block (median of 3 blocks)")
    parser.add_argument("--shape", type=int, nargs=3, default=[1, 64, 65], help="item shape C F T (or C H W)")
    parser.add_argument("--rows", nargs="+", metavar="NAME",
                        help="only the rows whose name starts with one of these (ce always), e.g. --rows pskd dlb")
    parser.add_argument("--mixup", type=float, default=0.0, help="mixup α of every row (default 0: no mixup)")
    parser.add_argument("--config", help="recipe YAML (model, optimiser, augmentation, precision); default: built-in")
    parser.add_argument("--teacher", nargs="+", default=["model.options={base_channels: 64}"], metavar="KEY=VALUE",
                        help="overrides that make kd's teachers from the recipe (default: cp_mobile twice as wide)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="overrides for every row")
    args = parser.parse_args()
    shape = tuple(args.shape)
    wanted = lambda name: args.rows is None or name == "ce" or name.startswith(tuple(args.rows))  # noqa: E731
    variants = {name: overrides for name, overrides in VARIANTS.items() if wanted(name)}
    if any(wanted(name) for name in ("kd", "mrkd (K 4, same) + 3 cached teachers")):
        teachers = "teacher.runs=" + json.dumps(teacher_runs(3, [*args.teacher, *args.overrides], shape,
                                                             config=args.config))
        variants |= {name: overrides for name, overrides in {
            "kd (3 teachers, cached)": ["method=kd", teachers],
            "kd (3 teachers, same batch)": ["method=kd", teachers, "teacher.input=same"],
            "mrkd (K 4, same) + 3 cached teachers": ["method=mrkd", teachers],
        }.items() if wanted(name)}
    rows = {name: measure_trainer([f"augment.mixup_alpha={args.mixup}", *args.overrides, *overrides], args.batch, args.steps,
                                  shape=shape, config=args.config)["step_ms"]
            for name, overrides in variants.items()}
    print(ratio_table(rows, "method", args.batch, "ce", "CE", items_per_s=True))


if __name__ == "__main__":
    main()

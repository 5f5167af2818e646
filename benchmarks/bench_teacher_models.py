"""Training-step cost of candidate teacher networks against the resnet20 student, side by side in one run, through
the real ``Trainer.step`` (the Fashion-MNIST CPU recipe, bf16 autocast as its studies train).

    OMP_NUM_THREADS=1 python benchmarks/bench_teacher_models.py --config configs/experiments/fmnist_cpu_recipe.yaml \
        train.precision=bf16-mixed

A teacher is trained once per study; its cost per study is (step ratio) × (its epochs / the student's).
"""
from __future__ import annotations

import argparse

from audio_mrkd.bench import measure_trainer, ratio_table

MODELS = {"resnet20": ["model.name=resnet20"], "resnet32": ["model.name=resnet32"],
          "resnet56": ["model.name=resnet56"], "wrn16_2": ["model.name=wrn16_k", "model.options={widen: 2}"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", help="recipe YAML (model, optimiser, augmentation); default: built-in")
    parser.add_argument("--batch", type=int, default=128, help="loader batch size")
    parser.add_argument("--steps", type=int, default=10, help="steps per timed block (median of 3 blocks)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="overrides for every row")
    args = parser.parse_args()
    rows = {name: measure_trainer([*model, *args.overrides], args.batch, args.steps, shape=(3, 32, 32),
                                  config=args.config)["step_ms"] for name, model in MODELS.items()}
    print(ratio_table(rows, "model", args.batch, "resnet20", "resnet20"))


if __name__ == "__main__":
    main()

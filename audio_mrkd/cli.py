"""``audio-mrkd`` command line: one subcommand per job; bad input → one line on stderr and exit code 2."""
from __future__ import annotations

import argparse
import sys

from audio_mrkd.cpu_memory import tune_malloc
from audio_mrkd.errors import InputError


def _add_prepare_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", required=True, help="DCASE Task 1 development set (meta.csv, audio/, evaluation_setup/)")
    p.add_argument("--name", required=True, help="name of the prepared dataset (data.name in training configs)")
    p.add_argument("--features", default=None, help="front-end YAML (default: the DCASE'24 front-end, "
                   "configs/features/dcase24.yaml)")
    p.add_argument("--cache-dir", default=None, help="feature cache root (default $AUDIO_MRKD_CACHE or ~/.cache/audio_mrkd)")
    p.add_argument("--workers", type=int, default=2, help="extraction processes (default 2)")
    p.add_argument("--train-split", default=None, help="train split file instead of fold1_train.csv (e.g. split25.csv)")
    p.add_argument("--manifest-dir", default="data_manifests", help="where manifests go (default data_manifests/)")
    p.add_argument("overrides", nargs="*", help="front-end overrides, e.g. n_mels=128 clip_seconds=10")


def cmd_prepare(args: argparse.Namespace) -> int:
    from audio_mrkd.data.prepare import prepare
    prepare(args.data_dir, args.name, args.features, args.cache_dir, args.workers, args.train_split,
            args.manifest_dir, args.overrides)
    return 0


def cmd_demo_data(args: argparse.Namespace) -> int:
    from audio_mrkd.demo import build_and_prepare
    build_and_prepare(args.out, args.cache_dir, args.manifest_dir, args.workers)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from audio_mrkd.experiment import load_experiment
    from audio_mrkd.train.engine import resume_run
    from audio_mrkd.train.sweep import run_seeds, table
    if args.resume:
        if args.config or args.overrides:
            raise InputError("--resume takes the run's saved config.yaml; drop --config and overrides")
        run_dir, metrics = resume_run(args.resume)
        print(f"resumed {run_dir}: last macro acc {metrics['last']['macro_accuracy']:.4f}, "
              f"best {metrics['best']['macro_accuracy']:.4f} (epoch {metrics['best']['epoch']})")
        return 0
    if not args.config:
        raise InputError("train: --config is required (or --resume RUN_DIR)")
    cfg = load_experiment(args.config, args.overrides)
    summary = run_seeds(cfg)
    if summary is not None:  # rank 0 of a data-parallel run, or the only process
        print(table({f"{cfg.name} ({cfg.method})": summary}))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from audio_mrkd.train.evaluate import evaluate_run
    evaluate_run(args.run_dir, args.split, args.checkpoint)
    return 0


def cmd_ablate(args: argparse.Namespace) -> int:
    from audio_mrkd.train.ablation import run_ablation
    print(run_ablation(args.spec, args.out, args.overrides, jobs=args.jobs, run_overrides=args.run))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from audio_mrkd.demo import run_demo
    run_demo(out_dir=args.out, cache_dir=args.cache_dir, epochs=args.epochs, seeds=args.seeds)
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from audio_mrkd.bench import run_bench
    results = run_bench(args.ks, args.model, args.batch, args.steps, args.device, suite=args.suite)
    if args.json:
        from audio_mrkd import fileio
        from audio_mrkd.versions import versions
        fileio.write_json(args.json, {"versions": versions(), "args": vars(args) | {"func": None}, **results})
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="audio-mrkd", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("prepare", help="DCASE dev set → cached log-mel features + manifests")
    _add_prepare_args(p)
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("demo-data", help="build the real-audio demo set (Drums-5, else Birds-3) and prepare it")
    p.add_argument("--out", default=None, help="where the DCASE-layout demo audio goes (default <cache>/demo_audio)")
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--manifest-dir", default="data_manifests")
    p.add_argument("--workers", type=int, default=2)
    p.set_defaults(func=cmd_demo_data)

    p = sub.add_parser("train", help="train CE or MrKD (one run per seed); --resume continues a run")
    p.add_argument("--config", help="experiment YAML (configs/experiments/*.yaml)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue this run from its last checkpoint")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.epochs=3 mrkd.k=2 seeds=[0,1,2]")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="evaluate a run's checkpoint on a split")
    p.add_argument("run_dir")
    p.add_argument("--split", default=None, help="split to evaluate (default: the run's evaluated split)")
    p.add_argument("--checkpoint", default="best", choices=["best", "last"])
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("ablate", help="variants x grouped CV folds x seeds, paired against a reference")
    p.add_argument("spec", help="ablation YAML (configs/ablations/*.yaml)")
    p.add_argument("--out", required=True, help="output folder (runs.jsonl, ablation.md, ablation.json)")
    p.add_argument("--jobs", type=int, default=1, help="parallel runs (one CPU thread each), default 1")
    p.add_argument("--run", action="append", default=[], metavar="KEY=VALUE",
                   help="override for every run, e.g. --run data.root=PATH (repeatable)")
    p.add_argument("overrides", nargs="*", help="spec overrides, e.g. seeds=[0] folds=3")
    p.set_defaults(func=cmd_ablate)

    p = sub.add_parser("demo", help="the whole demo on real audio: Drums-5, prepare, CE vs MrKD over 3 seeds, table")
    p.add_argument("--out", default="runs/demo", help="run folder (default runs/demo)")
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--epochs", type=int, default=None, help="default: the demo config's (more on a GPU)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("bench", help="training throughput side by side: MrKD vs CE, the DCASE'24 pipeline vs "
                                     "cached features with the GPU switches, ResNet-18 precision")
    p.add_argument("--suite", default="step", choices=["step", "pipeline", "resnet", "all"],
                   help="step: MrKD vs CE per K; pipeline: vs the DCASE'24 baseline's way; resnet: fp32 vs bf16")
    p.add_argument("--json", help="also write every measured row to this JSON file")
    p.add_argument("--ks", type=int, nargs="+", default=[1, 2, 4, 8])
    p.add_argument("--model", default="cp_mobile")
    p.add_argument("--batch", type=int, default=64, help="batch size (the GPU figures use 256)")
    p.add_argument("--steps", type=int, default=20, help="steps per timed block (median of 3 blocks)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.set_defaults(func=cmd_bench)

    from audio_mrkd.export.commands import add_export_parser, add_predict_parser
    add_export_parser(sub)
    add_predict_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    tune_malloc()
    try:
        return args.func(args)
    except InputError as exc:
        print(f"audio-mrkd {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"audio-mrkd {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

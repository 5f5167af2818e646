"""``audio-mrkd`` command line: one subcommand per job; bad input → one line on stderr and exit code 2.

Building the parser imports nothing heavy (no torch, numpy or torchaudio), so ``--help``, ``--version`` and
``env`` work even where those libraries fail to load; each command imports what it needs when it runs.
"""
from __future__ import annotations

import argparse
import sys

from audio_mrkd import __version__
from audio_mrkd.cpu_memory import tune_malloc
from audio_mrkd.errors import InputError
from audio_mrkd.paths import MANIFEST_DIR

INT8_EXIT = 3   # export: the int8 model lost more than the threshold and was not kept
#: What ``audio-mrkd --help`` says first (plain text: the module docstring is for readers of the code).
DESCRIPTION = ("Train compact acoustic-scene classifiers with memory-replay knowledge distillation (MrKD) and "
               "related methods, export them and label audio: one command per job. Bad input gives one line on "
               "stderr and exit code 2.")


class HelpFormatter(argparse.HelpFormatter):
    """Appends ``(default: X)`` to a flag's help unless the help already names its default or it has none."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or action.default in (None, False, argparse.SUPPRESS) or not action.option_strings:
            return text
        value = " ".join(map(str, action.default)) if isinstance(action.default, (list, tuple)) else action.default
        return f"{text} (default: {value})"


CACHE_HELP = "feature cache root (default: $AUDIO_MRKD_CACHE, else ~/.cache/audio_mrkd)"


def _add_prepare_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", required=True, help="DCASE Task 1 development set (meta.csv, audio/, evaluation_setup/)")
    p.add_argument("--name", required=True, help="name of the prepared dataset (data.name in training configs)")
    p.add_argument("--features", default=None, help="front-end YAML (default: the DCASE'24 front-end, "
                   "configs/features/dcase24.yaml)")
    p.add_argument("--cache-dir", default=None, help=CACHE_HELP)
    p.add_argument("--workers", type=int, default=2, help="extraction processes (default 2)")
    p.add_argument("--train-split", default=None, help="train split file instead of fold1_train.csv (e.g. split25.csv)")
    p.add_argument("--manifest-dir", default=MANIFEST_DIR, help=f"where manifests go (default {MANIFEST_DIR}/)")
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
    from audio_mrkd.config_loader import load_experiment
    from audio_mrkd.train.engine import resume_run
    from audio_mrkd.studies.sweep import run_seeds, table
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
    from audio_mrkd.evaluate import evaluate_run
    evaluate_run(args.run_dir, args.split, args.checkpoint)
    return 0


def cmd_finetune(args: argparse.Namespace) -> int:
    from audio_mrkd.finetune import finetune
    # a device name never holds "=": a dotted override typed right after the devices is an override
    devices = [w for w in args.devices if "=" not in w]
    finetune(args.run_dir, devices, args.out, [*[w for w in args.devices if "=" in w], *args.overrides])
    return 0


def cmd_package(args: argparse.Namespace) -> int:
    from audio_mrkd.export.package import build_package
    build_package(args.run_dir, args.label, args.out, args.finetuned, args.slot, args.checkpoint,
                  args.allow_over_limits)
    return 0


def cmd_teacher_logits(args: argparse.Namespace) -> int:
    from audio_mrkd.teacher_logits import write_ensemble_logits
    write_ensemble_logits(args.run_dirs, args.out, args.checkpoint, args.split)
    return 0


def cmd_ablate(args: argparse.Namespace) -> int:
    if args.slurm or args.dry_run or args.partition or args.time or args.max_parallel is not None:
        return cmd_ablate_slurm(args)
    from audio_mrkd.studies.ablation import run_ablation
    from audio_mrkd.studies.cluster import Placement
    print(run_ablation(args.spec, args.out, args.overrides, jobs=args.jobs, run_overrides=args.run,
                       reuse=args.reuse, only=args.variants, train=not args.summary, cluster=args.cluster,
                       placement=Placement(args.cpus_per_run, args.gpus_per_run),
                       target=None if args.target is None else args.target / 100))
    return 0


def cmd_ablate_slurm(args: argparse.Namespace) -> int:
    if not args.slurm:
        raise InputError("--partition, --time, --max-parallel and --dry-run go with --slurm")
    if args.cluster or args.jobs != 1 or args.summary:
        raise InputError("--slurm makes every run a SLURM job: leave out --cluster, --jobs and --summary "
                         "(--max-parallel caps the runs at once)")
    from audio_mrkd.studies.slurm import Resources, submit
    print(submit(args.spec, args.out, args.overrides, run_overrides=args.run, only=args.variants, reuse=args.reuse,
                 target=None if args.target is None else args.target / 100, dry_run=args.dry_run,
                 resources=Resources(args.partition, args.time, args.gpus_per_run, args.cpus_per_run,
                                     args.max_parallel)))
    return 0


def cmd_ablate_plan(args: argparse.Namespace) -> int:
    import tempfile

    from audio_mrkd import fileio
    from audio_mrkd.studies.budget import plan_study
    work = args.work or tempfile.mkdtemp(prefix="audio_mrkd_plan_")
    plan = plan_study(args.spec, args.budget, work, args.run, args.models, args.max_epochs, args.max_seeds,
                      args.seconds)
    if args.json:
        fileio.write_json(args.json, plan)
    print(f"plan: {plan['model']}, {plan['epochs']} epochs, seeds {plan['seeds']}, {plan['jobs']} runs at once on "
          f"{plan['device']}; expected {plan['expected_s']:.0f} s of the {plan['left_s']:.0f} s left")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from audio_mrkd.demo import run_demo
    run_demo(out_dir=args.out, cache_dir=args.cache_dir, epochs=args.epochs, seeds=args.seeds)
    return 0


def cmd_env(args: argparse.Namespace) -> int:
    from audio_mrkd.env_report import env_report
    print(env_report(args.cache_dir))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from audio_mrkd.export.commands import export_run
    from audio_mrkd.export.parity import int8_loss
    result = export_run(args.run_dir, args.out, args.int8, args.calibration, args.with_frontend, args.checkpoint,
                        args.int8_max_drop, args.int8_activations)
    refused = result.parity.get("int8_ok") is False and not args.keep_int8
    for line in result.warnings:
        if not (refused and line.startswith(int8_loss(result.parity))):
            print(f"audio-mrkd export: warning: {line}", file=sys.stderr)
    if refused:  # one line, and no int8 file left behind that a script could pick up
        result.files["int8"].unlink(missing_ok=True)
        print(f"audio-mrkd export: error: {result.files['int8']}: {int8_loss(result.parity)}; not kept (the fp32 "
              "model and parity.json are written; --keep-int8 keeps it)", file=sys.stderr)
        return INT8_EXIT
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from audio_mrkd.export.predict import predict
    return predict(args.model, args.files, args.csv, args.batch_size)


def cmd_bench(args: argparse.Namespace) -> int:
    from audio_mrkd.bench import run_bench
    results = run_bench(args.ks, args.model, args.batch, args.steps, args.device, suite=args.suite)
    if args.json:
        from audio_mrkd import fileio
        from audio_mrkd.versions import versions
        fileio.write_json(args.json, {"versions": versions(), "args": vars(args) | {"func": None}, **results})
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="audio-mrkd", description=DESCRIPTION,
                                     formatter_class=HelpFormatter)
    parser.add_argument("--version", action="version", version=f"audio-mrkd {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser = _with_formatter(sub.add_parser)

    _add_data_parsers(sub)
    _add_training_parsers(sub)
    _add_bench_parser(sub)
    _add_export_parser(sub)
    _add_predict_parser(sub)

    p = sub.add_parser("env", help="versions, the torch device found and why, the cache folder and its size "
                                   "(paste into a bug report)")
    p.add_argument("--cache-dir", default=None, help=CACHE_HELP)
    p.set_defaults(func=cmd_env)
    return parser


def _add_data_parsers(sub) -> None:
    p = sub.add_parser("prepare", help="DCASE dev set → cached log-mel features + manifests")
    _add_prepare_args(p)
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("demo-data", help="build the real-audio demo set (Drums-5, else Birds-3) and prepare it")
    p.add_argument("--out", default=None, help="where the DCASE-layout demo audio goes (default <cache>/demo_audio)")
    p.add_argument("--cache-dir", default=None, help=CACHE_HELP)
    p.add_argument("--manifest-dir", default=MANIFEST_DIR, help="where the manifests go")
    p.add_argument("--workers", type=int, default=2, help="extraction processes")
    p.set_defaults(func=cmd_demo_data)


def _add_training_parsers(sub) -> None:
    p = sub.add_parser("train", help="train a model with any method (ce, mrkd, kd, pskd, dlb, ema), one run per seed; --resume continues a run")
    p.add_argument("--config", help="experiment YAML (configs/experiments/*.yaml)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue this run from its last checkpoint")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.epochs=3 mrkd.k=2 seeds=[0,1,2]")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="evaluate a run's checkpoint on a split")
    p.add_argument("run_dir", help="a training run directory")
    p.add_argument("--split", default=None, help="split to evaluate (default: the run's evaluated split)")
    p.add_argument("--checkpoint", default="best", choices=["best", "last"],
                   help="best (best epoch on the evaluated split) or last (final epoch)")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("finetune", help="one model per recording device from a run's weights (DCASE 2025), and the "
                                        "evaluation that routes each clip to its device's model")
    p.add_argument("run_dir", help="the general model's run directory")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="dotted overrides of the fine-tuning stage (anywhere on the line), e.g. train.epochs=20 "
                        "method=mrkd")
    p.add_argument("--devices", nargs="+", required=True, help="devices to fine-tune for, e.g. a b c s1 s2 s3")
    p.add_argument("--out", default=None, help="folder of the device runs and metrics.json (default RUN_DIR/finetuned)")
    p.set_defaults(func=cmd_finetune)

    p = sub.add_parser("package", help="a DCASE 2025 Task 1 submission: an installable package with the general and "
                                       "the device models")
    p.add_argument("run_dir", help="the general model's run directory")
    p.add_argument("--finetuned", default=None, help="the output folder of `audio-mrkd finetune` (device models)")
    p.add_argument("--label", required=True, help="the submission label, Surname_ORG_task1")
    p.add_argument("--out", required=True, help="folder to write <label>/ into")
    p.add_argument("--slot", type=int, default=1, help="submission slot 1-4 (module <label>_<slot>.py), default 1")
    p.add_argument("--checkpoint", default="last", choices=["best", "last"], help="which checkpoint of every run")
    p.add_argument("--allow-over-limits", action="store_true", help="build even if a model exceeds the DCASE limits")
    p.set_defaults(func=cmd_package)

    p = sub.add_parser("teacher-logits", help="a teacher ensemble's mean logits for every item of its dataset, "
                                              "as a file teacher.logits reads")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="finished runs on one dataset (the ensemble)")
    p.add_argument("--out", required=True, help="the CSV to write (filename + one column per class), and its "
                                                "origin beside it (OUT.origin.json)")
    p.add_argument("--checkpoint", default="last", choices=["best", "last"],
                   help="which checkpoint of each run (default last: a best epoch was chosen on the run's evaluated "
                        "split, which a student scored on that split would then see through its teacher)")
    p.add_argument("--split", default="all", help="items to score: all (default) or one split, e.g. train")
    p.set_defaults(func=cmd_teacher_logits)

    _add_ablate_parser(sub)

    p = sub.add_parser("demo", help="the whole demo on real audio: Drums-5, prepare, then CE, CE + label "
                                  "smoothing 0.1 and MrKD over 3 seeds, table and picture",
                       description="Build and prepare the Drums-5 demo set, train CE, CE + label smoothing 0.1 and "
                                   "MrKD with one recipe for every seed, print the table and draw demo.png. Runs go "
                                   "to OUT/ce, OUT/ce_ls and OUT/mrkd (tensorboard --logdir OUT).")
    p.add_argument("--out", default="runs/demo", help="run folder (default runs/demo)")
    p.add_argument("--cache-dir", default=None, help=CACHE_HELP)
    p.add_argument("--epochs", type=int, default=None,
                   help="epochs per run (default: the demo config's, three times as many on a GPU)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2],
                   help="one CE, one CE + label smoothing and one MrKD run per seed")
    p.set_defaults(func=cmd_demo)


def _add_ablate_parser(sub) -> None:
    p = sub.add_parser("ablate", help="variants x grouped CV folds x seeds, paired against a reference")
    p.add_argument("spec", help="ablation YAML (configs/ablations/*.yaml)")
    p.add_argument("--out", required=True, help="output folder (runs.jsonl, ablation.md, ablation.json)")
    p.add_argument("--jobs", type=int, default=1, help="parallel runs (one CPU thread each), default 1")
    p.add_argument("--run", action="append", default=[], metavar="KEY=VALUE",
                   help="override for every run, e.g. --run data.root=PATH (repeatable)")
    p.add_argument("--variants", nargs="+", metavar="NAME",
                   help="run only these variants (the reference always), e.g. the chosen ones on the reported split")
    p.add_argument("--summary", action="store_true",
                   help="train nothing: the table and picture of the runs recorded so far (a study under way)")
    p.add_argument("--target", type=float, default=None, metavar="D",
                   help="a difference in points of macro accuracy, e.g. 1.0: the table says how many folds x seeds "
                        "would detect it at 80%% power")
    p.add_argument("--reuse", action="append", default=[], metavar="DIR",
                   help="take the runs another study (its --out folder) already made with the same recipe, fold "
                        "and seed instead of training them again (repeatable)")
    p.add_argument("--cluster", metavar="ADDRESS",
                   help="run the grid as tasks of this Ray cluster: auto, HOST:PORT of its head, or ray://HOST:PORT "
                        "(--out on storage every node sees)")
    p.add_argument("--gpus-per-run", type=float, default=None, metavar="N",
                   help="with --cluster or --slurm: GPUs per run, default 1 where the cluster (the partition) has "
                        "GPUs (Ray only: 0.25, four runs share one)")
    p.add_argument("--cpus-per-run", type=float, default=1, metavar="N",
                   help="with --cluster or --slurm: CPUs per run (its torch threads), default 1")
    p.add_argument("--slurm", action="store_true",
                   help="submit the runs as SLURM job arrays (the fold teachers, then the other runs, then the "
                        "summary) and return; --out on storage every node sees")
    p.add_argument("--partition", help="with --slurm: the partition of every job")
    p.add_argument("--time", help="with --slurm: each run's time limit, as sbatch --time takes it (e.g. 4:00:00)")
    p.add_argument("--max-parallel", type=int, default=None, metavar="N",
                   help="with --slurm: at most N runs of an array at once")
    p.add_argument("--dry-run", action="store_true", help="with --slurm: print the sbatch scripts, submit nothing")
    p.add_argument("overrides", nargs="*", help="spec overrides, e.g. seeds=[0] folds=3")
    p.set_defaults(func=cmd_ablate)

    p = sub.add_parser("ablate-plan", help="measure a study's runs all at once and choose the epoch count (the same "
                                           "for every variant) that fits a time budget")
    p.add_argument("spec", help="ablation YAML (configs/ablations/*.yaml); its seeds are the fewest it gets")
    p.add_argument("--budget", type=float, required=True, help="seconds from now until the study must have ended, "
                                                               "this measuring included")
    p.add_argument("--run", action="append", default=[], metavar="KEY=VALUE",
                   help="override for every run, as ablate --run (repeatable)")
    p.add_argument("--models", nargs="+", metavar="NAME", help="candidate models, smallest first: the largest that "
                                                               "fits --max-epochs is chosen (default: the config's)")
    p.add_argument("--max-epochs", type=int, default=200, help="the full schedule")
    p.add_argument("--max-seeds", type=int, default=0, help="more seeds than the spec's while --max-epochs fits")
    p.add_argument("--seconds", type=float, default=15.0, help="steps timed for this long, all runs at once")
    p.add_argument("--work", help="folder for the measuring runs (default: a new temporary folder)")
    p.add_argument("--json", help="write the plan (choice, measured costs, rule) to this file")
    p.set_defaults(func=cmd_ablate_plan)


def _add_bench_parser(sub) -> None:
    p = sub.add_parser("bench", help="training throughput side by side: MrKD vs CE, the DCASE'24 pipeline vs "
                                     "cached features with the GPU switches, ResNet-18 precision")
    p.add_argument("--suite", default="step", choices=["step", "pipeline", "resnet", "all"],
                   help="step: MrKD vs CE per K; pipeline: vs the DCASE'24 baseline's way; resnet: fp32 vs bf16")
    p.add_argument("--json", help="also write every measured row to this JSON file")
    p.add_argument("--ks", type=int, nargs="+", default=[1, 2, 4, 8],
                   help="snapshot-bank sizes K measured by the step suite")
    p.add_argument("--model", default="cp_mobile", help="registered model of the step suite")
    p.add_argument("--batch", type=int, default=64, help="batch size (the GPU figures use 256)")
    p.add_argument("--steps", type=int, default=20, help="steps per timed block (median of 3 blocks)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="torch device to measure on (auto: CUDA when available)")
    p.set_defaults(func=cmd_bench)


def _with_formatter(add_parser):
    def add(*args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        return add_parser(*args, **kwargs)
    return add


def _add_export_parser(sub) -> None:
    from audio_mrkd.export import INT8_MAX_DROP_PT
    p = sub.add_parser("export", help="run directory → model.onnx (+ int8, + front-end graph), "
                       "complexity.json, parity.json",
                       description="Export a trained run to ONNX, with complexity and parity reports. Exit code "
                                   f"{INT8_EXIT} if the int8 model loses more than --int8-max-drop points "
                                   "(unless --keep-int8).")
    p.add_argument("run_dir", help="a training run directory (config.yaml, data.json, checkpoints/)")
    p.add_argument("--out", default=None, help="output folder (default: RUN_DIR/export)")
    p.add_argument("--int8", action="store_true", help="also write model.int8.onnx (ONNX Runtime static QDQ)")
    p.add_argument("--calibration", type=int, default=512, help="train-split clips for int8 calibration")
    p.add_argument("--with-frontend", action="store_true",
                   help="also write model_with_frontend.onnx (waveform in: STFT + mel + log + model)")
    p.add_argument("--checkpoint", choices=("best", "last"), default="best", help="which checkpoint")
    p.add_argument("--int8-max-drop", type=float, default=INT8_MAX_DROP_PT,
                   help="accuracy points int8 may lose against fp32 on the evaluated split")
    p.add_argument("--keep-int8", action="store_true",
                   help="keep an int8 model that loses more than --int8-max-drop and exit 0 (it is still flagged "
                        "in parity.json)")
    p.add_argument("--int8-activations", choices=("int8", "uint8"), default="int8",
                   help="activation type of the int8 model: int8 (S8S8; what MCU runtimes expect) or uint8 "
                        "(U8S8, faster with ONNX Runtime on x86 VNNI CPUs)")
    p.set_defaults(func=cmd_export)


def _add_predict_parser(sub) -> None:
    p = sub.add_parser("predict", help="WAV files → scene labels through an exported ONNX model",
                       description="Label recordings with an exported model (features.yaml and labels.json "
                                   "must be next to it). Exit code 1 if any file could not be read.")
    p.add_argument("model", help="model.onnx, model.int8.onnx or model_with_frontend.onnx from `audio-mrkd export`")
    p.add_argument("files", nargs="+", help="audio files (any rate / channels; soundfile formats)")
    p.add_argument("--csv", default=None, help="write the DCASE submission file (TAB-separated) here")
    p.add_argument("--batch-size", type=int, default=32, help="clips per ONNX Runtime call")
    p.set_defaults(func=cmd_predict)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # dotted overrides may follow options (`finetune RUN --devices a b --out D train.epochs=3`), where argparse
    # cannot place a second positional: they join the command's overrides; any other stray word is an error
    if extra and (not hasattr(args, "overrides") or any("=" not in w or w.startswith("-") for w in extra)):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    tune_malloc()
    try:
        return args.func(args)
    except InputError as exc:
        print(f"audio-mrkd {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"audio-mrkd {args.command}: interrupted", file=sys.stderr)
        return 130
    except OSError as exc:  # the machine, not the input: a full disk, a file size limit, a vanished folder
        print(f"audio-mrkd {args.command}: error: {str(exc).splitlines()[0] if str(exc) else exc!r}",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

"""``audio-mrkd`` command line: one subcommand per job; bad input → one line on stderr and exit code 2."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

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
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
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

"""MrKD vs CE step time through the real engine (same as ``audio-mrkd bench``).

    python benchmarks/bench_mrkd_step.py [--ks 1 2 4 8] [--batch 64] [--steps 20] [--model cp_mobile]
"""
import sys

from audio_mrkd.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))

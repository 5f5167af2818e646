#!/usr/bin/env python
"""Prepare a DCASE Task 1 development set: thin wrapper over ``audio-mrkd prepare`` (same arguments)."""
import sys

from audio_mrkd.cli import main

if __name__ == "__main__":
    sys.exit(main(["prepare", *sys.argv[1:]]))

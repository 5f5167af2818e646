#!/usr/bin/env python
"""Record the engine's behaviour on the CPU into ``tests/data/equivalence_cpu.json`` (read by
``tests/test_equivalence.py``). Run it at code whose behaviour is trusted, before the change that must not alter it.

    python scripts/record_equivalence.py [--out PATH]

Same as ``python -m tests.equivalence --write``. About 30 s on two cores; writes this machine's entry (another machine's
entry stays while its float64 cases still agree within the tolerance); uses its own temporary folder and
feature cache (never ``$AUDIO_MRKD_CACHE`` of the user).
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.equivalence import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["--write", *sys.argv[1:]]))

#!/usr/bin/env python
"""Put the table of the last ``audio-mrkd demo`` into docs/results.md (between the ``demo table`` markers).

    audio-mrkd demo && python scripts/update_demo_table.py [RUN_DIR]     # RUN_DIR: the demo's --out, runs/demo

``tests/test_docs.py`` runs the demo and fails while the docs hold another table than it prints, so a change that
moves the demo's numbers cannot land with stale docs.
"""
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from audio_mrkd.demo import TABLE_FILE  # noqa: E402
from audio_mrkd.docs_blocks import replace_block  # noqa: E402

DOC = ROOT / "docs" / "results.md"


def main(argv: list[str]) -> int:
    run_dir = Path(argv[0]) if argv else Path("runs/demo")
    source = run_dir / TABLE_FILE
    if not source.is_file():
        print(f"update_demo_table: {source}: not found (run `audio-mrkd demo --out {run_dir}` first)", file=sys.stderr)
        return 2
    replace_block(DOC, "demo table", source.read_text().strip())
    print(f"update_demo_table: {DOC.relative_to(ROOT)} now holds {source}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

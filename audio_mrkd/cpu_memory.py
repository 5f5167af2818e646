"""glibc malloc settings for CPU training: keep large freed blocks for reuse instead of unmapping them.

By default glibc serves every allocation above a (dynamic) threshold with its own mmap and returns it with munmap
when freed, so each forward pass faults its activations' pages in again. Measured on the 2-core VM
(`audio-mrkd bench --ks 4 --steps 5`, cp_mobile, batch 64): MrKD K=4 step 670 → 537 ms, CE 303 → 290 ms, the
teacher overhead ratio 1.51 → 0.98. The price: freed memory stays with the process (its peak size) until it exits.
Set ``AUDIO_MRKD_MALLOC_TUNING=0`` to keep glibc's defaults.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD = 32 << 20     # glibc's largest documented value: blocks below this come from the reusable heap
TRIM_THRESHOLD = 2**31 - 1    # never give the top of the heap back between steps


def tune_malloc() -> bool:
    """Apply the settings above (glibc only; idempotent). True if they were applied."""
    if os.environ.get("AUDIO_MRKD_MALLOC_TUNING", "1") == "0":
        return False
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        mallopt = libc.mallopt if libc is not None else None
    except (OSError, AttributeError):  # not glibc (musl, macOS, Windows): nothing to tune
        return False
    if mallopt is None:
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))

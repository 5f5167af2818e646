"""The glibc malloc tuning used by the CLI: a freed 20 MB block stays in the heap for the next allocation."""
import subprocess
import sys

import pytest

PROBE = """
import ctypes, sys
from audio_mrkd.cpu_memory import tune_malloc
class Mallinfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]
libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = Mallinfo2
applied = tune_malloc() if sys.argv[1] == "tuned" else False
libc.malloc.restype = ctypes.c_void_p
block = libc.malloc(20 << 20)
mmapped = libc.mallinfo2().hblkhd
libc.free(ctypes.c_void_p(block))
print(applied, mmapped >= 20 << 20, libc.mallinfo2().fordblks >= 20 << 20)
"""


def probe(mode: str) -> list[str]:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True)
    return out.stdout.split()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_tuned_malloc_keeps_large_freed_blocks_in_the_heap():
    applied, mmapped, kept = probe("tuned")
    assert (applied, mmapped, kept) == ("True", "False", "True")   # heap-allocated, kept after free
    applied, mmapped, kept = probe("default")
    assert (applied, mmapped, kept) == ("False", "True", "False")  # glibc default: its own mmap, unmapped


def test_tuning_can_be_switched_off(monkeypatch):
    from audio_mrkd.cpu_memory import tune_malloc
    monkeypatch.setenv("AUDIO_MRKD_MALLOC_TUNING", "0")
    assert tune_malloc() is False

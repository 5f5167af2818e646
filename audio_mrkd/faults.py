"""Deterministic fault injection for the crash tests (``tests/test_crash.py``): the process kills itself with
SIGKILL — as ``kill -9`` would — the n-th time it reaches a named point.

    AUDIO_MRKD_KILL_AT=step:7            after the 7th optimiser step (mid-epoch)
    AUDIO_MRKD_KILL_AT=checkpoint:2      inside the 2nd checkpoint write (written, not yet renamed into place)
    AUDIO_MRKD_KILL_AT=eval:2            inside the 2nd evaluation
    AUDIO_MRKD_KILL_AT=extract:1         after the 1st chunk of clips written into a feature cache being built
    AUDIO_MRKD_KILL_AT=publish:1         when a built folder is about to replace the old one
    AUDIO_MRKD_KILL_AT=record:3          halfway through writing the 3rd line of a record log (runs.jsonl)

``AUDIO_MRKD_KILL_RANK=1`` limits it to that torch.distributed rank, and under torchrun only the first attempt
fires (``TORCHELASTIC_RESTART_COUNT`` 0), so a restarted worker runs on. Unset, :func:`point` costs one dict lookup.
"""
from __future__ import annotations

import os
import signal

_counts: dict[str, int] = {}


def _target() -> tuple[str, int] | None:
    spec = os.environ.get("AUDIO_MRKD_KILL_AT")
    if not spec or os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") != "0":
        return None
    rank = os.environ.get("AUDIO_MRKD_KILL_RANK")
    if rank is not None and os.environ.get("RANK", "0") != rank:
        return None
    name, _, count = spec.partition(":")
    return name, int(count or 1)


def point(name: str) -> None:
    """Kill this process (SIGKILL) if ``AUDIO_MRKD_KILL_AT`` names this point and this is its n-th visit."""
    target = _target()
    if target is None or target[0] != name:
        return
    _counts[name] = _counts.get(name, 0) + 1
    if _counts[name] == target[1]:
        os.kill(os.getpid(), signal.SIGKILL)

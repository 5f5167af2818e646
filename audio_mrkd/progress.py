"""Progress that a person can watch: a tqdm bar on a terminal, plain lines in a log file, nohup or CI.

tqdm turns itself off when stderr is not a terminal (``disable=None``), which left long work silent in logs.
:func:`progress` keeps the bar on a terminal and otherwise prints one line per update —
``what: 3/10 epoch (30%), 0:42 elapsed, ~1:38 left, acc=0.71`` — at most every ``min_interval`` seconds (0 for
coarse units such as epochs, chunks or runs; the last update is always printed).
"""
from __future__ import annotations

import sys
import time
from typing import Iterable, Iterator, TextIO

from tqdm import tqdm


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


class LineProgress:
    """The part of tqdm's interface the package uses, printing plain lines instead of redrawing a bar."""

    def __init__(self, iterable: Iterable | None = None, total: int | None = None, desc: str = "",
                 unit: str = "it", initial: int = 0, min_interval: float = 0.0, stream: TextIO | None = None):
        self.iterable = iterable
        self.total = total if total is not None else (len(iterable) if hasattr(iterable, "__len__") else None)
        self.desc, self.unit, self.n, self.start_n = desc, unit, initial, initial
        self.min_interval, self.stream = min_interval, stream
        self.started = self.last_print = time.monotonic()
        self.postfix = ""
        self.printed_n = None

    def __iter__(self) -> Iterator:
        for item in self.iterable:
            yield item
            self.update(1)
        self.close()

    def __enter__(self) -> "LineProgress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def set_postfix(self, **values) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def line(self) -> str:
        elapsed = time.monotonic() - self.started
        done = self.n - self.start_n
        parts = [f"{self.desc}: {self.n}/{self.total} {self.unit}" if self.total else f"{self.desc}: {self.n} {self.unit}"]
        if self.total:
            parts[0] += f" ({100 * self.n / self.total:.0f}%)"
        parts.append(f"{_clock(elapsed)} elapsed")
        if self.total and done > 0 and self.n < self.total:
            parts.append(f"~{_clock(elapsed / done * (self.total - self.n))} left")
        if self.postfix:
            parts.append(self.postfix)
        return ", ".join(parts)

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if now - self.last_print >= self.min_interval or (self.total and self.n >= self.total):
            self._print()
            self.last_print = now

    def _print(self) -> None:
        if self.printed_n == self.n:
            return
        self.printed_n = self.n
        print(self.line(), file=self.stream or sys.stderr, flush=True)

    def close(self) -> None:
        if self.n > self.start_n:
            self._print()


def progress(iterable: Iterable | None = None, *, total: int | None = None, desc: str = "", unit: str = "it",
             initial: int = 0, enabled: bool = True, lines: bool = True, min_interval: float = 0.0,
             leave: bool = True):
    """A tqdm bar when stderr is a terminal; else :class:`LineProgress` (or nothing when ``lines`` is False).

    ``enabled=False`` shows nothing in either case (e.g. on non-zero ranks, or inside a study that logs per run).
    """
    terminal = sys.stderr.isatty()
    quiet = not enabled or (not terminal and not lines)
    if terminal or quiet:
        return tqdm(iterable, total=total, desc=desc, unit=unit, initial=initial, leave=leave, disable=quiet)
    return LineProgress(iterable, total=total, desc=desc, unit=unit, initial=initial, min_interval=min_interval)

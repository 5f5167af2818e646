"""Generated blocks inside hand-written Markdown: the text between ``<!-- begin: NAME -->`` and
``<!-- end: NAME -->`` is written by a command, never by hand, and a test compares it with what the command
prints now."""
from __future__ import annotations

from pathlib import Path

from audio_mrkd import fileio
from audio_mrkd.errors import InputError


def markers(name: str) -> tuple[str, str]:
    return f"<!-- begin: {name} -->", f"<!-- end: {name} -->"


def read_block(path: str | Path, name: str) -> str:
    """The text between the block's markers (stripped); one line naming the file when they are missing."""
    text = Path(path).read_text(encoding="utf-8")
    begin, end = markers(name)
    if text.count(begin) != 1 or text.count(end) != 1 or text.index(begin) > text.index(end):
        raise InputError(f"{path}: expected one '{begin}' … '{end}' pair")
    return text.split(begin, 1)[1].split(end, 1)[0].strip()


def replace_block(path: str | Path, name: str, content: str) -> None:
    """Write ``content`` between the block's markers (atomically; the rest of the file untouched)."""
    read_block(path, name)  # the markers are there, once
    text = Path(path).read_text(encoding="utf-8")
    begin, end = markers(name)
    head, rest = text.split(begin, 1)
    fileio.write_text(path, f"{head}{begin}\n{content}\n{end}{rest.split(end, 1)[1]}")

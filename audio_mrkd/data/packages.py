"""Data sets that ship inside packages: fetch a Debian .deb or a PyPI wheel into a work folder and extract from it.

Used by the demo sets (Debian's ``hydrogen-drumkits``, the ``pykanto`` wheel) and Fashion-MNIST (Debian's
``dataset-fashion-mnist``). Nothing is installed: ``apt-get download`` and ``pip download`` only fetch the file,
which is reused when it is already in the work folder. A failing command raises :class:`InputError`, one line: the
command, its exit code and the last line of its error output.
"""
from __future__ import annotations

import subprocess
import sys
import tarfile
from pathlib import Path

from audio_mrkd.errors import InputError
from audio_mrkd.fileio import building_dir

#: Written last into an extracted tree: its presence means the extraction finished.
MARKER = ".complete"


def run_command(cmd: list[str], cwd: Path, what: str) -> None:
    """Run ``cmd``; a non-zero exit raises InputError with the last line of its error output."""
    try:
        proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    except OSError as exc:
        raise InputError(f"{what}: cannot run {cmd[0]} ({exc})") from exc
    if proc.returncode != 0:
        lines = (proc.stderr or proc.stdout or "").strip().splitlines()
        raise InputError(f"{what}: exit {proc.returncode}: {lines[-1] if lines else 'no output'}")


def _work_dir(work_dir: Path) -> Path:
    work_dir = Path(work_dir)
    try:
        work_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"{work_dir}: cannot create ({exc.strerror or exc})") from None
    return work_dir


def fetch_deb(package: str, work_dir: Path) -> Path:
    """The package's .deb in ``work_dir``: reused if there, else ``apt-get download`` (no root needed). If that
    fails, ``apt-get update`` and a second try; if the update fails too, the first download's error is raised."""
    work_dir = _work_dir(work_dir)
    found = sorted(work_dir.glob(f"{package}_*.deb"))
    if not found:
        download, what = ["apt-get", "download", package], f"apt-get download {package}"
        try:
            run_command(download, work_dir, what)
        except InputError as first:
            try:
                run_command(["apt-get", "update"], work_dir, "apt-get update")
            except InputError:
                raise first from None
            run_command(download, work_dir, what)
        found = sorted(work_dir.glob(f"{package}_*.deb"))
    if not found:
        raise InputError(f"{work_dir}: apt-get download {package} left no {package}_*.deb")
    return found[-1]


def extract_deb(deb: Path, target: Path, keep: str | Path) -> Path:
    """``target/keep``: the folder ``keep`` (e.g. ``usr/share/...``) of the files of ``deb``, extracted once into
    ``target`` (built beside it and renamed into place, :data:`MARKER` written last); reused when the marker is
    there. Only ``keep`` is written: ``dpkg-deb --fsys-tarfile`` streamed through :mod:`tarfile` (``data``
    filter: no links out of ``target``, no special files)."""
    target, keep = Path(target), Path(keep).as_posix()
    if (target / MARKER).is_file():
        return target / keep
    with building_dir(target) as tmp:
        _untar(Path(deb), tmp, keep)
        (tmp / MARKER).write_text(Path(deb).name + "\n", encoding="utf-8")
    return target / keep


def _untar(deb: Path, dest: Path, keep: str) -> None:
    try:
        proc = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
    except OSError as exc:
        raise InputError(f"{deb}: cannot run dpkg-deb ({exc})") from exc
    try:
        with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
            for member in tar:
                name = member.name.removeprefix("./")
                if name == keep or name.startswith(keep + "/"):
                    tar.extract(member, dest, filter="data")
    except tarfile.TarError as exc:
        proc.kill()
        raise InputError(f"{deb}: cannot read its data archive ({exc})") from exc
    finally:
        stderr = proc.stderr.read().decode(errors="replace").strip()
        proc.wait()
    if proc.returncode != 0:
        raise InputError(f"{deb}: dpkg-deb --fsys-tarfile failed: {stderr.splitlines()[-1] if stderr else ''}")
    if not (dest / keep).is_dir():
        raise InputError(f"{deb}: no {keep} in the package")


def fetch_wheel(requirement: str, wheel: str, work_dir: Path) -> Path:
    """``work_dir/wheel``: reused if there, else ``pip download --no-deps --only-binary=:all: requirement``."""
    work_dir = _work_dir(work_dir)
    path = work_dir / wheel
    if not path.is_file():
        run_command([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", requirement,
                     "-d", str(work_dir)], work_dir, f"pip download {requirement}")
    if not path.is_file():
        raise InputError(f"{work_dir}: pip download {requirement} left no {wheel}")
    return path

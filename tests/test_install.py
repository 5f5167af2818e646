"""The install cannot drift: exact torch/torchaudio pair, every dependency pinned, README == CI, light CLI start."""
from __future__ import annotations

import importlib
import importlib.metadata
import os
import pkgutil
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

import audio_mrkd

ROOT = Path(__file__).resolve().parent.parent


def pyproject_requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = [r for group in project["optional-dependencies"].values() for r in group]
    return [Requirement(r) for r in [*project["dependencies"], *extras]]


def constraints() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"constraints.txt: '{line}' is not an exact pin"
            pins[canonicalize_name(name)] = version
    return pins


def test_torch_and_torchaudio_are_an_exact_pair():
    reqs = {canonicalize_name(r.name): str(r.specifier) for r in pyproject_requirements()}
    assert reqs["torch"] == "==2.11.0" and reqs["torchaudio"] == "==2.11.0"
    pins = constraints()
    assert pins["torch"] == "2.11.0" and pins["torchaudio"] == "2.11.0"


def test_every_dependency_is_pinned_in_constraints_and_the_pin_satisfies_pyproject():
    pins = constraints()
    for req in pyproject_requirements():
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} is a dependency but has no pin in constraints.txt"
        assert req.specifier.contains(pins[name], prereleases=True), f"{req.name}=={pins[name]} violates {req}"


def test_installed_environment_matches_the_pins():
    """What is installed is what constraints.txt says (drift on a machine shows up here, not as a crash)."""
    drift = []
    for name, version in constraints().items():
        try:
            installed = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue  # a platform-specific wheel this machine does not need
        if installed.split("+")[0] != version:
            drift.append(f"{name} {installed} (pinned {version})")
    assert not drift, "installed packages differ from constraints.txt: " + ", ".join(drift)


def test_readme_install_commands_are_what_ci_runs():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    commands = re.findall(r"^\s+(pip install .*)$", readme.split("## Set-up on a fresh machine")[1].split("\n## ")[0],
                          flags=re.M)
    assert len(commands) == 2, commands
    assert all("-c constraints.txt" in c for c in commands)
    demo_cmd, test_cmd = commands
    assert test_cmd in ci, "README command 2 must be the command .ci/run runs"
    assert demo_cmd.split(" && ")[0] in ci and "audio-mrkd demo" in ci


def test_every_module_imports():
    """Every module of the package, the export extras included, imports in this environment."""
    names = [m.name for m in pkgutil.walk_packages(audio_mrkd.__path__, "audio_mrkd.")]
    assert len(names) > 30
    for name in names:
        importlib.import_module(name)


@pytest.fixture
def broken_torch(tmp_path) -> dict:
    """An environment where ``import torch`` / ``import torchaudio`` fail as a mismatched pair does."""
    for name in ("torch", "torchaudio"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text(
            "raise OSError('libtorchaudio.so: undefined symbol: torch_exception_get_what_without_backtrace')\n")
    return {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}"}


@pytest.mark.parametrize("argv", [["--help"], ["--version"], ["train", "--help"], ["export", "--help"]])
def test_help_and_version_work_in_a_broken_environment(broken_torch, argv):
    done = subprocess.run([sys.executable, "-m", "audio_mrkd.cli", *argv], env=broken_torch, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    if argv == ["--version"]:
        assert done.stdout.strip() == f"audio-mrkd {audio_mrkd.__version__}"
    if argv == ["--help"]:  # plain words, not the module docstring's reST markup
        assert "``" not in done.stdout and "Train compact acoustic-scene classifiers" in done.stdout


def test_env_reports_a_broken_torch_in_one_line(broken_torch, tmp_path):
    done = subprocess.run([sys.executable, "-m", "audio_mrkd.cli", "env", "--cache-dir", str(tmp_path / "c")],
                          env=broken_torch, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    torch_line = next(line for line in done.stdout.splitlines() if line.strip().startswith("torch "))
    assert "NOT IMPORTABLE: OSError: libtorchaudio.so: undefined symbol" in torch_line
    assert "torch device: none" in done.stdout
    assert f"cache: {tmp_path / 'c'} (--cache-dir): does not exist yet" in done.stdout


def test_env_reports_versions_device_and_cache_size(tmp_path, capsys):
    from audio_mrkd.cli import main
    (tmp_path / "c" / "x").mkdir(parents=True)
    (tmp_path / "c" / "x" / "blob").write_bytes(b"\0" * 3 * 2**20)
    assert main(["env", "--cache-dir", str(tmp_path / "c")]) == 0
    out = capsys.readouterr().out
    import torch
    assert f"torch             {torch.__version__}" in out
    assert ("torch device: cuda" if torch.cuda.is_available() else "torch device: cpu") in out
    assert "(--cache-dir): 3.0 MiB" in out


def test_every_flag_has_help():
    import argparse

    from audio_mrkd.cli import build_parser
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    missing = [f"{name} {action.option_strings or action.dest}" for name, p in sub.choices.items()
               for action in p._actions if not action.help and not isinstance(action, argparse._HelpAction)]
    assert not missing, missing
    text = sub.choices["demo"].format_help()
    assert "(default: 0 1 2)" in " ".join(text.split())


def test_demo_help_names_its_three_methods():
    import argparse

    from audio_mrkd.cli import build_parser
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    listed = " ".join(parser.format_help().split())
    text = " ".join(sub.choices["demo"].format_help().split())
    assert "CE, CE + label smoothing 0.1 and MrKD over 3 seeds" in listed  # audio-mrkd --help's line for demo
    assert "train CE, CE + label smoothing 0.1 and MrKD" in text and "OUT/ce, OUT/ce_ls and OUT/mrkd" in text
    assert "one CE, one CE + label smoothing and one MrKD run per seed (default: 0 1 2)" in text
    assert "CE vs MrKD" not in listed + text

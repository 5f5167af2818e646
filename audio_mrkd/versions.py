"""Versions of Python, the libraries and the code, saved next to every output for reproducibility."""
from __future__ import annotations

import importlib.metadata
import platform
import subprocess
from pathlib import Path

PACKAGES = ("audio_mrkd", "torch", "torchaudio", "numpy", "soundfile", "librosa", "pandas", "scikit-learn",
            "tensorboard", "lightning-fabric", "onnx", "onnxruntime")


def git_commit() -> str | None:
    """The commit of the source checkout (with ``+dirty`` if modified), or None outside git."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=30, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=30).stdout.strip()
        return commit + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def cpu() -> dict:
    """The CPU this process runs on (vendor, model name, family and model numbers, from /proc/cpuinfo where there is
    one): float32 results are reproducible bit for bit on the same CPU and thread count, not across CPUs."""
    fields = {"vendor_id": "vendor", "model name": "model", "cpu family": "family", "model": "model_number"}
    found: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() in fields and fields[key.strip()] not in found:
                found[fields[key.strip()]] = value.strip()
    except OSError:
        pass
    return {"vendor": found.get("vendor") or platform.processor() or platform.machine(),
            "model": found.get("model", ""), "family": found.get("family", ""),
            "model_number": found.get("model_number", "")}


def describe_cpu(info: dict) -> str:
    """One line for a person: 'AMD EPYC (AuthenticAMD, family 26 model 2)'."""
    return f"{info['model'] or info['vendor']} ({info['vendor']}, family {info['family']} model {info['model_number']})"


def versions() -> dict:
    """Python, platform, CPU, package versions and git commit."""
    out = {"python": platform.python_version(), "platform": platform.platform(), "cpu": cpu()}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    out["git_commit"] = git_commit()
    return out

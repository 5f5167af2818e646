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


def versions() -> dict:
    """Python, platform, package versions and git commit."""
    out = {"python": platform.python_version(), "platform": platform.platform()}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    out["git_commit"] = git_commit()
    return out

"""``audio-mrkd env``: what a user pastes into a bug report (versions, torch device and why, cache and its size).

Every library is imported inside a guard, so a broken install is reported (the error on one line), not raised.
"""
from __future__ import annotations

import importlib
import os
import platform
from pathlib import Path

from audio_mrkd import __version__

LIBRARIES = ("torch", "torchaudio", "numpy", "soundfile", "librosa", "pandas", "sklearn", "tensorboard",
             "lightning_fabric", "matplotlib", "onnx", "onnxruntime", "onnxscript")


def _library_line(name: str) -> str:
    try:
        module = importlib.import_module(name)
    except Exception as exc:  # a broken install is what this report is for: one line, keep going
        first = (str(exc).splitlines() or [""])[0][:200]
        return f"  {name:<17} NOT IMPORTABLE: {type(exc).__name__}: {first}"
    return f"  {name:<17} {getattr(module, '__version__', '?')}"


def torch_device_line() -> str:
    """The torch device training would pick, and why."""
    try:
        import torch
    except Exception as exc:
        return f"torch device: none (torch does not import: {type(exc).__name__})"
    if torch.cuda.is_available():
        return (f"torch device: cuda ({torch.cuda.device_count()} × {torch.cuda.get_device_name(0)}, "
                f"CUDA {torch.version.cuda}): CUDA is available")
    built = f"built for CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
    return (f"torch device: cpu ({torch.get_num_threads()} threads): torch is {built} and "
            f"torch.cuda.is_available() is False (no driver or no GPU visible)")


def folder_size(root: Path) -> int:
    total = 0
    for dirpath, _, files in os.walk(root):
        for name in files:
            try:
                total += (Path(dirpath) / name).lstat().st_size
            except OSError:
                pass
    return total


def env_report(cache_dir: str | Path | None = None) -> str:
    """The multi-line report printed by ``audio-mrkd env``."""
    from audio_mrkd.data.cache import default_cache_dir
    from audio_mrkd.versions import cpu, describe_cpu, git_commit

    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    source = "--cache-dir" if cache_dir else ("$AUDIO_MRKD_CACHE" if os.environ.get("AUDIO_MRKD_CACHE")
                                              else "default")
    size = f"{folder_size(cache) / 2**20:,.1f} MiB" if cache.is_dir() else "does not exist yet"
    lines = [f"audio-mrkd {__version__} (git {git_commit() or 'n/a'})",
             f"python {platform.python_version()} on {platform.platform()}, {os.cpu_count()} CPUs",
             f"cpu: {describe_cpu(cpu())}",
             "libraries:", *(_library_line(name) for name in LIBRARIES),
             torch_device_line(),
             f"cache: {cache} ({source}): {size}"]
    return "\n".join(lines)

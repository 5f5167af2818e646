"""The built-in real-audio demo: build Drums-5 (or Birds-3) in the DCASE layout, then prepare it."""
from __future__ import annotations

from pathlib import Path

from audio_mrkd.data import cache
from audio_mrkd.data.demo import build_demo
from audio_mrkd.data.prepare import PrepareResult, prepare

#: The demo's front-end: the DCASE'24 parameters with 64 mel bands instead of 256, so that CE and MrKD over
#: three seeds each fit in minutes on two CPU cores (cp_mobile costs ~4x less per clip).
DEMO_FRONTEND = ["n_mels=64"]


def build_and_prepare(out: str | Path | None = None, cache_dir: str | Path | None = None,
                      manifest_dir: str | Path = "data_manifests", workers: int = 2, log=print) -> PrepareResult:
    """Build the demo set (reusing an earlier build) under the cache folder and prepare it as ``drums5``/``birds3``."""
    root = Path(cache_dir) if cache_dir else cache.default_cache_dir()
    cache.ensure_writable(root)
    out = Path(out) if out else root / "demo_audio"
    data_dir, name = build_demo(out, root / "demo_work", log=log)
    return prepare(data_dir, name, cache_dir=root, manifest_dir=manifest_dir, workers=workers,
                   overrides=DEMO_FRONTEND, log=log)

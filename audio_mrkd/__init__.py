"""audio_mrkd: compact acoustic-scene classifiers trained with Memory-replay Knowledge Distillation."""
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("audio_mrkd")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0"

"""Model registry: a name maps to a constructor ``(n_classes, in_channels, **kwargs) -> nn.Module``.

Every registered model takes a ``B×C×H×W`` tensor (audio: ``B×1×n_mels×frames``; images:
``B×3×H×W``) and returns logits ``B×n_classes``. Constructors take their options as keyword
arguments; ``build_model`` rejects an option the constructor does not declare.
"""

from __future__ import annotations

import inspect
from typing import Callable

from torch import nn

from audio_mrkd.errors import InputError

Constructor = Callable[..., nn.Module]
_REGISTRY: dict[str, Constructor] = {}


def register_model(name: str) -> Callable[[Constructor], Constructor]:
    """Decorator registering ``constructor(n_classes, in_channels, **kwargs)`` under ``name``."""

    def decorate(constructor: Constructor) -> Constructor:
        if name in _REGISTRY and _REGISTRY[name] is not constructor:
            raise ValueError(f"model '{name}' is registered twice")
        _REGISTRY[name] = constructor
        return constructor

    return decorate


def available_models() -> list[str]:
    """Sorted names of all registered models."""
    return sorted(_REGISTRY)


def model_constructor(name: str) -> Constructor:
    """The constructor registered as ``name`` (one line naming the known ones otherwise)."""
    if name not in _REGISTRY:
        raise InputError(f"model.name: unknown model '{name}' (known: {', '.join(available_models())})")
    return _REGISTRY[name]


def build_model(name: str, n_classes: int, in_channels: int = 1, **kwargs) -> nn.Module:
    """Build the registered model ``name``; bad names, options or sizes raise ``InputError``."""
    constructor = model_constructor(name)
    _check_options(name, constructor, kwargs)
    check_int("model.n_classes", n_classes)
    check_int("model.in_channels", in_channels)
    return constructor(n_classes, in_channels, **kwargs)


def model_options(name: str) -> dict[str, object]:
    """The keyword options of model ``name`` and their defaults."""
    params = list(inspect.signature(model_constructor(name)).parameters.values())[2:]
    return {p.name: p.default for p in params}


def _check_options(name: str, constructor: Constructor, kwargs: dict) -> None:
    known = list(inspect.signature(constructor).parameters)[2:]
    for key in kwargs:
        if key not in known:
            listed = ", ".join(known) or "none"
            raise InputError(f"model.{key}: unknown option for model '{name}' (known: {listed})")


def check_int(key: str, value: object, minimum: int = 1) -> int:
    """Return ``value`` if it is an integer >= ``minimum``, else raise ``InputError`` naming ``key``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InputError(f"{key}: must be an integer >= {minimum}, got {value!r}")
    return value


def check_float(key: str, value: object, low: float = 0.0, high: float = float("inf")) -> float:
    """Return ``value`` as float if it is a number in ``(low, high]``, else raise ``InputError``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low < value <= high:
        raise InputError(f"{key}: must be a number in ({low}, {high}], got {value!r}")
    return float(value)


def check_dropout(key: str, value: object) -> float:
    """Return ``value`` as float if it is a probability in ``[0, 1)``, else raise ``InputError``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise InputError(f"{key}: must be a number in [0, 1), got {value!r}")
    return float(value)


# Importing the model modules registers their constructors (they use the helpers above).
from audio_mrkd.models import cp_mobile, dcase_cnn, resnet  # noqa: E402,F401

__all__ = ["register_model", "build_model", "available_models", "model_options"]

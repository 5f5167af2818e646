"""YAML → typed dataclasses, with dotted command-line overrides (``train.epochs=3``).

Unknown keys are errors that name the key; values are parsed as YAML (``mrkd.ka=false`` → bool) and checked
against the field's type and the bounds declared with the field (:func:`setting`).
"""
from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml

from audio_mrkd.errors import InputError

T = TypeVar("T")

#: A dataclass field with this metadata key holds a mapping of sections that YAML writes at the parent's level
#: (:func:`to_dict` merges it into its parent; the owner of the dataclass reads those sections itself).
INLINE = "inline"
#: Metadata keys of a field declared with :func:`setting`: the bounds of its value, the sibling setting whose value
#: it needs (otherwise it is ignored, and giving it is an error), and a group name its owner may ask for.
BOUNDS, ONLY_WITH, GROUP = "bounds", "only_with", "group"


@dataclass(frozen=True)
class Bounds:
    """The range a number must lie in (an open or closed end, or none); a bounded number must also be finite."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def holds(self, value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return False
        low_ok = self.low is None or (value > self.low if self.low_open else value >= self.low)
        return low_ok and (self.high is None or (value < self.high if self.high_open else value <= self.high))

    def describe(self, integer: bool) -> str:
        """What a value must be, in words: ``an integer >= 1``, ``a finite number in [0, 1)``, ``… > 0``."""
        what = "an integer" if integer else "a finite number"
        if self.low is not None and self.high is not None:
            return (f"{what} in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}"
                    f"{')' if self.high_open else ']'}")
        if self.low is not None:
            return f"{what} {'>' if self.low_open else '>='} {self.low:g}"
        return f"{what} {'<' if self.high_open else '<='} {self.high:g}"


def setting(default: Any = dataclasses.MISSING, *, default_factory: Any = dataclasses.MISSING,
            at_least: float | None = None, above: float | None = None, at_most: float | None = None,
            below: float | None = None, only_with: tuple[str, Any] | None = None, group: str | None = None) -> Any:
    """A dataclass field with its checks declared beside it: its bounds (``at_least``/``above`` the low end, closed or
    open, ``at_most``/``below`` the high end), ``only_with=(sibling, value)`` when it is read only while the sibling
    setting has that value (:func:`unused`), and a ``group`` name. :func:`from_dict` and :func:`check` enforce the
    bounds, each fault one line naming the key."""
    metadata: dict[str, Any] = {}
    if (at_least, above, at_most, below) != (None, None, None, None):
        assert at_least is None or above is None, "one low end"
        assert at_most is None or below is None, "one high end"
        metadata[BOUNDS] = Bounds(at_least if above is None else above, at_most if below is None else below,
                                  above is not None, below is not None)
    if only_with is not None:
        metadata[ONLY_WITH] = only_with
    if group is not None:
        metadata[GROUP] = group
    return dataclasses.field(default=default, default_factory=default_factory, metadata=metadata)


def group_fields(cls: type, group: str) -> tuple[str, ...]:
    """The names of ``cls``'s fields declared with ``group``."""
    return tuple(f.name for f in dataclasses.fields(cls) if f.metadata.get(GROUP) == group)


def unused(obj: Any, names: Any = None) -> list[tuple[str, str, Any]]:
    """``(field, sibling, value it needs)`` for each of ``names`` (default: all fields) of dataclass ``obj`` that is
    declared ``only_with`` a sibling value the object does not have: a setting nothing reads (the config loader
    refuses one that was given)."""
    out = []
    for f in dataclasses.fields(obj):
        need = f.metadata.get(ONLY_WITH)
        if need is not None and (names is None or f.name in names) and getattr(obj, need[0]) != need[1]:
            out.append((f.name, *need))
    return out


def read_yaml(path: str | Path) -> dict:
    """Read a YAML mapping; one-line error naming the file otherwise."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise InputError(f"{path}: config file not found") from None
    except yaml.YAMLError as exc:
        raise InputError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise InputError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    return data


def parse_overrides(items: list[str]) -> dict:
    """``["a.b=1", "c=x"]`` → nested dict ``{"a": {"b": 1}, "c": "x"}`` (values parsed as YAML)."""
    nested: dict = {}
    for item in items:
        if "=" not in item:
            raise InputError(f"override '{item}': expected dotted.key=value")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        node = nested
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise InputError(f"override '{item}': '{part}' is not a section")
        node[parts[-1]] = value
    return nested


def deep_merge(base: dict, extra: dict) -> dict:
    """Recursively merge ``extra`` into a copy of ``base``."""
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _check_type(value: Any, hint: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        for arg in args:
            if arg is type(None) and value is None:
                return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _check_type(value, arg, where)
            except InputError as exc:
                errors.append(str(exc))
        raise InputError(errors[0] if errors else f"{where}: invalid value {value!r}")
    if origin is typing.Literal:
        if isinstance(value, (int, float)) and not isinstance(value, bool) and str(value) in args:
            return str(value)  # e.g. train.precision=32
        if value not in args:
            raise InputError(f"{where}: {value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise InputError(f"{where}: expected a list, got {value!r}")
        inner = args[0] if args else Any
        items = [_check_type(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if origin is dict:
        if not isinstance(value, dict):
            raise InputError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, where)
    if hint is bool:
        if not isinstance(value, bool):
            raise InputError(f"{where}: expected true/false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise InputError(f"{where}: expected an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-6" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InputError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if hint is str:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)  # e.g. train.precision=32, data.name=2024
        if not isinstance(value, str):
            raise InputError(f"{where}: expected a string, got {value!r}")
        return value
    return value


def check(obj: Any, where: str = "") -> None:
    """Every field of dataclass ``obj`` has its type (a ``Literal``: one of its choices) and keeps the bounds
    declared with it (:func:`setting`); the first fault is one InputError line naming the key (``<where>.<field>``).
    :func:`from_dict` calls it on what it builds; call it on an object built in code. Fields holding a dataclass are
    that dataclass's own to check."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        value, full = getattr(obj, f.name), f"{where}.{f.name}" if where else f.name
        if dataclasses.is_dataclass(value):
            continue
        _check_type(value, hints[f.name], full)
        bounds = f.metadata.get(BOUNDS)
        if bounds is not None and not bounds.holds(value):
            raise InputError(f"{full}: must be {bounds.describe(hints[f.name] is int)}, got {value!r}")


def from_dict(cls: type[T], data: dict | None, where: str = "") -> T:
    """Build dataclass ``cls`` from a mapping; unknown keys and wrong types raise InputError naming the key."""
    data = data or {}
    if not isinstance(data, dict):
        raise InputError(f"{where or cls.__name__}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in names:
            full = f"{where}.{key}" if where else key
            raise InputError(f"{full}: unknown config key (known: {', '.join(sorted(names))})")
    kwargs = {}
    for key, value in data.items():
        full = f"{where}.{key}" if where else key
        kwargs[key] = _check_type(value, hints[key], full)
    obj = cls(**kwargs)
    check(obj, where)
    validate = getattr(obj, "validate", None)  # the checks that relate fields to each other
    if callable(validate):
        validate()
    return obj


def to_dict(obj: Any, read_only: bool = False) -> Any:
    """Dataclass (nested) → plain dict, tuples as lists (YAML/JSON friendly); ``read_only``: without the fields
    declared ``only_with`` a sibling value the object does not have (what a run folder writes)."""
    if dataclasses.is_dataclass(obj):
        out = {}
        skipped = {name for name, *_ in unused(obj)} if read_only else set()
        for f in dataclasses.fields(obj):
            if f.name in skipped:
                continue
            value = to_dict(getattr(obj, f.name), read_only)
            if f.metadata.get(INLINE):
                out.update(value)
            else:
                out[f.name] = value
        return out
    if isinstance(obj, (list, tuple)):
        return [to_dict(v, read_only) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v, read_only) for k, v in obj.items()}
    return obj


def read_with_base(path: str | Path) -> dict:
    """A YAML mapping whose optional ``base: other.yaml`` (relative to this file) is merged underneath it."""
    data = read_yaml(path)
    base = data.pop("base", None)
    if base is None:
        return data
    base_path = Path(path).parent / base
    if not base_path.is_file():
        raise InputError(f"{path}: base '{base}' not found ({base_path})")
    return deep_merge(read_with_base(base_path), data)


def load(cls: type[T], path: str | Path | None, overrides: list[str] | None = None, where: str = "") -> T:
    """Load ``cls`` from an optional YAML file (with ``base:`` inheritance) plus dotted overrides."""
    data = read_with_base(path) if path else {}
    data = deep_merge(data, parse_overrides(overrides or []))
    return from_dict(cls, data, where)

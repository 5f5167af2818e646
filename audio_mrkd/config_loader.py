"""A configuration loaded and checked against the registries it picks from: the training methods (each with its own
section) and the datasets — the one place an experiment config is read (:func:`load_experiment` from YAML and dotted
overrides, :func:`experiment_from_dict` from a mapping, e.g. a run folder's ``config.yaml``).

:mod:`audio_mrkd.config_schema` defines the sections every run has and knows no method or dataset;
:mod:`audio_mrkd.config_io` is the YAML machinery. Keys of a former layout load with one deprecation line each
(:data:`RENAMED`); a run folder of a former layout reads quietly.
"""
from __future__ import annotations

import dataclasses
import sys
from dataclasses import fields
from pathlib import Path
from typing import Callable

from audio_mrkd import config_io
from audio_mrkd.config_schema import TERM, ExperimentConfig, TeacherConfig
from audio_mrkd.data.datasets import DATASETS
from audio_mrkd.errors import InputError
from audio_mrkd.methods import METHODS


# Keys of former layouts, to their new home; read (with one line each) until the next release: first the teacher's
# source and its combination left ``kd:`` when methods got sections of their own, then the KD term's weight,
# temperature and adjustment joined them (``kd:`` is no section any more: the teacher term owns its settings).
# ``method_options.<key>`` moves into the configured method's section.
RENAMED = {
    ("kd", "teachers"): ("teacher", "runs"),
    ("kd", "teacher_logits"): ("teacher", "logits"),
    ("kd", "checkpoint"): ("teacher", "checkpoint"),
    ("kd", "teacher_input"): ("teacher", "input"),
    ("kd", "ensemble"): ("teacher", "ensemble"),
    ("kd", "fcn_hidden"): ("teacher", "fcn_hidden"),
    ("kd", "fcn_lr"): ("teacher", "fcn_lr"),
    ("kd", "with_mrkd"): ("mrkd", "with_teacher"),
    ("kd", "alpha"): ("teacher", "alpha"),
    ("kd", "tau"): ("teacher", "tau"),
    ("kd", "ka"): ("teacher", "ka"),
}
_said: set[str] = set()


def deprecation_line(line: str) -> None:
    """One line on stderr, once per process for each deprecated key."""
    if line not in _said:
        _said.add(line)
        print(line, file=sys.stderr, flush=True)


def upgrade_keys(data: dict, warn: Callable[[str], None] | None) -> dict:
    """``data`` with deprecated keys moved to their new home (``warn``: told once per key; None: quietly, as
    for a run folder written by an earlier release)."""
    data = {k: (dict(v) if isinstance(v, dict) else v) for k, v in data.items()}
    moves = [(old, new, data[old[0]].pop(old[1])) for old, new in RENAMED.items()
             if isinstance(data.get(old[0]), dict) and old[1] in data[old[0]]]
    options = data.pop("method_options", None) or {}
    if not isinstance(options, dict):
        raise InputError(f"method_options: expected a mapping, got {options!r}")
    method = data.get("method", "ce")
    if options and getattr(METHODS.get(method), "Options", None) is None:
        raise InputError(f"method_options: method {method!r} takes no options, got {', '.join(sorted(options))}")
    moves += [(("method_options", key), (method, key), value) for key, value in options.items()]
    for old, new, value in moves:
        section = data.setdefault(new[0], {})
        if not isinstance(section, dict):
            raise InputError(f"{new[0]}: expected a mapping, got {section!r}")
        if new[1] in section:
            raise InputError(f"{'.'.join(old)} and {'.'.join(new)}: the same setting twice "
                             f"({'.'.join(old)} is its former name)")
        section[new[1]] = value
        if warn is not None:
            warn(f"{'.'.join(old)}: deprecated, write {'.'.join(new)} (the old key is read until the next release)")
    for old_section in {old[0] for old in RENAMED}:  # a former section left empty by the moves is gone
        if data.get(old_section) == {} and old_section not in _sections():
            del data[old_section]
    return data


def _sections() -> dict[str, type]:
    """The registered methods' own sections: name → its options class."""
    return {name: cls.Options for name, cls in METHODS.items() if cls.Options is not None}


def experiment_from_dict(data: dict, run_folder: bool = False) -> ExperimentConfig:
    """A validated :class:`ExperimentConfig` from a mapping, against the method registry (each method's ``Options``
    is its section) and the dataset registry (``data.kind``). A setting the run would not read — the teacher term's
    under ``mrkd.with_teacher: ensembler``, ``teacher.fcn_*`` under ``teacher.ensemble: mean`` — is refused in one
    line, not ignored. ``run_folder``: a run folder's config.yaml, perhaps of an earlier release (which wrote every
    section in full): deprecated keys and unread settings are read quietly."""
    if not isinstance(data, dict):
        raise InputError(f"config: expected a mapping, got {data!r}")
    data = upgrade_keys(data, None if run_folder else deprecation_line)
    sections = _sections()
    core = {f.name for f in fields(ExperimentConfig) if not f.metadata.get(config_io.INLINE)}
    for key in data:
        if key not in core and key not in sections:
            raise InputError(f"{key}: unknown config key (known: {', '.join(sorted(core | set(sections)))})")
    cfg = config_io.from_dict(ExperimentConfig, {k: v for k, v in data.items() if k in core})
    cfg.methods = {name: config_io.from_dict(options, data.get(name), name) for name, options in sections.items()}
    _check_method(cfg)
    if not run_folder:
        _refuse_unread(cfg, data)
    if "data" in data:  # checked where given, as the other sections (defaults alone name no dataset yet)
        cfg.data.check_against(DATASETS)
    return cfg


def _check_method(cfg: ExperimentConfig) -> None:
    """The configured method exists, and has a teacher when it needs one (and none when it uses none)."""
    if cfg.method not in METHODS:
        raise InputError(f"method: {cfg.method!r} is not one of {', '.join(map(repr, METHODS))}")
    uses = METHODS[cfg.method].uses_teacher
    if uses == "required" and not cfg.teacher.given:
        raise InputError(f"method {cfg.method}: needs a teacher, teacher.runs: [RUN_DIR, ...] or "
                         f"teacher.logits: FILE")
    if uses == "none" and cfg.teacher.given:
        taught = [name for name, cls in METHODS.items() if cls.uses_teacher != "none"]
        raise InputError(f"teacher.runs / teacher.logits: method {cfg.method!r} uses no teacher "
                         f"({' or '.join(taught)} do)")


def read_sections(cfg: ExperimentConfig) -> dict[str, object]:
    """The sections a run of ``cfg`` reads, by name: the ones every run has, its method's own, and the teacher
    when its method uses one and one is given. (A config may hold other sections — a grid shares one recipe across
    methods —, which the run leaves alone.)"""
    read = {f.name: getattr(cfg, f.name) for f in fields(ExperimentConfig)
            if dataclasses.is_dataclass(getattr(cfg, f.name)) and f.name != "teacher"}
    if cfg.options() is not None:
        read[cfg.method] = cfg.options()
    if METHODS[cfg.method].uses_teacher != "none" and cfg.teacher.given:
        read["teacher"] = cfg.teacher
    return read


def _term_unread(cfg: ExperimentConfig) -> str | None:
    """Why the run reads a teacher but not the teacher term's settings (None: it reads them, or has no teacher)."""
    if "teacher" not in read_sections(cfg):
        return None
    return METHODS[cfg.method].teacher_term_unread(cfg.options())


def _refuse_unread(cfg: ExperimentConfig, data: dict) -> None:
    """In a section the run reads, a given setting that its choices leave unread is one InputError line."""
    why = _term_unread(cfg)
    if why is not None:
        given = [key for key in config_io.group_fields(TeacherConfig, TERM) if key in (data.get("teacher") or {})]
        if given:
            raise InputError(f"teacher.{given[0]}: not read: {why}")
    for name, section in read_sections(cfg).items():
        for key, sibling, value in config_io.unused(section, data.get(name) or {}):
            raise InputError(f"{name}.{key}: read only when {name}.{sibling} is {value!r}, and it is "
                             f"{getattr(section, sibling)!r} (leave {name}.{key} out, or set {name}.{sibling}={value})")


def run_config(cfg: ExperimentConfig) -> dict:
    """What a run folder's ``config.yaml`` holds: ``cfg`` as a mapping of the sections the run reads
    (:func:`read_sections`), each without the settings its choices leave unread — read back, the same run."""
    read = read_sections(cfg)
    out = {f.name: config_io.to_dict(getattr(cfg, f.name)) for f in fields(ExperimentConfig)
           if not f.metadata.get(config_io.INLINE) and not dataclasses.is_dataclass(getattr(cfg, f.name))}
    out |= {name: config_io.to_dict(section, read_only=True) for name, section in read.items()}
    if _term_unread(cfg) is not None:
        for key in config_io.group_fields(TeacherConfig, TERM):
            out["teacher"].pop(key, None)
    return out


def load_experiment(path: str | Path | None, overrides: list[str] | None = None) -> ExperimentConfig:
    """Experiment YAML (optional, ``base:`` inheritance) + dotted overrides → validated :class:`ExperimentConfig`; a
    deprecated key is read with one line on stderr."""
    data = config_io.read_with_base(path) if path else {}
    return experiment_from_dict(config_io.deep_merge(data, config_io.parse_overrides(overrides or [])))

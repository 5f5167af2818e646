"""A run's recipe: what decides its numbers, as a short digest of its resolved config without the keys that only say
where things live or how the run reports — taken of the config its run folder holds (the sections and settings the
run reads), in one layout. Records of studies made before carry digests of the first layout, which
:func:`first_layout_digest` reproduces only to match them (:meth:`Recipe.matches`).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from audio_mrkd import config_io
from audio_mrkd.config_loader import RENAMED, load_experiment, run_config
from audio_mrkd.config_schema import ExperimentConfig
from audio_mrkd.studies.spec import TEACHERS

#: The layout a recipe's digest is taken in, written before its hex digits: the config a run folder holds (the
#: sections the run reads). A recipe without it was taken in the first layout (:func:`first_layout_digest`).
RECIPE_LAYOUT = "2"

# keys that never change a run's numbers: where data and outputs live, how the run is named and reported
NOT_RECIPE = {"name": None, "data": ("root", "manifest_dir"),
              "train": ("out_dir", "run_name", "progress", "save_checkpoints", "checkpoint_every", "log_every")}

# Keys added to a section after studies were recorded, at the value that does what the code did before they existed:
# at that value a key is left out of the digest, so the records of earlier studies keep matching; any other value
# (a changed default included) puts it in, and the run has another recipe. A method's options count the same way.
ADDED = {("data", "final_test"): False, ("train", "milestone_unit"): "epoch", ("pskd", "store"): "dominant"}


def without_what_does_not_count(data: dict) -> dict:
    """``data`` (a config as a mapping) without :data:`NOT_RECIPE`, and without the keys of :data:`ADDED` at their
    neutral value (changed in place, returned)."""
    for section, keys in NOT_RECIPE.items():
        if keys is None:
            data.pop(section, None)
        else:
            for key in keys:
                data.get(section, {}).pop(key, None)
    for (section, key), neutral in ADDED.items():
        if section in data and key in data[section] and data[section][key] == neutral:
            data[section].pop(key)
    return data


def digest(data: dict) -> str:
    """16 hex digits of the SHA-256 of ``data`` as sorted JSON."""
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def recipe_digest(cfg: ExperimentConfig, teachers_placeholder: bool = False) -> str:
    """What decides a run's numbers, as a short digest: the config its run folder holds
    (:func:`~audio_mrkd.config_loader.run_config`: the sections and settings the run reads) without what does not
    count. ``teachers_placeholder``: ``teacher.runs`` came from ``@teachers`` (the fold's teacher runs, whose own
    records carry their recipe), so their paths do not count."""
    data = without_what_does_not_count(run_config(cfg))
    if teachers_placeholder:
        data["teacher"]["runs"] = TEACHERS
    return f"{RECIPE_LAYOUT}:{digest(data)}"


@dataclass
class Recipe:
    """A run's recipe as a study compares it: its digest (what new records carry) and, computed only when a record
    of the first layout is met, the digest studies recorded before took of the same config."""

    digest: str
    cfg: ExperimentConfig = field(compare=False, repr=False)
    teachers_placeholder: bool = field(default=False, compare=False, repr=False)

    @classmethod
    def of(cls, cfg: ExperimentConfig, teachers_placeholder: bool = False) -> "Recipe":
        return cls(recipe_digest(cfg, teachers_placeholder), cfg, teachers_placeholder)

    @cached_property
    def first_layout(self) -> str:
        return first_layout_digest(self.cfg, self.teachers_placeholder)

    @staticmethod
    def current(recorded: str) -> bool:
        """``recorded`` (a record's recipe) was taken in today's layout."""
        return recorded.startswith(f"{RECIPE_LAYOUT}:")

    def matches(self, recorded: str) -> bool:
        """``recorded`` (a record's recipe, of either layout) is this recipe."""
        return recorded == (self.digest if self.current(recorded) else self.first_layout)


def load_given(config: str | Path, overrides: list[str]) -> ExperimentConfig:
    """The resolved config of a run given as (config, overrides), ``@teachers`` left as a placeholder."""
    return load_experiment(config, [o.replace(TEACHERS, json.dumps([TEACHERS])) for o in overrides])


def load_recipe(config: str | Path, overrides: list[str]) -> Recipe:
    """The recipe of a run given as (config, overrides), ``@teachers`` left as a placeholder."""
    return Recipe.of(load_given(config, overrides), any(TEACHERS in o for o in overrides))


# ---- records made before: the first layout ------------------------------------------------------------------------
# sections of their own before every method had one (the others' settings were ``method_options``)
_SECTIONS_THEN = ("mrkd", "kd")


def _in_first_layout(data: dict, cfg: ExperimentConfig) -> None:
    """The resolved config in the layout studies were first recorded in: the ``teacher.*`` keys and
    ``mrkd.with_teacher`` back under ``kd.*`` (:data:`~audio_mrkd.config_loader.RENAMED` read backwards), the
    configured method's settings that differ from its defaults as ``method_options``, the other methods' sections left
    out (their defaults did not exist then)."""
    for (old_section, old_key), (section, key) in RENAMED.items():
        data.setdefault(old_section, {})[old_key] = data[section].pop(key)
    data.pop("teacher")
    options = cfg.options()
    defaults = config_io.to_dict(type(options)()) if options is not None else {}
    defaults |= {key: value for (method, key), value in ADDED.items() if method == cfg.method}
    given = config_io.to_dict(options) if options is not None else {}
    data["method_options"] = {} if cfg.method in _SECTIONS_THEN else \
        {key: value for key, value in given.items() if value != defaults[key]}
    for name in cfg.methods:
        if name not in _SECTIONS_THEN:
            data.pop(name)


def _as_first_recorded(data: dict, taught: bool) -> None:
    """Defaults that changed without changing a run's numbers, written as they were."""
    if not taught:  # kd.checkpoint is read only by a run with a teacher (its default was "best")
        data["kd"]["checkpoint"] = "best"
    if data["train"].get("step_graph") is False:  # the same step, run eagerly: "auto" (the former default) on a CPU
        data["train"]["step_graph"] = "auto"


def first_layout_digest(cfg: ExperimentConfig, teachers_placeholder: bool = False) -> str:
    """The recipe digest a study recorded in the first layout took of ``cfg`` (no layout prefix); no new record is
    written in it."""
    data = config_io.to_dict(cfg)
    _in_first_layout(data, cfg)
    without_what_does_not_count(data)
    if teachers_placeholder:
        data["kd"]["teachers"] = TEACHERS
    _as_first_recorded(data, taught=cfg.teacher.given)
    return digest(data)

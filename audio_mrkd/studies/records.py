"""An ablation's records (``runs.jsonl``): reading them, the recipe each run was made with, and reusing runs.

Every record carries ``recipe``: a digest of the run's resolved configuration without the keys that only say where
things live or how the run reports (paths, run names, progress, checkpoint keeping). On resume a record whose
recipe differs from what the spec now gives (the spec or its recipe YAML was edited) is refused in one line rather
than silently mixed into the table. A run whose recipe another study already ran (same config, overrides, fold and
seed: training is deterministic) can be taken from that study's records (``ablate --reuse DIR``) instead of being
trained again. Records written before ``recipe`` existed get theirs from the run folder's ``config.yaml`` when it is
still there, and are accepted as they are when it is not.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from audio_mrkd import config_io, fileio
from audio_mrkd.config_loader import RENAMED, load_experiment
from audio_mrkd.config_schema import ExperimentConfig
from audio_mrkd.errors import InputError
from audio_mrkd.runs.run import Run
from audio_mrkd.studies.spec import TEACHERS

# keys that never change a run's numbers: where data and outputs live, how the run is named and reported
_NOT_RECIPE = {"name": None, "data": ("root", "manifest_dir"),
               "train": ("out_dir", "run_name", "progress", "save_checkpoints", "checkpoint_every", "log_every")}


# Keys added to the config after studies were first recorded, at the value that does what the code did before
# they existed: at that value a key is left out of the digest, so the records of earlier studies keep matching (a
# run that sets another value has another recipe).
_ADDED = {("data", "final_test"): False, ("train", "milestone_unit"): "epoch"}


# sections of their own before every method had one (the others' settings were ``method_options``)
_SECTIONS_THEN = ("mrkd", "kd")

# options added to a method after studies were first recorded, at the value that does what the code did before:
# a run at that value leaves the option out of the digest whatever the default is now, any other value (the
# default included, once it differs) puts it in
_OPTIONS_ADDED = {("pskd", "store"): "dominant"}


def _in_first_layout(data: dict, cfg: ExperimentConfig) -> None:
    """The resolved config in the layout studies were first recorded in: ``teacher.*`` and ``mrkd.with_teacher``
    back under ``kd.*``, the configured method's settings that differ from its defaults as ``method_options``, the
    other methods' sections left out (their defaults did not exist then)."""
    for (old_section, old_key), (section, key) in RENAMED.items():
        data.setdefault(old_section, {})[old_key] = data[section].pop(key)
    data.pop("teacher")
    options = cfg.options()
    defaults = config_io.to_dict(type(options)()) if options is not None else {}
    defaults |= {key: value for (method, key), value in _OPTIONS_ADDED.items() if method == cfg.method}
    given = config_io.to_dict(options) if options is not None else {}
    data["method_options"] = {} if cfg.method in _SECTIONS_THEN else \
        {key: value for key, value in given.items() if value != defaults[key]}
    for name in cfg.methods:
        if name not in _SECTIONS_THEN:
            data.pop(name)


def _as_first_recorded(data: dict, taught: bool) -> None:
    """The resolved config as the digest sees it: keys added later left out at their neutral value; defaults that
    changed without changing a run's numbers written as they were."""
    for (section, key), neutral in _ADDED.items():
        if data[section].get(key) == neutral:
            data[section].pop(key)
    if not taught:  # kd.checkpoint is read only by a run with a teacher (its default was "best")
        data["kd"]["checkpoint"] = "best"
    if data["train"].get("step_graph") is False:  # the same step, run eagerly: "auto" (the former default) on a CPU
        data["train"]["step_graph"] = "auto"


def recipe_digest(cfg: ExperimentConfig, teachers_placeholder: bool = False) -> str:
    """What decides a run's numbers, as a short digest (of the config in its first layout, so that studies recorded
    before a key moved keep matching). ``teachers_placeholder``: ``teacher.runs`` came from ``@teachers`` (the fold's teacher runs, whose own records carry their recipe), so their paths do not count."""
    data = config_io.to_dict(cfg)
    _in_first_layout(data, cfg)
    for section, keys in _NOT_RECIPE.items():
        if keys is None:
            data.pop(section, None)
        else:
            for key in keys:
                data[section].pop(key, None)
    if teachers_placeholder:
        data["kd"]["teachers"] = TEACHERS
    _as_first_recorded(data, taught=cfg.teacher.given)
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def load_given(config: str | Path, overrides: list[str]) -> ExperimentConfig:
    """The resolved config of a run given as (config, overrides), ``@teachers`` left as a placeholder."""
    return load_experiment(config, [o.replace(TEACHERS, json.dumps([TEACHERS])) for o in overrides])


def load_recipe(config: str | Path, overrides: list[str]) -> str:
    """The recipe of a run given as (config, overrides), ``@teachers`` left as a placeholder."""
    return recipe_digest(load_given(config, overrides), any(TEACHERS in o for o in overrides))


def _recorded_recipe(record: dict, out_dir: Path) -> str | None:
    """The record's recipe, or (older records) the one of its run folder's config.yaml; None when neither is known."""
    if record.get("recipe"):
        return record["recipe"]
    if not record.get("run_dir"):
        return None
    return run_dir_recipe(out_dir / record["run_dir"], record.get("variant") != "teacher")


def run_dir_recipe(run_dir: Path, taught: bool) -> str | None:
    """The recipe of the run in ``run_dir`` (``taught``: its ``teacher.runs`` came from ``@teachers`` and count as
    the placeholder); None when its folder has no config or this version cannot read it."""
    try:
        cfg = Run(run_dir).config
    except InputError:  # no run folder, or written by a version with other keys: unknown
        return None
    return recipe_digest(cfg, taught and bool(cfg.teacher.runs))


def read_records(path: Path, repair: bool = True) -> list[tuple[int, dict]]:
    """(line number, record) for every complete line of ``path``; ``repair=False`` reads another study's file
    without touching it (it may be growing)."""
    if not path.is_file():
        return []
    records = []
    for number, line in enumerate(fileio.read_lines(path, repair), start=1):
        try:
            records.append((number, json.loads(line)))
        except ValueError:
            raise InputError(f"{path}: line {number} is not a JSON record; remove it to re-run that run") from None
    return records


def check_recipes(path: Path, records: list[tuple[int, dict]], expected: dict[tuple, str]) -> None:
    """Refuse a record made with another recipe than the spec now gives for its (variant, fold, seed)."""
    for number, record in records:
        key = (record["variant"], record["fold"], record["seed"])
        recorded = _recorded_recipe(record, path.parent)
        if key in expected and recorded is not None and recorded != expected[key]:
            raise InputError(f"{path}: line {number} ({key[0]}, fold {key[1]}, seed {key[2]}) was run with another "
                             f"recipe than the spec now gives (its config or overrides changed): use another --out, "
                             f"or remove that line to run it again")


def reusable(sources: list[Path], wanted: dict[tuple, str], out_dir: Path) -> dict[tuple, dict]:
    """Records of other studies (folders holding a ``runs.jsonl``) that ran exactly a wanted recipe, as records of
    this study: the key's variant name, ``run_dir`` and ``reused_from`` (the source study) relative to ``out_dir``,
    so that the records hold no machine's absolute paths and the studies can move together.
    Teacher runs, and variants taught by ``@teachers``, are never taken from elsewhere (the caller leaves them out
    of ``wanted``)."""
    by_recipe: dict[str, tuple[Path, dict]] = {}
    for source in sources:
        records_path = Path(source) / "runs.jsonl"
        if not records_path.is_file():
            raise InputError(f"--reuse {source}: no runs.jsonl there")
        for _, record in read_records(records_path, repair=False):
            recipe = _recorded_recipe(record, Path(source))
            if recipe is not None and record.get("variant") != "teacher":
                by_recipe.setdefault(recipe, (Path(source), record))
    found = {}
    for key, recipe in wanted.items():
        if recipe in by_recipe:
            source, record = by_recipe[recipe]
            run_dir = record.get("run_dir")
            if run_dir is not None:
                run_dir = os.path.relpath((source / run_dir).resolve(), out_dir.resolve())
            found[key] = record | {"variant": key[0], "run_dir": run_dir, "recipe": recipe,
                                   "reused_from": os.path.relpath(source.resolve(), out_dir.resolve())}
    return found

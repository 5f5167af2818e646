"""An ablation's records (``runs.jsonl``): reading them, the recipe each run was made with, and reusing runs.

Every record carries ``recipe`` (:mod:`~audio_mrkd.studies.recipes`): a digest of the run's resolved configuration
without the keys that only say where things live or how the run reports (paths, run names, progress, checkpoint
keeping). On resume a record whose
recipe differs from what the spec now gives (the spec or its recipe YAML was edited) is refused in one line rather
than silently mixed into the table. A run whose recipe another study already ran (same config, overrides, fold and
seed: training is deterministic) can be taken from that study's records (``ablate --reuse DIR``) instead of being
trained again. Records written before ``recipe`` existed get theirs from the run folder's ``config.yaml`` when it is
still there, and are accepted as they are when it is not.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from audio_mrkd import fileio
from audio_mrkd.errors import InputError
from audio_mrkd.runs.run import Run
from audio_mrkd.studies.recipes import Recipe, recipe_digest

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


def check_recipes(path: Path, records: list[tuple[int, dict]], expected: dict[tuple, Recipe]) -> None:
    """Refuse a record made with another recipe than the spec now gives for its (variant, fold, seed)."""
    for number, record in records:
        key = (record["variant"], record["fold"], record["seed"])
        recorded = _recorded_recipe(record, path.parent)
        if key in expected and recorded is not None and not expected[key].matches(recorded):
            raise InputError(f"{path}: line {number} ({key[0]}, fold {key[1]}, seed {key[2]}) was run with another "
                             f"recipe than the spec now gives (its config or overrides changed): use another --out, "
                             f"or remove that line to run it again")


def reusable(sources: list[Path], wanted: dict[tuple, Recipe], out_dir: Path) -> dict[tuple, dict]:
    """Records of other studies (folders holding a ``runs.jsonl``) that ran exactly a wanted recipe (in either layout),
    as records of this study: the key's variant name, its recipe now, ``run_dir`` and ``reused_from`` (the source
    study) relative to ``out_dir``, so that the records hold no machine's absolute paths and the studies can move
    together.
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
    first_layout = any(not Recipe.current(r) for r in by_recipe)  # the conversion only where such records are
    found = {}
    for key, recipe in wanted.items():
        match = by_recipe.get(recipe.digest) or (by_recipe.get(recipe.first_layout) if first_layout else None)
        if match is not None:
            source, record = match
            run_dir = record.get("run_dir")
            if run_dir is not None:
                run_dir = os.path.relpath((source / run_dir).resolve(), out_dir.resolve())
            found[key] = record | {"variant": key[0], "run_dir": run_dir, "recipe": recipe.digest,
                                   "reused_from": os.path.relpath(source.resolve(), out_dir.resolve())}
    return found

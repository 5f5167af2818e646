"""The runs of a study: :class:`Grid` — every (variant, fold, seed) of a spec, teachers first, with its config,
overrides and run folder — and :func:`run_one`, which trains one of them (in whatever process or cluster task runs
it) and returns its record for ``runs.jsonl``."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from audio_mrkd.config_loader import load_experiment
from audio_mrkd.errors import InputError
from audio_mrkd.runs.run import Run
from audio_mrkd.studies import records as study_records
from audio_mrkd.studies.recipes import load_given
from audio_mrkd.studies.spec import TEACHERS, AblationSpec, load_spec
from audio_mrkd.studies.sweep import REPORTED


def run_one(task: tuple) -> dict:
    """One (variant, fold, seed) run → its record (executed in a worker process when jobs > 1). Checkpoints are
    written while it trains (an interrupted run continues from its last one) and kept afterwards only if ``keep``."""
    config, overrides, variant, fold, seed, threads, train_fn, recipe, keep = task
    if threads:
        torch.set_num_threads(threads)
    from audio_mrkd.train.engine import train_run
    cfg = load_experiment(config, overrides)
    run_dir, metrics = (train_fn or train_run)(cfg)
    if run_dir is not None:  # relative to the ablation folder (cfg.out_dir is <out>/<variant>): it can be moved
        run_dir = Path(run_dir).resolve()
        if not keep:
            Run(run_dir).remove_checkpoints()
        if run_dir.is_relative_to(Path(cfg.out_dir).resolve().parent):
            run_dir = run_dir.relative_to(Path(cfg.out_dir).resolve().parent)
    test = metrics.get("test") or {}  # data.final_test: the official test split, scored once after the last epoch
    return {"variant": variant, "fold": fold, "seed": seed,
            **{f"{w}_{m}": metrics[w][m] for w in ("last", "best") for m in REPORTED},
            **{f"test_{w}_{m}": test[w][m] for w in test for m in REPORTED},
            "best_epoch": metrics["best"]["epoch"], "n_eval": metrics["last"]["n_items"],
            **({"n_test": test["last"]["n_items"]} if test else {}),
            "run_dir": str(run_dir) if run_dir is not None else None, "recipe": recipe}


@dataclass
class Grid:
    """The runs of a spec — (variant, fold, seed) keys, teachers first — and what each is given."""

    spec: AblationSpec
    config: Path
    out_dir: Path
    run_overrides: list[str]
    threads: int
    train_fn: object

    def keys(self) -> list[tuple]:
        spec, folds = self.spec, range(max(self.spec.folds, 1))
        keys = [("teacher", fold, seed) for fold in folds for seed in spec.teachers.seeds] if spec.teachers else []
        return keys + [(variant, fold, seed) for seed in spec.seeds for fold in folds for variant in spec.variants]

    def given(self, variant: str, fold: int, seed: int) -> tuple[str | Path, list[str]]:
        """The run's config and overrides (``@teachers`` not yet replaced)."""
        spec = self.spec
        cv = [f"data.cv_folds={spec.folds}", f"data.cv_fold={fold}"] if spec.folds else []
        if variant == "teacher":
            return spec.teachers.config, [*spec.teachers.overrides, *self.run_overrides, f"seed={seed}", *cv]
        return self.config, [*spec.overrides, *self.run_overrides, *spec.variants[variant], f"seed={seed}", *cv]

    def run_dir(self, key: tuple) -> Path:
        """The run's folder, named by its key (``train.run_name``), so that a run cut off half-way is found again."""
        variant, fold, seed = key
        return self.out_dir / variant / f"{variant}-fold{fold}-seed{seed}"

    def taught(self, variant: str) -> bool:
        return variant != "teacher" and any(TEACHERS in o for o in self.spec.variants[variant])

    def task(self, key: tuple, recipe: str, done: dict, keep: bool) -> tuple:
        """What :func:`run_one` needs; ``@teachers`` → the fold's teacher run directories, as a list."""
        variant, fold, seed = key
        config, run = self.given(*key)
        if self.taught(variant):
            dirs = json.dumps([str(self.out_dir / done[("teacher", fold, s)]["run_dir"])
                               for s in self.spec.teachers.seeds])
            run = [o.replace(TEACHERS, dirs) for o in run]
        run_dir = self.run_dir(key)
        run += [f"train.out_dir={run_dir.parent}", f"train.run_name={run_dir.name}", "train.save_checkpoints=true",
                "train.progress=false"]
        return config, run, variant, fold, seed, self.threads, self.train_fn, recipe, keep

    def settle_unfinished(self, keys: list[tuple], recipes: dict, log) -> None:
        """A run cut off by an earlier invocation continues from its last checkpoint when its recipe is the one the
        spec gives now; any other folder in its place is moved aside (nothing is deleted) and the run starts over."""
        for key in keys:
            run_dir = self.run_dir(key)
            if not run_dir.exists():
                continue
            if (Run(run_dir).checkpoint("last").is_file()
                    and study_records.run_dir_recipe(run_dir, self.taught(key[0])) == recipes[key].digest):
                log(f"ablation: {run_dir} continues from its last checkpoint")
                continue
            aside, n = run_dir.with_name(f"{run_dir.name}.unfinished"), 1
            while aside.exists():
                aside, n = run_dir.with_name(f"{run_dir.name}.unfinished-{n}"), n + 1
            run_dir.rename(aside)
            log(f"ablation: {run_dir} held an unfinished run with another recipe or nothing to continue from; "
                f"moved to {aside.name}, the run starts over")

    def warn_leaking_teachers(self, log) -> None:
        """One line per variant that distils its fold's teachers at their ``best`` epoch: each teacher chose it on the
        clips its fold holds out, which are the clips the student is scored on."""
        for variant in self.spec.variants:
            if self.taught(variant) and load_given(*self.given(variant, 0, self.spec.seeds[0])) \
                    .teacher.checkpoint == "best":
                log(f"ablation: warning: variant {variant} distils its teachers at teacher.checkpoint=best, the epoch "
                    f"each chose on the clips its fold holds out, which the student is scored on "
                    f"(teacher.checkpoint=last does not)")


def usable_teacher(record: dict | None, out_dir: Path) -> bool:
    """A recorded teacher run whose best checkpoint is still there."""
    return record is not None and Run(out_dir / record["run_dir"]).checkpoint("best").is_file()


def to_train(keys: list[tuple], done: dict, out_dir: Path) -> tuple[list[tuple], list[tuple]]:
    """The teacher runs and the other runs still to train: those without a record, and the teachers a missing
    run's fold needs whose checkpoints are gone (runs.jsonl carried to another machine: trained again, identically,
    since training is deterministic)."""
    todo = [key for key in keys if key[0] != "teacher" and key not in done]
    teacher_todo = [key for key in keys if key[0] == "teacher" and not usable_teacher(done.get(key), out_dir)
                    and any(f == key[1] for _, f, _ in todo)]
    return teacher_todo, todo


def variant_runs(spec_path: str | Path, overrides: list[str] | None = None,
                 run_overrides: list[str] | None = None) -> tuple[AblationSpec, list[tuple]]:
    """The spec and every run ``ablate`` would train from it, as ``((variant, fold, seed), config, overrides)``.
    A spec with teachers is refused (its variants cannot start before the teachers have finished)."""
    spec, config = load_spec(spec_path, overrides)
    if spec.teachers is not None:
        raise InputError(f"{spec_path}: a spec with teachers cannot have its variants measured before they are trained")
    grid = Grid(spec, config, Path("."), list(run_overrides or []), 0, None)
    return spec, [(key, *grid.given(*key)) for key in grid.keys()]

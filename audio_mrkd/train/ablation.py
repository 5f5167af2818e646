"""``audio-mrkd ablate``: a grid of variants × recording-grouped CV folds × seeds, paired against a reference.

The spec is a YAML file (``configs/ablations/*.yaml``)::

    config: ../experiments/demo_drums_mrkd.yaml   # the recipe every variant starts from
    folds: 5                                     # data.cv_folds (grouped by identifier, pooled train split);
                                                 # 0 = no CV, the config's own evaluated split (images)
    seeds: [0, 1, 2]
    reference: ce
    variants:
      ce: [method=ce]
      fcn_ka: [method=mrkd]
      mean: [method=mrkd, mrkd.ensemble=mean]

Teachers for distillation (``method: kd``, or MrKD with a teacher) are trained inside each fold, on that fold's
training part only, before the variants; a variant names its fold's teachers with ``@teachers``::

    teachers:
      config: ../experiments/demo_drums_teacher.yaml
      seeds: [100, 101, 102]                     # one teacher run per seed and fold: the ensemble
      overrides: [train.epochs=90]               # the teachers' own (the spec's `overrides` are the variants')
    variants:
      kd: [method=kd, teacher.runs=@teachers]

Every (variant, fold, seed) run is appended to ``runs.jsonl`` as it finishes, so an interrupted ablation
continues where it stopped, and a run cut off half-way continues from its last epoch checkpoint (its folder,
``<variant>/<variant>-fold<f>-seed<s>``, is named by its key; the checkpoints of a finished run are kept for teachers
only); each finished run prints a line (a bar on a terminal) —
``ablation: 5/12 runs (42%), 3:10 elapsed, ~4:26 left, variant=mean, fold=1, seed=0, last_macro_acc=0.7125`` —
counting the runs already in ``runs.jsonl``. The table gives mean ± std over folds × seeds of the last- and
best-epoch metrics and the paired difference to the reference (same fold, same seed), with its standard error, win
count, 95 % CI and p-value (t-test on the fold means, Holm-corrected over the variants; :mod:`study_statistics`),
then the smallest difference the design detects at 80 % power (and, with ``target``, the folds × seeds a given one
needs); ``ablation.png`` draws those paired differences with their CIs (forest plot) and the learning curves of the
reference and the best variant (read from each run's ``metrics.json``, located by the ``run_dir`` of its record).
``--cluster ADDRESS`` runs the same grid as tasks of a Ray cluster (:mod:`ablation_cluster`), with the same records.
``--slurm`` submits it as SLURM job arrays (:mod:`ablation_slurm`), with the same run folders and records.
"""
from __future__ import annotations

import json
import multiprocessing as mp
import os
import queue
import shutil
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from audio_mrkd import config as config_io
from audio_mrkd import fileio, plots
from audio_mrkd.errors import InputError
from audio_mrkd.registry import load_experiment
from audio_mrkd.progress import progress
from audio_mrkd.train import ablation_cluster, ablation_records, ablation_task_records, study_statistics
from audio_mrkd.train import checkpoint as ckpt
from audio_mrkd.train.ablation_records import TEACHERS
from audio_mrkd.train.metrics import mean_std
from audio_mrkd.train.sweep import REPORTED


@dataclass
class TeacherSpec:
    """Teacher runs trained in every fold before the variants (checkpoints kept): one per seed."""

    config: str
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    overrides: list[str] = field(default_factory=list)


@dataclass
class AblationSpec:
    config: str
    variants: dict[str, list[str]]
    folds: int = 5
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    reference: str = "ce"
    overrides: list[str] = field(default_factory=list)   # applied to every variant (e.g. train.epochs=30)
    teachers: TeacherSpec | None = None

    def validate(self) -> None:
        if self.reference not in self.variants:
            raise InputError(f"reference: '{self.reference}' is not one of the variants")
        for variant, overrides in self.variants.items():
            if any(TEACHERS in o for o in overrides) and self.teachers is None:
                raise InputError(f"variants.{variant}: uses {TEACHERS} but the spec has no 'teachers' section")
        if self.teachers is not None and "teacher" in self.variants:
            raise InputError("variants.teacher: the name is taken by the teacher runs")
        if self.folds == 1 or self.folds < 0:
            raise InputError(f"folds: 0 (no cross-validation: the config's own evaluated split) or at least 2, "
                             f"got {self.folds}")


def load_spec(path: str | Path, overrides: list[str] | None = None) -> tuple[AblationSpec, Path]:
    spec = config_io.load(AblationSpec, path, overrides)
    config = Path(path).parent / spec.config
    if not config.is_file():
        raise InputError(f"{path}: config '{spec.config}' not found ({config})")
    if spec.teachers is not None:
        teacher_config = Path(path).parent / spec.teachers.config
        if not teacher_config.is_file():
            raise InputError(f"{path}: teachers.config '{spec.teachers.config}' not found ({teacher_config})")
        spec.teachers.config = str(teacher_config)
    return spec, config


def _usable_teacher(record: dict | None, out_dir: Path) -> bool:
    """A recorded teacher run whose best checkpoint is still there."""
    return record is not None and (out_dir / record["run_dir"] / "checkpoints" / "best.pt").is_file()


def _run_one(task: tuple) -> dict:
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
            shutil.rmtree(ckpt.checkpoint_path(run_dir).parent, ignore_errors=True)
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
class _Grid:
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
        """What :func:`_run_one` needs; ``@teachers`` → the fold's teacher run directories, as a list."""
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

    def settle_unfinished(self, keys: list[tuple], recipes: dict[tuple, str], log) -> None:
        """A run cut off by an earlier invocation continues from its last checkpoint when its recipe is the one the
        spec gives now; any other folder in its place is moved aside (nothing is deleted) and the run starts over."""
        for key in keys:
            run_dir = self.run_dir(key)
            if not run_dir.exists():
                continue
            if (ckpt.checkpoint_path(run_dir, "last").is_file()
                    and ablation_records.run_dir_recipe(run_dir, self.taught(key[0])) == recipes[key]):
                log(f"ablation: {run_dir} continues from its last checkpoint")
                continue
            aside, n = run_dir.with_name(f"{run_dir.name}.unfinished"), 1
            while aside.exists():
                aside, n = run_dir.with_name(f"{run_dir.name}.unfinished-{n}"), n + 1
            run_dir.rename(aside)
            log(f"ablation: {run_dir} held an unfinished run with another recipe or nothing to continue from; "
                f"moved to {aside.name}, the run starts over")


def variant_runs(spec_path: str | Path, overrides: list[str] | None = None,
                 run_overrides: list[str] | None = None) -> tuple[AblationSpec, list[tuple]]:
    """The spec and every run ``ablate`` would train from it, as ``((variant, fold, seed), config, overrides)``.
    A spec with teachers is refused (its variants cannot start before the teachers have finished)."""
    spec, config = load_spec(spec_path, overrides)
    if spec.teachers is not None:
        raise InputError(f"{spec_path}: a spec with teachers cannot have its variants measured before they are trained")
    grid = _Grid(spec, config, Path("."), list(run_overrides or []), 0, None)
    return spec, [(key, *grid.given(*key)) for key in grid.keys()]


def run_ablation(spec_path: str | Path, out_dir: str | Path, overrides: list[str] | None = None,
                 train_fn=None, jobs: int = 1, run_overrides: list[str] | None = None, log=print,
                 reuse: list[str | Path] | None = None, only: list[str] | None = None, train: bool = True,
                 cluster: str | None = None, placement: ablation_cluster.Placement | None = None,
                 target: float | None = None) -> str:
    """Run every missing (variant, fold, seed) — in ``jobs`` processes of one thread each when jobs > 1 —, with a
    progress line per finished run on stderr (``log`` says how many runs were already in ``runs.jsonl``, and how many
    were taken from the studies in ``reuse``: same recipe, fold and seed, see :mod:`ablation_records`),
    then write ``ablation.md`` / ``ablation.json`` / ``ablation.png`` (forest plot of the paired differences and
    learning curves; a failure to draw it is a warning, never a lost study) in ``out_dir``. Teacher runs (the
    spec's ``teachers``) come first, so that every variant finds its fold's teachers. ``only``: run just these
    variants (and the reference), e.g. the ones a selection study chose, once on the reported split.
    ``train=False``: no run is trained; the table of the runs recorded so far (a study still under way).
    ``cluster``: the runs are tasks of the Ray cluster at that address instead (:mod:`ablation_cluster`), each
    asking for ``placement``'s CPUs and GPUs. ``target``: a difference of the headline metric (a fraction) for which
    the summary says how many folds × seeds would detect it at 80 % power."""
    if target is not None and not target > 0:
        raise InputError(f"--target: a difference greater than 0 (in points of macro accuracy), got {100 * target:g}")
    spec, config = load_spec(spec_path, overrides)
    if only:
        _keep_variants(spec, only, spec_path)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    records_path = out_dir / "runs.jsonl"
    placement = placement or ablation_cluster.Placement()
    threads = ablation_cluster.threads(placement) if cluster else 1 if jobs > 1 else 0
    grid = _Grid(spec, config, out_dir, list(run_overrides or []), threads, train_fn)
    keys = grid.keys()
    recipes = {key: ablation_records.load_recipe(*grid.given(*key)) for key in keys}
    _warn_leaking_teachers(grid, log)
    if train:  # the records of runs made as SLURM jobs (ablate --slurm): this process is now runs.jsonl's writer
        ablation_task_records.gather(out_dir, keys)
    records = ablation_records.read_records(records_path)
    ablation_records.check_recipes(records_path, records, recipes)
    done = {(r["variant"], r["fold"], r["seed"]): r for _, r in records}
    if not train:  # a SLURM study under way: its jobs' records too, read only
        done |= ablation_task_records.unrecorded(out_dir, done)
        log(f"ablation: {len(set(done) & set(keys))} of {len(keys)} runs recorded in {records_path}; nothing trained")
        return _write_results(out_dir, list(done.values()), spec, target)
    if reuse:
        _take_reused(reuse, {key: recipes[key] for key in keys if key not in done and key[0] != "teacher"
                             and not grid.taught(key[0])}, records_path, done, log)

    teacher_todo, todo = to_train(keys, done, out_dir)
    total, missing = len(keys), len(teacher_todo) + len(todo)
    if total > missing:
        log(f"ablation: {total - missing} of {total} runs already in {records_path}")
    runner = _runner(cluster, placement, jobs, out_dir, log) if missing else None
    bar = progress(total=total, initial=total - missing, desc="ablation", unit="runs")
    record = _recorder(records_path, done, bar)
    grid.settle_unfinished(teacher_todo + todo, recipes, log)
    try:
        for batch, keep in ((teacher_todo, True), (todo, False)):  # the teachers first: the variants name them
            if batch:
                runner([grid.task(key, recipes[key], done, keep) for key in batch], record)
    finally:
        bar.close()
        if runner is not None:
            runner.close()
    return _write_results(out_dir, list(done.values()), spec, target)


def to_train(keys: list[tuple], done: dict, out_dir: Path) -> tuple[list[tuple], list[tuple]]:
    """The teacher runs and the other runs still to train: those without a record, and the teachers a missing
    run's fold needs whose checkpoints are gone (runs.jsonl carried to another machine: trained again, identically,
    since training is deterministic)."""
    todo = [key for key in keys if key[0] != "teacher" and key not in done]
    teacher_todo = [key for key in keys if key[0] == "teacher" and not _usable_teacher(done.get(key), out_dir)
                    and any(f == key[1] for _, f, _ in todo)]
    return teacher_todo, todo


def _warn_leaking_teachers(grid: _Grid, log) -> None:
    """One line per variant that distils its fold's teachers at their ``best`` epoch: each teacher chose it on the
    clips its fold holds out, which are the clips the student is scored on."""
    for variant in grid.spec.variants:
        if grid.taught(variant) and ablation_records.load_given(*grid.given(variant, 0, grid.spec.seeds[0])) \
                .teacher.checkpoint == "best":
            log(f"ablation: warning: variant {variant} distils its teachers at teacher.checkpoint=best, the epoch "
                f"each chose on the clips its fold holds out, which the student is scored on "
                f"(teacher.checkpoint=last does not)")


def _keep_variants(spec: AblationSpec, only: list[str], spec_path: str | Path) -> None:
    unknown = [name for name in only if name not in spec.variants]
    if unknown:
        raise InputError(f"--variants: '{unknown[0]}' is not a variant of {spec_path} ({', '.join(spec.variants)})")
    spec.variants = {name: o for name, o in spec.variants.items() if name in only or name == spec.reference}


def _take_reused(sources: list[str | Path], wanted: dict[tuple, str], records_path: Path, done: dict, log) -> None:
    """Append to this study's records the wanted runs that another study already made with the same recipe."""
    out_dir = records_path.parent
    found = ablation_records.reusable([Path(s) for s in sources], wanted, out_dir)
    for key, rec in found.items():
        fileio.append_line(records_path, json.dumps(rec))
        done[key] = rec
    if found:  # the sources as reached from here, not relative to the study's folder as recorded
        taken = sorted({os.path.normpath(out_dir / r["reused_from"]) for r in found.values()})
        log(f"ablation: {len(found)} runs taken from {', '.join(taken)} (same recipe, fold and seed)")


def _recorder(records_path: Path, done: dict, bar):
    """``record(rec, node=None)``: append a finished run to ``runs.jsonl`` (the driver alone writes it) and print its
    progress line — done/total counting the runs resumed from runs.jsonl, elapsed, the time left as the mean time of
    the runs finished in this invocation times the runs still to do, and the node on a cluster."""
    def record(rec: dict, node: str | None = None) -> None:
        fileio.append_line(records_path, json.dumps(rec))
        done[(rec["variant"], rec["fold"], rec["seed"])] = rec
        bar.set_postfix(variant=rec["variant"], fold=rec["fold"], seed=rec["seed"],
                        last_macro_acc=f"{rec['last_macro_accuracy']:.4f}", **({"node": node} if node else {}))
        bar.update(1)
    return record


def _runner(cluster: str | None, placement: ablation_cluster.Placement, jobs: int, out_dir: Path, log):
    """How the runs are executed: as local processes, or as tasks of the cluster once every node has been seen to
    write to ``out_dir``."""
    if not cluster:
        return _LocalRunner(jobs)
    runner = ablation_cluster.ClusterRunner(ablation_cluster.connect(cluster, log), placement)
    try:
        ablation_cluster.check_storage(runner.ray, out_dir)
    except BaseException:
        runner.close()
        raise
    return runner


@dataclass
class _LocalRunner:
    jobs: int

    def __call__(self, tasks: list[tuple], record) -> None:
        _execute(tasks, self.jobs, record)

    def close(self) -> None:
        pass


def _execute(tasks: list[tuple], jobs: int, record) -> None:
    """Run the tasks (in ``jobs`` processes when there are several), recording each result as soon as its run
    finishes (not in submission order: a short run finished beside a long one is on disk before the long one ends).
    On a machine with GPUs each process sees one of its own (:func:`gpu_slots`) and is spawned, never forked (a fork
    after CUDA initialisation leaves the child without CUDA); without, they are forked (each spawned one would import
    torch again: 10.7 s against 1.0-1.6 s for the 4-run study of docs/benchmarks.md on 2 cores)."""
    if jobs > 1 and len(tasks) > 1:
        gpus = gpu_slots(jobs)
        ctx = mp.get_context("spawn" if gpus or torch.cuda.is_initialized() else "fork")
        slots = ctx.Queue()
        for slot in gpus:
            slots.put(slot)
        with ProcessPoolExecutor(jobs, mp_context=ctx, initializer=_take_gpu, initargs=(slots,)) as pool:
            for done in as_completed([pool.submit(_run_one, task) for task in tasks]):
                record(done.result())
    else:
        for one in tasks:
            record(_run_one(one))


def gpu_slots(jobs: int) -> list[str]:
    """The ``CUDA_VISIBLE_DEVICES`` of each of ``jobs`` local workers: the visible GPUs in turn (more workers than
    GPUs share them, each in a process and CUDA context of its own), or none without CUDA. Counted through NVML
    where the machine has it, which leaves CUDA uninitialised."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        visible = [d.strip() for d in listed.split(",") if d.strip() and d.strip() != "-1"]
    else:
        visible = [str(i) for i in range(torch.cuda.device_count())]
    return [visible[i % len(visible)] for i in range(jobs)] if visible else []


def _take_gpu(slots) -> None:
    """A worker's initializer, before it touches CUDA: its own GPU, if the machine has any."""
    try:
        os.environ["CUDA_VISIBLE_DEVICES"] = slots.get_nowait()
    except queue.Empty:
        pass


def _write_results(out_dir: Path, records: list[dict], spec: AblationSpec, target: float | None = None) -> str:
    """ablation.json, ablation.md (the tables) and ablation.png (+ ablation_test.png with data.final_test); returns
    the tables and the pictures' paths. ``target``: a difference (fraction) the study's design is asked about."""
    summary = summarize(records, spec)
    teachers = teacher_summary(records)
    study = study_resolution(records, spec, target)
    fileio.write_json(out_dir / "ablation.json", summary | ({"study": study} if study else {})
                      | ({"teachers": teachers} if teachers else {}))
    text = format_table(summary, spec, teachers, study)
    metrics = ["last_macro_accuracy"]
    if records and all("test_last_macro_accuracy" in r for r in records if r["variant"] != "teacher"):
        metrics.append("test_last_macro_accuracy")  # data.final_test: the official test split's forest plot too
    pictures = [plots.safely(lambda m=m: plots.ablation_picture(out_dir, records, spec.variants, spec.reference, m,
                                                                _intervals(summary, m)),
                             out_dir / f"ablation{'_test' if m.startswith('test_') else ''}.png") for m in metrics]
    pictures = [p for p in pictures if p]
    embed = "".join(f"\n\n![Δ to `{spec.reference}` per variant{' on the test split' if 'test' in p.name else ''} "
                    f"and learning curves]({p.name})" for p in pictures)
    fileio.write_text(out_dir / "ablation.md", text + embed + "\n")
    return text + "".join(f"\n\npicture: {p}" for p in pictures)


def _intervals(summary: dict, metric: str) -> dict[str, plots.Interval]:
    """The forest plot's interval of each tested variant: its 95 % CI and whether its Holm p is below 0.05."""
    out = {}
    for variant, e in summary.items():
        d = e.get(f"delta_{metric}") or {}
        if d.get("ci95") is not None:
            out[variant] = plots.Interval(d["estimate"], *d["ci95"], d["p_holm"], d["unit"], d["units"])
    return out


def teacher_summary(records: list[dict]) -> dict:
    """Mean ± std of the teacher runs' own metrics (each teacher alone), or {} without teachers."""
    rows = [r for r in records if r["variant"] == "teacher"]
    return {m: mean_std([r[m] for r in rows]) for m in
            ("last_macro_accuracy", "best_macro_accuracy", "last_log_loss")} if rows else {}


#: Per variant: mean ± std of these, and the paired difference to the reference of ``PAIRED``; each also with the
#: prefix ``test_`` when every run of the variant was scored on the official test split (``data.final_test``).
SUMMARISED = ("last_macro_accuracy", "best_macro_accuracy", "last_accuracy", "last_log_loss")
PAIRED = ("last_macro_accuracy", "best_macro_accuracy", "last_log_loss")


def summarize(records: list[dict], spec: AblationSpec) -> dict:
    """Per variant: mean ± std of each metric and the paired difference to the reference (same fold and seed), each
    difference with its test (:func:`study_statistics.paired_test`) and the p-value Holm-corrected over the variants
    compared to the reference (``p_holm``)."""
    by_key = {(r["variant"], r["fold"], r["seed"]): r for r in records}
    out = {}
    for variant in spec.variants:
        rows = [r for r in records if r["variant"] == variant]
        if not rows:
            continue
        entry = {}
        for prefix in ("", "test_"):
            entry |= {prefix + m: mean_std([r[prefix + m] for r in rows]) for m in SUMMARISED
                      if all(prefix + m in r for r in rows)}
            entry |= _paired(rows, by_key, spec.reference, [prefix + m for m in PAIRED])
        out[variant] = entry
    for key in {k for e in out.values() for k in e if k.startswith("delta_")}:
        family = {v: e[key]["p"] for v, e in out.items() if v != spec.reference and key in e}
        for variant, p in study_statistics.holm(family).items():
            out[variant][key]["p_holm"] = p
    return out


def _pairs(rows: list[dict], by_key: dict, reference: str, metric: str) -> list[tuple[int, int, float]]:
    """``(fold, seed, difference)`` of each run in ``rows`` whose reference run (same fold and seed) is recorded."""
    pairs = []
    for r in rows:
        ref = by_key.get((reference, r["fold"], r["seed"]))
        if ref is not None and metric in r and metric in ref:
            pairs.append((r["fold"], r["seed"], r[metric] - ref[metric]))
    return pairs


def _paired(rows: list[dict], by_key: dict, reference: str, metrics: list[str]) -> dict:
    """``delta_<metric>``: mean ± std, standard error and wins of the differences to the reference's run, and (not for
    the reference itself) their test on the complete pairs: ``ci95``, ``p``, ``unit``, ``units``, ``df``,
    ``estimate``."""
    out = {}
    for m in metrics:
        pairs = _pairs(rows, by_key, reference, m)
        if not pairs:
            continue
        values = [d for _, _, d in pairs]
        stat = mean_std(values)
        stat["sem"] = stat["std"] / np.sqrt(len(values)) if len(values) > 1 else 0.0
        stat["wins"] = int(sum(v > 0 for v in values))
        if rows[0]["variant"] != reference:
            test = study_statistics.paired_test(pairs)
            stat |= {k: test[k] for k in ("ci95", "p", "unit", "units", "df", "estimate")}
        out[f"delta_{m}"] = stat
    return out


#: The metrics whose study-level resolution (detectable difference, --target) is stated: the headline one, and the
#: same on the official test split when the runs were scored there.
RESOLVED = ("last_macro_accuracy", "test_last_macro_accuracy")


def study_resolution(records: list[dict], spec: AblationSpec, target: float | None = None) -> dict:
    """Per metric of :data:`RESOLVED` the runs have: the variance components of the paired differences, pooled over
    the variants compared to the reference, and what the spec's design (folds × seeds) resolves with them — the
    difference detectable at 80 % power and, for a ``target`` difference (a fraction, like the metric), the seeds or
    folds that would detect it (:func:`study_statistics.resolution`)."""
    by_key = {(r["variant"], r["fold"], r["seed"]): r for r in records}
    out = {}
    for metric in RESOLVED:
        groups = [_pairs([r for r in records if r["variant"] == v], by_key, spec.reference, metric)
                  for v in spec.variants if v != spec.reference]
        groups = [g for g in groups if g]
        if groups:
            components = study_statistics.variance_components(groups)
            out[metric] = components | {"variants": len(groups)} | study_statistics.resolution(
                components, max(spec.folds, 1), len(spec.seeds), target)
    return out


def _ms(s: dict, scale: float = 100) -> str:
    return f"{scale * s['mean']:.1f} ± {scale * s['std']:.1f}"


def _p(p: float) -> str:
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def _tested(d: dict | None, pairs: int) -> str:
    """The cells ``CI95 | p (Holm)`` of one paired difference: empty for the reference, — where it cannot be tested;
    ``n=`` in the interval's cell when fewer than the design's ``pairs`` were complete."""
    if not d or "p" not in d:
        return "|"
    if d["ci95"] is None:
        return f"— ({d['units']} {d['unit']}{'s' if d['units'] != 1 else ''}) | —"
    low, high = (100 * x for x in d["ci95"])
    n = f" n={d['n']}" if d["n"] < pairs else ""
    return f"[{low:+.1f}, {high:+.1f}]{n} | {_p(d['p'])} ({_p(d['p_holm'])})"


def _deltas(e: dict, pairs: int, prefix: str = "") -> str:
    """The table cells ``Δ last macro (sem) | wins | CI95 | p (Holm) | Δ best macro (sem) | CI95 best |
    p best (Holm)`` of a summary entry; ``pairs``: the (fold, seed) pairs of the design."""
    d_last, d_best = e.get(f"delta_{prefix}last_macro_accuracy"), e.get(f"delta_{prefix}best_macro_accuracy")
    delta = f"{100 * d_last['mean']:+.1f} ± {100 * d_last['std']:.1f} ({100 * d_last['sem']:.1f})" if d_last else ""
    wins = f"{d_last['wins']}/{d_last['n']}" if d_last else ""
    delta_b = f"{100 * d_best['mean']:+.1f} ({100 * d_best['sem']:.1f})" if d_best else ""
    return f"{delta} | {wins} | {_tested(d_last, pairs)} | {delta_b} | {_tested(d_best, pairs)}"


EMPTY_DELTAS = "| | | | | | | |"


def format_table(summary: dict, spec: AblationSpec, teachers: dict | None = None, study: dict | None = None) -> str:
    """The Markdown table of :func:`summarize`, then what the study resolves (:func:`study_resolution`)."""
    where = f"{spec.folds} recording-grouped folds" if spec.folds else "the evaluated split"
    pairs = max(spec.folds, 1) * len(spec.seeds)
    lines = [f"{where} × {len(spec.seeds)} seeds {spec.seeds}; Δ = paired difference "
             f"to `{spec.reference}` (same fold and seed), mean ± std (± standard error); accuracies in %.", "",
             "| variant | overrides | last macro acc | best macro acc | last log loss | Δ last macro (sem) | wins "
             "| CI95 | p (Holm) | Δ best macro (sem) | CI95 best | p best (Holm) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for variant, e in summary.items():
        over = " ".join(spec.variants[variant]) or "—"
        lines.append(f"| {variant} | `{over}` | {_ms(e['last_macro_accuracy'])} | {_ms(e['best_macro_accuracy'])} | "
                     f"{e['last_log_loss']['mean']:.3f} | {_deltas(e, pairs)} |")
    if teachers:
        lines.append(f"| teacher (each run alone) | `{Path(spec.teachers.config).name}` "
                     f"{' '.join(spec.teachers.overrides)} | {_ms(teachers['last_macro_accuracy'])} | "
                     f"{_ms(teachers['best_macro_accuracy'])} | {teachers['last_log_loss']['mean']:.3f} "
                     f"{EMPTY_DELTAS}")
    lines += _notes(summary, spec, (study or {}).get("last_macro_accuracy"), "last macro accuracy")
    return "\n".join(lines + _test_table(summary, spec, (study or {}).get("test_last_macro_accuracy")))


def _pt(fraction: float) -> str:
    return f"{100 * fraction:.1f} pt"


def _notes(summary: dict, spec: AblationSpec, resolved: dict | None, name: str, prefix: str = "") -> list[str]:
    """The lines under a table: which test gave CI95 and p, and what the design resolves (and --target)."""
    key = f"delta_{prefix}last_macro_accuracy"
    tested = [e[key] for v, e in summary.items() if v != spec.reference and key in e]
    if not tested:
        return []
    family = sum(d["p"] is not None for d in tested)
    holm = (f"p (Holm): two-sided p, then Holm-corrected over the {family} variant{'s' if family != 1 else ''} "
            f"against `{spec.reference}`" if family else "—: fewer than two units to test so far")
    folds, seeds = max(spec.folds, 1), len(spec.seeds)
    if folds > 1:
        test = (f"CI95 and p: paired t-test of the fold means of Δ ({folds} folds, df {folds - 1}): the fold is the "
                f"unit of replication (the seeds of a fold share its data and only reduce the noise within it)")
    else:
        test = (f"CI95 and p: one evaluated split, so no fold replication: the seeds are the unit (paired t-test on "
                f"the {seeds} seed differences, df {seeds - 1}), and they speak of this split only")
    lines = ["", f"{test}; {holm}; n=: complete pairs, where fewer than {folds * seeds}."]
    return lines + ([_resolution_line(resolved, name), *_target_line(resolved)] if resolved else [])


def _resolution_line(r: dict, name: str) -> str:
    pooled = f"pooled over {r['variants']} variant{'s' if r['variants'] != 1 else ''}"
    one_fold = r["unit"] == "seed"
    design = f"on this split with {r['seeds']} seeds" if one_fold else f"with {r['folds']} folds × {r['seeds']} seeds"
    said = f"Smallest Δ {name} detectable at 80 % power (two-sided α 0.05) {design}: "
    if r["detectable"] is None:
        return said + f"not estimable from the pairs so far (fewer than two {r['unit']}s)."
    if one_fold:
        spread = (f"between seeds σ_s {_pt(r['sigma2_seed'] ** 0.5)}, {pooled}; the variation between splits is not "
                  f"estimable from one")
    elif r["sigma2_seed"] is not None:
        spread = (f"between folds σ_f {_pt(r['sigma2_fold'] ** 0.5)}, between the seeds of a fold σ_s "
                  f"{_pt(r['sigma2_seed'] ** 0.5)}, {pooled}")
    else:
        spread = (f"σ of a fold's Δ {_pt(r['sigma2_fold'] ** 0.5)}, {pooled}; one seed per fold: seed noise not "
                  f"separable")
    return said + f"{_pt(r['detectable'])} (variance components of the paired differences: {spread})."


def _target_line(r: dict) -> list[str]:
    """The --target answer: the seeds with these folds, or that none suffice and the folds that would."""
    if "target" not in r:
        return []
    said = f"--target {100 * r['target']:g} pt at 80 % power: "
    if r["detectable"] is None:
        return [said + "not estimable from the pairs so far."]
    seeds = (f"{r['seeds_needed']} seeds" if r["seeds_needed"] is not None
             else f"more than {study_statistics.MOST} seeds")
    folds = (f"{r['folds_needed']} folds × {r['seeds']} seeds" if r["folds_needed"] is not None
             else f"more than {study_statistics.MOST} folds of {r['seeds']} seeds")
    if r["unit"] == "seed":
        return [said + f"{seeds} on this split (the folds it would need are not estimable from one split)."]
    if r["sigma2_seed"] is None:
        return [said + f"{folds} (what more seeds per fold would bring is not estimable from one seed per fold)."]
    if r["power_any_seeds"] < study_statistics.POWER:
        return [said + f"no number of seeds suffices with {r['folds']} folds (the variation between folds alone "
                       f"leaves {100 * r['power_any_seeds']:.0f} % power); {folds} would."]
    return [said + f"{r['folds']} folds × {seeds}, or {folds}."]


def _test_table(summary: dict, spec: AblationSpec, resolved: dict | None = None) -> list[str]:
    """The official test split's table (runs with ``data.final_test``), or no lines."""
    tested = {v: e for v, e in summary.items() if "test_last_macro_accuracy" in e}
    if not tested:
        return []
    pairs = max(spec.folds, 1) * len(spec.seeds)
    lines = ["", f"The official test split, scored once after the last epoch — the last model, and the best epoch's "
                 f"checkpoint (chosen on the evaluated split) — never used to choose; Δ to `{spec.reference}` as "
                 f"above:", "",
             "| variant | test last macro acc | test best macro acc | test last acc | test last log loss "
             "| Δ test last macro (sem) | wins | CI95 | p (Holm) | Δ test best macro (sem) | CI95 best "
             "| p best (Holm) |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for variant, e in tested.items():
        best = _ms(e["test_best_macro_accuracy"]) if "test_best_macro_accuracy" in e else ""
        lines.append(f"| {variant} | {_ms(e['test_last_macro_accuracy'])} | {best} | {_ms(e['test_last_accuracy'])} "
                     f"| {e['test_last_log_loss']['mean']:.3f} | {_deltas(e, pairs, 'test_')} |")
    return lines + _notes(tested, spec, resolved, "test last macro accuracy", "test_")

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
count, 95 % CI and p-value (t-test on the fold means, Holm-corrected over the variants; :mod:`.statistics`),
then the smallest difference the design detects at 80 % power (and, with ``target``, the folds × seeds a given one
needs); ``ablation.png`` draws those paired differences with their CIs (forest plot) and the learning curves of the
reference and the best variant (read from each run's metrics, located by the ``run_dir`` of its record).
``--cluster ADDRESS`` runs the same grid as tasks of a Ray cluster (:mod:`.cluster`), with the same records.
``--slurm`` submits it as SLURM job arrays (:mod:`.slurm`), with the same run folders and records.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from audio_mrkd import fileio, plots
from audio_mrkd.errors import InputError
from audio_mrkd.progress import progress
from audio_mrkd.studies import cluster as cluster_runs
from audio_mrkd.studies import records as study_records
from audio_mrkd.studies import task_records
from audio_mrkd.studies.grid import Grid, to_train
from audio_mrkd.studies.local import LocalRunner
from audio_mrkd.studies.recipes import Recipe, load_recipe
from audio_mrkd.studies.spec import AblationSpec, keep_variants, load_spec
from audio_mrkd.studies.summary import format_table, study_resolution, summarize, teacher_summary


def run_ablation(spec_path: str | Path, out_dir: str | Path, overrides: list[str] | None = None,
                 train_fn=None, jobs: int = 1, run_overrides: list[str] | None = None, log=print,
                 reuse: list[str | Path] | None = None, only: list[str] | None = None, train: bool = True,
                 cluster: str | None = None, placement: cluster_runs.Placement | None = None,
                 target: float | None = None) -> str:
    """Run every missing (variant, fold, seed) — in ``jobs`` processes of one thread each when jobs > 1 —, with a
    progress line per finished run on stderr (``log`` says how many runs were already in ``runs.jsonl``, and how many
    were taken from the studies in ``reuse``: same recipe, fold and seed, see :mod:`~audio_mrkd.studies.records`),
    then write ``ablation.md`` / ``ablation.json`` / ``ablation.png`` (forest plot of the paired differences and
    learning curves; a failure to draw it is a warning, never a lost study) in ``out_dir``. Teacher runs (the
    spec's ``teachers``) come first, so that every variant finds its fold's teachers. ``only``: run just these
    variants (and the reference), e.g. the ones a selection study chose, once on the reported split.
    ``train=False``: no run is trained; the table of the runs recorded so far (a study still under way).
    ``cluster``: the runs are tasks of the Ray cluster at that address instead (:mod:`.cluster`), each
    asking for ``placement``'s CPUs and GPUs. ``target``: a difference of the headline metric (a fraction) for which
    the summary says how many folds × seeds would detect it at 80 % power."""
    if target is not None and not target > 0:
        raise InputError(f"--target: a difference greater than 0 (in points of macro accuracy), got {100 * target:g}")
    spec, config = load_spec(spec_path, overrides)
    if only:
        keep_variants(spec, only, spec_path)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    records_path = out_dir / "runs.jsonl"
    placement = placement or cluster_runs.Placement()
    threads = cluster_runs.threads(placement) if cluster else 1 if jobs > 1 else 0
    grid = Grid(spec, config, out_dir, list(run_overrides or []), threads, train_fn)
    keys = grid.keys()
    recipes = {key: load_recipe(*grid.given(*key)) for key in keys}
    grid.warn_leaking_teachers(log)
    if train:  # the records of runs made as SLURM jobs (ablate --slurm): this process is now runs.jsonl's writer
        task_records.gather(out_dir, keys)
    records = study_records.read_records(records_path)
    study_records.check_recipes(records_path, records, recipes)
    done = {(r["variant"], r["fold"], r["seed"]): r for _, r in records}
    if not train:  # a SLURM study under way: its jobs' records too, read only
        done |= task_records.unrecorded(out_dir, done)
        log(f"ablation: {len(set(done) & set(keys))} of {len(keys)} runs recorded in {records_path}; nothing trained")
        return _write_results(out_dir, _in_grid(done, keys, log), spec, target)
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
                runner([grid.task(key, recipes[key].digest, done, keep) for key in batch], record)
    finally:
        bar.close()
        if runner is not None:
            runner.close()
    return _write_results(out_dir, _in_grid(done, keys, log), spec, target)


def _in_grid(done: dict, keys: list[tuple], log) -> list[dict]:
    """The records of the spec's grid as it is now given: runs recorded for seeds, folds or variants that the spec (or
    its overrides, e.g. ``seeds=[0,1]`` for the seeds complete so far) leaves out stay in runs.jsonl but not in the
    table, and the log says how many."""
    wanted = set(keys)
    outside = [key for key in done if key not in wanted]
    if outside:
        log(f"ablation: {len(outside)} recorded runs are outside this grid (seeds, folds or variants the spec now "
            f"leaves out): not in the table")
    return [rec for key, rec in done.items() if key in wanted]


def _take_reused(sources: list[str | Path], wanted: dict[tuple, Recipe], records_path: Path, done: dict, log) -> None:
    """Append to this study's records the wanted runs that another study already made with the same recipe."""
    out_dir = records_path.parent
    found = study_records.reusable([Path(s) for s in sources], wanted, out_dir)
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


def _runner(cluster: str | None, placement: cluster_runs.Placement, jobs: int, out_dir: Path, log):
    """How the runs are executed: as local processes, or as tasks of the cluster once every node has been seen to
    write to ``out_dir``."""
    if not cluster:
        return LocalRunner(jobs)
    runner = cluster_runs.ClusterRunner(cluster_runs.connect(cluster, log), placement)
    try:
        cluster_runs.check_storage(runner.ray, out_dir)
    except BaseException:
        runner.close()
        raise
    return runner


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

"""``ablate --slurm``: a study as SLURM job arrays — the fold teachers, then the other runs, then the summary — with
the same run folders and records as ``--jobs 1``; the command submits them, prints the job ids and returns.

A run's identity is the one ``ablate`` already uses: its key (variant, fold, seed), which names its run folder
``<out>/<variant>/<variant>-fold<f>-seed<s>``, and its recipe digest (:mod:`.recipes`). The submission
writes a plan (``<out>/slurm/<submitted>/plan.json``): each array's runs in order, with their recipes; array task
``i`` trains run ``i`` of its array and nothing else, after checking that the spec still gives that recipe. A task
preempted, requeued (the scripts ask ``--requeue``) or cut off by a lost node starts again and continues its run
from the last epoch checkpoint in the run folder. Each task writes its record to a file of its own
(:mod:`.task_records`); the summary job gathers them into ``runs.jsonl`` and writes the tables and pictures.
The same command again submits only the runs without a record (and writes the summary here when every run has
one); it refuses while a job of the study is still queued or running, which would otherwise be submitted twice.

Plain ``sbatch`` through :mod:`subprocess`, not submitit: a task here is one command line (this interpreter,
``-m audio_mrkd.studies.slurm``) whose state lives in the run folder and the plan, so submitit's pickled
callables, its job objects and its own checkpoint-and-requeue protocol would add a dependency and a second way to
resume without doing anything this needs; sbatch is on every SLURM machine, and the scripts it is given are plain
files a user can read (``--dry-run`` prints them) and submit again by hand.

The runs depend on the teachers with ``afterany``, not ``afterok``: a teacher that fails leaves only its own fold's
runs without their teachers, and those stop at once in one line while the other folds train; with ``afterok`` one
failed teacher would hold every run of the study in the queue, pending for ever unless someone cancels it. A job
SLURM requeues (preemption, node failure) has not ended, so its dependents wait for it either way. The summary job
depends on every array with ``afterany`` (a summary of what finished is still a summary) and ``singleton`` (one
summary of a study at a time: it is ``runs.jsonl``'s writer).
"""
from __future__ import annotations

import getpass
import hashlib
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from audio_mrkd import fileio
from audio_mrkd.errors import InputError
from audio_mrkd.studies import records as study_records
from audio_mrkd.studies import task_records
from audio_mrkd.studies.ablation import run_ablation
from audio_mrkd.studies.grid import Grid, run_one, to_train, usable_teacher
from audio_mrkd.studies.recipes import Recipe, load_recipe
from audio_mrkd.studies.spec import keep_variants, load_spec

#: seconds a SLURM command (sbatch, squeue, sinfo, scancel) may take before the controller counts as not answering
SLURM_TIMEOUT_S = 60
#: the arrays of a submission, in the order they run, and what the scripts call them
PARTS = ("teachers", "runs")


@dataclass
class Resources:
    """What each run asks of SLURM: ``gpus`` None = one where the partition has GPUs; ``cpus`` are its torch
    threads; ``max_parallel`` caps the runs of an array at once (``--array=…%N``)."""

    partition: str | None = None
    time: str | None = None
    gpus: float | None = None
    cpus: float = 1
    max_parallel: int | None = None

    def check(self) -> None:
        if self.gpus is not None and (self.gpus < 0 or self.gpus != int(self.gpus)):
            raise InputError(f"--gpus-per-run: a whole number of GPUs with --slurm, got {self.gpus:g} (several small "
                             f"runs sharing one GPU: --cluster, with Ray)")
        if self.cpus < 1 or self.cpus != int(self.cpus):
            raise InputError(f"--cpus-per-run: a whole number of CPUs, at least 1, with --slurm, got {self.cpus:g}")
        if self.max_parallel is not None and self.max_parallel < 1:
            raise InputError(f"--max-parallel: at least 1, got {self.max_parallel}")

    @property
    def threads(self) -> int:
        return int(self.cpus)


def submit(spec_path: str | Path, out_dir: str | Path, overrides: list[str] | None = None,
           run_overrides: list[str] | None = None, only: list[str] | None = None,
           reuse: list[str | Path] | None = None, target: float | None = None, resources: Resources | None = None,
           dry_run: bool = False, log=print) -> str:
    """Submit the study's runs that have no record as SLURM arrays and its summary as a job after them; returns what
    was submitted (job ids, the plan's folder), or the summary itself when every run has a record. ``dry_run``: the
    scripts and the sbatch commands, nothing written or submitted. Refuses in one line, before anything is
    submitted: a spec error, a record of another recipe, no ``sbatch`` on PATH, a job of this study still queued or
    running."""
    resources = resources or Resources()
    resources.check()
    if target is not None and not target > 0:
        raise InputError(f"--target: a difference greater than 0 (in points of macro accuracy), got {100 * target:g}")
    spec, config = load_spec(spec_path, overrides)
    if only:
        keep_variants(spec, only, spec_path)
    out_dir = Path(out_dir).absolute()
    grid = Grid(spec, config, out_dir, list(run_overrides or []), resources.threads, None)
    keys = grid.keys()
    recipes = {key: load_recipe(*grid.given(*key)) for key in keys}
    name = job_name(out_dir)
    if not dry_run:
        _tool("sbatch")
        busy = _in_flight(name)
        if busy:
            raise InputError(f"--slurm: jobs {', '.join(busy)} of the study in {out_dir} are still queued or running "
                             f"(squeue --name={name}): submit again once they have ended, or scancel them")
    grid.warn_leaking_teachers(log)
    done = recorded(out_dir, recipes, repair=not dry_run)
    if reuse:
        _take_reused(reuse, grid, keys, recipes, done, out_dir, dry_run, log)
    todo = dict(zip(PARTS, to_train(keys, done, out_dir)))
    if not any(todo.values()):
        if dry_run:
            return f"ablation: all {len(keys)} runs have a record in {out_dir}: nothing to submit"
        task_records.gather(out_dir, keys)  # no job of the study in flight: this process is the writer
        log(f"ablation: all {len(keys)} runs have a record in {out_dir}: nothing submitted")
        return run_ablation(spec_path, out_dir, overrides, run_overrides=run_overrides, only=only, train=False,
                            target=target, log=log)
    if resources.gpus is None:  # a dry run away from SLURM cannot ask the partition: its scripts ask no GPU
        resources.gpus = 1 if (not dry_run or shutil.which("sinfo")) and _partition_has_gpus(resources.partition) \
            else 0
    folder = _submission_folder(out_dir)
    plan = {"spec": str(Path(spec_path).absolute()), "overrides": list(overrides or []),
            "run_overrides": list(run_overrides or []), "only": list(only or []), "target": target,
            "out": str(out_dir), "threads": resources.threads,
            **{part: [{"variant": v, "fold": f, "seed": s, "recipe": recipes[(v, f, s)].digest}
                      for v, f, s in todo[part]]
               for part in PARTS}}
    scripts = {part: array_script(part, plan, folder, name, resources) for part in PARTS if todo[part]}
    scripts["summary"] = summary_script(folder, name, resources)
    if dry_run:
        return _dry_run(scripts, folder)
    folder.mkdir(parents=True)
    fileio.write_json(folder / "plan.json", plan)
    for part, text in scripts.items():
        fileio.write_text(folder / f"{part}.sbatch", text)
    try:
        ids = _submit_all(folder, list(scripts))
    except InputError:
        shutil.rmtree(folder)  # nothing of it was submitted
        raise
    fileio.write_json(folder / "jobs.json", ids)
    said = [f"{part} {ids[part]} (array of {len(todo[part])} run{'s' if len(todo[part]) != 1 else ''}"
            f"{', after the teachers end' if part == 'runs' and 'teachers' in ids else ''})" for part in PARTS
            if part in ids]
    return (f"ablation: submitted to SLURM: {', '.join(said)}, summary {ids['summary']} (after them); plan, "
            f"scripts and logs in {folder}; follow with squeue --name={name}")


def recorded(out_dir: Path, recipes: dict[tuple, Recipe], repair: bool = True) -> dict[tuple, dict]:
    """Every run with a record, by key: the lines of ``runs.jsonl`` and the record files of runs made as jobs; a
    record of another recipe than the spec now gives is refused in one line."""
    records_path = out_dir / "runs.jsonl"
    records = study_records.read_records(records_path, repair)
    study_records.check_recipes(records_path, records, recipes)
    done = {task_records.key_of(r): r for _, r in records}
    for key, (file, record) in task_records.read(out_dir).items():
        if key in recipes and not recipes[key].matches(record.get("recipe") or ""):
            raise InputError(f"{file}: ({key[0]}, fold {key[1]}, seed {key[2]}) was run with another recipe than the "
                             f"spec now gives (its config or overrides changed): use another --out, or remove that "
                             f"file to run it again")
        done.setdefault(key, record)
    return done


def _take_reused(sources, grid: Grid, keys, recipes, done: dict, out_dir: Path, dry_run: bool, log) -> None:
    """The runs another study already made with the same recipe become records of this one (as record files, which
    the summary gathers), so they are not submitted."""
    wanted = {key: recipes[key] for key in keys if key not in done and key[0] != "teacher" and not grid.taught(key[0])}
    found = study_records.reusable([Path(s) for s in sources], wanted, out_dir)
    for key, record in found.items():
        if not dry_run:
            task_records.write(out_dir, record)
        done[key] = record
    if found:
        taken = sorted({os.path.normpath(out_dir / r["reused_from"]) for r in found.values()})
        log(f"ablation: {len(found)} runs taken from {', '.join(taken)} (same recipe, fold and seed)")


def job_name(out_dir: Path) -> str:
    """The name of every job of the study in ``out_dir``: its folder's name and a digest of its path (the same
    study, whatever the folder it is submitted from; ``singleton`` and the in-flight check go by it)."""
    digest = hashlib.sha256(str(Path(out_dir).absolute()).encode()).hexdigest()[:8]
    return f"ablate-{re.sub(r'[^A-Za-z0-9_.-]', '_', Path(out_dir).name)[:40]}-{digest}"


def _directives(name: str, resources: Resources, output: Path, gpus: bool) -> list[str]:
    lines = [f"--job-name={name}"]
    if resources.partition:
        lines.append(f"--partition={resources.partition}")
    if resources.time:
        lines.append(f"--time={resources.time}")
    lines.append(f"--cpus-per-task={resources.threads if gpus else 1}")
    if gpus and resources.gpus:
        lines.append(f"--gres=gpu:{int(resources.gpus)}")
    lines += ["--requeue", "--open-mode=append", f"--chdir={shlex.quote(os.getcwd())}",
              f"--output={shlex.quote(str(output))}"]
    return [f"#SBATCH {line}" for line in lines]


def array_script(part: str, plan: dict, folder: Path, name: str, resources: Resources) -> str:
    """The sbatch script of one array: task ``i`` trains run ``i`` of ``plan[part]``."""
    n = len(plan[part])
    cap = f"%{resources.max_parallel}" if resources.max_parallel else ""
    what = "the fold teachers" if part == "teachers" else "the runs"
    head = [f"# audio-mrkd ablate --slurm: {what} of the study in {plan['out']}, one run per array task (the plan:",
            f"# {folder / 'plan.json'}); requeued or preempted, a task continues its run from its last checkpoint",
            f"#SBATCH --array=0-{n - 1}{cap}", *_directives(name, resources, folder / f"{part}-%a.out", gpus=True)]
    command = [sys.executable, "-m", "audio_mrkd.studies.slurm", "run", str(folder / "plan.json"), part]
    return "\n".join(["#!/bin/bash", *head, f"exec {shlex.join(command)}", ""])


def summary_script(folder: Path, name: str, resources: Resources) -> str:
    """The sbatch script of the summary job: gathers the runs' records into runs.jsonl and writes the tables."""
    head = ["# audio-mrkd ablate --slurm: the study's summary (runs.jsonl, ablation.md, ablation.json, the pictures),",
            "# once every run of the submission has ended", *_directives(name, resources, folder / "summary.out",
                                                                           gpus=False)]
    command = [sys.executable, "-m", "audio_mrkd.studies.slurm", "summary", str(folder / "plan.json")]
    return "\n".join(["#!/bin/bash", *head, f"exec {shlex.join(command)}", ""])


def _dependencies(part: str, ids: dict[str, str]) -> list[str]:
    if part == "runs":
        return [f"--dependency=afterany:{ids['teachers']}"] if "teachers" in ids else []
    if part == "summary":
        return [f"--dependency=afterany:{':'.join(ids[p] for p in PARTS if p in ids)},singleton"]
    return []


def _dry_run(scripts: dict[str, str], folder: Path) -> str:
    placeholders = {part: f"<{part} job>" for part in scripts}
    out = []
    for part, text in scripts.items():
        command = shlex.join(["sbatch", "--parsable", *_dependencies(part, placeholders),
                              str(folder / f"{part}.sbatch")])
        out += [f"# {command}", text]
    parts = [p for p in scripts if p != "summary"]
    return "\n".join(out + [f"ablation: dry run: {' and '.join(parts)} arrays and the summary job; nothing "
                            f"written or submitted"])


def _submit_all(folder: Path, parts: list[str]) -> dict[str, str]:
    """sbatch each script, with its dependencies on the ones before; if one is refused, the ones submitted are
    cancelled and the refusal is one line."""
    ids: dict[str, str] = {}
    try:
        for part in parts:
            done = _slurm(["sbatch", "--parsable", *_dependencies(part, ids), str(folder / f"{part}.sbatch")])
            ids[part] = done.split(";")[0].strip()
    except InputError:
        if ids:
            _slurm(["scancel", *ids.values()], check=False)
        raise
    return ids


def _tool(command: str) -> str:
    found = shutil.which(command)
    if found is None:
        raise InputError(f"--slurm: no {command} on PATH: run ablate on a machine of the SLURM cluster (a login node), "
                         f"or add --dry-run to see the scripts")
    return found


def _slurm(command: list[str], check: bool = True) -> str:
    """A SLURM command's output; its refusal (or silence) is one line."""
    _tool(command[0])
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=SLURM_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise InputError(f"--slurm: {command[0]} had no answer from SLURM in {SLURM_TIMEOUT_S} s") from None
    if check and done.returncode != 0:
        why = (done.stderr.strip().splitlines() or [f"exit code {done.returncode}"])[-1]
        raise InputError(f"--slurm: {command[0]} refused: {why}")
    return done.stdout


def _in_flight(name: str) -> list[str]:
    """The study's jobs still queued or running (array tasks folded as squeue shows them)."""
    out = _slurm(["squeue", "--noheader", f"--name={name}", f"--user={getpass.getuser()}", "--format=%i"])
    return [line.strip() for line in out.splitlines() if line.strip()]


def _partition_has_gpus(partition: str | None) -> bool:
    """Whether the partition (without one, the cluster's default partition) has GPUs among its generic resources."""
    out = _slurm(["sinfo", "--noheader", "--format=%P %G"])
    rows = [line.split(None, 1) for line in out.splitlines() if line.strip()]
    return any("gpu" in (row[1] if len(row) > 1 else "") for row in rows
               if (row[0].rstrip("*") == partition if partition else row[0].endswith("*")))


def _submission_folder(out_dir: Path) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    folder, n = out_dir / "slurm" / stamp, 1
    while folder.exists():
        folder, n = out_dir / "slurm" / f"{stamp}-{n}", n + 1
    return folder


# ---- inside the jobs ------------------------------------------------------------------------------------------------

def _planned(plan_path: Path) -> tuple[dict, Grid]:
    plan = json.loads(Path(plan_path).read_text(encoding="utf-8"))
    spec, config = load_spec(plan["spec"], plan["overrides"])
    if plan["only"]:
        keep_variants(spec, plan["only"], plan["spec"])
    return plan, Grid(spec, config, Path(plan["out"]), plan["run_overrides"], plan["threads"], None)


def run_task(plan_path: Path, part: str, index: int, log=print) -> dict | None:
    """Array task ``index`` of ``part``: train that run of the plan (continuing it from its last checkpoint when
    its folder has one of the same recipe) and write its record; returns the record, or None when the run already
    had one. Refuses in one line a run whose recipe the spec no longer gives, and a run whose fold's teachers have
    no record (their job failed or was cancelled)."""
    plan, grid = _planned(plan_path)
    entry = plan[part][index]
    key = (entry["variant"], entry["fold"], entry["seed"])
    name = grid.run_dir(key).name
    recipe = load_recipe(*grid.given(*key)) if key in grid.keys() else None
    if recipe is None or recipe.digest != entry["recipe"]:
        raise InputError(f"run {name}: the spec no longer gives the recipe it was submitted with (its config or "
                         f"overrides changed): submit the study again")
    done = recorded(grid.out_dir, {key: recipe}, repair=False)
    if key in done:
        log(f"ablation: run {name} already has a record; nothing to do")
        return None
    if grid.taught(key[0]):
        for seed in grid.spec.teachers.seeds:
            teacher = ("teacher", key[1], seed)
            if not usable_teacher(done.get(teacher), grid.out_dir):
                raise InputError(f"run {name}: its teacher run {grid.run_dir(teacher).name} has no record with its "
                                 f"checkpoints (its job failed or was cancelled): the same ablate --slurm command "
                                 f"submits it again")
    grid.settle_unfinished([key], {key: recipe}, log)
    record = run_one(grid.task(key, recipe.digest, done, keep=key[0] == "teacher"))
    task_records.write(grid.out_dir, record)
    job = f"{os.environ.get('SLURM_ARRAY_JOB_ID', '?')}_{os.environ.get('SLURM_ARRAY_TASK_ID', index)}"
    log(f"ablation: variant={key[0]}, fold={key[1]}, seed={key[2]}, "
        f"last_macro_acc={record['last_macro_accuracy']:.4f}, node={socket.gethostname()}, job {job}")
    return record


def summarize_submission(plan_path: Path, log=print) -> str:
    """The summary job: gather the records into runs.jsonl, write the tables and pictures (those of ``--jobs 1``),
    and say which runs of the submission have no record."""
    plan, grid = _planned(plan_path)
    task_records.gather(grid.out_dir, grid.keys())
    text = run_ablation(plan["spec"], grid.out_dir, plan["overrides"], run_overrides=plan["run_overrides"],
                        only=plan["only"] or None, train=False, target=plan["target"], log=log)
    have = {task_records.key_of(r) for _, r in
            study_records.read_records(grid.out_dir / "runs.jsonl", repair=False)}
    lacking = [grid.run_dir((e["variant"], e["fold"], e["seed"])).name for part in PARTS for e in plan[part]
               if (e["variant"], e["fold"], e["seed"]) not in have]
    if lacking:
        log(f"ablation: {len(lacking)} runs of this submission have no record (their jobs failed or were cancelled; "
            f"logs in {Path(plan_path).parent}): {', '.join(lacking)}; the same ablate --slurm command submits them "
            f"again")
    return text


def main(argv: list[str]) -> int:
    """``python -m audio_mrkd.studies.slurm run PLAN PART`` (an array task; its index from SLURM) or
    ``… summary PLAN``; bad input → one line on stderr and exit code 2, as the CLI does."""
    from audio_mrkd.cpu_memory import tune_malloc
    tune_malloc()
    try:
        if argv[:1] == ["run"] and len(argv) == 3 and argv[2] in PARTS:
            run_task(Path(argv[1]), argv[2], int(os.environ["SLURM_ARRAY_TASK_ID"]))
        elif argv[:1] == ["summary"] and len(argv) == 2:
            print(summarize_submission(Path(argv[1])))
        else:
            raise InputError(f"usage: {Path(sys.executable).name} -m audio_mrkd.studies.slurm "
                             f"run PLAN {'|'.join(PARTS)} | summary PLAN")
    except InputError as exc:
        print(f"audio-mrkd ablate --slurm: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

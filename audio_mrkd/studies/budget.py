"""Fit a study into a time budget (``audio-mrkd ablate-plan``): measure what every run of an ablation costs while
all of them run at once, as ``ablate --jobs N`` runs them (one process per run, one device), and choose the epoch
count — the same for every variant, fixed before any run is scored — that ends inside the budget.

Each run of the grid starts in its own spawned process (no CUDA state is inherited) with its real config on the real
data. It fills MrKD's bank (its teachers then run in every timed step), warms up (cuDNN's search, any graph capture),
waits for the others, then steps for ``seconds`` while they all step. Then one epoch's end as the engine does it: the
method's epoch hook (a snapshot; cached teachers: their pass over the training items) and the step after it, an
evaluation of the selection split with its logging, predictions and checkpoints. A run's epoch costs
``steps_per_epoch × step + end``. The study is timed as if every run took as long as the slowest, all of them still
running (conservative: fewer runs share the device once the fast ones finish).
"""
from __future__ import annotations

import multiprocessing as mp
import queue
import threading
import time
from pathlib import Path

import torch

from audio_mrkd.config_loader import load_experiment
from audio_mrkd.errors import InputError
from audio_mrkd.studies.grid import variant_runs

SAFETY = 0.9          # share of the time left that the schedule may fill; the rest absorbs what was not measured
WARMUP_STEPS = 30     # before timing: cuDNN's algorithm search, graph captures, the allocator's first blocks
BARRIER_TIMEOUT_S = 900
RULE = ("epochs: the most, up to max_epochs, with startup + epochs × (slowest run's epoch, all runs at once) ≤ "
        f"{SAFETY} × the time left; seeds: more than the spec's only while max_epochs still fits (an epoch's cost "
        "taken to grow with the runs sharing the device); model: the largest of --models (in the order given, "
        "smallest first) that fits max_epochs, else the first")


def choose_schedule(epoch_s: float, startup_s: float, left_s: float, seeds: int, max_seeds: int,
                    max_epochs: int, safety: float = SAFETY) -> tuple[int, int]:
    """(epochs, seeds): the most epochs, up to ``max_epochs``, for which ``startup_s + epochs × epoch_s`` fits
    ``safety × left_s`` when ``epoch_s`` was measured with ``seeds`` per variant; more seeds, up to ``max_seeds``,
    only while all ``max_epochs`` still fit (an epoch then costs ``epoch_s × n / seeds``). 0 epochs: none fits."""
    def epochs(n: int) -> int:
        return max(0, min(max_epochs, int((safety * left_s - startup_s) // (epoch_s * n / seeds))))

    n = seeds
    while n < max_seeds and epochs(n + 1) == max_epochs:
        n += 1
    return epochs(n), n


def _cycle(loader):
    while True:
        yield from loader


def _costs(key: tuple, config: str | Path, overrides: list[str], seconds: float, launched: float,
           barrier) -> dict:
    """One run's measured costs (in its own process): start-up, a step beside the others, an epoch's end."""
    from audio_mrkd.train.engine import Trainer
    torch.set_num_threads(1)
    trainer = Trainer(load_experiment(config, overrides))
    trainer.start()  # its files and TensorBoard writer, as fit() opens them
    sync = torch.cuda.synchronize if trainer.runtime.cuda else (lambda: None)
    batches, mrkd = _cycle(trainer.train_loader), trainer.cfg.options("mrkd")
    trainer.model.train()
    for epoch in range(1, mrkd.k * mrkd.interval + 1):  # MrKD's bank full: its teachers run in every timed step
        trainer.epoch = epoch
        trainer.method.after_epoch(epoch)
    for _ in range(WARMUP_STEPS):
        trainer.step(next(batches))
    sync()
    startup_s = time.time() - launched
    barrier.wait(BARRIER_TIMEOUT_S)
    start, steps = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        trainer.step(next(batches))
        steps += 1
    sync()
    step_s = (time.perf_counter() - start) / steps
    start = time.perf_counter()
    trainer.epoch += 1
    trainer.method.after_epoch(trainer.epoch)
    trainer.step(next(batches))
    trainer.record(*trainer.evaluate())
    sync()
    end_s = max(0.0, time.perf_counter() - start - step_s)
    trainer.writer.close()
    device = torch.cuda.get_device_name() if trainer.runtime.cuda else "cpu"
    return {"variant": key[0], "fold": key[1], "seed": key[2], "model": trainer.cfg.model.name, "device": device,
            "startup_s": startup_s, "step_s": step_s, "steps_timed": steps, "steps_per_epoch": trainer.steps_per_epoch,
            "epoch_end_s": end_s, "epoch_s": trainer.steps_per_epoch * step_s + end_s}


def _measure_one(task: tuple, barrier, results) -> None:
    try:
        results.put(_costs(*task, barrier))
    except threading.BrokenBarrierError:  # another run failed first and said so
        return
    except BaseException as exc:  # one line to the parent, then release the others
        results.put({"key": task[0], "error": f"{type(exc).__name__}: {exc}".splitlines()[0]})
        barrier.abort()


def measure_runs(runs: list[tuple], seconds: float) -> list[dict]:
    """The costs of ``runs`` (``(key, config, overrides)``, :func:`~audio_mrkd.studies.grid.variant_runs`),
    measured all at once, one spawned process each. A run that fails is one line naming it."""
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(len(runs)), ctx.Queue()
    launched = time.time()
    procs = [ctx.Process(target=_measure_one, args=((key, config, overrides, seconds, launched), barrier, results))
             for key, config, overrides in runs]
    for proc in procs:
        proc.start()
    out: list[dict] = []
    try:
        while len(out) < len(runs):
            try:
                got = results.get(timeout=1.0)
            except queue.Empty:
                if all(p.exitcode is not None for p in procs) or any(p.exitcode not in (None, 0) for p in procs):
                    codes = sorted({p.exitcode for p in procs if p.exitcode})
                    raise InputError(f"ablate-plan: a measuring process ended without a result (exit {codes})") \
                        from None
                continue
            if "error" in got:
                variant, fold, seed = got["key"]
                raise InputError(f"ablate-plan: {variant} (fold {fold}, seed {seed}): {got['error']}")
            out.append(got)
    finally:
        for proc in procs:
            proc.join(timeout=10 if len(out) == len(runs) else 0)
            if proc.is_alive():
                proc.terminate()
    return sorted(out, key=lambda c: (c["variant"], c["fold"], c["seed"]))


def plan_study(spec_path: str | Path, budget_s: float, work_dir: str | Path, run_overrides: list[str] | None = None,
               models: list[str] | None = None, max_epochs: int = 200, max_seeds: int = 0, seconds: float = 15.0,
               log=print) -> dict:
    """The study's schedule for a budget of ``budget_s`` seconds from now (the measuring included): ``model``,
    ``epochs``, ``seeds``, ``jobs`` (every run at once) and what they were chosen from (:data:`RULE`). The measuring
    runs write into ``work_dir``. Refuses, in one line, a budget in which not one epoch fits."""
    started = time.monotonic()
    tried = []
    for model in models or [None]:
        spec, runs = variant_runs(spec_path, run_overrides=[*(run_overrides or []),
                                                            *([f"model.name={model}"] if model else [])])
        where = Path(work_dir) / (model or "model")
        costs = measure_runs([(key, config, [*o, f"train.out_dir={where / key[0]}", "train.progress=false",
                                             "train.save_checkpoints=true"]) for key, config, o in runs], seconds)
        slowest = max(costs, key=lambda c: c["epoch_s"])
        entry = {"model": costs[0]["model"], "epoch_s": slowest["epoch_s"],
                 "startup_s": max(c["startup_s"] for c in costs), "runs": costs}
        entry["epochs"] = choose_schedule(entry["epoch_s"], entry["startup_s"], budget_s - (time.monotonic() - started),
                                          len(spec.seeds), len(spec.seeds), max_epochs)[0]
        log(f"ablate-plan: {entry['model']}: {len(costs)} runs at once, slowest {slowest['variant']} "
            f"{entry['epoch_s']:.2f} s/epoch ({slowest['steps_per_epoch']} steps of {1000 * slowest['step_s']:.1f} ms "
            f"+ {slowest['epoch_end_s']:.2f} s), start-up {entry['startup_s']:.1f} s → {entry['epochs']} epochs fit")
        tried.append(entry)
        if entry["epochs"] < max_epochs:
            break
    chosen = ([t for t in tried if t["epochs"] == max_epochs] or tried[:1])[-1]
    left = budget_s - (time.monotonic() - started)
    epochs, n_seeds = choose_schedule(chosen["epoch_s"], chosen["startup_s"], left, len(spec.seeds),
                                      max(max_seeds, len(spec.seeds)), max_epochs)
    if epochs < 1:
        raise InputError(f"ablate-plan: {left:.0f} s left hold no epoch of {chosen['model']} "
                         f"({chosen['epoch_s']:.1f} s/epoch, start-up {chosen['startup_s']:.0f} s)")
    seeds = [*spec.seeds, *range(max(spec.seeds) + 1, max(spec.seeds) + 1 + n_seeds - len(spec.seeds))]
    expected = chosen["startup_s"] + epochs * chosen["epoch_s"] * n_seeds / len(spec.seeds)
    return {"model": chosen["model"], "epochs": epochs, "seeds": seeds,
            "jobs": len(spec.variants) * max(spec.folds, 1) * len(seeds), "device": chosen["runs"][0]["device"],
            "budget_s": budget_s, "left_s": left, "expected_s": expected, "max_epochs": max_epochs,
            "rule": RULE, "tried": tried}

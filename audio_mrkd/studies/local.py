"""``ablate --jobs N``: a study's runs as local processes, each on a GPU of its own where the machine has them (see
:mod:`audio_mrkd.studies.cluster` for the same on a Ray cluster)."""
from __future__ import annotations

import multiprocessing as mp
import os
import queue
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass

import torch

from audio_mrkd.studies.grid import run_one


@dataclass
class LocalRunner:
    """Runs a list of :func:`~audio_mrkd.studies.grid.run_one` tasks as local processes (``jobs`` at once, one
    thread each; in this process when jobs is 1), recording each as it finishes."""

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
            for done in as_completed([pool.submit(run_one, task) for task in tasks]):
                record(done.result())
    else:
        for one in tasks:
            record(run_one(one))


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

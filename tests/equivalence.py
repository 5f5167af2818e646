"""Behaviour recording of the training engine on the CPU, for refactors that must not change a single bit.

:func:`record` prepares a tiny deterministic DCASE-layout dataset (tones + noise written by
:func:`tests.conftest.make_dcase_tree`), trains each case of :data:`CASES` in this process through the public API
(:func:`load_experiment` + :func:`train_run`) and returns plain, JSON-able values:

* ``losses``: every ``loss/*`` TensorBoard scalar of the first :data:`STEPS` optimiser steps (``train.log_every=1``),
  ``{tag: {step: float.hex()}}``. The values are float32 in the event file, exactly as the engine computed them
  (float32 tensors), so nothing is rounded away.
* ``scalars``: the other deterministic scalars of those steps (lr, ``mrkd/*`` rates and accuracies, ``eval/*``,
  ``train/ce_epoch``); timing tags (``time/step_ms``, ``mrkd/teacher_time_share``) are left out.
* ``metrics``: the run's metrics summary (what ``metrics.json`` holds: last, best, per-epoch history), minus
  ``run_id`` (a timestamp); every float as ``float.hex()``.
* ``weights``: the sum of the final weights in float64 (moves with the least change of the trajectory).

Every case is recorded twice: as defined (float32, the precision users train in) and as its float64 twin
(``<case>_fp64``, ``train.precision=64``).

Across machines. The kernels oneDNN and MKL pick depend on the CPU (cache sizes, vendor), so two CPUs can round a
float32 sum differently; recording and comparison run in a child process with the code paths pinned
(:data:`PINNED_KERNELS`: MKL's "COMPATIBLE" branch, AVX2 for oneDNN and ATen), which makes Intel CPUs agree, not
AMD ones. A float32 difference in the last bit is then amplified by training itself (a ReLU or a max that flips):
measured between an Intel Xeon and an AMD EPYC, 1e-7 at step 2 grew to 1e-2 by step 30 in the mixup cases — as
large as what a learning rate changed in its fourth digit gives. In float64 the same rounding stays ~1e-16 and
is never amplified into float32 digits. So the recording holds one entry per machine (:func:`machine`: CPU vendor and
model, ATen's kernels, the pins), and ``tests/test_equivalence.py`` compares

* on a machine that has an entry: every case, float32 and float64, bit for bit;
* elsewhere: the float64 twins within :data:`RELATIVE_TOLERANCE` (float32 cases: a skip that says why).

``tests/test_equivalence.py`` also shows that a real change (the learning rate in its fourth significant digit, one
augmentation draw moved) exceeds the tolerance while a rounding-sized one (every initial weight moved by one
float64 ulp) does not.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
RECORDING = ROOT / "tests" / "data" / "equivalence_cpu.json"
FORMAT = 2
# another machine's float64 run: every recorded float within this share of the recorded value (values below 1e-3
# count as 1e-3); measured: a rounding-sized change moves nothing, the smallest real change tried moves 7e-5
RELATIVE_TOLERANCE, TOLERANCE_FLOOR = 1e-6, 1e-3
FP64 = "_fp64"
STEPS = 30  # recorded optimiser steps (36 train items, batch 6, drop_last → 6 steps/epoch × 5 epochs = 30 steps)
N_CLIPS = 48  # 36 train (loc0…loc3), 12 evaluate (loc4, loc5)
THREADS = 1
PINNED_KERNELS = {"MKL_CBWR": "COMPATIBLE", "ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2",
                  "OMP_NUM_THREADS": str(THREADS), "MKL_NUM_THREADS": str(THREADS)}

BASE = [
    "data.name=tiny", "model.name=cp_mobile", "model.options={base_channels: 8, n_blocks: [1, 1, 1]}",
    "seed=0", "train.device=cpu", "train.precision=32", f"train.threads={THREADS}", "train.epochs=5",
    "train.batch_size=6", "train.lr=0.01", "train.log_every=1", "train.progress=false",
    "augment.roll=0.1", "augment.freq_mask=4", "augment.time_mask=4",
]
MIXUP = "augment.mixup_alpha=0.3"
# MrKD with step backups: k=3 teachers, one backup every 3 steps → the bank is full after step 9, distillation is
# active in steps 10…30 (21 of 30), and from step 12 on each backup evicts the oldest snapshot.
STEP_BANK = ["method=mrkd", "mrkd.k=3", "mrkd.interval=3", "mrkd.interval_unit=step"]
# kd's teachers: TEACHER_RUN is replaced by a teacher run trained first on the same data (method ce, the BASE
# recipe, seed 1, in the case's precision), TEACHER_LOGITS by the teacher-logits file written from it
TEACHER_RUN, TEACHER_LOGITS = "@teacher_run", "@teacher_logits"
CASES: dict[str, list[str]] = {
    "ce_mixup": ["method=ce", MIXUP],
    "mrkd_same_mixup": [*STEP_BANK, "mrkd.teacher_input=same", MIXUP],
    "mrkd_cached_mixup": [*STEP_BANK, "mrkd.teacher_input=cached", MIXUP],
    "ce_plain": ["method=ce"],
    # the default backup unit (epochs) and hard labels: k=2 → the bank is full after epoch 2, active in steps 13…30
    "mrkd_epoch_plain": ["method=mrkd", "mrkd.k=2"],
    # every other method, with and without mixup
    "kd_file_plain": ["method=kd", f"teacher.logits={TEACHER_LOGITS}"],
    "kd_file_mixup": ["method=kd", f"teacher.logits={TEACHER_LOGITS}", MIXUP],
    "kd_runs_plain": ["method=kd", f"teacher.runs=[{TEACHER_RUN}]"],
    "kd_runs_mixup": ["method=kd", f"teacher.runs=[{TEACHER_RUN}]", MIXUP],
    "kd_runs_same_mixup": ["method=kd", f"teacher.runs=[{TEACHER_RUN}]", "teacher.input=same", MIXUP],
    "pskd_plain": ["method=pskd"],
    "pskd_mixup": ["method=pskd", MIXUP],
    "pskd_clean_mixup": ["method=pskd", "pskd.store=clean", MIXUP],
    "dlb_plain": ["method=dlb"],
    "dlb_mixup": ["method=dlb", MIXUP],
    # the EMA teacher distils from step 10 on
    "ema_plain": ["method=ema", "ema.warmup_steps=9"],
    "ema_mixup": ["method=ema", "ema.warmup_steps=9", MIXUP],
}
CASES |= {f"{name}{FP64}": [*overrides, "train.precision=64"] for name, overrides in list(CASES.items())}
# the first step with distillation on, per MrKD case (checked by the test, so the recording can't silently be CE)
FIRST_ACTIVE = {"mrkd_same_mixup": 10, "mrkd_cached_mixup": 10, "mrkd_epoch_plain": 13}
FIRST_ACTIVE |= {f"{name}{FP64}": step for name, step in list(FIRST_ACTIVE.items())}
# the loss tags of the other methods' cases and the tag of the term that must be on (> 0) from the step given
METHOD_TERMS = {"kd": ({"loss/ce", "loss/kd"}, "loss/kd", 1), "pskd": ({"loss/ce", "loss/pskd"}, None, 1),
                "dlb": ({"loss/ce", "loss/kd"}, "loss/kd", 2), "ema": ({"loss/ce", "loss/kd"}, "loss/kd", 10)}
# changes applied to a run for the tolerance's own tests (python -m tests.equivalence --perturb NAME)
PERTURBATIONS = ("lr", "draw", "ulp")


# ---- plain values ----------------------------------------------------------------------------------------------
def plain(value):
    """JSON-able copy with every float as ``float.hex()`` (bit-exact, NaN/inf included)."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return plain(value.tolist())
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value).hex()
    if value is None or isinstance(value, str):
        return value
    raise TypeError(f"not a plain value: {type(value).__name__} {value!r}")


def unhex(value: str) -> float:
    return float.fromhex(value)


# ---- environment -----------------------------------------------------------------------------------------------
@contextmanager
def torch_threads(n: int):
    saved = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


@contextmanager
def private_cache(folder: Path):
    """``$AUDIO_MRKD_CACHE`` → ``folder`` for the duration (never the user's cache)."""
    saved = os.environ.get("AUDIO_MRKD_CACHE")
    os.environ["AUDIO_MRKD_CACHE"] = str(folder)
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("AUDIO_MRKD_CACHE", None)
        else:
            os.environ["AUDIO_MRKD_CACHE"] = saved


def environment() -> dict:
    """What the recorded numbers depend on besides the code and the machine: checked by the test before comparing."""
    return {"torch": torch.__version__, "threads": THREADS,
            "pinned_kernels": {k: os.environ.get(k) for k in PINNED_KERNELS}}


def machine() -> dict:
    """The CPU and the kernel choices float32 rounding depends on; float32 bits are compared only where all agree."""
    from audio_mrkd.versions import cpu
    found = cpu()
    return {"cpu_vendor": found["vendor"], "cpu_model": found["model"], "cpu_family": found["family"],
            "cpu_model_number": found["model_number"], "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "mkldnn": torch.backends.mkldnn.is_available(), "mkl": torch.backends.mkl.is_available()}


def describe(m: dict) -> str:
    return f"{m['cpu_model'] or m['cpu_vendor']} ({m['cpu_vendor']}, {m['cpu_capability']} kernels)"


def provenance() -> dict:
    """Where the recording came from (informational): git commit, uncommitted changes, source digest."""
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=30,
                                  check=True).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""
    dirty = git("status", "--porcelain", "--", "audio_mrkd")
    return {"git_commit": git("rev-parse", "HEAD") or None,
            "git_dirty_audio_mrkd": bool(dirty), "source_sha256": source_digest(),
            "python": platform.python_version(), "numpy": np.__version__, "machine": platform.machine()}


def source_digest() -> str:
    """SHA-256 over ``audio_mrkd/**/*.py`` (path + content): identifies the code, committed or not."""
    digest = hashlib.sha256()
    for path in sorted((ROOT / "audio_mrkd").rglob("*.py")):
        digest.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


# ---- data and runs ---------------------------------------------------------------------------------------------
def prepare_data(root: Path) -> dict:
    """The tiny dataset under ``root`` (audio tree, feature cache, manifests) → its digest."""
    from audio_mrkd.data import cache
    from audio_mrkd.data.prepare import prepare
    from tests.conftest import make_dcase_tree
    tree = make_dcase_tree(root / "dev", n=N_CLIPS)
    with torch_threads(THREADS):
        result = prepare(tree, "tiny", cache_dir=root / "cache", manifest_dir=root / "manifests", workers=1,
                         overrides=["n_mels=32"], log=lambda *_: None)
    features = np.ascontiguousarray(cache.open_features(result.cache_entry))
    info = json.loads((root / "manifests" / "tiny" / "features.json").read_text())
    return {"features_sha256": hashlib.sha256(features.tobytes()).hexdigest(), "shape": list(features.shape),
            "train_mean_sha256": hashlib.sha256(json.dumps(info["train_mean"]).encode()).hexdigest(),
            "train_std_sha256": hashlib.sha256(json.dumps(info["train_std"]).encode()).hexdigest()}


def read_scalars(run_dir: Path, steps: int = STEPS) -> tuple[dict, dict]:
    """(losses, other scalars) of steps 1…``steps`` from the run's TensorBoard events; timing tags left out."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    losses, others = {}, {}
    for tag in sorted(acc.Tags()["scalars"]):
        if "time" in tag:  # time/step_ms, mrkd/teacher_time_share: wall clock
            continue
        events = [e for e in acc.Scalars(tag) if e.step <= steps]
        if not events:
            continue
        values = {}
        for e in events:
            if str(e.step) in values:
                raise AssertionError(f"{run_dir}: tag {tag} logged twice at step {e.step}")
            values[str(e.step)] = float(e.value).hex()
        (losses if tag.startswith("loss/") else others)[tag] = values
    return losses, others


def run_case(name: str, root: Path, perturb: str | None = None) -> dict:
    """Train case ``name`` on the data prepared under ``root`` → its plain recording (``perturb``: one of
    :data:`PERTURBATIONS`, for the tolerance's tests)."""
    from audio_mrkd.config_loader import load_experiment
    from audio_mrkd.train.engine import Trainer
    out = root / "runs" / name
    lr = ["train.lr=0.01001"] if perturb == "lr" else []  # the fourth significant digit of 0.01
    overrides = CASES[name]
    if any(TEACHER_RUN in o or TEACHER_LOGITS in o for o in overrides):
        run_dir, logits = teacher(root, "64" if name.endswith(FP64) else "32")
        overrides = [o.replace(TEACHER_RUN, str(run_dir)).replace(TEACHER_LOGITS, str(logits)) for o in overrides]
    cfg = load_experiment(None, [*BASE, f"data.manifest_dir={root / 'manifests'}", f"train.out_dir={out}",
                                 *overrides, *lr])
    with torch_threads(THREADS), private_cache(root / "cache"):
        trainer = Trainer(cfg)
        if perturb == "draw":  # the augmentations' random stream moved by one draw
            torch.rand(1, generator=trainer.augment_rng)
        if perturb == "ulp":  # every initial weight moved by one unit in the last place: a rounding-sized change
            with torch.no_grad():
                for p in trainer.model.parameters():
                    p.mul_(1 + torch.finfo(p.dtype).eps)
        summary = trainer.fit()
    losses, others = read_scalars(trainer.run_dir)
    metrics = {k: v for k, v in summary.items() if k != "run_id"}
    weights = sum(float(p.detach().double().sum()) for p in trainer.model.parameters())
    return {"overrides": CASES[name], "losses": losses, "scalars": others, "metrics": plain(metrics),
            "weights": weights.hex()}


def teacher(root: Path, precision: str) -> tuple[Path, Path]:
    """(the teacher run, its teacher-logits file) for the kd cases in ``precision``, trained once per recording."""
    from audio_mrkd.config_loader import load_experiment
    from audio_mrkd.train.engine import Trainer
    from audio_mrkd.teacher_logits import write_ensemble_logits
    folder = root / "teachers" / precision
    logits = folder / "teacher_logits.csv"
    if not logits.is_file():
        cfg = load_experiment(None, [*BASE, f"data.manifest_dir={root / 'manifests'}", f"train.out_dir={folder}",
                                     "method=ce", "seed=1", f"train.precision={precision}"])
        with torch_threads(THREADS), private_cache(root / "cache"):
            trainer = Trainer(cfg)
            trainer.fit()
            write_ensemble_logits([trainer.run_dir], logits, log=lambda *_: None)
        (folder / "run").write_text(str(trainer.run_dir))
    return Path((folder / "run").read_text()), logits


def record(root: Path, cases: list[str] | None = None, perturb: str | None = None) -> dict:
    """Everything the test compares for this machine: environment, data digest and each case."""
    root = Path(root)
    with private_cache(root / "cache"):
        data = prepare_data(root)
    return {"machine": machine(), "environment": environment(), "data": data,
            "cases": {name: run_case(name, root, perturb) for name in (cases or CASES)}}


# ---- comparison ------------------------------------------------------------------------------------------------
def differences(expected, actual, where: str = "", limit: int = 20) -> list[str]:
    """Paths where two plain recordings differ (hex floats shown with their decimal value too)."""
    out: list[str] = []

    def show(v):
        if isinstance(v, str) and v.lstrip("-").startswith("0x"):
            return f"{v} ({unhex(v)!r})"
        return repr(v)

    def walk(a, b, path):
        if len(out) >= limit:
            return
        if isinstance(a, dict) and isinstance(b, dict):
            for key in sorted(set(a) | set(b), key=lambda k: (len(k), k)):
                if key not in b:
                    out.append(f"{path}/{key}: missing now (recorded "
                               f"{'a dict' if isinstance(a[key], dict) else show(a[key])})")
                elif key not in a:
                    out.append(f"{path}/{key}: new (not in the recording)")
                else:
                    walk(a[key], b[key], f"{path}/{key}")
        elif isinstance(a, list) and isinstance(b, list):
            if len(a) != len(b):
                out.append(f"{path}: {len(a)} items recorded, {len(b)} now")
            for i, (x, y) in enumerate(zip(a, b)):
                walk(x, y, f"{path}[{i}]")
        elif a != b or type(a) is not type(b):
            out.append(f"{path}: recorded {show(a)}, now {show(b)}")

    walk(expected, actual, where)
    return out


def relative_differences(expected, actual, where: str = "") -> list[tuple[str, float]]:
    """Every difference (:func:`differences`) with its size: |recorded − now| / max(|recorded|, floor) for two
    floats, infinite for anything else (a missing or new value, an int, a string)."""
    out = []
    for line in differences(expected, actual, where, limit=10 ** 9):
        try:
            a = unhex(line.split(": recorded ")[1].split(" ")[0])
            b = unhex(line.split(", now ")[1].split(" ")[0])
            out.append((line, abs(a - b) / max(abs(a), TOLERANCE_FLOOR)))
        except (IndexError, ValueError):
            out.append((line, float("inf")))
    return out


def beyond_tolerance(expected, actual, where: str = "", limit: int = 20) -> list[str]:
    """The differences larger than :data:`RELATIVE_TOLERANCE`, each with its relative size."""
    found = [f"{line} [relative {rel:.1e}]" for line, rel in relative_differences(expected, actual, where)
             if rel > RELATIVE_TOLERANCE]
    return found[:limit]


def largest_relative_difference(expected, actual) -> float:
    return max((rel for _, rel in relative_differences(expected, actual)), default=0.0)


# ---- the recording file: one entry per machine -----------------------------------------------------------------
def read_recording(path: Path = RECORDING) -> dict:
    return json.loads(path.read_text())


def entry_for(recording: dict, m: dict) -> dict | None:
    """The recording's entry made on a machine like ``m`` (same CPU and kernels), else None."""
    return next((e for e in recording["machines"] if e["machine"] == m), None)


def write_recording(path: Path = RECORDING, cases: list[str] | None = None, log=print) -> dict:
    """Record this machine's entry. Another machine's entry is kept when its float64 cases still agree with the
    new ones within the tolerance (the behaviour is the same: its float32 bits still hold there), else dropped."""
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="audio_mrkd_equivalence_") as tmp:
        entry = record(Path(tmp), cases)
    entry = {"recorded": provenance(), **entry}
    kept = []
    if path.is_file() and read_recording(path).get("format") == FORMAT:
        for other in read_recording(path)["machines"]:
            if other["machine"] == entry["machine"]:
                continue
            stale = [n for n in entry["cases"] if n.endswith(FP64) and (n not in other["cases"] or beyond_tolerance(
                other["cases"][n], entry["cases"][n], n, limit=1))]
            if stale or other["data"] != entry["data"] or other["environment"] != entry["environment"]:
                log(f"dropped the entry of {describe(other['machine'])}: its behaviour differs from this one's "
                    f"({', '.join(stale) or 'data or environment'}); re-record there")
            else:
                kept.append(other)
    recording = {"format": FORMAT, "machines": [entry, *kept]}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(recording, indent=1, sort_keys=False) + "\n")
    log(f"wrote {path} ({len(entry['cases'])} cases, {time.perf_counter() - started:.1f} s) for "
        f"{describe(entry['machine'])}, torch {entry['environment']['torch']}, commit {entry['recorded']['git_commit']}"
        + (" + uncommitted changes in audio_mrkd/" if entry["recorded"]["git_dirty_audio_mrkd"] else "")
        + (f"; kept {len(kept)} other machine(s)" if kept else ""))
    return recording


def write_plain(path: Path, cases: list[str], perturb: str | None) -> None:
    """This machine's entry for some cases, perturbed or not, as a plain JSON file (for the tolerance's tests)."""
    with tempfile.TemporaryDirectory(prefix="audio_mrkd_equivalence_") as tmp:
        path.write_text(json.dumps(record(Path(tmp), cases, perturb)))


def kernels_pinned() -> bool:
    return all(os.environ.get(key) == value for key, value in PINNED_KERNELS.items())


def record_in_child(out: Path, *args: str) -> subprocess.CompletedProcess:
    """``python -m tests.equivalence --write --out OUT [args]`` in a child process with :data:`PINNED_KERNELS` set
    (they must be in the environment before torch loads MKL and oneDNN)."""
    return subprocess.run([sys.executable, "-m", "tests.equivalence", "--write", "--out", str(out), *args],
                          cwd=ROOT, env={**os.environ, **PINNED_KERNELS}, capture_output=True, text=True, timeout=900)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--write", action="store_true", help=f"write this machine's entry into "
                                                             f"{RECORDING.relative_to(ROOT)}")
    parser.add_argument("--out", type=Path, default=RECORDING, help="where to write it")
    parser.add_argument("--plain", action="store_true", help="write just this machine's entry, as plain JSON")
    parser.add_argument("--cases", nargs="+", choices=list(CASES), help="only these cases (with --plain)")
    parser.add_argument("--perturb", choices=PERTURBATIONS, help="a change, for the tolerance's tests (with --plain)")
    args = parser.parse_args(argv)
    if not args.write:
        parser.error("nothing to do: pass --write to (re-)record")
    if not kernels_pinned():
        extra = (["--plain"] if args.plain else []) + (["--cases", *args.cases] if args.cases else []) \
            + (["--perturb", args.perturb] if args.perturb else [])
        child = record_in_child(args.out.resolve(), *extra)
        print(child.stdout + child.stderr, end="", file=sys.stdout if child.returncode == 0 else sys.stderr)
        return child.returncode
    if args.plain:
        write_plain(args.out, args.cases or list(CASES), args.perturb)
    else:
        write_recording(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

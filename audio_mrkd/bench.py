"""``audio-mrkd bench``: training throughput and MrKD's cost, side by side in one run, through the real engine.

Suites (``--suite``; ``all`` runs every one in turn):

* ``step`` — CE vs MrKD with K = ks teachers, on the same augmented batch (``teacher_input: same``) and cached:
  ms/step, the ratio to CE, the teacher share of the step, the K teacher forwards timed alone and the overhead
  ratio (MrKD step − CE step) / (K teacher forwards alone); for the cached mode, the one inference pass per backup.
  On CUDA every row twice: with the whole step as one CUDA graph (``train.step_graph``), and with the GPU switches.
* ``pipeline`` — the DCASE'24 baseline's own way of training (waveform → resample → mel on the device every step,
  fp32, AdamW; re-implemented here, waveforms resident on the device so no file I/O is counted against it) vs this
  engine on cached log-mels with each GPU switch added in turn (bf16, channels_last, torch.compile, residency) and
  MrKD K = 4: samples/s and the ratio to the baseline.
* ``resnet`` — ResNet-18 on 32×32 images: fp32 vs bf16 + channels_last (+ torch.compile).

Synthetic inputs of the real shapes; the snapshot bank is filled before timing, so every timed MrKD step runs its
teachers. Throughput = steps timed back to back with one device sync per block (median of 3 blocks). Variants
whose switches need CUDA are listed as skipped on a CPU.
"""
from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F

from audio_mrkd.config_loader import load_experiment
from audio_mrkd.cpu_memory import tune_malloc
from audio_mrkd.data.datasets import DataBundle
from audio_mrkd.data.datasets.synthetic import synthetic_splits
from audio_mrkd.train.engine import Trainer
from audio_mrkd.versions import versions

SUITES = ("step", "pipeline", "resnet")
AUDIO_SHAPE, IMAGE_SHAPE, N_CLASSES = (1, 256, 65), (3, 32, 32), 10
DCASE_AUGMENT = ["augment.freq_mask=48", "augment.mixstyle_p=0.4"]  # the DCASE'24 baseline's defaults
GPU_FAST = ["train.precision=bf16-mixed", "train.channels_last=true", "train.cudnn_benchmark=true",
            "train.compile=true", "train.compile_mode=reduce-overhead", "train.step_graph=false"]
NO_SWITCHES = ["train.precision=32", "train.channels_last=false", "train.cudnn_benchmark=false",
               "train.step_graph=false"]
# the whole step as one CUDA graph (train.step_graph), the student compiled without its own graphs
STEP_GRAPH = ["train.precision=bf16-mixed", "train.channels_last=true", "train.cudnn_benchmark=true",
              "train.compile=true", "train.compile_mode=default", "train.step_graph=true"]


_DEVICE = {"name": "cpu"}  # the resolved device of the running bench (set by run_bench)


def _sync() -> None:
    if _DEVICE["name"] == "cuda":
        torch.cuda.synchronize()


def _trainer(overrides: list[str], shape=AUDIO_SHAPE, items: int = 256, config: str | None = None) -> Trainer:
    """A Trainer of ``config`` (default: the built-in defaults) on synthetic items of ``shape``."""
    cfg = load_experiment(config, [
        f"train.device={_DEVICE['name']}", "data.kind=synthetic", f"data.synthetic_items={items}",
        "train.progress=false", "train.log_every=1000000",
        "train.out_dir=/tmp/audio_mrkd_bench", "train.save_checkpoints=false", *overrides])
    train, held = synthetic_splits(cfg.data, shape=shape, n_classes=N_CLASSES)
    return Trainer(cfg, DataBundle(train, held, "synthetic", {}))


def teacher_runs(n: int, teacher: list[str], shape=AUDIO_SHAPE, items: int = 256, config: str | None = None) -> list[str]:
    """``n`` finished one-epoch CE runs (seeds 0…n−1) of the recipe with the ``teacher`` overrides (a wider or deeper
    model) on the benchmarks' synthetic data: teachers whose cost (not accuracy) the ``kd`` rows measure."""
    dirs = []
    for seed in range(n):
        trainer = _trainer(["method=ce", "train.epochs=1", "train.save_checkpoints=true", f"seed={seed}", *teacher,
                            "train.out_dir=/tmp/audio_mrkd_bench/teachers"], shape, items, config)
        trainer.fit()
        dirs.append(str(trainer.run_dir))
    return dirs


def _fill_bank(trainer: Trainer) -> float:
    """Fill the snapshot bank (K backups); returns ms per backup (the cached mode's inference pass included)."""
    if trainer.cfg.method != "mrkd":
        return float("nan")
    _sync()
    start = time.perf_counter()
    for _ in range(trainer.cfg.options("mrkd").k):
        trainer.method.objective.backup(trainer.model)
    _sync()
    return 1000 * (time.perf_counter() - start) / trainer.cfg.options("mrkd").k


def _cycle(loader):
    while True:
        yield from loader


def _ms_per_call(fn, steps: int, warmup: int = 3, blocks: int = 3) -> float:
    """Median over `blocks` of the mean ms per call of `steps` back-to-back calls (one device sync per block)."""
    for _ in range(warmup):
        fn()
    _sync()
    times = []
    for _ in range(blocks):
        start = time.perf_counter()
        for _ in range(steps):
            fn()
        _sync()
        times.append((time.perf_counter() - start) / steps)
    return 1000 * float(np.median(times))


def measure_trainer(overrides: list[str], batch: int, steps: int, shape=AUDIO_SHAPE,
                    teachers_alone: bool = False, config: str | None = None) -> dict:
    """ms per training step through ``Trainer.step`` (and the K teacher forwards alone, if asked)."""
    trainer = _trainer([f"train.batch_size={batch}", *overrides], shape, items=max(8 * batch, 256), config=config)
    out = {"backup_ms": _fill_bank(trainer)}
    batches = _cycle(trainer.train_loader)
    out["step_ms"] = _ms_per_call(lambda: trainer.step(next(batches)), steps, warmup=max(3, steps // 4))
    if teachers_alone and trainer.cfg.method == "mrkd":
        x = next(batches).x
        out["teachers_alone_ms"] = _ms_per_call(lambda: trainer.method.objective.bank.logits(x), steps)
        trainer.cfg.train.log_every = 1  # one logged step: the teacher share inside the step
        shares = [trainer.step(next(batches)).get("mrkd/teacher_time_share", 0.0) for _ in range(5)]
        out["teacher_share"] = float(np.median(shares))
    return out


def ratio_table(rows: dict[str, float], first: str, batch: int, reference: str, label: str,
                items_per_s: bool = False) -> str:
    """A markdown table of ms/step per row, each as a ratio to the ``reference`` row (``label`` in the header)
    measured in the same run."""
    head = f"| {first} | ms/step (batch {batch}) | / {label} |" + (" new items/s |" if items_per_s else "")
    lines = [head, "|---" * head.count(" |") + "|"]
    for name, ms in rows.items():
        lines.append(f"| {name} | {ms:.1f} | {ms / rows[reference]:.2f} |"
                     + (f" {1000 * batch / ms:.0f} |" if items_per_s else ""))
    return "\n".join(lines)


class Dcase24BaselineStep:
    """The DCASE'24 Task 1 baseline's training step, as that repository does it: a batch of 44.1 kHz waveforms →
    resample to 32 kHz → mel spectrogram (n_fft 4096, window 3072, hop 500, 256 bands) → log(x + 1e-5) →
    frequency masking (48) and Freq-MixStyle (p 0.4) → the same network in fp32 → cross-entropy → AdamW."""

    def __init__(self, device: torch.device, batch: int, items: int, seed: int = 0) -> None:
        import torchaudio

        from audio_mrkd.data.augment import freq_mixstyle, spec_mask
        from audio_mrkd.models import build_model
        gen = torch.Generator().manual_seed(seed)
        self.batch, self.items, self.device = batch, items, device
        self.wave = (0.1 * torch.randn(items, 44100, generator=gen)).to(device)
        self.labels = torch.randint(0, N_CLASSES, (items,), generator=gen).to(device)
        self.frontend = torch.nn.Sequential(
            torchaudio.transforms.Resample(44100, 32000),
            torchaudio.transforms.MelSpectrogram(32000, n_fft=4096, win_length=3072, hop_length=500, n_mels=256),
        ).to(device)
        self.model = build_model("cp_mobile", N_CLASSES, 1).to(device).train()
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=5e-3, weight_decay=1e-4)
        self.augment = lambda x: freq_mixstyle(spec_mask(x, 48, axis=2), 0.4, 0.3)

    def __call__(self) -> None:
        index = torch.randint(0, self.items, (self.batch,), device=self.device)
        x = (self.frontend(self.wave[index]) + 1e-5).log()[:, None]
        loss = F.cross_entropy(self.model(self.augment(x)), self.labels[index])
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()


def _header(log, suite: str, batch: int, steps: int) -> str:
    v = versions()
    cuda = _DEVICE["name"] == "cuda"
    dev = torch.cuda.get_device_name() if cuda else f"CPU ({torch.get_num_threads()} threads)"
    log(f"# audio-mrkd bench --suite {suite}: batch {batch}, {steps} steps per block, median of 3 blocks; "
        f"device {dev}; torch {v['torch']}, torchaudio {v.get('torchaudio', '?')}, python {v['python']}")
    return "cuda" if cuda else "cpu"


# the step suite on CUDA: every row with the whole step as one CUDA graph (first: not yet measured on a GPU, so a
# session stopped at its time limit still has these rows), then every row with the GPU switches alone
STEP_SETUPS = [(" + step graph", STEP_GRAPH), ("", GPU_FAST)]


def run_step_suite(ks=(1, 2, 4, 8), model: str = "cp_mobile", batch: int = 64, steps: int = 20,
                   extra: list[str] | None = None, log=print) -> list[dict]:
    """CE vs MrKD K = ks (same batch, cached): per-step cost, teacher share and the overhead ratio. On CUDA (no
    ``extra`` given) twice: with the whole step as one CUDA graph (rows `… + step graph`) and with the GPU switches
    alone, each MrKD row against its own setup's CE row."""
    dev = _header(log, "step", batch, steps)
    setups = [("", extra)] if extra is not None else STEP_SETUPS if dev == "cuda" else [("", [])]
    rows = []
    for suffix, switches in setups:
        overrides = [f"model.name={model}", *switches]
        log(f"# config overrides{suffix}: {' '.join(overrides)}")
        rows += _step_rows(ks, overrides, batch, steps, suffix, log)
    log(f"{'variant':30s} {'ms/step':>8s} {'/ CE':>6s} {'teacher share':>13s} {'K fwd alone ms':>15s} "
        f"{'(MrKD-CE)/K fwd':>16s} {'backup ms':>10s} {'samples/s':>10s}")
    for r in rows:
        log(f"{r['variant']:30s} {r['step_ms']:8.2f} {r['ratio']:6.2f} {r.get('teacher_share', float('nan')):13.2f} "
            f"{r.get('teachers_alone_ms', float('nan')):15.2f} {r.get('overhead_ratio', float('nan')):16.2f} "
            f"{r['backup_ms']:10.1f} {1000 * batch / r['step_ms']:10.0f}")
    return rows


def _step_rows(ks, overrides: list[str], batch: int, steps: int, suffix: str, log) -> list[dict]:
    """The CE row and the MrKD rows (K = ks, same batch and cached) of one setup; ratios to that CE row."""
    ce = measure_trainer(["method=ce", *overrides], batch, steps)
    rows = [{"variant": f"CE{suffix}", **ce, "ratio": 1.0}]
    _measured(log, rows[0])
    for teacher_input in ("same", "cached"):
        for k in ks:
            m = measure_trainer(["method=mrkd", f"mrkd.k={k}", f"mrkd.teacher_input={teacher_input}", *overrides],
                                batch, steps, teachers_alone=teacher_input == "same")
            m.update(variant=f"MrKD K={k} {teacher_input}{suffix}", ratio=m["step_ms"] / ce["step_ms"])
            if "teachers_alone_ms" in m:
                m["overhead_ratio"] = (m["step_ms"] - ce["step_ms"]) / m["teachers_alone_ms"]
            rows.append(m)
            _measured(log, m)
    return rows


def _measured(log, row: dict) -> None:
    """One line as soon as a row is measured (the tables come at a suite's end: a session stopped at its time
    limit keeps the rows it measured)."""
    log(f"# measured {row['variant']}: {row['step_ms']:.2f} ms/step")


# The pipeline suite: (label, config overrides, needs CUDA, the CE row an MrKD row's overhead is measured against).
# The same augmentations as the baseline throughout.
CE_FP32 = "CE fp32, cached features (no GPU switches)"
CE_FAST = "CE fast: bf16 + cl + benchmark + compile(reduce-overhead)"
BF16_CL = ["train.precision=bf16-mixed", "train.channels_last=true"]
MRKD4 = [*GPU_FAST, "method=mrkd", "mrkd.k=4", "mrkd.teacher_compile=false"]
PIPELINE_VARIANTS = [
    (CE_FP32, NO_SWITCHES, False, None),
    ("CE + bf16", [*NO_SWITCHES, "train.precision=bf16-mixed"], True, None),
    ("CE + bf16 + channels_last", [*BF16_CL, "train.cudnn_benchmark=false"], True, None),
    ("CE + bf16 + channels_last + cudnn.benchmark", [*BF16_CL, "train.cudnn_benchmark=true"], True, None),
    ("CE + bf16 + cl + benchmark + compile(default)", [*BF16_CL, "train.compile=true"], True, None),
    (CE_FAST, GPU_FAST, True, None),
    # the rows not yet measured on a GPU come early: a session stopped at its time limit still has them
    ("CE, whole step as one CUDA graph (train.step_graph)", STEP_GRAPH, True, None),
    ("MrKD K=4 same batch, whole step as one CUDA graph", [*STEP_GRAPH, "method=mrkd", "mrkd.k=4"], True, CE_FAST),
    ("MrKD K=4 cached, whole step as one CUDA graph",
     [*STEP_GRAPH, "method=mrkd", "mrkd.k=4", "mrkd.teacher_input=cached"], True, CE_FAST),
    ("CE fast, features NOT resident (host gather + copy)", [*GPU_FAST, "data.resident=false"], True, None),
    ("MrKD K=4 same batch, fast, teacher CUDA graph (BN-folded, not compiled)", MRKD4, True, CE_FAST),
    ("MrKD K=4 same batch, fast, graph + compiled teachers", [*MRKD4, "mrkd.teacher_compile=true"], True, CE_FAST),
    ("MrKD K=4 same batch, fast, compiled teachers, no graph",
     [*MRKD4, "mrkd.teacher_compile=true", "mrkd.teacher_graph=false"], True, CE_FAST),
    ("MrKD K=2 same batch, fast, graph + compiled teachers",
     [*MRKD4, "mrkd.teacher_compile=true", "mrkd.k=2"], True, CE_FAST),
    ("MrKD K=4 same batch, fast, teacher loop (no graph)", [*MRKD4, "mrkd.teacher_graph=false"], True, CE_FAST),
    ("MrKD K=4 same batch, fast, unfused teachers in a loop",
     [*MRKD4, "mrkd.teacher_graph=false", "mrkd.fuse_teachers=false"], True, CE_FAST),
    ("MrKD K=4 cached, fast", [*MRKD4, "mrkd.teacher_input=cached"], True, CE_FAST),
    ("MrKD K=4 same batch, fp32 (no GPU switches)", [*NO_SWITCHES, "method=mrkd", "mrkd.k=4"], False, CE_FP32),
]


def run_pipeline_suite(batch: int = 256, steps: int = 20, log=print) -> list[dict]:
    """The DCASE'24 baseline's pipeline vs this engine's cached-feature path, switch by switch, and MrKD K=4."""
    dev = _header(log, "pipeline", batch, steps)
    log(f"# augmentation everywhere: {' '.join(DCASE_AUGMENT)}; model cp_mobile, input 1x256x65")
    device = torch.device(dev)
    base = Dcase24BaselineStep(device, batch, items=max(8 * batch, 256))
    base_ms = _ms_per_call(base, steps, warmup=max(3, steps // 4))
    del base
    rows = [{"variant": "DCASE'24 baseline way (wave->resample->mel each step, fp32)", "step_ms": base_ms}]
    for label, overrides, cuda_only, ce_label in PIPELINE_VARIANTS:
        if cuda_only and dev != "cuda":
            rows.append({"variant": label, "skipped": "needs CUDA"})
            continue
        m = measure_trainer(["model.name=cp_mobile", *DCASE_AUGMENT, *overrides], batch, steps,
                            teachers_alone="method=mrkd" in overrides and "mrkd.teacher_input=cached" not in overrides)
        ce_ms = next((r["step_ms"] for r in rows if r["variant"] == ce_label), None)
        if ce_ms and "teachers_alone_ms" in m:
            m["overhead_ratio"] = (m["step_ms"] - ce_ms) / m["teachers_alone_ms"]
        if ce_ms:
            m["vs_ce"] = m["step_ms"] / ce_ms
        rows.append({"variant": label, **m})
        _measured(log, rows[-1])
    for r in rows:
        if "step_ms" in r:
            r["samples_per_s"] = 1000 * batch / r["step_ms"]
            r["vs_baseline"] = base_ms / r["step_ms"]
    log(f"{'variant':72s} {'ms/step':>8s} {'samples/s':>10s} {'x baseline':>10s} {'step / CE':>9s} "
        f"{'K fwd alone ms':>15s} {'(MrKD-CE)/K fwd':>16s}")
    for r in rows:
        if "skipped" in r:
            log(f"{r['variant']:72s} skipped ({r['skipped']})")
            continue
        log(f"{r['variant']:72s} {r['step_ms']:8.2f} {r['samples_per_s']:10.0f} {r['vs_baseline']:10.2f} "
            f"{r.get('vs_ce', float('nan')):9.2f} {r.get('teachers_alone_ms', float('nan')):15.2f} "
            f"{r.get('overhead_ratio', float('nan')):16.2f}")
    return rows


RESNET_VARIANTS = [
    ("ResNet-18 fp32", NO_SWITCHES),
    ("ResNet-18 fp32 + cudnn.benchmark", [*NO_SWITCHES, "train.cudnn_benchmark=true"]),
    ("ResNet-18 bf16 + channels_last + benchmark", [*BF16_CL, "train.cudnn_benchmark=true"]),
    ("ResNet-18 bf16 + cl + benchmark + compile(reduce-overhead)", GPU_FAST),
]


def run_resnet_suite(batch: int = 256, steps: int = 20, log=print) -> list[dict]:
    """ResNet-18 on 32×32×3: fp32 vs bf16 + channels_last (+ compile), CE, crop + flip augmentation."""
    dev = _header(log, "resnet", batch, steps)
    if dev != "cuda":
        log("# skipped: the ResNet-18 precision comparison needs CUDA (bf16 and channels_last are CUDA-only here)")
        return []
    rows = []
    for label, overrides in RESNET_VARIANTS:
        m = measure_trainer(["model.name=resnet18", "augment.crop_padding=4", "augment.hflip=true", *overrides],
                            batch, steps, shape=IMAGE_SHAPE)
        rows.append({"variant": label, **m, "samples_per_s": 1000 * batch / m["step_ms"]})
        _measured(log, rows[-1])
    for r in rows:
        r["vs_fp32"] = rows[0]["step_ms"] / r["step_ms"]
        log(f"{r['variant']:58s} {r['step_ms']:8.2f} ms/step {r['samples_per_s']:10.0f} samples/s "
            f"{r['vs_fp32']:6.2f}x fp32")
    return rows


def run_bench(ks=(1, 2, 4, 8), model: str = "cp_mobile", batch: int = 64, steps: int = 20, device: str = "auto",
              log=print, suite: str = "step") -> dict[str, list[dict]]:
    """Run one suite (or ``all``); returns {suite: rows}."""
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("audio-mrkd bench: --device cuda but no CUDA device is available")
    _DEVICE["name"] = "cuda" if device == "cuda" or (device == "auto" and torch.cuda.is_available()) else "cpu"
    tune_malloc()  # as `audio-mrkd train` does
    results = {}
    for name in (SUITES if suite == "all" else (suite,)):
        if name == "step":
            results[name] = run_step_suite(ks, model, batch, steps, log=log)
        elif name == "pipeline":
            results[name] = run_pipeline_suite(batch, steps, log=log)
        else:
            results[name] = run_resnet_suite(batch, steps, log=log)
    return results

"""``audio-mrkd finetune RUN_DIR --devices a b c s1 s2 s3``: one model per recording device (DCASE 2025 Task 1).

Each device model starts from the general run's weights and trains on that device's train clips only, with the
DCASE'25 baseline's second-stage settings (:data:`FINETUNE_DEFAULTS`: 50 epochs, learning rate 5e-4, 200 warm-up
steps, no Freq-MixStyle) — every one a config key the user may override, any method included. The combined
evaluation routes each evaluated clip to its device's model (devices without one → the general model) and
reports overall, per-device, seen vs unseen, and the gain over the general model on the same clips. Both stages
are scored at their last epoch (no checkpoint is picked on the evaluated split).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from audio_mrkd import config_io
from audio_mrkd.config_loader import experiment_from_dict, run_config
from audio_mrkd.config_schema import ExperimentConfig
from audio_mrkd.errors import InputError
from audio_mrkd.runs.run import Finetuned, Run
from audio_mrkd.train.inference import run_logits
from audio_mrkd.train.metrics import classification_metrics

FINETUNE_DEFAULTS = ["train.epochs=50", "train.lr=0.0005", "train.warmup_steps=200", "augment.mixstyle_p=0",
                     "seeds=[]"]
CHECKPOINT = "last"


def device_config(base: ExperimentConfig, run_dir: Path, device: str, out: Finetuned,
                  overrides: list[str]) -> ExperimentConfig:
    """The general run's config + the fine-tuning defaults + this device + the user's overrides."""
    data = run_config(base)
    extra = [*FINETUNE_DEFAULTS, f"data.train_devices=[{device}]",
             f"train.init_from={Run(run_dir).checkpoint(CHECKPOINT)}", f"train.out_dir={out.device_dir(device)}",
             f"name={base.name}_device_{device}", "train.run_name=", *overrides]
    return experiment_from_dict(config_io.deep_merge(data, config_io.parse_overrides(extra)))


def finetune(run_dir: str | Path, devices: list[str], out: str | Path | None = None,
             overrides: list[str] | None = None, train_fn=None, log=print) -> dict:
    """Train one model per device from ``run_dir``'s weights, then the routed evaluation (the report of ``out``,
    default the run's own fine-tuned folder: :class:`~audio_mrkd.runs.run.Finetuned`)."""
    from audio_mrkd.train.engine import train_run
    run_dir = Path(run_dir)
    run = Run(run_dir)
    base, info = run.config, run.info
    if not run.dataset.recording_devices:
        raise InputError(f"{run_dir}: finetune needs an audio run (recording devices), not {info.kind}")
    unknown = [d for d in devices if d not in info.device_names]
    if unknown or not devices:
        raise InputError(f"--devices: {', '.join(unknown) or 'none given'}; the dataset's devices are "
                         f"{', '.join(info.device_names)}")
    out = Finetuned(out) if out else run.finetuned
    device_runs = {}
    for device in devices:
        cfg = device_config(base, run_dir, device, out, list(overrides or []))
        device_runs[device], metrics = (train_fn or train_run)(cfg)
        log(f"finetune: device {device}: {cfg.train.epochs} epochs on its train clips → {device_runs[device]} "
            f"(macro accuracy on all evaluated clips {metrics['last']['macro_accuracy']:.4f})")
    report = routed_evaluation(run_dir, device_runs)
    out.write_report(report)
    log(summary_lines(report))
    return report


def _probs(model: torch.nn.Module, split) -> np.ndarray:
    return torch.softmax(run_logits(model, split), 1).numpy()


def routed_evaluation(run_dir: Path, device_runs: dict[str, Path]) -> dict:
    """Each evaluated clip scored by its device's model (else the general one), against the general model alone."""
    run = Run(run_dir)
    general = run.model(CHECKPOINT)
    split = run.data().eval
    names = np.asarray(split.device_names)[split.recording_devices]
    general_probs = _probs(general, split)
    routed = general_probs.copy()
    for device, device_dir in device_runs.items():
        rows = np.flatnonzero(names == device)
        if len(rows):
            device_run = Run(device_dir)
            routed[rows] = _probs(device_run.model(CHECKPOINT), device_run.normalized(split.subset(rows)))
    seen = np.isin(names, list(device_runs))

    def scores(probs: np.ndarray) -> dict:
        metrics = classification_metrics(probs, split.labels, split.class_names, split.recording_devices,
                                         split.device_names, run.dataset.device_groups)
        hits = probs.argmax(1) == split.labels
        return {"accuracy": metrics["accuracy"], "macro_accuracy": metrics["macro_accuracy"],
                "per_device": metrics["per_device"],
                "seen_accuracy": float(hits[seen].mean()) if seen.any() else None,
                "unseen_accuracy": float(hits[~seen].mean()) if (~seen).any() else None}

    ours, base = scores(routed), scores(general_probs)
    gain = {k: (ours[k] - base[k]) if isinstance(ours[k], float) and isinstance(base[k], float) else None
            for k in ("accuracy", "macro_accuracy", "seen_accuracy", "unseen_accuracy")}
    gain["per_device"] = {d: ours["per_device"][d] - base["per_device"][d] for d in ours["per_device"]}
    return {"general_run": str(run_dir), "device_runs": {d: str(p) for d, p in device_runs.items()},
            "checkpoint": CHECKPOINT, "n_items": int(len(split)), "routed": ours, "general": base, "gain": gain}


def summary_lines(report: dict) -> str:
    def pct(v):
        return "—" if v is None else f"{100 * v:.1f}"
    lines = [f"finetune: {report['n_items']} evaluated clips, device models for "
             f"{', '.join(report['device_runs'])} (others: the general model)",
             "| | accuracy | macro accuracy | seen devices | unseen devices |", "|---|---|---|---|---|"]
    for name in ("general", "routed", "gain"):
        r = report[name]
        lines.append(f"| {name} | {pct(r['accuracy'])} | {pct(r['macro_accuracy'])} | {pct(r['seen_accuracy'])} | "
                     f"{pct(r['unseen_accuracy'])} |")
    per, gain = report["routed"]["per_device"], report["gain"]["per_device"]
    lines.append("per device, routed (gain over the general model): " +
                 ", ".join(f"{d} {pct(per[d])} ({100 * gain[d]:+.1f})" for d in per))
    return "\n".join(lines)

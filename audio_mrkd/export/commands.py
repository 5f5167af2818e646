"""``audio-mrkd export`` and ``audio-mrkd predict``: the commands and their parsers.

``export RUN_DIR`` writes into ``--out`` (default ``RUN_DIR/export``), each file atomically:

* ``model.onnx``: fp32, input ``features`` = raw log-mel ``B×1×F×T`` (dynamic batch), output ``logits``;
  the train-split normalisation is the first layer of the graph;
* ``model.int8.onnx`` (``--int8``): ONNX Runtime static QDQ quantisation, calibrated on ``--calibration`` items
  of the train split (drawn with a fixed seed); of the calibration candidates (:func:`.quantize.choose_int8`), the
  one that disagrees least with fp32 on train-split items;
* ``model_with_frontend.onnx`` (``--with-frontend``): input ``waveform`` ``B×samples`` → LogMel → the same model;
* ``features.yaml`` (the front-end configuration the model expects), ``labels.json`` (``{"class_names": […]}``),
  ``complexity.json`` and ``parity.json`` (see :mod:`.complexity` and :mod:`.parity`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import yaml

from audio_mrkd import config_io
from audio_mrkd import fileio
from audio_mrkd.data.frontend import FrontendConfig, Resampler, load_clip
from audio_mrkd.data.selection import evaluated_name
from audio_mrkd.errors import InputError
from audio_mrkd.export import INT8_MAX_DROP_PT, complexity, parity
from audio_mrkd.export.onnx import (FEATURES_INPUT, FRONTEND_FILE, INT8_FILE, MODEL_FILE, WAVEFORM_INPUT,
                                    FeatureModel, WaveformModel, export_onnx)
from audio_mrkd.export.predict import FEATURES_FILE, LABELS_FILE
from audio_mrkd.runs.run import Run
from audio_mrkd.versions import versions

FRONTEND_CLIPS = 32   # evaluated-split clips decoded to check the waveform graph


@dataclass
class ExportResult:
    out_dir: Path
    files: dict[str, Path]
    complexity: dict
    parity: dict
    warnings: list[str] = field(default_factory=list)


def _frontend_clips(split, cfg: FrontendConfig, n: int) -> tuple[torch.Tensor, str]:
    """Up to ``n`` evaluated-split clips, decoded by the front-end; synthetic tones if the audio is gone."""
    data_dir = Path(split.info.get("data_dir", ""))
    picks = np.unique(np.linspace(0, len(split) - 1, num=min(n, len(split))).round().astype(int)) if len(split) else []
    resampler, waves = Resampler(cfg.sample_rate), []
    for i in picks:
        try:
            waves.append(load_clip(data_dir / split.items["filename"].iloc[i], cfg, resampler))
        except InputError:
            break
    if len(waves) == len(picks) and waves:
        return torch.stack(waves), f"{len(waves)} clips of the evaluated split ({data_dir})"
    g = torch.Generator().manual_seed(0)
    t = torch.arange(cfg.n_samples) / cfg.sample_rate
    freqs = torch.linspace(100.0, 0.4 * cfg.sample_rate, n)
    waves = 0.3 * torch.sin(2 * torch.pi * freqs[:, None] * t) + 0.05 * torch.randn(n, cfg.n_samples, generator=g)
    return waves, f"{n} synthetic tone+noise clips (the evaluated split's audio is not readable under {data_dir})"


def export_run(run_dir: str | Path, out: str | Path | None = None, int8: bool = False, calibration: int = 512,
               with_frontend: bool = False, checkpoint: str = "best",
               int8_max_drop_pt: float = INT8_MAX_DROP_PT, int8_activations: str = "int8",
               log=print) -> ExportResult:
    """Export the student of ``run_dir``; see the module docstring for what is written."""
    run_dir = Path(run_dir)
    if calibration < 1:
        raise InputError(f"--calibration: must be >= 1, got {calibration}")
    run, net, feat_cfg = _load_run(run_dir, checkpoint)
    cfg, info = run.config, run.info
    input_shape, class_names = [1, *feat_cfg.shape], list(info.class_names)
    model = FeatureModel(net, info.norm_mean, info.norm_std).eval()
    out = Path(out) if out else run_dir / "export"
    out.mkdir(parents=True, exist_ok=True)
    files = _write_model_files(out, model, feat_cfg, class_names, {
        "class_names": class_names, "features": config_io.to_dict(feat_cfg), "run_dir": str(run_dir),
        "checkpoint": checkpoint, "model": cfg.model.name}, log)

    quant_settings, bundle = None, run.data()  # the run's own train and evaluated items (CV folds too)
    if int8:
        train = bundle.train
        quant_settings = _export_int8(out, train, calibration, int8_activations, log)
        files["int8"] = out / INT8_FILE

    eval_split, evaluated = evaluated_name(cfg.data), bundle.eval
    log(f"export: parity on the '{eval_split}' split ({len(evaluated)} clips)")
    report = parity.feature_parity(model, files["fp32"], files.get("int8"), evaluated.features, evaluated.labels,
                                   eval_split, int8_max_drop_pt=int8_max_drop_pt)
    if with_frontend:
        report["with_frontend"] = _export_with_frontend(out, model, feat_cfg, evaluated, files, files["metadata"])
    report.update({"run_dir": str(run_dir), "checkpoint": checkpoint, "quantization": quant_settings,
                   "versions": versions()})
    fileio.write_json(out / "parity.json", report)
    files["parity"] = out / "parity.json"

    onnx_files = {files[k].name: files[k] for k in ("fp32", "int8", "with_frontend") if k in files}
    comp = complexity.complexity_report(net, input_shape, onnx_files, stored_precision="int8" if int8 else "fp32",
                                        model_name=cfg.model.name,
                                        int8_float_parameters=(quant_settings or {}).get("float_parameters", 0))
    fileio.write_json(out / "complexity.json", comp)
    files["complexity"] = out / "complexity.json"
    del files["metadata"]
    _summary(comp, report, log)
    return ExportResult(out, files, comp, report, parity.parity_warnings(report))


def _load_run(run_dir: Path, checkpoint: str) -> tuple[Run, torch.nn.Module, FrontendConfig]:
    """(the run, its network, its front-end config) of an audio run, or one InputError line."""
    if not run_dir.exists():
        raise InputError(f"{run_dir}: run directory not found")
    if not run_dir.is_dir():
        raise InputError(f"{run_dir}: not a run directory (a file)")
    run = Run(run_dir)
    net = run.model(checkpoint)
    return run, net, run.frontend()


def _write_model_files(out: Path, model: FeatureModel, feat_cfg: FrontendConfig, class_names: list[str],
                       metadata: dict, log) -> dict[str, Path]:
    """features.yaml, labels.json and the fp32 model.onnx; returns their paths (and the graph metadata)."""
    header = (f"# Front-end the exported model expects (from {metadata['run_dir']}/data.json); read by "
              f"`audio-mrkd predict`.\n# Input of {MODEL_FILE}: raw log-mel B×1×{feat_cfg.n_mels}×{feat_cfg.n_frames}.\n")
    fileio.write_text(out / FEATURES_FILE, header + yaml.safe_dump(config_io.to_dict(feat_cfg), sort_keys=False))
    fileio.write_json(out / LABELS_FILE, {"class_names": class_names})
    log(f"export: {metadata['model']} ({metadata['checkpoint']}) → {out / MODEL_FILE}")
    torch.manual_seed(0)
    export_onnx(model, torch.randn(2, 1, *feat_cfg.shape), out / MODEL_FILE, FEATURES_INPUT,
                {**metadata, "input": "raw log-mel B×1×F×T (normalisation inside the graph)"})
    return {"features": out / FEATURES_FILE, "labels": out / LABELS_FILE, "fp32": out / MODEL_FILE,
            "metadata": metadata}


def _export_int8(out: Path, train, calibration: int, activations: str, log) -> dict:
    """model.int8.onnx: the calibration candidate closest to fp32 on the train split; returns its settings."""
    from audio_mrkd.export.quantize import CANDIDATES, choose_int8

    log(f"export: int8 QDQ quantisation, {len(CANDIDATES)} calibration candidates on "
        f"{min(calibration, len(train))} train-split clips → {out / INT8_FILE}")
    settings = choose_int8(out / MODEL_FILE, out / INT8_FILE, train.features, train.labels, calibration, activations)
    chosen = next(c for c in settings["candidates"] if c["name"] == settings["chosen"])
    log(f"export: int8 calibration '{chosen['name']}': {chosen['disagreements']} argmax disagreements with fp32 "
        f"on {settings['train_items']} train-split clips, mean |Δlogit| {chosen['mean_abs_logit_diff']:.4f}")
    return settings


def _export_with_frontend(out: Path, model: FeatureModel, feat_cfg: FrontendConfig, evaluated,
                          files: dict, metadata: dict) -> dict:
    """model_with_frontend.onnx and its parity entry (an exporter failure is recorded, not raised)."""
    waveform_model = WaveformModel(feat_cfg, model).eval()
    try:
        export_onnx(waveform_model, torch.zeros(2, feat_cfg.n_samples), out / FRONTEND_FILE, WAVEFORM_INPUT,
                    {**metadata, "input": f"waveform B×{feat_cfg.n_samples} at {feat_cfg.sample_rate} Hz"})
    except Exception as exc:  # an operator the exporter cannot convert: keep the evidence, keep going
        text = " ".join(str(exc).split())[:2000]
        return {"error": f"export failed: {type(exc).__name__}: {text}"}
    files["with_frontend"] = out / FRONTEND_FILE
    waves, source = _frontend_clips(evaluated, feat_cfg, FRONTEND_CLIPS)
    return parity.frontend_parity(waveform_model, files["with_frontend"], waves, source=source)


def _summary(comp: dict, report: dict, log) -> None:
    limits = comp["limits"]
    verdict = ", ".join(f"{p} {'pass' if v['pass'] else 'FAIL'} ({v['param_bytes']:,} B)"
                        for p, v in comp["by_precision"].items())
    log(f"export: {comp['parameters']:,} parameters, {comp['macs']:,} MACs "
        f"(limits {limits['param_bytes']:,} B, {limits['macs']:,} MACs): {verdict}")
    log(f"export: fp32 ONNX vs PyTorch max |Δlogit| {report['fp32_vs_pytorch']['max_abs_logit_diff']:.2e}; "
        f"accuracy {100 * report['onnx_fp32']['accuracy']:.2f}%")
    if "int8_vs_fp32" in report:
        cmp = report["int8_vs_fp32"]
        log(f"export: int8 accuracy {100 * report['onnx_int8']['accuracy']:.2f}% "
            f"(Δ {100 * (report['onnx_int8']['accuracy'] - report['onnx_fp32']['accuracy']):+.2f} pt), argmax agreement with fp32 {100 * cmp['argmax_agreement']:.2f}%")
    front = report.get("with_frontend")
    if front and "error" not in front:
        log(f"export: model_with_frontend.onnx vs Python front-end + model: max |Δlogit| "
            f"{front['max_abs_logit_diff']:.2e} on {front['source']}")

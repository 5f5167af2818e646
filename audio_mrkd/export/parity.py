"""Parity of the exported graphs with PyTorch on the evaluated split (the content of ``parity.json``).

* fp32 ONNX vs PyTorch: max |Δlogit| over every item of the split (expected ≤ ``FP32_TOLERANCE``).
* int8 vs fp32 ONNX: argmax agreement, max |Δlogit|, accuracy and macro (class-wise) accuracy of both; an int8
  model that loses more than ``INT8_MAX_DROP_PT`` accuracy points is flagged ``"int8_ok": false``.
* ``quantization`` (written by ``export``): the int8 calibration candidates' figures on train-split items and the
  one chosen (:func:`audio_mrkd.export.quantize.choose_int8`); the evaluated split above plays no part in the choice.
* waveform graph (``--with-frontend``) vs the Python front-end + PyTorch model on decoded clips: max |Δlogit|
  (expected ≤ ``FRONTEND_TOLERANCE``; the ONNX STFT is a DFT in float32, so log-mels differ by ~1e-5).
"""
from __future__ import annotations

import numpy as np
import torch

from audio_mrkd.export import INT8_MAX_DROP_PT
from audio_mrkd.export.onnx import onnx_session
from audio_mrkd.progress import progress
from audio_mrkd.train.metrics import macro_accuracy

FP32_TOLERANCE = 1e-4
FRONTEND_TOLERANCE = 1e-3


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return float((logits.argmax(1) == labels).mean()) if len(labels) else float("nan")


def _scores(logits: np.ndarray, labels: np.ndarray) -> dict:
    return {"accuracy": accuracy(logits, labels), "macro_accuracy": macro_accuracy(labels, logits.argmax(1))}


def feature_parity(model: torch.nn.Module, fp32_path, int8_path, features, labels: np.ndarray,
                   split: str = "evaluate", batch_size: int = 64,
                   int8_max_drop_pt: float = INT8_MAX_DROP_PT) -> dict:
    """Compare PyTorch ``model`` (raw features in), fp32 ONNX and (if ``int8_path``) int8 ONNX on ``features``.

    ``features`` is an array-like N×1×F×T (memory-mapped is fine: read batch by batch), ``labels`` int class ids.
    """
    labels = np.asarray(labels)
    fp32 = onnx_session(fp32_path)
    int8 = onnx_session(int8_path) if int8_path else None
    name = fp32.get_inputs()[0].name
    ref, got32, got8 = [], [], []
    model = model.eval()
    with torch.inference_mode():
        for start in progress(range(0, len(labels), batch_size), desc=f"parity ({split})", unit="batch",
                              min_interval=5):
            x = np.ascontiguousarray(features[np.arange(start, min(start + batch_size, len(labels)))],
                                     dtype=np.float32)
            ref.append(model(torch.from_numpy(x)).numpy())
            got32.append(fp32.run(None, {name: x})[0])
            if int8 is not None:
                got8.append(int8.run(None, {name: x})[0])
    ref, got32 = np.concatenate(ref), np.concatenate(got32)
    diff = float(np.abs(got32 - ref).max())
    report = {
        "split": split,
        "items": int(len(labels)),
        "fp32_vs_pytorch": {"max_abs_logit_diff": diff, "tolerance": FP32_TOLERANCE, "ok": diff <= FP32_TOLERANCE,
                            "argmax_agreement": float((got32.argmax(1) == ref.argmax(1)).mean())},
        "pytorch": _scores(ref, labels),
        "onnx_fp32": _scores(got32, labels),
    }
    if int8 is not None:
        got8 = np.concatenate(got8)
        s32, s8 = report["onnx_fp32"], _scores(got8, labels)
        drop = 100.0 * (s32["accuracy"] - s8["accuracy"])
        report["onnx_int8"] = s8
        report["int8_vs_fp32"] = {
            "argmax_agreement": float((got8.argmax(1) == got32.argmax(1)).mean()),
            "max_abs_logit_diff": float(np.abs(got8 - got32).max()),
            "accuracy_drop_pt": drop,
            "macro_accuracy_drop_pt": 100.0 * (s32["macro_accuracy"] - s8["macro_accuracy"]),
            "max_accuracy_drop_pt": int8_max_drop_pt,
        }
        report["int8_ok"] = bool(drop <= int8_max_drop_pt)
    return report


def frontend_parity(waveform_model: torch.nn.Module, path, waves: torch.Tensor, batch_size: int = 16,
                    source: str = "") -> dict:
    """Waveform ONNX graph vs the Python front-end (``LogMel`` eager) + PyTorch model on ``waves`` (N×samples)."""
    session = onnx_session(path)
    name = session.get_inputs()[0].name
    worst, agree = 0.0, 0
    waveform_model = waveform_model.eval()
    with torch.inference_mode():
        for start in range(0, len(waves), batch_size):
            x = waves[start:start + batch_size].float().contiguous()
            ref = waveform_model(x).numpy()
            got = session.run(None, {name: x.numpy()})[0]
            worst = max(worst, float(np.abs(got - ref).max()))
            agree += int((got.argmax(1) == ref.argmax(1)).sum())
    return {"clips": int(len(waves)), "source": source, "max_abs_logit_diff": worst,
            "tolerance": FRONTEND_TOLERANCE, "ok": worst <= FRONTEND_TOLERANCE,
            "argmax_agreement": agree / max(len(waves), 1)}


def int8_loss(report: dict) -> str:
    """What the int8 model loses against fp32, in words (for a report with ``int8_vs_fp32``)."""
    cmp = report["int8_vs_fp32"]
    return (f"int8 model loses {cmp['accuracy_drop_pt']:.2f} accuracy points against fp32 "
            f"(threshold {cmp['max_accuracy_drop_pt']:g} pt; {100 * report['onnx_fp32']['accuracy']:.2f}% → "
            f"{100 * report['onnx_int8']['accuracy']:.2f}%)")


def parity_warnings(report: dict) -> list[str]:
    """Human-readable warnings for everything in a parity report that is not as expected."""
    out = []
    fp32 = report.get("fp32_vs_pytorch")
    if fp32 and not fp32["ok"]:
        out.append(f"fp32 ONNX differs from PyTorch by {fp32['max_abs_logit_diff']:.3g} in a logit "
                   f"(tolerance {fp32['tolerance']:g})")
    if report.get("int8_ok") is False:
        out.append(int8_loss(report) + ": int8_ok is false in parity.json")
    front = report.get("with_frontend")
    if front and "error" in front:
        out.append(f"--with-frontend: {front['error']}")
    elif front and front.get("ok") is False:
        out.append(f"model_with_frontend.onnx differs from the Python front-end + model by "
                   f"{front['max_abs_logit_diff']:.3g} in a logit (tolerance {front['tolerance']:g})")
    return out

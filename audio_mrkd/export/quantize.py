"""Static int8 quantisation with ONNX Runtime: pre-processing, per-channel weights, QDQ format.

``onnxruntime.quantization.quant_pre_process`` (shape inference + graph optimisation) runs first, then
``quantize_static`` with a :class:`FeatureReader` that feeds N train-split log-mels (raw, as the graph takes them;
the normalisation is inside the graph and stays float, see :func:`quantize_int8`). Choices: QDQ format, signed
int8 activations and weights by default (S8S8, ONNX Runtime's default; uint8 activations on request),
per-channel weight scales, MinMax calibration (the calibrator adds ReduceMin/ReduceMax outputs, so it keeps two
scalars per tensor and batch, not the activations: memory stays small for large calibration sets).
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
from tqdm import tqdm

from audio_mrkd import fileio
from audio_mrkd.errors import InputError

try:  # optional dependency group "export"
    from onnxruntime.quantization import CalibrationDataReader
except ImportError:  # pragma: no cover - reported by quantize_int8
    CalibrationDataReader = object

CALIBRATION_BATCH = 16


class FeatureReader(CalibrationDataReader):
    """Calibration batches ``{input_name: float32 B×1×F×T}`` from an array-like of features (N×1×F×T).

    ``features`` may be a memory-mapped / lazy array; ``positions`` picks the items (read batch by batch).
    """

    def __init__(self, features, input_name: str, positions: np.ndarray | None = None,
                 batch_size: int = CALIBRATION_BATCH, progress: bool = True):
        self.features, self.input_name, self.batch_size = features, input_name, batch_size
        self.positions = np.arange(len(features)) if positions is None else np.sort(np.asarray(positions))
        self.progress = progress
        self._start, self._bar = 0, None

    def __len__(self) -> int:
        return len(self.positions)

    def get_next(self) -> dict | None:
        if self._bar is None and self.progress:
            self._bar = tqdm(total=len(self.positions), desc="int8 calibration", unit="clip", disable=None)
        if self._start >= len(self.positions):
            if self._bar is not None:
                self._bar.close()
            return None
        chunk = self.positions[self._start:self._start + self.batch_size]
        self._start += len(chunk)
        if self._bar is not None:
            self._bar.update(len(chunk))
        return {self.input_name: np.ascontiguousarray(self.features[chunk], dtype=np.float32)}

    def rewind(self) -> None:
        self._start, self._bar = 0, None


def calibration_positions(n_items: int, n: int, seed: int = 0) -> np.ndarray:
    """``min(n, n_items)`` distinct item positions drawn with a fixed seed (sorted, for sequential reads)."""
    if n < 1:
        raise InputError(f"--calibration: must be >= 1, got {n}")
    if n_items == 0:
        raise InputError("--calibration: the train split is empty")
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n_items, size=min(n, n_items), replace=False))


def float_nodes(model_path: str | Path, prefixes: tuple[str, ...]) -> list[str]:
    """Names of the nodes that read an initializer whose name starts with one of ``prefixes``."""
    import onnx

    graph = onnx.load(str(model_path)).graph
    consts = {i.name for i in graph.initializer if i.name.startswith(prefixes)}
    return [n.name for n in graph.node if consts.intersection(n.input)]


ACTIVATION_TYPES = ("int8", "uint8")


def quantize_int8(fp32_path: str | Path, out_path: str | Path, reader: FeatureReader,
                  per_channel: bool = True, keep_float: tuple[str, ...] = ("normalize.",),
                  activations: str = "int8") -> dict:
    """fp32 ONNX → static QDQ int8 ONNX at ``out_path`` (atomic). Returns the settings used (for reports).

    Nodes reading initializers named ``keep_float*`` stay float: by default the input normalisation, whose
    per-mel-bin 1/std quantised to one int8 scale would lose up to tens of percent on the small values
    (the activations around it are still quantised, so the first Conv reads int8).

    ``activations``: ``int8`` (S8S8, ONNX Runtime's default and what MCU int8 runtimes expect) or ``uint8``
    (U8S8: measured ~30 % faster than S8S8 with ONNX Runtime 1.32 on an AVX-512-VNNI Xeon; on AVX2 machines
    without VNNI, U8S8 can saturate, see the ONNX Runtime quantisation docs).
    """
    if activations not in ACTIVATION_TYPES:
        raise InputError(f"--int8-activations: {activations!r} is not one of {', '.join(ACTIVATION_TYPES)}")
    try:
        from onnxruntime.quantization import (CalibrationMethod, QuantFormat, QuantType, quant_pre_process,
                                              quantize_static)
    except ImportError as exc:  # pragma: no cover
        raise InputError(f"--int8: onnxruntime is not installed ({exc}); pip install 'audio_mrkd[export]'") from None
    settings = {"tool": "onnxruntime.quantization.quantize_static", "pre_process": "quant_pre_process",
                "format": "QDQ", "activation_type": activations, "weight_type": "int8", "per_channel": per_channel,
                "calibrate_method": "MinMax", "calibration_items": len(reader)}
    with tempfile.TemporaryDirectory(prefix="audio_mrkd_quant_") as tmp:
        pre = Path(tmp) / "preprocessed.onnx"
        quant_pre_process(str(fp32_path), str(pre))
        excluded = float_nodes(pre, keep_float) if keep_float else []
        settings["float_nodes"] = excluded
        with fileio.atomic_path(out_path) as out_tmp:
            quantize_static(str(pre), str(out_tmp), reader, quant_format=QuantFormat.QDQ, per_channel=per_channel,
                            activation_type=QuantType.QInt8 if activations == "int8" else QuantType.QUInt8,
                            weight_type=QuantType.QInt8,
                            calibrate_method=CalibrationMethod.MinMax, nodes_to_exclude=excluded)
    return settings

"""Static int8 quantisation with ONNX Runtime, and the choice of its calibration on the train split.

:func:`quantize_int8` runs ``quant_pre_process`` (shape inference + graph optimisation), then ``quantize_static``:
QDQ format, per-channel int8 weights, int8 activations by default (S8S8; uint8 on request), calibration items fed
one batch at a time (``CalibStridedMinMax`` = one batch per collect, despite its name honoured by every
calibrator), so the histogram calibrators (Entropy, Percentile), which keep every activation they are given,
hold one batch of activations at a time.

:func:`choose_int8` quantises each of :data:`CANDIDATES`, compares each with the fp32 graph on train-split items
and keeps the one that disagrees least (never the evaluated split: parity.json reports that one untouched).
"""
from __future__ import annotations

import contextlib
import io
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from audio_mrkd import fileio
from audio_mrkd.errors import InputError
from audio_mrkd.progress import progress

try:  # optional dependency group "export"
    from onnxruntime.quantization import CalibrationDataReader
except ImportError:  # pragma: no cover - reported by quantize_int8
    CalibrationDataReader = object

CALIBRATION_BATCH = 16
ACTIVATION_TYPES = ("int8", "uint8")
METHODS = ("MinMax", "Entropy", "Percentile")


@dataclass(frozen=True)
class Candidate:
    """One way to quantise: ONNX Runtime's calibration ``method``, how the calibration items are drawn
    (``random`` or ``stratified`` by class), and whether the first weighted layer stays float."""

    name: str
    method: str = "MinMax"
    draw: str = "random"
    float_first: bool = False


#: What ``export --int8`` tries, in this order (the first is the former single choice). Measured on the Drums-5
#: demo runs (docs/benchmarks.md, "int8 calibration"): the calibration method and a float first layer change the
#: evaluated-split loss by several points; a class-stratified draw of the calibration items did not help
#: consistently (and is the same draw whenever --calibration covers the whole train split), so it is not tried.
CANDIDATES = (
    Candidate("minmax"),
    Candidate("percentile", "Percentile"),
    Candidate("entropy", "Entropy"),
    Candidate("minmax-float-first", "MinMax", float_first=True),
    Candidate("percentile-float-first", "Percentile", float_first=True),
    Candidate("entropy-float-first", "Entropy", float_first=True),
)


class FeatureReader(CalibrationDataReader):
    """Calibration batches ``{input_name: float32 B×1×F×T}`` read from ``features[positions]`` (N×1×F×T, may be
    memory-mapped). ``len()`` counts batches; ``set_range`` (in batches) is how ONNX Runtime feeds them one at a time.
    """

    def __init__(self, features, input_name: str, positions: np.ndarray | None = None,
                 batch_size: int = CALIBRATION_BATCH):
        self.features, self.input_name = features, input_name
        self.positions = np.arange(len(features)) if positions is None else np.sort(np.asarray(positions))
        self.batches = [self.positions[i:i + batch_size] for i in range(0, len(self.positions), batch_size)]
        self.set_range(0, len(self.batches))

    def __len__(self) -> int:
        return len(self.batches)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._next, self._end = start_index, min(end_index, len(self.batches))

    def get_next(self) -> dict | None:
        if self._next >= self._end:
            return None
        chunk = self.batches[self._next]
        self._next += 1
        return {self.input_name: np.ascontiguousarray(self.features[chunk], dtype=np.float32)}


def calibration_positions(n_items: int, n: int, seed: int = 0, labels: np.ndarray | None = None) -> np.ndarray:
    """``min(n, n_items)`` distinct sorted positions drawn with a fixed seed; per class in proportion to the class
    sizes when ``labels`` are given (:func:`audio_mrkd.data.splits.stratified_holdout`)."""
    if n < 1:
        raise InputError(f"--calibration: must be >= 1, got {n}")
    if n_items == 0:
        raise InputError("--calibration: the train split is empty")
    if labels is not None:
        from audio_mrkd.data.splits import stratified_holdout

        return stratified_holdout(labels, min(n, n_items), seed)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n_items, size=min(n, n_items), replace=False))


def float_nodes(model_path: str | Path, prefixes: tuple[str, ...], first_weighted: bool = False) -> tuple[list[str], int]:
    """Names of the nodes that read an initializer whose name starts with one of ``prefixes``, plus (with
    ``first_weighted``) the first other node that reads a weight of 2 or more dimensions (the first Conv/Gemm);
    and the number of weights that first layer keeps in float (its initializers' elements; 0 without it)."""
    import onnx

    graph = onnx.load(str(model_path)).graph
    consts = {i.name for i in graph.initializer if i.name.startswith(prefixes)}
    names = [n.name for n in graph.node if consts.intersection(n.input)]
    float_weights = 0
    if first_weighted:
        weights = {i.name for i in graph.initializer if len(i.dims) >= 2} - consts
        first = next((n for n in graph.node if weights.intersection(n.input)), None)
        if first is not None:
            names.append(first.name)
            sizes = {i.name: int(np.prod(i.dims)) for i in graph.initializer}
            float_weights = sum(sizes.get(name, 0) for name in first.input)
    return names, float_weights


def quantize_int8(fp32_path: str | Path, out_path: str | Path, reader: FeatureReader,
                  per_channel: bool = True, keep_float: tuple[str, ...] = ("normalize.",),
                  activations: str = "int8", method: str = "MinMax", float_first: bool = False) -> dict:
    """fp32 ONNX → static QDQ int8 ONNX at ``out_path`` (atomic). Returns the settings used (for reports).

    Nodes reading initializers named ``keep_float*`` stay float: by default the input normalisation, whose
    per-mel-bin 1/std quantised to one int8 scale would lose up to tens of percent on the small values
    (the activations around it are still quantised, so the first Conv reads int8). ``float_first`` also keeps the
    first weighted layer float. ``method``: one of :data:`METHODS` (ONNX Runtime's calibration methods, their
    default options).

    ``activations``: ``int8`` (S8S8, ONNX Runtime's default and what MCU int8 runtimes expect) or ``uint8``
    (U8S8: measured ~30 % faster than S8S8 with ONNX Runtime 1.32 on an AVX-512-VNNI Xeon; on AVX2 machines
    without VNNI, U8S8 can saturate, see the ONNX Runtime quantisation docs).
    """
    if activations not in ACTIVATION_TYPES:
        raise InputError(f"--int8-activations: {activations!r} is not one of {', '.join(ACTIVATION_TYPES)}")
    if method not in METHODS:
        raise ValueError(f"calibration method {method!r} is not one of {METHODS}")
    try:
        from onnxruntime.quantization import (CalibrationMethod, QuantFormat, QuantType, quant_pre_process,
                                              quantize_static)
    except ImportError as exc:  # pragma: no cover
        raise InputError(f"--int8: onnxruntime is not installed ({exc}); pip install 'audio_mrkd[export]'") from None
    settings = {"tool": "onnxruntime.quantization.quantize_static", "pre_process": "quant_pre_process",
                "format": "QDQ", "activation_type": activations, "weight_type": "int8", "per_channel": per_channel,
                "calibrate_method": method, "calibration_items": len(reader.positions)}
    with tempfile.TemporaryDirectory(prefix="audio_mrkd_quant_") as tmp:
        pre = Path(tmp) / "preprocessed.onnx"
        quant_pre_process(str(fp32_path), str(pre))
        excluded, settings["float_parameters"] = float_nodes(pre, keep_float, float_first)
        settings["float_nodes"] = excluded
        # the histogram collector prints a line per batch on stdout
        with fileio.atomic_path(out_path) as out_tmp, contextlib.redirect_stdout(io.StringIO()):
            quantize_static(str(pre), str(out_tmp), reader, quant_format=QuantFormat.QDQ, per_channel=per_channel,
                            activation_type=QuantType.QInt8 if activations == "int8" else QuantType.QUInt8,
                            weight_type=QuantType.QInt8, calibrate_method=getattr(CalibrationMethod, method),
                            nodes_to_exclude=excluded, extra_options={"CalibStridedMinMax": 1})
    return settings


def logits_at(session, features, positions: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """Logits of ``features[positions]`` through an ONNX Runtime ``session``, read batch by batch."""
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: np.ascontiguousarray(features[positions[i:i + batch_size]],
                                                                        dtype=np.float32)})[0]
                           for i in range(0, len(positions), batch_size)])


def choose_int8(fp32_path: str | Path, out_path: str | Path, features, labels: np.ndarray, calibration: int,
                activations: str = "int8", candidates: tuple[Candidate, ...] = CANDIDATES,
                keep_dir: str | Path | None = None) -> dict:
    """Quantise ``fp32_path`` once per candidate, each calibrated on ``calibration`` train-split items, and write
    to ``out_path`` the one with the fewest argmax disagreements with fp32 on ``calibration`` train-split items
    drawn with another seed (ties: the smaller mean |Δlogit|, then list order). ``features``/``labels``: the train
    split. ``keep_dir``: keep every candidate there as ``NAME.onnx`` (for benchmarks). Returns the parity.json
    entry: the chosen candidate's settings, its name and every candidate's figures."""
    from audio_mrkd.export.onnx import onnx_session

    labels = np.asarray(labels)
    check = calibration_positions(len(labels), calibration, seed=1)
    session = onnx_session(fp32_path)
    fp32, input_name = logits_at(session, features, check), session.get_inputs()[0].name
    rows, settings = [], []
    with tempfile.TemporaryDirectory(prefix="audio_mrkd_int8_") as tmp:
        folder = Path(keep_dir or tmp)
        for cand in progress(candidates, desc="int8 candidates", unit="candidate"):
            positions = calibration_positions(len(labels), calibration,
                                              labels=labels if cand.draw == "stratified" else None)
            settings.append(quantize_int8(fp32_path, folder / f"{cand.name}.onnx",
                                          FeatureReader(features, input_name, positions), activations=activations,
                                          method=cand.method, float_first=cand.float_first))
            got = logits_at(onnx_session(folder / f"{cand.name}.onnx"), features, check)
            rows.append({**asdict(cand), "disagreements": int((got.argmax(1) != fp32.argmax(1)).sum()),
                         "mean_abs_logit_diff": float(np.abs(got - fp32).mean()),
                         "train_accuracy": float((got.argmax(1) == labels[check]).mean())})
        best = min(range(len(rows)), key=lambda i: (rows[i]["disagreements"], rows[i]["mean_abs_logit_diff"], i))
        with fileio.atomic_path(out_path) as out_tmp:
            shutil.copyfile(folder / f"{rows[best]['name']}.onnx", out_tmp)
    return {**settings[best], "chosen": rows[best]["name"],
            "selection": f"fewest argmax disagreements with fp32 on {len(check)} train-split items, then the "
                         "smallest mean |Δlogit|, then list order",
            "train_items": len(check), "train_fp32_accuracy": float((fp32.argmax(1) == labels[check]).mean()),
            "candidates": rows}

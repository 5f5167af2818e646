"""ONNX graphs of a trained student: features in (the default) or waveform in (``--with-frontend``).

* :class:`FeatureModel`: raw log-mel ``B×1×F×T`` (exactly what the front-end produces) → logits. The per-mel-bin
  train-split normalisation ``(x − mean) / std`` is the graph's first layer (``Sub`` + ``Mul`` by 1/std, the same
  arithmetic as ``BatchLoader``), so a device feeds the front-end output directly. It is not folded into the first
  convolution's weights: that convolution zero-pads, and zero in normalised space is not zero in raw space, so the
  folded graph would differ at the borders.
* :class:`WaveformModel`: waveform ``B×samples`` (at the configured rate and clip length) → the one front-end
  (:class:`audio_mrkd.data.frontend.LogMel`, which uses its dense mel matrix while exporting) → :class:`FeatureModel`.

Both are exported with the dynamo exporter (``torch.onnx.export(..., dynamo=True, external_data=False)``) with a
dynamic batch axis; the other axes are fixed by the front-end configuration.
"""
from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from audio_mrkd import fileio
from audio_mrkd.data.frontend import FrontendConfig, LogMel

FEATURES_INPUT = "features"
WAVEFORM_INPUT = "waveform"
OUTPUT = "logits"
MODEL_FILE = "model.onnx"
INT8_FILE = "model.int8.onnx"
FRONTEND_FILE = "model_with_frontend.onnx"


class Normalize(nn.Module):
    """``(x − mean) · (1/std)`` per mel bin, for ``B×1×F×T`` input (mean/std of length F)."""

    def __init__(self, mean, std):
        super().__init__()
        mean_t = torch.as_tensor(np.asarray(mean, dtype=np.float32).reshape(-1))
        std_t = torch.as_tensor(np.asarray(std, dtype=np.float32).reshape(-1))
        if mean_t.shape != std_t.shape:
            raise ValueError(f"norm_mean has {mean_t.numel()} values, norm_std {std_t.numel()}")
        self.register_buffer("mean", mean_t.view(1, 1, -1, 1))
        self.register_buffer("inv_std", 1.0 / std_t.view(1, 1, -1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) * self.inv_std


class FeatureModel(nn.Module):
    """Raw log-mel ``B×1×F×T`` → normalisation (if the run normalised) → network → logits."""

    def __init__(self, net: nn.Module, mean=None, std=None):
        super().__init__()
        self.normalize = Normalize(mean, std) if mean is not None else nn.Identity()
        self.net = net

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(self.normalize(features))


class WaveformModel(nn.Module):
    """Waveform ``B×samples`` → LogMel (the package's one front-end) → :class:`FeatureModel`."""

    def __init__(self, frontend_cfg: FrontendConfig, feature_model: FeatureModel):
        super().__init__()
        self.frontend = LogMel(frontend_cfg)
        self.model = feature_model

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        return self.model(self.frontend(waveform).unsqueeze(1))


def export_onnx(module: nn.Module, example: torch.Tensor, path: str | Path, input_name: str,
                metadata: dict | None = None) -> Path:
    """Export ``module`` (eval mode) with a dynamic batch axis to ``path`` (written atomically).

    ``metadata`` (str → JSON-able) goes into the model's ``metadata_props`` for whoever inspects the file.
    Raises whatever the exporter raises when an operator cannot be converted.
    """
    import onnx

    module = module.eval()
    if example.shape[0] < 2:  # a batch of 1 would be specialised by torch.export
        example = example.expand(2, *example.shape[1:]).contiguous()
    batch = torch.export.Dim("batch", max=65536)
    # torch logs one warning per missing torchvision operator on every export: not ours, not useful here
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        # Raised inside torch.export / the exporter, not by this code.
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        program = torch.onnx.export(module, (example,), dynamo=True, external_data=False,
                                    input_names=[input_name], output_names=[OUTPUT],
                                    dynamic_shapes=({0: batch},), verbose=False)
    proto = program.model_proto
    _strip_debug_info(proto)
    for key, value in (metadata or {}).items():
        entry = proto.metadata_props.add()
        entry.key = f"audio_mrkd.{key}"
        entry.value = value if isinstance(value, str) else json.dumps(value)
    path = Path(path)
    with fileio.atomic_path(path) as tmp:
        onnx.save_model(proto, str(tmp))
    return path


def _strip_debug_info(proto) -> None:
    """Drop the exporter's per-node debug metadata (Python stack traces with local paths, FX node text): it is
    ~2/3 of a small model's file and would make file sizes say more about the exporter than the model."""
    for graph in [proto.graph, *(f for f in proto.functions)]:
        for node in graph.node:
            del node.metadata_props[:]
            node.doc_string = ""


def onnx_session(path: str | Path, threads: int = 0):
    """A CPU ONNX Runtime session (``threads`` intra-op threads; 0 = ORT default)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_onnx(session, x: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """Logits of ``x`` (float32, any leading batch) through ``session``, in batches."""
    name = session.get_inputs()[0].name
    outs = [session.run(None, {name: np.ascontiguousarray(x[i:i + batch_size], dtype=np.float32)})[0]
            for i in range(0, len(x), batch_size)]
    return np.concatenate(outs) if outs else np.zeros((0, session.get_outputs()[0].shape[-1]), np.float32)

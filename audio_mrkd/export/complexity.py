"""DCASE complexity: parameters and MACs counted with torchinfo, memory at each precision, the DCASE'22–'25 limits.

The counter is ``torchinfo.summary(model, input_size=(1, C, F, T), mode="eval")``: ``total_params`` and
``total_mult_adds`` for one clip at the configured front-end, on the bare network (the folded input normalisation
is 2·F constants of the front-end, not trained parameters, and adds no multiply-accumulates by torchinfo's count).

Limits (DCASE 2022–2025 Task 1): at most 128 kB of parameter memory — 128 · 1024 = 131,072 bytes, as the
DCASE'22 task text counts it (32,768 fp32 / 65,536 fp16 / 131,072 int8 parameters) — and at most 30 M MACs per
inference (30,000,000). Parameter memory depends on the precision the parameters are stored at: fp32 4 bytes,
fp16 2, int8 1.
"""
from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn

PARAM_LIMIT_BYTES = 128 * 1024
MAC_LIMIT = 30_000_000
BYTES_PER_PARAM = {"fp32": 4, "fp16": 2, "int8": 1}


def count(model: nn.Module, input_shape: tuple[int, ...] | list[int]) -> tuple[int, int]:
    """(parameters, MACs) of ``model`` for one item of ``input_shape`` (C×F×T), counted by torchinfo."""
    import torchinfo

    probe = copy.deepcopy(model).cpu().eval()  # torchinfo runs a forward pass: never touch the caller's model
    with torch.no_grad():
        stats = torchinfo.summary(probe, input_size=(1, *input_shape), verbose=0, mode="eval", device="cpu")
    return int(stats.total_params), int(stats.total_mult_adds)


def complexity_report(model: nn.Module, input_shape, onnx_files: dict[str, Path] | None = None,
                      stored_precision: str = "fp32", model_name: str | None = None,
                      int8_float_parameters: int = 0) -> dict:
    """The content of ``complexity.json`` (see the module docstring for the counter and the limits).
    ``int8_float_parameters``: weights the int8 model keeps in float (4 bytes each in its int8 figure)."""
    params, macs = count(model, input_shape)
    memory = {p: params * b for p, b in BYTES_PER_PARAM.items()}
    memory["int8"] += int8_float_parameters * (BYTES_PER_PARAM["fp32"] - BYTES_PER_PARAM["int8"])
    files = {name: Path(path).stat().st_size for name, path in (onnx_files or {}).items() if Path(path).is_file()}
    per_precision = {p: {"param_bytes": memory[p], "params_ok": memory[p] <= PARAM_LIMIT_BYTES,
                         "pass": memory[p] <= PARAM_LIMIT_BYTES and macs <= MAC_LIMIT} for p in BYTES_PER_PARAM}
    return {
        "model": model_name,
        "counter": f"torchinfo {_version('torchinfo')}: summary(model, input_size={[1, *input_shape]}, "
                   f"mode='eval') -> total_params, total_mult_adds",
        "input_shape": [1, *input_shape],
        "parameters": params,
        "macs": macs,
        "param_bytes": memory,
        "int8_float_parameters": int8_float_parameters,
        "onnx_file_bytes": files,
        "limits": {"source": "DCASE 2022-2025 Task 1", "param_bytes": PARAM_LIMIT_BYTES, "macs": MAC_LIMIT},
        "macs_ok": macs <= MAC_LIMIT,
        "by_precision": per_precision,
        "stored_precision": stored_precision,
        "pass": per_precision[stored_precision]["pass"],
    }


def _version(package: str) -> str | None:
    import importlib.metadata

    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover
        return None

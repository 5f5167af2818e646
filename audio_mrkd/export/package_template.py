"""DCASE 2025 Task 1 submission module (slot file) — written into the package by ``audio-mrkd package``.

Imports only torch, torchaudio, soundfile and numpy: the network and its front-end are a ``torch.export`` program
(``network.pt2``), the weights fp16 state dicts (``general.pt``, ``device_<id>.pt``), the settings
``config.json``, all in this slot's resource folder. The four functions are the DCASE'25 inference template's.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio

RESOURCES = Path(__file__).resolve().parent / "resources" / Path(__file__).stem


def _config(folder: Path) -> dict:
    return json.loads((folder / "config.json").read_text())


def _network(folder: Path, name: str) -> torch.nn.Module:
    net = torch.export.load(folder / "network.pt2").module()
    state = torch.load(folder / name, map_location="cpu", weights_only=True)
    weights = net.state_dict()  # the front-end's constants (window, mel filterbank) stay as traced
    for key, value in state.items():
        if key not in weights:
            raise KeyError(f"{folder / name}: weight {key!r} does not belong to network.pt2")
        weights[key] = value.float()  # stored fp16, computed in fp32
    net.load_state_dict(weights)
    return net


def load_model(model_file_path: str | None = None) -> dict:
    """The general model and one model per device seen in training: ``{"general", "devices", "config"}``.
    ``model_file_path``: another folder of the same layout (default: this slot's resources)."""
    folder = Path(model_file_path) if model_file_path else RESOURCES
    config = _config(folder)
    return {"general": _network(folder, "general.pt"), "config": config,
            "devices": {d: _network(folder, f"device_{d}.pt") for d in config["devices"]}}


def _waveform(path: str, sample_rate: int, clip_seconds: float) -> torch.Tensor:
    """Decode (soundfile), average the channels, resample (torchaudio's sinc filter), cut / zero-pad to the clip."""
    data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    mono = torch.from_numpy(np.ascontiguousarray(data.mean(axis=1)))[: math.ceil(clip_seconds * rate) + 64]
    if rate != sample_rate:
        mono = torchaudio.functional.resample(mono, rate, sample_rate)
    n = int(round(sample_rate * clip_seconds))
    out = torch.zeros(n)
    out[: min(n, mono.numel())] = mono[:n]
    return out


def load_inputs(file_paths: list[str], device_ids: list[str], model: dict) -> tuple[torch.Tensor, list[str]]:
    """The clips as a B×samples waveform batch at the model's rate and length, and their device ids."""
    config = model["config"]
    waves = [_waveform(p, config["sample_rate"], config["clip_seconds"]) for p in file_paths]
    return torch.stack(waves), [str(d) for d in device_ids]


def get_model_for_device(model: dict, device_id: str) -> torch.nn.Module:
    """The model fine-tuned for ``device_id``; the general model for an unseen or ``unknown`` device."""
    return model["devices"].get(str(device_id), model["general"])


def predict(file_paths: list[str], device_ids: list[str], model_file_path: str | None = None,
            use_cuda: bool = False) -> tuple[list[torch.Tensor], list[str]]:
    """Per-file logits (each a tensor of C values, in the class order returned second)."""
    model = load_model(model_file_path)
    torch_device = torch.device("cuda" if use_cuda and torch.cuda.is_available() else "cpu")
    waves, ids = load_inputs(file_paths, device_ids, model)
    logits = []
    with torch.inference_mode():
        for wave, device_id in zip(waves, ids):
            net = get_model_for_device(model, device_id).to(torch_device)
            logits.append(net(wave[None].to(torch_device))[0].float().cpu())
    return logits, list(model["config"]["class_names"])

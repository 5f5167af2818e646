"""DCASE 2025 Task 1 submission module (slot file) — written into the package by ``audio-mrkd package``.

Imports only torch, torchaudio, soundfile, numpy and the package's ``networks`` (the model's own source file, copied
at build time): the log-mel front-end is a ``torch.export`` program (``frontend.pt2``), each model's weights an fp16
state dict (``general.pt``, ``device_<id>.pt``), the settings ``config.json`` — in this slot's resource folder. The four functions are the
DCASE'25 inference template's: ``load_inputs`` gives one fp16 log-mel tensor (1×1×F×T) per file and
``get_model_for_device`` the fp16 network that takes it, so the template's complexity check counts the network a
device uses.
"""
from __future__ import annotations

import importlib
import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import soundfile as sf
import torch
import torchaudio

RESOURCES = Path(__file__).resolve().parent / "resources" / Path(__file__).stem


class _Network(torch.nn.Module):
    """Per-mel-bin normalisation with the run's statistics, then the network (the state dict's layout)."""

    def __init__(self, net: torch.nn.Module, n_mels: int, normalized: bool):
        super().__init__()
        self.net = net
        self.normalized = normalized
        if normalized:
            self.normalize = torch.nn.Module()
            self.normalize.register_buffer("mean", torch.zeros(1, 1, n_mels, 1))
            self.normalize.register_buffer("inv_std", torch.ones(1, 1, n_mels, 1))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if self.normalized:
            features = (features - self.normalize.mean) * self.normalize.inv_std
        return self.net(features)


def _network(folder: Path, name: str, config: dict) -> torch.nn.Module:
    """The model's network (built from the package's copy of its source) with the fp16 weights of ``name``."""
    spec = config["model"]
    module = importlib.import_module(f"{__package__}.networks.{spec['module']}")
    net = getattr(module, spec["constructor"])(len(config["class_names"]), spec["in_channels"], **spec["options"])
    model = _Network(net, config["features"]["n_mels"], spec["normalized"])
    model.load_state_dict(torch.load(folder / name, map_location="cpu", weights_only=True))
    return model.half().eval()  # stored and run at fp16, as the complexity limits count parameters


class Submission(torch.nn.Module):
    """The general model, one model per device seen in training, and the front-end."""

    def __init__(self, folder: Path):
        super().__init__()
        settings = json.loads((folder / "config.json").read_text())
        self.config = SimpleNamespace(**settings)
        self.frontend = torch.export.load(folder / "frontend.pt2").module()
        self.general = _network(folder, "general.pt", settings)
        self.devices = torch.nn.ModuleDict({d: _network(folder, f"device_{d}.pt", settings)
                                            for d in settings["devices"]})

    def model_for(self, device_id: str) -> torch.nn.Module:
        return self.devices[device_id] if device_id in self.devices else self.general

    def forward(self, inputs: list[torch.Tensor], device_ids: list[str]) -> torch.Tensor:
        return torch.cat([self.model_for(str(d))(x) for x, d in zip(inputs, device_ids)])


def load_model(model_file_path: str | None = None) -> Submission:
    """``model_file_path``: another folder of this slot's layout (default: the packaged one)."""
    return Submission(Path(model_file_path) if model_file_path else RESOURCES)


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


def load_inputs(file_paths: list[str], device_ids: list[str], model: Submission) -> list[torch.Tensor]:
    """One fp16 log-mel tensor (1×1×F×T) per file, in the order of ``file_paths``."""
    config = model.config
    inputs = []
    with torch.inference_mode():
        for path in file_paths:
            wave = _waveform(path, config.sample_rate, config.clip_seconds)[None]
            inputs.append(model.frontend(wave).unsqueeze(1).half())
    return inputs


def get_model_for_device(model: Submission, device_id: str) -> torch.nn.Module:
    """The network fine-tuned for ``device_id``; the general one for an unseen or ``unknown`` device."""
    return model.model_for(str(device_id))


def predict(file_paths: list[str], device_ids: list[str], model_file_path: str | None = None,
            use_cuda: bool = True) -> tuple[list[torch.Tensor], list[str]]:
    """Per-file logits (each a tensor of C values, in the class order returned second)."""
    model = load_model(model_file_path)
    inputs = load_inputs(file_paths, device_ids, model)
    torch_device = torch.device("cuda" if use_cuda and torch.cuda.is_available() else "cpu")
    model.to(torch_device)
    logits = []
    with torch.inference_mode():
        for x, device_id in zip(inputs, device_ids):
            logits.append(get_model_for_device(model, device_id)(x.to(torch_device))[0].float().cpu())
    return logits, list(model.config.class_names)

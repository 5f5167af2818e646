"""Checkpoints (tensors and plain containers only, loadable with ``weights_only=True``) and run-dir loading."""
from __future__ import annotations

import json
from pathlib import Path

import torch
import yaml

from audio_mrkd import fileio
from audio_mrkd.errors import InputError
from audio_mrkd.experiment import ExperimentConfig, experiment_from_dict
from audio_mrkd.models import build_model

CHECKPOINTS = ("last", "best")


def checkpoint_path(run_dir: str | Path, which: str = "last") -> Path:
    if which not in CHECKPOINTS:
        raise InputError(f"checkpoint '{which}': expected one of {', '.join(CHECKPOINTS)}")
    return Path(run_dir) / "checkpoints" / f"{which}.pt"


def save_checkpoint(state: dict, path: Path) -> None:
    """Atomic ``torch.save`` (temporary name, then rename)."""
    with fileio.atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """``torch.load(weights_only=True)``: tensors and plain containers only, never arbitrary pickles."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: checkpoint not found")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # unpickling refusal or a corrupt file
        raise InputError(f"{path}: not a loadable checkpoint ({str(exc).splitlines()[0]})") from None


def read_run_config(run_dir: str | Path) -> ExperimentConfig:
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise InputError(f"{run_dir}: not a run directory (no config.yaml)")
    return experiment_from_dict(yaml.safe_load(path.read_text()))


def read_data_info(run_dir: str | Path) -> dict:
    path = Path(run_dir) / "data.json"
    if not path.is_file():
        raise InputError(f"{run_dir}: not a run directory (no data.json)")
    return json.loads(path.read_text())


def load_run_model(run_dir: str | Path, which: str = "best") -> tuple[torch.nn.Module, dict, ExperimentConfig]:
    """The trained student of a run (eval mode, CPU), its data description (data.json) and its config."""
    cfg = read_run_config(run_dir)
    info = read_data_info(run_dir)
    model = build_model(cfg.model.name, n_classes=len(info["class_names"]), in_channels=info["input_shape"][0],
                        **cfg.model.options)
    state = load_checkpoint(checkpoint_path(run_dir, which))
    model.load_state_dict(state["model"])
    return model.eval(), info, cfg

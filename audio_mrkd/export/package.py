"""``audio-mrkd package RUN_DIR [--finetuned DIR] --label Surname_ORG_task1 --out DIR``: a DCASE 2025 Task 1
submission as an installable Python package.

Layout (the DCASE'25 inference template's)::

    DIR/<Label>/pyproject.toml
    DIR/<Label>/complexity.json                     per model: parameters, MACs, fp16 memory, pass / fail
    DIR/<Label>/<Label>/__init__.py
    DIR/<Label>/<Label>/<Label>_<slot>.py           load_model, load_inputs, get_model_for_device, predict
    DIR/<Label>/<Label>/resources/dummy.wav         a clip for the template's complexity check
    DIR/<Label>/<Label>/networks/                   the model's source file, copied (real layers: the
                                                    template counts MACs with torchinfo on them)
    DIR/<Label>/<Label>/resources/<Label>_<slot>/   frontend.pt2 (a torch.export program of the log-mel
                                                    front-end), general.pt,
                                                    device_<id>.pt (fp16 state dicts), config.json,
                                                    onnx/<model>.onnx (log-mel input, for inspection)

The slot module (:mod:`audio_mrkd.export.package_template`) imports only torch, torchaudio, soundfile, numpy and
the package's own ``networks`` (the model's source file, copied, its imports pointed at a small local helper).
Every model must be within the DCASE limits at fp16 (128 kB of parameters, 30 M MACs per clip), else the build
is refused unless ``--allow-over-limits``.
"""
from __future__ import annotations

import inspect
import re
import shutil
from pathlib import Path

import torch

from audio_mrkd import fileio
from audio_mrkd.data.frontend import LogMel
from audio_mrkd.errors import InputError
from audio_mrkd.export.complexity import complexity_report
from audio_mrkd.export.onnx import FEATURES_INPUT, FeatureModel, export_onnx
from audio_mrkd.models import model_constructor
from audio_mrkd.progress import progress
from audio_mrkd.runs.run import Finetuned, Run
from audio_mrkd.versions import versions

LABEL = re.compile(r"^[A-Za-z][A-Za-z0-9]*_[A-Za-z0-9]+_task1$")
TEMPLATE = Path(__file__).with_name("package_template.py")


def _models(run_dir: Path, finetuned: Path | None, checkpoint: str) -> dict[str, tuple]:
    """``{"general": (network, data info, config), "device_<id>": …}`` from the run and its fine-tuned device
    runs."""
    general = Run(run_dir)
    net = general.model(checkpoint)
    info, cfg = general.info, general.config
    models = {"general": (net, info, cfg)}
    if finetuned is not None:
        for device, device_run in Finetuned(finetuned).report()["device_runs"].items():
            folder = Run(device_run)
            d_net = folder.model(checkpoint)
            d_info, d_cfg = folder.info, folder.config
            if d_info.class_names != info.class_names or d_cfg.model != cfg.model:
                raise InputError(f"{device_run}: another model or class list than {run_dir}")
            models[f"device_{device}"] = (d_net, d_info, d_cfg)
    return models


def _complexity(models: dict, input_shape: list[int], allow_over_limits: bool) -> dict:
    report = {name: complexity_report(net, input_shape, stored_precision="fp16", model_name=cfg.model.name)
              for name, (net, _, cfg) in models.items()}
    over = [name for name, r in report.items() if not r["pass"]]
    if over and not allow_over_limits:
        r = report[over[0]]
        raise InputError(f"{over[0]}: {r['param_bytes']['fp16']} bytes of fp16 parameters and {r['macs']} MACs "
                         f"exceed the DCASE limits (131072 bytes, 30000000 MACs); --allow-over-limits to build anyway")
    return report


def build_package(run_dir: str | Path, label: str, out: str | Path, finetuned: str | Path | None = None,
                  slot: int = 1, checkpoint: str = "last", allow_over_limits: bool = False, log=print) -> Path:
    """Build ``<out>/<label>`` (see the module docstring) → its path."""
    if not LABEL.match(label):
        raise InputError(f"--label {label!r}: expected Surname_ORG_task1 (letters and digits, e.g. Schmid_CPJKU_task1)")
    if slot not in (1, 2, 3, 4):
        raise InputError(f"--slot {slot}: a submission has slots 1 to 4")
    run_dir = Path(run_dir)
    models = _models(run_dir, Path(finetuned) if finetuned else None, checkpoint)
    info = models["general"][1]
    frontend = Run(run_dir).frontend()
    complexity = _complexity(models, [1, *frontend.shape], allow_over_limits)
    module = f"{label}_{slot}"
    with fileio.building_dir(Path(out) / label) as tmp:
        resources = tmp / label / "resources" / module
        (resources / "onnx").mkdir(parents=True)
        (tmp / label / "__init__.py").write_text(f'"""DCASE 2025 Task 1 submission {label} (audio-mrkd)."""\n')
        (tmp / label / "resources" / "__init__.py").write_text("")
        _dummy_clip(tmp / label / "resources" / "dummy.wav", frontend)
        shutil.copyfile(TEMPLATE, tmp / label / f"{module}.py")
        (tmp / "pyproject.toml").write_text(_pyproject(label))
        fileio.write_json(tmp / "complexity.json", complexity)
        _write_models(resources, models, frontend, log)
        _copy_network_source(tmp / label / "networks", models["general"][2].model.name)
        fileio.write_json(resources / "config.json", {
            "label": label, "slot": slot, "class_names": list(info.class_names),
            "devices": [name.removeprefix("device_") for name in models if name != "general"],
            "train_device_ids": [name.removeprefix("device_") for name in models if name != "general"],
            "sample_rate": frontend.sample_rate, "clip_seconds": frontend.clip_seconds,
            "features": info.features, "general_run": str(run_dir), "checkpoint": checkpoint,
            "model": {"module": model_module(models["general"][2].model.name),
                      "constructor": models["general"][2].model.name, "options": models["general"][2].model.options,
                      "in_channels": info.input_shape[0], "normalized": info.normalized},
            "built_with": versions()})
    log(f"package: {Path(out) / label} ({len(models)} models: {', '.join(models)}); install with "
        f"`pip install {Path(out) / label}`, then `import {label}.{module}`")
    return Path(out) / label


def _write_models(resources: Path, models: dict, frontend, log) -> None:
    """frontend.pt2 (a torch.export program of the log-mel front-end), one fp16 state dict and one ONNX file per
    model."""
    batch = torch.export.Dim("batch", max=65536)
    features_example = torch.zeros(2, 1, *frontend.shape)
    for name, (net, info, _) in progress(models.items(), desc="package", unit="model"):
        features = FeatureModel(net, info.norm_mean, info.norm_std).eval()
        if name == "general":  # the front-end as a program: the package needs none of its source
            wave = torch.zeros(2, frontend.n_samples)
            torch.export.save(torch.export.export(LogMel(frontend).eval(), (wave,), dynamic_shapes=({0: batch},)),
                              resources / "frontend.pt2")
        torch.save({k: v.half() for k, v in features.state_dict().items()}, resources / f"{name}.pt")
        export_onnx(features, features_example, resources / "onnx" / f"{name}.onnx", FEATURES_INPUT,
                    {"model": name})


NETWORK_HELPERS = '''"""The network definition of audio-mrkd, copied at build time, and the helpers it imports (the options were
checked when the model was trained)."""


class InputError(ValueError):
    pass


def register_model(name):
    return lambda constructor: constructor


def check_int(key, value, minimum=1):
    return value


def check_float(key, value, low=0.0, high=float("inf")):
    return float(value)


def check_dropout(key, value):
    return float(value)
'''


def model_module(name: str) -> str:
    """The module of audio_mrkd.models that defines the registered model ``name``."""
    return Path(inspect.getsourcefile(model_constructor(name))).stem


def _copy_network_source(folder: Path, name: str) -> None:
    """The model's own source file (the one definition, not a rewrite), its two imports pointed at a local helper
    module, so that the package builds the network with real layers (what the template's torchinfo count reads)."""
    source = Path(inspect.getsourcefile(model_constructor(name))).read_text()
    source = source.replace("from audio_mrkd.errors import InputError", "from . import InputError")
    source = source.replace("from audio_mrkd.models import ", "from . import ")
    if "audio_mrkd" in source:
        raise InputError(f"model {name!r}: its source imports more of audio_mrkd than a package can carry")
    folder.mkdir(parents=True)
    (folder / "__init__.py").write_text(NETWORK_HELPERS)
    (folder / f"{model_module(name)}.py").write_text(source)


def _dummy_clip(path: Path, frontend) -> None:
    """One clip of low noise at the front-end's rate and length (the template's complexity check reads it)."""
    import numpy as np
    import soundfile as sf
    noise = 0.01 * np.random.default_rng(0).standard_normal(frontend.n_samples).astype(np.float32)
    sf.write(path, noise, frontend.sample_rate, subtype="PCM_16")


def _pyproject(label: str) -> str:
    return f"""[build-system]
requires = ["setuptools>=61"]
build-backend = "setuptools.build_meta"

[project]
name = "{label}"
version = "1.0.0"
description = "DCASE 2025 Task 1 submission {label} (built with audio-mrkd)"
requires-python = ">=3.10"
dependencies = ["torch", "torchaudio", "soundfile", "numpy"]

[tool.setuptools]
packages = ["{label}", "{label}.resources", "{label}.networks"]

[tool.setuptools.package-data]
"{label}" = ["resources/*.wav", "resources/*/*", "resources/*/onnx/*"]
"""

"""The checkpoint format: tensors and plain containers only, loadable with ``weights_only=True``, written atomically.
Where a run keeps its checkpoints is :class:`audio_mrkd.runs.run.Run`'s to say."""
from __future__ import annotations

from pathlib import Path

import torch

from audio_mrkd import faults, fileio
from audio_mrkd.errors import InputError

#: What every training checkpoint holds (Trainer._state); a file without them is some other torch file.
TRAINING_KEYS = ("model", "optimizer", "scheduler", "epoch", "global_step", "rng", "loader", "history")


def save_checkpoint(state: dict, path: Path) -> None:
    """Atomic ``torch.save`` (temporary name, fsync, rename): a failed write (a full disk) leaves the previous
    checkpoint as it was and raises one OSError line."""
    try:
        with fileio.atomic_path(path) as tmp:
            torch.save(state, tmp)
            faults.point("checkpoint")
    except (OSError, RuntimeError) as exc:  # torch's zip writer reports a failed write as a RuntimeError
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise OSError(f"{path}: could not be written ({reason}); the previous checkpoint is kept") from None


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """``torch.load(weights_only=True)``: tensors and plain containers only, never arbitrary pickles."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: checkpoint not found")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # unpickling refusal or a corrupt file
        raise InputError(f"{path}: not a loadable checkpoint ({str(exc).splitlines()[0]})") from None


def check_training_state(state, path: str | Path) -> dict:
    """``state`` is a checkpoint written by this product's trainer (else one line naming the file)."""
    if not isinstance(state, dict) or not isinstance(state.get("model"), dict):
        found = ", ".join(map(str, list(state)[:6])) if isinstance(state, dict) else type(state).__name__
        raise InputError(f"{path}: not a checkpoint of audio-mrkd (no 'model' weights; holds {found or 'nothing'})")
    missing = [key for key in TRAINING_KEYS if key not in state]
    if missing:
        raise InputError(f"{path}: not a training checkpoint of audio-mrkd (missing {', '.join(missing)}); "
                         f"it cannot be resumed")
    return state


def load_model_weights(model: torch.nn.Module, weights: dict, path: str | Path, model_name: str) -> None:
    """``model.load_state_dict(weights)`` with the names and shapes checked first (one line naming the file)."""
    mine = model.state_dict()
    missing = [k for k in mine if k not in weights]
    unexpected = [k for k in weights if k not in mine]
    wrong = [k for k in mine if k in weights and hasattr(weights[k], "shape")
             and tuple(weights[k].shape) != tuple(mine[k].shape)]
    if missing or unexpected or wrong:
        what = (f"tensor {wrong[0]} is {tuple(weights[wrong[0]].shape)}, the model's is {tuple(mine[wrong[0]].shape)}"
                if wrong else f"{len(missing)} weights missing, {len(unexpected)} unknown "
                              f"(e.g. {(missing or unexpected)[0]})")
        raise InputError(f"{path}: the weights do not fit the run's model {model_name!r} ({what}); "
                         f"the checkpoint belongs to another model or run")
    model.load_state_dict(weights)


def model_state(path: str | Path) -> dict:
    """The network weights of a checkpoint (one line if the file holds none)."""
    state = load_checkpoint(path)
    if not isinstance(state, dict) or not isinstance(state.get("model"), dict):
        check_training_state(state, path)
    return state["model"]

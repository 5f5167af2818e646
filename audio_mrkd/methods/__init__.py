"""Training methods by name (``method:`` in an experiment config). Adding one: a module with a
:class:`~audio_mrkd.methods.base.Method` subclass, and a line here."""
from __future__ import annotations

from audio_mrkd.methods.base import Method, TrainContext
from audio_mrkd.methods.ce import CrossEntropy
from audio_mrkd.methods.dlb import LastBatchDistillation
from audio_mrkd.methods.ema import MeanTeacher
from audio_mrkd.methods.kd import TeacherDistillation
from audio_mrkd.methods.mrkd import MemoryReplay
from audio_mrkd.methods.pskd import ProgressiveSelfKD

METHODS: dict[str, type[Method]] = {
    "ce": CrossEntropy,
    "mrkd": MemoryReplay,
    "pskd": ProgressiveSelfKD,
    "dlb": LastBatchDistillation,
    "ema": MeanTeacher,
    "kd": TeacherDistillation,
}


def build_method(cfg, ctx: TrainContext) -> Method:
    """The method ``cfg.method`` names (validated with the config), for one run."""
    return METHODS[cfg.method](cfg, ctx)

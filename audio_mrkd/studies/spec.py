"""An ablation spec (``configs/ablations/*.yaml``): the recipe, the variants, folds, seeds, the reference and the
teachers trained in every fold (see :mod:`audio_mrkd.studies.ablation` for the whole format)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from audio_mrkd import config_io
from audio_mrkd.errors import InputError

TEACHERS = "@teachers"  # in a variant's overrides: the run directories of its fold's teachers


@dataclass
class TeacherSpec:
    """Teacher runs trained in every fold before the variants (checkpoints kept): one per seed."""

    config: str
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    overrides: list[str] = field(default_factory=list)


@dataclass
class AblationSpec:
    config: str
    variants: dict[str, list[str]]
    folds: int = 5
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    reference: str = "ce"
    overrides: list[str] = field(default_factory=list)   # applied to every variant (e.g. train.epochs=30)
    teachers: TeacherSpec | None = None

    def validate(self) -> None:
        if self.reference not in self.variants:
            raise InputError(f"reference: '{self.reference}' is not one of the variants")
        for variant, overrides in self.variants.items():
            if any(TEACHERS in o for o in overrides) and self.teachers is None:
                raise InputError(f"variants.{variant}: uses {TEACHERS} but the spec has no 'teachers' section")
        if self.teachers is not None and "teacher" in self.variants:
            raise InputError("variants.teacher: the name is taken by the teacher runs")
        if self.folds == 1 or self.folds < 0:
            raise InputError(f"folds: 0 (no cross-validation: the config's own evaluated split) or at least 2, "
                             f"got {self.folds}")


def load_spec(path: str | Path, overrides: list[str] | None = None) -> tuple[AblationSpec, Path]:
    spec = config_io.load(AblationSpec, path, overrides)
    config = Path(path).parent / spec.config
    if not config.is_file():
        raise InputError(f"{path}: config '{spec.config}' not found ({config})")
    if spec.teachers is not None:
        teacher_config = Path(path).parent / spec.teachers.config
        if not teacher_config.is_file():
            raise InputError(f"{path}: teachers.config '{spec.teachers.config}' not found ({teacher_config})")
        spec.teachers.config = str(teacher_config)
    return spec, config


def keep_variants(spec: AblationSpec, only: list[str], spec_path: str | Path) -> None:
    """Only the variants ``only`` (and the reference) of ``spec``; one line for a name the spec does not have."""
    unknown = [name for name in only if name not in spec.variants]
    if unknown:
        raise InputError(f"--variants: '{unknown[0]}' is not a variant of {spec_path} ({', '.join(spec.variants)})")
    spec.variants = {name: o for name, o in spec.variants.items() if name in only or name == spec.reference}

"""The config schema: every key a training run reads, with its default and meaning — the sections every run has
(``data``, ``model``, ``augment``, ``train``, the shared ``teacher``).

Each training method declares its own section, named after it (``mrkd:``, ``pskd:``, …), and a dataset kind is a
name in the dataset registry: :mod:`audio_mrkd.config_loader` reads a config against both registries — this module
knows no method and no dataset. The YAML machinery is :mod:`audio_mrkd.config_io`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping

from audio_mrkd import config_io
from audio_mrkd.config_io import setting
from audio_mrkd.errors import InputError
from audio_mrkd.paths import MANIFEST_DIR

@dataclass
class DataConfig:
    """What to train on. ``kind``: a name in the dataset registry (``audio`` reads a prepared dataset, ``name``;
    image kinds read ``root``)."""

    kind: str = "audio"
    name: str | None = None               # prepared audio dataset (data_manifests/<name>)
    root: str | None = None               # image dataset folder (official on-disk format)
    manifest_dir: str = MANIFEST_DIR
    train_split: str = "train"
    eval_split: str = "evaluate"          # the split evaluated every epoch (reported, never tuned on)
    normalize: bool = True                # per-mel-bin (audio) / per-channel (images) train mean/std
    resident: bool = True                 # hold the split on the training device (RAM or GPU)
    cv_folds: int = setting(0, at_least=0)  # >0: recording-grouped k-fold CV over train ∪ eval split (by identifier)
    cv_fold: int = 0                      # which fold is evaluated when cv_folds > 0
    cv_pool: Literal["train", "all"] = "train"                # items pooled for CV: "train" (never touches the evaluated split) | "all"
    coarse_labels: bool = False           # CIFAR-100: the 20 superclasses
    holdout: int = 0                      # images: hold back this many training items as the evaluated split
    final_test: bool = False              # images: after the last epoch, score the last and best model once on the
                                          # official test split (metrics.json "test"); never used to choose
    train_limit: int = 0                  # >0: train on a class-stratified subset of this many items (CPU budgets)
    train_devices: list[str] = field(default_factory=list)  # audio: train only on clips of these recording devices
    synthetic_items: int = 256            # kind: synthetic (tests and benchmarks): items per split

    def validate(self) -> None:
        if self.cv_folds and not 0 <= self.cv_fold < self.cv_folds:
            raise InputError(f"data.cv_fold: {self.cv_fold} not in 0..{self.cv_folds - 1}")

    def check_against(self, datasets: Mapping[str, Any]) -> None:
        """The kind is registered (``datasets``: the dataset registry), and what it needs is given."""
        if self.kind not in datasets:
            raise InputError(f"data.kind: {self.kind!r} is not one of {', '.join(map(repr, datasets))}")
        kind = datasets[self.kind]
        if kind.source_key == "name" and not self.name:
            raise InputError(f"data.name: required for {self.kind} (the --name given to `audio-mrkd prepare`)")
        if kind.source_key == "root" and not self.root:
            raise InputError(f"data.root: required for data.kind {self.kind}")
        if self.final_test and not kind.official_test:
            raise InputError(f"data.final_test: only image data sets have an official test split apart from the "
                             f"evaluated one (data.kind is {self.kind})")
        if self.final_test and kind.final_test_is_evaluated(self):
            raise InputError("data.final_test: the evaluated split is already the official test split (use "
                             "data.holdout=N to select on held-back training images)")


@dataclass
class ModelConfig:
    name: str = "cp_mobile"
    options: dict = field(default_factory=dict)   # constructor keyword arguments (width, depth, …)


@dataclass
class AugmentConfig:
    """Batch augmentations on the training device; each is off at 0 / false."""

    roll: float = 0.0              # audio: random circular time shift, max fraction of the frames
    freq_mask: int = 0             # audio: SpecAugment frequency mask, max width in bins
    time_mask: int = 0             # audio: SpecAugment time mask, max width in frames
    mixstyle_p: float = 0.0        # Freq-MixStyle probability per batch (DCASE'24 baseline: 0.4)
    mixstyle_alpha: float = 0.3    # Beta(α, α) mixing of per-frequency statistics
    mixup_alpha: float = 0.0       # mixup Beta(α, α); 0 = off
    crop_padding: int = 0          # images: random crop after zero-padding this many pixels (CIFAR: 4)
    hflip: bool = False            # images: random horizontal flip


@dataclass
class TrainConfig:
    epochs: int = setting(10, at_least=1)
    batch_size: int = setting(256, at_least=1)
    optimizer: Literal["adamw", "sgd"] = "adamw"
    lr: float = setting(5e-3, above=0)
    weight_decay: float = 1e-4
    momentum: float = 0.9          # sgd
    nesterov: bool = True          # sgd
    schedule: Literal["cosine", "multistep", "constant"] = "cosine"   # cosine: after a linear warm-up
    warmup_epochs: float = 0.0
    # >0: the warm-up in optimiser steps instead (the DCASE'25 fine-tuning: 200)
    warmup_steps: int = setting(0, at_least=0)
    milestones: list[int] = field(default_factory=list)   # multistep: epochs (or % of the run) where lr *= gamma
    milestone_unit: Literal["epoch", "percent"] = "epoch"   # percent: milestones scale with train.epochs ([50, 75])
    gamma: float = 0.1
    # of the cross-entropy to the labels, in every method (ce + 0.1: a baseline)
    label_smoothing: float = setting(0.0, at_least=0, below=1)
    best_metric: Literal["accuracy", "macro_accuracy"] = "macro_accuracy"   # picks the best epoch
    out_dir: str | None = None     # default runs/<experiment name>
    init_from: str = ""            # start from these weights: a run directory (its best checkpoint) or a .pt file
    run_name: str = ""             # a fixed run directory name (<out_dir>/<run_name>[-seed<s>]) instead of a time
                                   # stamp; a run of that name with a `last` checkpoint is resumed (elastic restarts)
    log_every: int = setting(10, at_least=1)   # steps between TensorBoard scalar writes
    eval_every: int = setting(1, at_least=1)   # evaluate every N epochs (and always after the last one)
    device: Literal["auto", "cpu", "cuda"] = "auto"   # the torch device; auto: CUDA if present
    # processes per node (Lightning Fabric's `devices`: one GPU each, or CPU processes with gloo); >1 = data parallel.
    # A process count, not a torch device and not a DCASE recording device.
    devices: int = setting(1, at_least=1)
    num_nodes: int = setting(1, at_least=1)   # machines (launch with torchrun or the Fabric CLI on each)
    precision: Literal["auto", "32", "64", "bf16-mixed", "16-mixed"] = "auto"  # auto: bf16-mixed on CUDA, 32 on CPU
    channels_last: bool = True     # NHWC activations (measured faster on CUDA and on the CPU)
    compile: bool = False          # CUDA only: torch.compile the student
    compile_mode: Literal["default", "reduce-overhead", "max-autotune"] = "default"   # reduce-overhead: CUDA graphs
    # the whole step as one CUDA graph. Off by default until it is measured on a GPU (README, "Fast training on a
    # GPU"); true: on (on a CPU the same static-buffer step runs uncaptured, as the tests compare); auto: on CUDA only
    step_graph: bool | Literal["auto"] = False
    cudnn_benchmark: bool = True   # CUDA only: let cuDNN time its convolution algorithms for the fixed shapes
    threads: int = 0               # CPU threads (0 = torch default)
    save_checkpoints: bool = True
    # also save `last` every N optimiser steps inside an epoch (0: at epoch ends only)
    checkpoint_every: int = setting(0, at_least=0)
    progress: bool = True

    def validate(self) -> None:
        if self.milestone_unit == "percent" and not all(0 < m < 100 for m in self.milestones):
            raise InputError(f"train.milestones: {self.milestones} are not percentages of the run strictly between "
                             f"0 and 100 (train.milestone_unit: percent)")


#: The group of the ``teacher`` keys that weight the student's KD term toward the teacher (the rest name the source).
TERM = "term"


@dataclass
class TeacherConfig:
    """The ``teacher.*`` keys: a teacher stronger than the student and the KD term toward it — the one home of both,
    read by every method that uses a teacher (``kd``; ``mrkd`` when one is given).

    The source. runs / logits: one of the two — finished runs of this product on the same prepared dataset, or a
    teacher-logits CSV file a user brings. checkpoint: which checkpoint of a teacher run ("last" | "best"; "best"
    is the epoch chosen on the teacher's evaluated split, which leaks that split into a student scored on it: a
    warning says so, for a file as the origin ``audio-mrkd teacher-logits`` writes beside it says). input: "cached"
    (each teacher's logits on every un-augmented train item, computed once) | "same" (the teachers run on the
    student's augmented batch every step).

    The term (read by ``kd``, and by ``mrkd`` with ``mrkd.with_teacher: term``; with ``ensembler`` the teacher's
    logits join MrKD's own ensembler and MrKD's settings weight them, so giving these is an error). The student's
    loss is (1 − alpha)·base + alpha·tau²·KL(softmax(z_t/tau) ‖ softmax(z_s/tau)), base the CE to the labels (kd) or
    MrKD's loss (mrkd); ka: Knowledge Adjustment of the teacher signal (off: Hinton's KD). ensemble: several teachers
    combined by their "mean" or by a learned "fcn" ensembler (MrKD's, with its own Adam: fcn_hidden, fcn_lr, read only
    with fcn).
    """

    runs: list[str] = field(default_factory=list)
    logits: str = ""
    checkpoint: Literal["best", "last"] = "last"
    input: Literal["cached", "same"] = "cached"
    alpha: float = setting(0.5, at_least=0, at_most=1, group=TERM)
    tau: float = setting(3.0, above=0, group=TERM)
    ka: bool = setting(False, group=TERM)
    ensemble: Literal["mean", "fcn"] = setting("mean", group=TERM)
    fcn_hidden: int = setting(128, at_least=1, only_with=("ensemble", "fcn"), group=TERM)
    fcn_lr: float = setting(1e-3, above=0, only_with=("ensemble", "fcn"), group=TERM)

    @property
    def given(self) -> bool:
        """A teacher source is configured."""
        return bool(self.runs or self.logits)

    def validate(self) -> None:
        if self.runs and self.logits:
            raise InputError("teacher.runs and teacher.logits: give one teacher source, not both")
        if self.logits and self.input == "same":
            raise InputError("teacher.input: 'same' needs teacher runs (teacher.runs); a teacher-logits file "
                             "holds one row per clip (cached)")


@dataclass
class ExperimentConfig:
    name: str = "experiment"
    method: str = "ce"             # a name in the method registry (audio_mrkd.methods.METHODS)
    seed: int = 0
    seeds: list[int] = field(default_factory=list)   # several seeds: one run each + a mean ± std summary
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)   # a stronger teacher (methods that use one)
    # every registered method's own section by its name (``mrkd``, ``pskd``, …); written at the top level of a YAML
    methods: dict[str, Any] = field(default_factory=dict, metadata={config_io.INLINE: True})

    def options(self, method: str | None = None):
        """The settings of ``method`` (default: the configured one): its section, or None if it declares none."""
        return self.methods.get(method or self.method)

    @property
    def out_dir(self) -> Path:
        return Path(self.train.out_dir) if self.train.out_dir else Path("runs") / self.name

    @property
    def run_label(self) -> str:
        """What a run folder calls the training: the method, ``_ls`` added when the labels are smoothed (``ce_ls``:
        the label-smoothing baseline, not plain CE)."""
        return f"{self.method}_ls" if self.train.label_smoothing else self.method

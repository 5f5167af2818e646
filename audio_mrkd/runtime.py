"""Every device-dependent choice of a training run, decided once from the config: :class:`Runtime`.

The torch device (CUDA when present or asked for, else the CPU), the precision (and with it the dtype of the
inference-only forwards: teacher copies and the EMA teacher follow bf16 training on either device), and the
CUDA-only speed-ups (torch.compile, cuDNN autotuning, fused optimiser kernels, CUDA graphs) are resolved here; the
engine and the training methods read the result instead of asking ``torch.cuda`` themselves.
"""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import torch

from audio_mrkd.errors import InputError


def loss_precision(t: torch.Tensor) -> torch.Tensor:
    """``t`` in the precision losses, targets and mixing are computed in: float64 when it is float64
    (``train.precision=64``, the reference mode, so that nothing in its step is rounded to float32), else float32
    (never half precision)."""
    return t if t.dtype == torch.float64 else t.float()


@dataclass(frozen=True)
class Runtime:
    accelerator: str          # "cuda" | "cpu"
    precision: str            # Lightning Fabric's precision: "32-true", "bf16-mixed", "16-mixed"
    channels_last: bool       # NHWC activations (CUDA and CPU: faster on both, docs/benchmarks.md)
    compile: bool             # torch.compile the student and the per-step tensor work (CUDA only)
    compile_mode: str
    cudnn_benchmark: bool     # cuDNN times its algorithms for the fixed shapes (CUDA only)
    threads: int              # CPU threads (0 = torch's default)
    step_graph: bool = False  # the training step on static buffers (captured as one CUDA graph on CUDA)

    @classmethod
    def from_config(cls, tcfg) -> "Runtime":
        """``tcfg``: the ``train`` section of an experiment config."""
        if tcfg.device == "cuda" and not torch.cuda.is_available():
            raise InputError("train.device: 'cuda' requested but no CUDA device is available")
        cuda = torch.cuda.is_available() if tcfg.device == "auto" else tcfg.device == "cuda"
        precision = tcfg.precision if tcfg.precision != "auto" else ("bf16-mixed" if cuda else "32")
        step_graph = tcfg.step_graph is True or (tcfg.step_graph == "auto" and cuda)
        # a captured step holds the student's kernels itself: torch.compile must not add CUDA graphs of its own
        compile_mode = "default" if step_graph and tcfg.compile_mode == "reduce-overhead" else tcfg.compile_mode
        return cls(accelerator="cuda" if cuda else "cpu", precision={"32": "32-true", "64": "64-true"}.get(precision, precision),
                   channels_last=tcfg.channels_last, compile=cuda and tcfg.compile,
                   compile_mode=compile_mode, cudnn_benchmark=cuda and tcfg.cudnn_benchmark,
                   threads=0 if cuda else tcfg.threads, step_graph=step_graph)

    @classmethod
    def plain(cls, device: torch.device | str) -> "Runtime":
        """Float32 on ``device`` with none of the optional speed-ups (objects built outside a training run)."""
        return cls(accelerator=torch.device(device).type, precision="32-true", channels_last=False, compile=False,
                   compile_mode="default", cudnn_benchmark=False, threads=0)

    @property
    def cuda(self) -> bool:
        return self.accelerator == "cuda"

    @property
    def capture(self) -> bool:
        """Capture the static step as a CUDA graph (elsewhere it runs as the same function, uncaptured)."""
        return self.step_graph and self.cuda

    @property
    def input_dtype(self) -> torch.dtype:
        """The dtype of the batches the network sees: float64 under ``train.precision=64`` (a reference mode whose
        rounding is ~1e-16, used to compare training across CPUs), else float32."""
        return torch.float64 if self.precision == "64-true" else torch.float32

    @property
    def fused_optimizer(self) -> bool | None:
        """Fused optimiser kernels on CUDA (one launch instead of one per tensor); torch's choice elsewhere."""
        return True if self.cuda else None

    @property
    def teacher_dtype(self) -> torch.dtype | None:
        """The dtype of inference-only copies (MrKD's and kd's teachers): bf16 under bf16 training, on CUDA and on
        the CPU alike (a teacher left in float32 outside the training step's autocast ran at fp32 speed, 3x a bf16
        forward on an AMX CPU), float64 under ``train.precision=64``, else unchanged."""
        if self.precision == "64-true":
            return torch.float64
        return torch.bfloat16 if self.precision.startswith("bf16") else None

    def autocast(self):
        """The training step's autocast, for inference forwards of float32 weights (the EMA teacher)."""
        if not self.precision.endswith("-mixed"):
            return nullcontext()
        dtype = torch.bfloat16 if self.precision.startswith("bf16") else torch.float16
        return torch.autocast(device_type=self.accelerator, dtype=dtype)

    def apply(self) -> None:
        """Set the process-wide switches this runtime implies (CPU threads, cuDNN autotuning)."""
        if self.threads:
            torch.set_num_threads(self.threads)
        if self.cuda:
            torch.backends.cudnn.benchmark = self.cudnn_benchmark

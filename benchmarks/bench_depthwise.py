"""cp_mobile's depthwise 3×3 convolutions, forward + backward, in the layouts torch offers, side by side.

    python benchmarks/bench_depthwise.py [--batch 256] [--steps 20]

For every depthwise layer shape of the default cp_mobile on the DCASE'24 input (1×256×65, batch ``--batch``): the
convolution as trained under bf16 + channels_last (cuDNN's choice), the same in channels-first (NCHW) for that layer
alone (the layout change counted), and ``torch.compile``'s kernels. On a CPU the fp32 NCHW and channels_last
variants run (compile is skipped there). Prints ms per layer and for all of them, the ratio to the first column,
and the whole cp_mobile training step (AdamW, cross-entropy) in NCHW and channels_last.
Results go to docs/benchmarks.md with the command (a GPU session runs it: benchmarks/gpu_session.sh depthwise).
"""
from __future__ import annotations

import argparse
import time

import torch
from torch import nn

from audio_mrkd.models import build_model


def depthwise_shapes(batch: int) -> list[tuple[nn.Conv2d, tuple[int, ...]]]:
    """(layer, input shape) of every depthwise convolution of cp_mobile on one DCASE'24 batch."""
    model = build_model("cp_mobile", 10, 1).eval()
    found = []

    def hook(module, inputs, _):
        found.append((module, (batch, *inputs[0].shape[1:])))
    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, nn.Conv2d) and m.groups == m.in_channels and m.groups > 1]
    with torch.no_grad():
        model(torch.zeros(1, 1, 256, 65))
    for h in handles:
        h.remove()
    return found


def timed(fn, steps: int, cuda: bool) -> float:
    """Median ms per call over 3 blocks of ``steps`` calls (after warm-up)."""
    for _ in range(3):
        fn()
    blocks = []
    for _ in range(3):
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(steps):
            fn()
        if cuda:
            torch.cuda.synchronize()
        blocks.append(1000 * (time.perf_counter() - start) / steps)
    return sorted(blocks)[1]


def variants(cuda: bool) -> dict[str, tuple[torch.dtype, bool, bool, bool]]:
    """name → (dtype, channels_last input, layer run channels-first, torch.compile)."""
    if not cuda:
        return {"fp32 NCHW": (torch.float32, False, False, False),
                "fp32 channels_last": (torch.float32, True, False, False)}
    return {"bf16 channels_last (cuDNN, as trained)": (torch.bfloat16, True, False, False),
            "bf16, this layer channels-first": (torch.bfloat16, True, True, False),
            "bf16 channels_last, torch.compile": (torch.bfloat16, True, False, True)}


def layer_step(conv: nn.Conv2d, shape, dtype, channels_last: bool, channels_first: bool, compiled: bool, device):
    layer = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                      groups=conv.groups, bias=False).to(device, dtype)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    layer = layer.to(memory_format=fmt)
    x = torch.randn(shape, device=device, dtype=dtype).contiguous(memory_format=fmt).requires_grad_(True)

    def forward(inp):
        if channels_first:  # only this layer in NCHW: the two layout changes are part of its cost
            return layer(inp.contiguous()).contiguous(memory_format=torch.channels_last)
        return layer(inp)
    run = torch.compile(forward) if compiled else forward

    def step():
        out = run(x)
        out.backward(torch.ones_like(out))
    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    if cuda:
        torch.backends.cudnn.benchmark = True
    layers = depthwise_shapes(args.batch)
    names = list(variants(cuda))
    dtype = torch.bfloat16 if cuda else torch.float32
    totals = dict.fromkeys(names, 0.0)
    print(f"# {len(layers)} depthwise layers of cp_mobile, batch {args.batch}, forward + backward, "
          f"{torch.cuda.get_device_name() if cuda else 'CPU'}; torch {torch.__version__}")
    print("| layer (C, input H×W, stride) | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    for conv, shape in layers:
        row = [timed(layer_step(conv, shape, *variants(cuda)[n], device), args.steps, cuda) for n in names]
        for n, ms in zip(names, row):
            totals[n] += ms
        print(f"| {conv.in_channels}, {shape[2]}×{shape[3]}, {conv.stride} | " +
              " | ".join(f"{ms:.3f}" for ms in row) + " |")
    print("| **all depthwise layers, ms** | " + " | ".join(f"**{totals[n]:.2f}**" for n in names) + " |")
    print("| ratio to the first column | " + " | ".join(f"{totals[n] / totals[names[0]]:.2f}" for n in names) + " |")
    whole = {name: timed(whole_step(fmt, args.batch, device, dtype), args.steps, cuda)
             for name, fmt in (("NCHW", torch.contiguous_format), ("channels_last", torch.channels_last))}
    print(f"\nwhole cp_mobile training step, batch {args.batch}, {dtype}: " +
          ", ".join(f"{k} {v:.1f} ms" for k, v in whole.items()) +
          f"; channels_last / NCHW = {whole['channels_last'] / whole['NCHW']:.2f}")


def whole_step(fmt, batch: int, device, dtype):
    """One AdamW step of the default cp_mobile on a DCASE'24 batch (autocast to ``dtype`` on CUDA)."""
    model = build_model("cp_mobile", 10, 1).to(device).to(memory_format=fmt)
    optimizer = torch.optim.AdamW(model.parameters())
    x = torch.randn(batch, 1, 256, 65, device=device).contiguous(memory_format=fmt)
    y = torch.randint(0, 10, (batch,), device=device)

    def step():
        with torch.autocast(device.type, dtype=dtype, enabled=device.type == "cuda"):
            loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return step


if __name__ == "__main__":
    main()

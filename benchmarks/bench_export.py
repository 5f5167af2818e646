"""PyTorch eager vs ONNX Runtime fp32 vs ONNX Runtime int8 on CPU, side by side in one run (issue: export).

    python benchmarks/bench_export.py [--threads 1] [--runs 300] [--batch 64] [--batch-runs 20]
                                      [--model cp_mobile] [--option base_channels=32 …]
    python benchmarks/bench_export.py --calibration-table RUN_DIR [--calibration 512] [--stratified]

``--calibration-table RUN_DIR``: the int8 calibration candidates of ``audio-mrkd export --int8``
(:data:`audio_mrkd.export.quantize.CANDIDATES`) on a trained run, side by side: for each, the train-split figures
the choice is made on (argmax disagreements with fp32, mean |Δlogit|, accuracy) next to the evaluated split's
(disagreements, accuracy, change against fp32), which the choice never sees. ``--stratified`` adds each candidate
with a class-stratified draw of the calibration items (measured, not in CANDIDATES). Prints; asserts nothing.

Without ``--calibration-table`` (speed): builds the model (untrained: speed does not depend on the weights; say so when quoting), wraps it with the
input normalisation exactly as ``audio-mrkd export`` does, exports ``model.onnx`` and ``model.int8.onnx``
(S8S8, the export default; plus a U8S8 variant, ``--int8-activations uint8``) with the package's own export and
quantisation code (MinMax calibration on log-mels of synthetic tone+noise clips computed by the package's front-end), then measures for each engine on the same inputs:
  * latency per 1-s clip at batch 1: median (and p90) of ``--runs`` calls after a warm-up;
  * throughput at batch ``--batch``: clips/s from the median of ``--batch-runs`` calls;
  * file size (PyTorch: the state_dict as ``torch.save`` writes it);
and the int8/fp32 ratios. Every engine gets the same number of intra-op threads. Prints; asserts nothing.
"""
from __future__ import annotations

import argparse
import io
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from audio_mrkd.data.frontend import FrontendConfig, LogMel
from audio_mrkd.export.complexity import count
from audio_mrkd.export.onnx import FEATURES_INPUT, FeatureModel, export_onnx, onnx_session
from audio_mrkd.export.quantize import CANDIDATES, Candidate, FeatureReader, choose_int8, logits_at, quantize_int8
from audio_mrkd.models import build_model
from audio_mrkd.paths import MANIFEST_DIR
from audio_mrkd.versions import versions


def synthetic_logmels(cfg: FrontendConfig, n: int, seed: int = 0) -> np.ndarray:
    """Log-mels (n×1×F×T) of tone+noise clips, computed by the package's front-end."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(cfg.n_samples) / cfg.sample_rate
    freqs = 100.0 + torch.rand(n, 1, generator=g) * 0.4 * cfg.sample_rate
    waves = 0.3 * torch.sin(2 * torch.pi * freqs * t) + 0.05 * torch.randn(n, cfg.n_samples, generator=g)
    with torch.inference_mode():
        return LogMel(cfg)(waves).unsqueeze(1).numpy()


def timings(fn, x, runs: int, warmup: int = 10) -> np.ndarray:
    for _ in range(warmup):
        fn(x)
    out = np.empty(runs)
    for i in range(runs):
        start = time.perf_counter()
        fn(x)
        out[i] = time.perf_counter() - start
    return out


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def calibration_table(run_dir: str, calibration: int, candidates=CANDIDATES) -> None:
    """Print every candidate's train-split and evaluated-split figures against fp32 for the run ``run_dir``."""
    from audio_mrkd.data.splits import load_split
    from audio_mrkd.runs.run import Run

    run = Run(run_dir)
    net, info, cfg = run.model(), run.info, run.config
    model = FeatureModel(net, info.norm_mean, info.norm_std).eval()
    manifests = info.manifest_dir or MANIFEST_DIR
    train = load_split(info.name, info.train_split or cfg.data.train_split, manifests, in_memory=False)
    evaluated = load_split(info.name, info.eval_split or cfg.data.eval_split, manifests, in_memory=False)
    every = np.arange(len(evaluated))
    print(f"run: {run_dir} ({cfg.model.name}); train split {len(train)} clips, evaluated split {len(evaluated)} "
          f"clips; --calibration {calibration}")
    with tempfile.TemporaryDirectory() as tmp:
        fp32_path = Path(tmp) / "model.onnx"
        torch.manual_seed(0)
        export_onnx(model, torch.randn(2, *info.input_shape), fp32_path, FEATURES_INPUT)
        start = time.perf_counter()
        report = choose_int8(fp32_path, Path(tmp) / "model.int8.onnx", train.features, train.labels, calibration,
                             candidates=candidates, keep_dir=tmp)
        seconds = time.perf_counter() - start
        fp32 = logits_at(onnx_session(fp32_path), evaluated.features, every)
        fp32_acc = 100 * (fp32.argmax(1) == evaluated.labels).mean()
        n_train = report["train_items"]
        print(f"fp32: train accuracy {100 * report['train_fp32_accuracy']:.2f}% on {n_train} items, evaluated "
              f"accuracy {fp32_acc:.2f}%; {len(candidates)} candidates quantised and compared in {seconds:.0f} s")
        print()
        print(f"| candidate | train disagree /{n_train} | train mean abs dlogit | train acc % | "
              f"eval disagree /{len(evaluated)} | eval acc % | eval Δacc pt | chosen |")
        print("|---|---|---|---|---|---|---|---|")
        for row in report["candidates"]:
            got = logits_at(onnx_session(Path(tmp) / f"{row['name']}.onnx"), evaluated.features, every)
            acc = 100 * (got.argmax(1) == evaluated.labels).mean()
            print(f"| {row['name']} | {row['disagreements']} | {row['mean_abs_logit_diff']:.4f} | "
                  f"{100 * row['train_accuracy']:.2f} | {int((got.argmax(1) != fp32.argmax(1)).sum())} | {acc:.2f} | "
                  f"{acc - fp32_acc:+.2f} | {'yes' if row['name'] == report['chosen'] else ''} |")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="cp_mobile")
    parser.add_argument("--option", action="append", default=[], help="model option key=value (YAML value)")
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads for every engine (default 1)")
    parser.add_argument("--runs", type=int, default=300, help="batch-1 calls per engine (default 300)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--batch-runs", type=int, default=20)
    parser.add_argument("--calibration", type=int, default=None,
                        help="calibration clips for int8 (default 128; with --calibration-table 512, as export)")
    parser.add_argument("--calibration-table", metavar="RUN_DIR", default=None,
                        help="print the int8 calibration candidates' figures for a trained run instead of timings")
    parser.add_argument("--stratified", action="store_true",
                        help="--calibration-table: also each candidate with a class-stratified calibration draw")
    args = parser.parse_args(argv)
    if args.calibration_table:
        print("command:", " ".join([Path(sys.executable).name, *sys.argv]))
        v = versions()
        print("versions:", ", ".join(f"{k} {v[k]}" for k in ("python", "torch", "onnx", "onnxruntime", "git_commit")))
        stratified = tuple(Candidate(f"{c.name}-stratified", c.method, "stratified", c.float_first)
                           for c in CANDIDATES) if args.stratified else ()
        calibration_table(args.calibration_table, args.calibration or 512, CANDIDATES + stratified)
        return
    args.calibration = args.calibration or 128

    torch.set_num_threads(args.threads)
    options = {k: yaml.safe_load(v) for k, v in (o.split("=", 1) for o in args.option)}
    cfg = FrontendConfig()
    torch.manual_seed(0)
    net = build_model(args.model, args.classes, **options).eval()
    calib = synthetic_logmels(cfg, args.calibration)
    mean, std = calib.mean(axis=(0, 1, 3)), np.maximum(calib.std(axis=(0, 1, 3)), 1e-5)
    model = FeatureModel(net, mean, std).eval()
    params, macs = count(net, (1, *cfg.shape))

    print("command:", " ".join([Path(sys.executable).name, *sys.argv]))
    v = versions()
    print("versions:", ", ".join(f"{k} {v[k]}" for k in ("python", "torch", "onnx", "onnxruntime", "git_commit")))
    print(f"cpu: {cpu_name()} ({torch.get_num_threads()} intra-op thread(s) per engine)")
    print(f"model: {args.model} {options or '(defaults)'}, {args.classes} classes, UNTRAINED (random weights; "
          f"speed does not depend on them), {params:,} parameters, {macs:,} MACs per 1-s clip "
          f"(input 1×1×{cfg.n_mels}×{cfg.n_frames})")

    with tempfile.TemporaryDirectory() as tmp:
        paths = {"onnx_fp32": Path(tmp) / "model.onnx", "onnx_int8": Path(tmp) / "model.int8.onnx",
                 "onnx_int8_u8": Path(tmp) / "model.int8_u8.onnx"}
        export_onnx(model, torch.from_numpy(calib[:2]), paths["onnx_fp32"], FEATURES_INPUT)
        quantize_int8(paths["onnx_fp32"], paths["onnx_int8"], FeatureReader(calib, FEATURES_INPUT))
        quantize_int8(paths["onnx_fp32"], paths["onnx_int8_u8"], FeatureReader(calib, FEATURES_INPUT),
                      activations="uint8")
        buf = io.BytesIO()
        torch.save(net.state_dict(), buf)
        sizes = {"pytorch": len(buf.getvalue()), **{k: p.stat().st_size for k, p in paths.items()}}
        sessions = {k: onnx_session(p, args.threads) for k, p in paths.items()}

        def torch_fn(x):
            with torch.inference_mode():
                return model(torch.from_numpy(x))

        engines = {"pytorch": torch_fn}
        for name, session in sessions.items():
            engines[name] = (lambda s: (lambda x: s.run(None, {FEATURES_INPUT: x})))(session)

        reps = -(-args.batch // len(calib))
        x1 = np.ascontiguousarray(calib[:1])
        xb = np.ascontiguousarray(np.concatenate([calib] * reps)[:args.batch])
        results = {}
        for name, fn in engines.items():
            t1 = timings(fn, x1, args.runs)
            tb = timings(fn, xb, args.batch_runs, warmup=2)
            results[name] = {"ms": 1e3 * np.median(t1), "p90": 1e3 * np.percentile(t1, 90),
                             "cps": args.batch / np.median(tb), "size": sizes[name]}

    print()
    print(f"{'engine':<12} {'latency b=1 (ms/clip)':>22} {'p90 (ms)':>9} {f'clips/s b={args.batch}':>14} "
          f"{'file (bytes)':>13}")
    for name, r in results.items():
        print(f"{name:<12} {r['ms']:>22.3f} {r['p90']:>9.3f} {r['cps']:>14.1f} {r['size']:>13,}")
    f32, pt = results["onnx_fp32"], results["pytorch"]
    print()
    for name, label in (("onnx_int8", "int8 (S8S8, export default)"),
                        ("onnx_int8_u8", "int8 (U8S8, --int8-activations uint8)")):
        i8 = results[name]
        print(f"{label} / fp32 ONNX: latency ×{i8['ms'] / f32['ms']:.2f}, throughput ×{i8['cps'] / f32['cps']:.2f}, "
              f"file size ×{i8['size'] / f32['size']:.2f}")
    print(f"ONNX fp32/PyTorch eager: latency ×{f32['ms'] / pt['ms']:.2f}, throughput ×{f32['cps'] / pt['cps']:.2f}")


if __name__ == "__main__":
    main()

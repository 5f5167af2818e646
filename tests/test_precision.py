"""The GPU switches, checked for correctness on the CPU: bf16 autocast follows the fp32 trajectory."""
import itertools

import pytest
import torch

from audio_mrkd.bench import run_bench
from audio_mrkd.config_loader import load_experiment
from audio_mrkd.train.engine import Trainer, train_run


def history(tmp_path, precision):
    cfg = load_experiment(None, ["data.kind=synthetic", "model.name=dcase_cnn", "method=mrkd", "mrkd.k=1",
                                 "train.epochs=3", "train.batch_size=32", f"train.precision={precision}",
                                 "train.channels_last=false",  # precision alone (the layout is checked elsewhere)
                                 "train.progress=false", "train.save_checkpoints=false",
                                 f"train.out_dir={tmp_path / precision}"])
    return train_run(cfg)[1]["history"]


def test_bf16_autocast_matches_fp32_within_tolerance(tmp_path):
    """Stated tolerance: evaluated log loss per epoch within 0.1 and final accuracy within 0.05 (bf16 keeps
    8 mantissa bits, so the first epoch's transient differs most)."""
    fp32, bf16 = history(tmp_path, "32"), history(tmp_path, "bf16-mixed")
    for a, b in zip(fp32, bf16, strict=True):
        assert abs(a["log_loss"] - b["log_loss"]) < 0.1
    assert abs(fp32[-1]["accuracy"] - bf16[-1]["accuracy"]) <= 0.05
    assert fp32[-1]["accuracy"] > 0.9 and bf16[-1]["accuracy"] > 0.9


@pytest.mark.parametrize("precision", ["bf16-mixed", "32"])
def test_inference_forwards_follow_the_training_precision_on_the_cpu(precision, tmp_path):
    """Under bf16 training the teachers run in bf16 on the CPU too (MrKD's copies in bf16, the EMA teacher under
    the step's autocast): left in float32 outside the step's autocast they cost an fp32 forward each. In fp32
    training nothing changes."""
    bf16 = precision == "bf16-mixed"
    trainers = {method: Trainer(load_experiment(None, [
        "data.kind=synthetic", "model.name=resnet20", f"method={method}", "mrkd.k=1", f"train.precision={precision}",
        "train.batch_size=16", "train.progress=false", "train.save_checkpoints=false", f"train.out_dir={tmp_path}"]))
        for method in ("mrkd", "ema")}
    trainer = trainers["mrkd"]
    trainer.method.objective.backup(trainer.model)
    bank = trainer.method.objective.bank
    x = next(iter(trainer.train_loader)).x
    assert {p.dtype for t in bank._fast for p in t.parameters()} == {torch.bfloat16 if bf16 else torch.float32}
    with torch.inference_mode():
        reference = bank.teachers()[0](x.float()).float()  # the float32 backup itself
    assert bank.logits(x)[0].float() == pytest.approx(reference, abs=0.1 if bf16 else 1e-4)

    ema = trainers["ema"].method
    seen = []
    ema.teacher.register_forward_hook(
        lambda *_: seen.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu"))))
    ema.teacher_logits(x)
    assert seen == [(True, torch.bfloat16)] if bf16 else not seen[0][0]


def test_bench_command_reports_side_by_side_ratios():
    rows = run_bench(ks=[1], model="dcase_cnn", batch=16, steps=2, device="cpu", log=lambda *_: None)["step"]
    assert [r["variant"] for r in rows] == ["CE", "MrKD K=1 same", "MrKD K=1 cached"]
    same = rows[1]
    assert same["ratio"] > 0 and same["teachers_alone_ms"] > 0 and 0 < same["teacher_share"] < 1
    assert rows[2]["backup_ms"] > 0 and rows[0]["step_ms"] > 0


def test_bench_pipeline_suite_times_the_dcase24_way_against_cached_features():
    """On a CPU: the baseline's pipeline and the two CPU variants are measured; CUDA-only switches say skipped."""
    printed = []
    rows = run_bench(batch=8, steps=1, suite="pipeline", device="cpu", log=printed.append)["pipeline"]
    measured = [r for r in rows if "step_ms" in r]
    assert [r["variant"] for r in measured] == ["DCASE'24 baseline way (wave->resample->mel each step, fp32)",
                                               "CE fp32, cached features (no GPU switches)",
                                               "MrKD K=4 same batch, fp32 (no GPU switches)"]
    assert all(r["step_ms"] > 0 and r["samples_per_s"] > 0 for r in measured)
    assert measured[0]["vs_baseline"] == 1.0 and measured[2]["teachers_alone_ms"] > 0
    assert measured[2]["vs_ce"] > 1 and "overhead_ratio" in measured[2]
    assert sum("skipped" in r for r in rows) == 16 and any("needs CUDA" in line for line in printed)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="compares a CUDA run with a CPU run")
@pytest.mark.parametrize("method", ["ce", "mrkd"])
def test_cpu_and_cuda_follow_the_same_loss_trajectory(method):
    """Same seed, fp32 without TF32, no random augmentation (device RNG streams differ), MrKD active from step 5
    with graphed teachers. Stated tolerance: the first 10 per-step training losses within rtol 2e-3; all 40
    within 0.25 absolute (float rounding differences between the devices' kernels grow as training proceeds;
    measured on an H100: first 10 steps within 3e-5, largest difference over 40 steps 0.074–0.100 CE, 0.055–0.058 MrKD)."""
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    losses = {}
    for device in ("cpu", "cuda"):
        cfg = load_experiment(None, ["data.kind=synthetic", "model.name=cp_mobile", "model.options.base_channels=8",
                                     f"method={method}", "mrkd.k=2", "mrkd.interval=2", "mrkd.interval_unit=step",
                                     "train.precision=32", "train.channels_last=false", f"train.device={device}",
                                     "train.batch_size=32", "train.log_every=1", "train.progress=false",
                                     "train.save_checkpoints=false", "train.out_dir=/tmp/audio_mrkd_cpu_cuda"])
        trainer = Trainer(cfg)
        batches = itertools.chain.from_iterable(itertools.repeat(trainer.train_loader, 10))
        losses[device] = [trainer.step(next(batches))["loss/ce"] for _ in range(40)]
    diffs = [abs(a - b) for a, b in zip(losses["cpu"], losses["cuda"])]
    print(f"cpu vs cuda {method}: max |d loss| first 10 steps {max(diffs[:10]):.2e}, all 40 {max(diffs):.3f}")
    assert losses["cpu"][:10] == pytest.approx(losses["cuda"][:10], rel=2e-3)
    assert max(diffs) < 0.25


@pytest.mark.parametrize("override, key", [("train.compile_mode=fastest", "train.compile_mode"),
                                           ("train.cudnn_benchmark=maybe", "train.cudnn_benchmark"),
                                           ("mrkd.teacher_graph=1", "mrkd.teacher_graph"),
                                           ("mrkd.teacher_compile=sometimes", "mrkd.teacher_compile")])
def test_bad_gpu_switch_values_name_the_key(override, key):
    from audio_mrkd.errors import InputError
    with pytest.raises(InputError, match=key.replace(".", r"\.")):
        cfg = load_experiment(None, [override])
        cfg.mrkd.validate()


def _gradients(memory_format, dtype=torch.float32) -> tuple[float, list[torch.Tensor]]:
    from audio_mrkd.models import build_model
    torch.manual_seed(0)
    model = build_model("cp_mobile", 10, 1).train().to(dtype).to(memory_format=memory_format)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(16, 1, 64, 65, generator=g).to(dtype), torch.randint(0, 10, (16,), generator=g)
    loss = torch.nn.functional.cross_entropy(model(x.contiguous(memory_format=memory_format)), y)
    loss.backward()
    return loss.item(), [p.grad.double() for p in model.parameters()]


def test_channels_last_computes_the_nchw_step_on_the_cpu():
    """NHWC (train.channels_last, on by default, also on the CPU: faster there, docs/benchmarks.md) computes the
    same forward and backward in another summation order: against a float64 reference its float32 gradients are
    within float32 rounding through train-mode BatchNorm, like NCHW's (measured worst relative error per tensor:
    0.33 % vs 0.53 % on an Intel Xeon, 1.5 % vs 0.53 % on an AMD EPYC with one thread — the order of the sums
    depends on the CPU and the thread count; a wrong layout is off by ~100 %)."""
    def worst(a, b):
        return max(((u - v).norm() / u.norm()).item() for u, v in zip(a, b))
    loss64, exact = _gradients(torch.contiguous_format, torch.float64)
    loss_nchw, nchw = _gradients(torch.contiguous_format)
    loss_nhwc, nhwc = _gradients(torch.channels_last)
    assert loss_nhwc == pytest.approx(loss64, rel=1e-5) and loss_nchw == pytest.approx(loss64, rel=1e-5)
    assert worst(exact, nhwc) <= 0.05 and worst(exact, nchw) <= 0.05
    runtime = Trainer(load_experiment(None, ["data.kind=synthetic", "train.device=cpu"])).runtime
    assert runtime.channels_last  # the default, on the CPU too

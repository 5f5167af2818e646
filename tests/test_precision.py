"""The GPU switches, checked for correctness on the CPU: bf16 autocast follows the fp32 trajectory."""
import pytest

from audio_mrkd.bench import run_bench
from audio_mrkd.experiment import load_experiment
from audio_mrkd.train.engine import train_run


def history(tmp_path, precision):
    cfg = load_experiment(None, ["data.kind=synthetic", "model.name=dcase_cnn", "method=mrkd", "mrkd.k=1",
                                 "train.epochs=3", "train.batch_size=32", f"train.precision={precision}",
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


def test_bench_command_reports_side_by_side_ratios():
    rows = run_bench(ks=[1], model="dcase_cnn", batch=16, steps=2, log=lambda *_: None)
    assert [r["variant"] for r in rows] == ["CE", "MrKD K=1 same", "MrKD K=1 cached"]
    same = rows[1]
    assert same["ratio"] > 0 and same["teachers_alone_ms"] > 0 and 0 < same["teacher_share"] < 1
    assert rows[2]["backup_pass_ms"] > 0

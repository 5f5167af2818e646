"""export + predict: ONNX graphs, int8 QDQ, complexity, parity, the waveform graph, the predict command.

One small trained model per module: a prepared tone tree (conftest.make_dcase_tree), a cp_mobile with
base_channels 16 trained with plain CE until it beats chance, saved as a run directory in the engine's layout
(config.yaml, data.json, checkpoints/best.pt), exported once with --int8 --with-frontend.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")
import onnx  # noqa: E402

from audio_mrkd import cli  # noqa: E402
from audio_mrkd import config_io  # noqa: E402
from audio_mrkd.config_schema import DataConfig, ExperimentConfig, ModelConfig  # noqa: E402
from audio_mrkd.data.frontend import FrontendConfig, LogMel, compute_logmel, load_clip  # noqa: E402
from audio_mrkd.data.prepare import prepare  # noqa: E402
from audio_mrkd.data.splits import BatchLoader, load_split  # noqa: E402
from audio_mrkd.errors import InputError  # noqa: E402
from audio_mrkd.export import commands  # noqa: E402
from audio_mrkd.export.onnx import FeatureModel, onnx_session, run_onnx  # noqa: E402
from audio_mrkd.export.parity import feature_parity, parity_warnings  # noqa: E402
from audio_mrkd.export.quantize import (CANDIDATES, Candidate, FeatureReader, calibration_positions,  # noqa: E402
                                        choose_int8, logits_at, quantize_int8)
from audio_mrkd.models import build_model  # noqa: E402
from audio_mrkd.runs.run import Run  # noqa: E402
from conftest import make_dcase_tree  # noqa: E402

pytestmark = [pytest.mark.filterwarnings("ignore::FutureWarning"),
              pytest.mark.filterwarnings("ignore::DeprecationWarning")]

NAME = "tones"
SMALL = {"base_channels": 16}


def write_run(run_dir: Path, manifests: Path, model: torch.nn.Module, options: dict, name: str = NAME) -> Path:
    """A run directory in the training engine's layout."""
    split = load_split(name, "train", manifests)
    cfg = ExperimentConfig(name="export-test", data=DataConfig(name=name, manifest_dir=str(manifests)),
                           model=ModelConfig(name="cp_mobile", options=options))
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config_io.to_dict(cfg)))
    info = {"kind": "audio", "name": name, "manifest_dir": str(manifests), "train_split": "train",
            "eval_split": "evaluate", "class_names": split.class_names, "device_names": split.device_names,
            "input_shape": list(split.item_shape), "norm_mean": split.norm_mean.reshape(-1).tolist(),
            "norm_std": split.norm_std.reshape(-1).tolist(), "features": split.info["features"]}
    (run_dir / "data.json").write_text(json.dumps(info))
    torch.save({"model": model.state_dict()}, run_dir / "checkpoints" / "best.pt")
    return run_dir


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("export")
    tree = make_dcase_tree(root / "dev")
    manifests = root / "manifests"
    prepare(tree, NAME, cache_dir=root / "cache", manifest_dir=manifests, workers=1, log=lambda *_: None)
    train = load_split(NAME, "train", manifests)
    torch.manual_seed(0)
    model = build_model("cp_mobile", len(train.class_names), **SMALL)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    loader = BatchLoader(train, batch_size=8, shuffle=True, seed=0)
    model.train()
    for _ in range(25):  # 25 epochs × 3 steps (~2 s): 100 % train, > 80 % evaluate accuracy
        for batch in loader:
            loss = torch.nn.functional.cross_entropy(model(batch.x), batch.y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    run_dir = write_run(root / "run", manifests, model, SMALL)
    return {"root": root, "tree": tree, "manifests": manifests, "run_dir": run_dir}


@pytest.fixture(scope="module")
def exported(run) -> commands.ExportResult:
    return commands.export_run(run["run_dir"], int8=True, calibration=16, with_frontend=True, log=lambda *_: None)


def cli_main(argv: list[str], monkeypatch=None) -> int:
    return cli.main(argv)


# --- export -----------------------------------------------------------------------------------------------

def test_trained_fixture_beats_chance(run):
    model, info = Run(run["run_dir"]).model(), Run(run["run_dir"]).info
    ev = load_split(NAME, "evaluate", run["manifests"])
    with torch.no_grad():
        logits = model(BatchLoader(ev, 64).features_at(torch.arange(len(ev))))
    assert (logits.argmax(1).numpy() == ev.labels).mean() > 1 / len(info.class_names) + 0.2


def test_export_writes_every_file(exported, run):
    out = run["run_dir"] / "export"
    assert exported.out_dir == out
    for name in ("model.onnx", "model.int8.onnx", "model_with_frontend.onnx", "complexity.json", "parity.json",
                 "features.yaml", "labels.json"):
        assert (out / name).is_file(), name
    assert not list(out.glob(".*.tmp"))
    features = config_io.from_dict(FrontendConfig, yaml.safe_load((out / "features.yaml").read_text()))
    assert features.shape == (256, 65) and features.sample_rate == 32000
    assert json.loads((out / "labels.json").read_text())["class_names"] == ["metro", "park", "street"]


def test_fp32_graph_has_dynamic_batch_and_takes_raw_logmel(exported, run):
    """Batch 1 and 7 both work; raw log-mels in, the graph normalises them as training did."""
    out = exported.out_dir
    session = onnx_session(out / "model.onnx")
    inp = session.get_inputs()[0]
    assert inp.name == "features" and inp.shape[1:] == [1, 256, 65] and not isinstance(inp.shape[0], int)
    model, info = Run(run["run_dir"]).model(), Run(run["run_dir"]).info
    ev = load_split(NAME, "evaluate", run["manifests"])
    raw = np.asarray(ev.features[:7], dtype=np.float32)                    # un-normalised, as the front-end gives
    normalised = BatchLoader(ev, 64).features_at(torch.arange(7))         # what the network saw in training
    with torch.no_grad():
        expected = model(normalised).numpy()
    for n in (1, 7):
        got = session.run(None, {"features": raw[:n]})[0]
        assert got.shape == (n, 3)
        np.testing.assert_allclose(got, expected[:n], atol=1e-4)
    int8 = onnx_session(out / "model.int8.onnx")
    assert int8.run(None, {"features": raw[:1]})[0].shape == (1, 3)
    assert int8.run(None, {"features": raw})[0].shape == (7, 3)


def test_int8_is_static_qdq_per_channel_and_smaller(exported):
    out = exported.out_dir
    assert (out / "model.int8.onnx").stat().st_size < (out / "model.onnx").stat().st_size
    graph = onnx.load(str(out / "model.int8.onnx")).graph
    ops = {n.op_type for n in graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops and "QLinearConv" not in ops  # QDQ format
    inits = {i.name: i for i in graph.initializer}
    int8_weights = [i for i in graph.initializer if i.data_type == onnx.TensorProto.INT8 and len(i.dims) == 4]
    assert int8_weights, "conv weights stored as int8"
    # per-channel: the weight DequantizeLinear nodes carry one scale per output channel
    weight_dq = [n for n in graph.node if n.op_type == "DequantizeLinear" and n.input[0] in
                 {w.name for w in int8_weights}]
    assert weight_dq and all(len(inits[n.input[1]].dims) == 1 and inits[n.input[1]].dims[0] > 1 for n in weight_dq)
    assert exported.parity["quantization"]["calibration_items"] == 16
    # the per-mel-bin normalisation stays float (one int8 scale for all 1/std values would be lossy)
    assert inits["normalize.inv_std"].data_type == onnx.TensorProto.FLOAT
    assert exported.parity["quantization"]["float_nodes"]


def test_parity_report(exported, run):
    rep = json.loads((exported.out_dir / "parity.json").read_text())
    ev = load_split(NAME, "evaluate", run["manifests"])
    assert rep["split"] == "evaluate" and rep["items"] == len(ev)
    assert rep["fp32_vs_pytorch"]["max_abs_logit_diff"] <= 1e-4 and rep["fp32_vs_pytorch"]["ok"]
    assert rep["fp32_vs_pytorch"]["argmax_agreement"] == 1.0
    # accuracies are recomputed here from the graphs themselves
    fp32 = run_onnx(onnx_session(exported.out_dir / "model.onnx"), np.asarray(ev.features, np.float32))
    int8 = run_onnx(onnx_session(exported.out_dir / "model.int8.onnx"), np.asarray(ev.features, np.float32))
    assert rep["onnx_fp32"]["accuracy"] == pytest.approx((fp32.argmax(1) == ev.labels).mean())
    assert rep["onnx_int8"]["accuracy"] == pytest.approx((int8.argmax(1) == ev.labels).mean())
    agreement = (int8.argmax(1) == fp32.argmax(1)).mean()
    assert rep["int8_vs_fp32"]["argmax_agreement"] == pytest.approx(agreement)
    drop = 100 * (rep["onnx_fp32"]["accuracy"] - rep["onnx_int8"]["accuracy"])
    assert rep["int8_vs_fp32"]["accuracy_drop_pt"] == pytest.approx(drop)
    assert rep["int8_ok"] == (drop <= rep["int8_vs_fp32"]["max_accuracy_drop_pt"])
    assert rep["onnx_fp32"]["accuracy"] > 1 / 3 + 0.2  # the trained model, not an untrained one


def test_badly_calibrated_int8_is_flagged(exported, run, tmp_path):
    """Calibrating on silence clips every real input: the accuracy loss is reported, not hidden."""
    out = exported.out_dir
    silence = np.full((16, 1, 256, 65), np.log(1e-5), dtype=np.float32)
    bad = tmp_path / "bad.int8.onnx"
    quantize_int8(out / "model.onnx", bad, FeatureReader(silence, "features"))
    model, info = Run(run["run_dir"]).model(), Run(run["run_dir"]).info
    ev = load_split(NAME, "evaluate", run["manifests"])
    rep = feature_parity(FeatureModel(model, info.norm_mean, info.norm_std), out / "model.onnx", bad,
                         ev.features, ev.labels)
    assert rep["int8_vs_fp32"]["accuracy_drop_pt"] > 2.0 and rep["int8_ok"] is False
    assert any("int8 model loses" in w for w in parity_warnings(rep))


def test_uint8_activations_option(exported, run, tmp_path):
    out = exported.out_dir
    ev = load_split(NAME, "evaluate", run["manifests"])
    train = load_split(NAME, "train", run["manifests"])
    u8 = tmp_path / "u8.onnx"
    settings = quantize_int8(out / "model.onnx", u8, FeatureReader(train.features, "features"),
                             activations="uint8")
    assert settings["activation_type"] == "uint8"
    graph = onnx.load(str(u8)).graph
    inits = {i.name: i for i in graph.initializer}
    act_zero_points = [inits[n.input[2]].data_type for n in graph.node if n.op_type == "QuantizeLinear"]
    assert act_zero_points and set(act_zero_points) == {onnx.TensorProto.UINT8}
    x = np.asarray(ev.features, np.float32)
    fp32 = run_onnx(onnx_session(out / "model.onnx"), x)
    assert (run_onnx(onnx_session(u8), x).argmax(1) == fp32.argmax(1)).mean() >= 0.9
    with pytest.raises(InputError, match="int8-activations"):
        quantize_int8(out / "model.onnx", u8, FeatureReader(x, "features"), activations="int4")


def _train_argmin(rows: list[dict]) -> int:
    """The stated rule: fewest argmax disagreements, then smallest mean |Δlogit|, then list order."""
    return min(range(len(rows)), key=lambda i: (rows[i]["disagreements"], rows[i]["mean_abs_logit_diff"], i))


def test_parity_lists_int8_candidates_and_the_train_argmin_is_chosen(exported, run):
    rep = json.loads((exported.out_dir / "parity.json").read_text())
    q = rep["quantization"]
    train = load_split(NAME, "train", run["manifests"])
    assert [c["name"] for c in q["candidates"]] == [c.name for c in CANDIDATES]
    assert q["train_items"] == min(16, len(train))
    for row in q["candidates"]:
        assert 0 <= row["disagreements"] <= q["train_items"] and row["mean_abs_logit_diff"] >= 0
        assert 0 <= row["train_accuracy"] <= 1
    chosen = q["candidates"][_train_argmin(q["candidates"])]
    assert q["chosen"] == chosen["name"]
    # the settings reported are the chosen candidate's
    assert q["calibrate_method"] == chosen["method"]
    assert len(q["float_nodes"]) == 2 + chosen["float_first"]  # Sub + Mul of the normalisation (+ first Conv)
    # a float first layer is counted at 4 bytes a weight in the int8 size figure
    graph = onnx.load(str(exported.out_dir / "model.int8.onnx")).graph
    float_weights = sum(int(np.prod(i.dims)) for i in graph.initializer
                        if i.data_type == onnx.TensorProto.FLOAT and len(i.dims) == 4
                        and not i.name.startswith("normalize."))
    assert (q["float_parameters"] > 0) == chosen["float_first"]
    assert q["float_parameters"] >= float_weights
    comp = exported.complexity
    assert comp["param_bytes"]["int8"] == comp["parameters"] + 3 * q["float_parameters"]
    # the figures are train-split ones, recomputed here from the written files (the evaluated split plays no part)
    check = calibration_positions(len(train), 16, seed=1)
    fp32 = logits_at(onnx_session(exported.out_dir / "model.onnx"), train.features, check)
    int8 = logits_at(onnx_session(exported.out_dir / "model.int8.onnx"), train.features, check)
    assert chosen["disagreements"] == int((int8.argmax(1) != fp32.argmax(1)).sum())
    assert chosen["mean_abs_logit_diff"] == pytest.approx(float(np.abs(int8 - fp32).mean()), rel=1e-5)
    assert chosen["train_accuracy"] == pytest.approx((int8.argmax(1) == train.labels[check]).mean())
    assert q["train_fp32_accuracy"] == pytest.approx((fp32.argmax(1) == train.labels[check]).mean())


def test_choose_int8_writes_the_chosen_candidate(exported, run, tmp_path):
    """Every candidate kept: the file written is byte-for-byte the chosen one, and the candidates differ."""
    train = load_split(NAME, "train", run["manifests"])
    candidates = (Candidate("minmax"), Candidate("entropy-float-first", "Entropy", float_first=True),
                  Candidate("percentile-stratified", "Percentile", "stratified"))
    rep = choose_int8(exported.out_dir / "model.onnx", tmp_path / "int8.onnx", train.features, train.labels, 16,
                      candidates=candidates, keep_dir=tmp_path)
    assert rep["chosen"] == rep["candidates"][_train_argmin(rep["candidates"])]["name"]
    files = {c.name: (tmp_path / f"{c.name}.onnx").read_bytes() for c in candidates}
    assert len(set(files.values())) == len(candidates)
    assert (tmp_path / "int8.onnx").read_bytes() == files[rep["chosen"]]
    first_conv = onnx.load(str(tmp_path / "entropy-float-first.onnx")).graph
    stem = [i for i in first_conv.initializer if i.name.startswith("net.stem.0.") and len(i.dims) == 4]
    assert stem and all(i.data_type == onnx.TensorProto.FLOAT for i in stem)  # the first Conv stayed float


def test_histogram_calibration_is_fed_one_batch_at_a_time(exported, run, tmp_path):
    """Entropy/Percentile keep every activation they are handed: ONNX Runtime gets one batch per collect."""
    train = load_split(NAME, "train", run["manifests"])

    class Recording(FeatureReader):
        ranges: list = []

        def set_range(self, start_index, end_index):
            self.ranges.append((start_index, end_index))
            super().set_range(start_index, end_index)

    reader = Recording(train.features, "features", np.arange(min(40, len(train))), batch_size=16)
    reader.ranges.clear()
    settings = quantize_int8(exported.out_dir / "model.onnx", tmp_path / "e.onnx", reader, method="Entropy")
    assert settings["calibrate_method"] == "Entropy" and len(reader) == -(-min(40, len(train)) // 16)
    assert reader.ranges == [(i, i + 1) for i in range(len(reader))]


def test_export_cli_refuses_int8_over_the_threshold_unless_kept(run, tmp_path, monkeypatch, capsys):
    """Exit 3, one error line naming the loss and no int8 file when int8 loses more than --int8-max-drop (forced:
    a negative threshold); --keep-int8 exits 0 and keeps the file."""
    argv = ["export", str(run["run_dir"]), "--int8", "--calibration", "16", "--int8-max-drop", "-100"]
    capsys.readouterr()
    assert cli_main([*argv, "--out", str(tmp_path / "refused")], monkeypatch) == 3
    lines = [line for line in capsys.readouterr().err.splitlines() if "loses" in line or "error:" in line]
    assert len(lines) == 1 and lines[0].startswith("audio-mrkd export: error: "), lines  # one line, no warning twin
    assert "model.int8.onnx" in lines[0] and "accuracy points against fp32 (threshold -100 pt;" in lines[0]
    assert not (tmp_path / "refused" / "model.int8.onnx").exists()  # not kept
    assert json.loads((tmp_path / "refused" / "parity.json").read_text())["int8_ok"] is False
    assert cli_main([*argv, "--out", str(tmp_path / "kept"), "--keep-int8"], monkeypatch) == 0
    assert not [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert (tmp_path / "kept" / "model.int8.onnx").is_file()
    rep = json.loads((tmp_path / "kept" / "parity.json").read_text())
    assert rep["int8_ok"] is False and rep["quantization"]["chosen"]


def test_with_frontend_graph_matches_python_frontend(exported, run):
    """model_with_frontend.onnx(waveform) == LogMel (Python) + model, on decoded clips of the tree."""
    rep = exported.parity["with_frontend"]
    assert "error" not in rep and rep["ok"] and rep["max_abs_logit_diff"] <= rep["tolerance"] == 1e-3
    assert "evaluated split" in rep["source"]
    session = onnx_session(exported.out_dir / "model_with_frontend.onnx")
    assert session.get_inputs()[0].name == "waveform" and session.get_inputs()[0].shape[1] == 32000
    cfg = FrontendConfig()
    paths = sorted((run["tree"] / "audio").glob("*.wav"))[:5]
    waves = torch.stack([load_clip(p, cfg) for p in paths])
    model, info = Run(run["run_dir"]).model(), Run(run["run_dir"]).info
    feature_model = FeatureModel(model, info.norm_mean, info.norm_std).eval()
    with torch.no_grad():
        expected = feature_model(torch.from_numpy(compute_logmel(paths, cfg))[:, None]).numpy()
    got = session.run(None, {"waveform": waves.numpy()})[0]
    assert expected.std() > 0.1
    np.testing.assert_allclose(got, expected, atol=1e-3)
    assert (got.argmax(1) == expected.argmax(1)).all()


def make_ten_class_tree(root: Path) -> Path:
    """10 scene classes (DCASE'20-'25 have 10), two 1-s 32 kHz clips each: one train, one evaluate."""
    import soundfile as sf

    rng = np.random.default_rng(0)
    t = np.arange(32000) / 32000
    meta, train, evaluate = (["filename\tscene_label\tidentifier\tsource_label"], ["filename\tscene_label"],
                             ["filename\tscene_label"])
    (root / "audio").mkdir(parents=True)
    (root / "evaluation_setup").mkdir()
    for c in range(10):
        for k in range(2):
            name = f"audio/class{c}-{k}.wav"
            sf.write(root / name, 0.3 * np.sin(2 * np.pi * 200 * (c + 1) * t) + 0.05 * rng.standard_normal(t.size),
                     32000)
            meta.append(f"{name}\tclass{c}\tloc{k}\ta")
            (train if k == 0 else evaluate).append(f"{name}\tclass{c}")
    (root / "meta.csv").write_text("\n".join(meta) + "\n")
    (root / "evaluation_setup" / "fold1_train.csv").write_text("\n".join(train) + "\n")
    (root / "evaluation_setup" / "fold1_evaluate.csv").write_text("\n".join(evaluate) + "\n")
    return root


def test_with_frontend_export_failure_is_recorded_not_fatal(run, tmp_path, monkeypatch, capsys):
    """If the exporter cannot convert an operator of the waveform graph, the error text is kept as evidence, the
    features-input model is still written, and the CLI warns."""
    real_export = commands.export_onnx

    def export(module, example, path, input_name, metadata=None):
        if input_name == "waveform":
            raise RuntimeError("Unsupported operator aten::stft (simulated)")
        return real_export(module, example, path, input_name, metadata)

    monkeypatch.setattr(commands, "export_onnx", export)
    out = tmp_path / "exp"
    assert cli_main(["export", str(run["run_dir"]), "--out", str(out), "--with-frontend"], monkeypatch) == 0
    assert (out / "model.onnx").is_file() and not (out / "model_with_frontend.onnx").exists()
    rep = json.loads((out / "parity.json").read_text())
    assert "aten::stft (simulated)" in rep["with_frontend"]["error"]
    assert rep["fp32_vs_pytorch"]["ok"]
    assert "warning: --with-frontend: export failed: RuntimeError" in capsys.readouterr().err


def test_complexity_of_default_cp_mobile(tmp_path, monkeypatch, capsys):
    """Default cp_mobile (10 classes, untrained) exported through the CLI: the DCASE'24 baseline's counts."""
    manifests = tmp_path / "manifests"
    prepare(make_ten_class_tree(tmp_path / "ten"), "ten", cache_dir=tmp_path / "cache", manifest_dir=manifests,
            workers=1, log=lambda *_: None)
    torch.manual_seed(0)
    run_dir = write_run(tmp_path / "default", manifests, build_model("cp_mobile", 10), {}, name="ten")
    assert cli_main(["export", str(run_dir), "--out", str(tmp_path / "exp")], monkeypatch) == 0
    comp = json.loads((tmp_path / "exp" / "complexity.json").read_text())
    assert comp["model"] == "cp_mobile"
    assert comp["parameters"] == 61_148 and comp["macs"] == 29_419_156
    assert comp["input_shape"] == [1, 1, 256, 65] and "torchinfo" in comp["counter"]
    assert comp["param_bytes"] == {"fp32": 244_592, "fp16": 122_296, "int8": 61_148}
    assert comp["limits"] == {"source": "DCASE 2022-2025 Task 1", "param_bytes": 131_072, "macs": 30_000_000}
    assert comp["onnx_file_bytes"] == {"model.onnx": (tmp_path / "exp" / "model.onnx").stat().st_size}
    assert comp["macs_ok"] and comp["stored_precision"] == "fp32" and comp["pass"] is False  # 4 B/param > 128 kB
    assert comp["by_precision"]["int8"]["pass"] and comp["by_precision"]["fp16"]["pass"]
    assert "61,148 parameters, 29,419,156 MACs" in capsys.readouterr().out
    assert not (tmp_path / "exp" / "model.int8.onnx").exists()


def test_export_of_non_run_directory_is_one_line_error(tmp_path, monkeypatch, capsys):
    (tmp_path / "notarun").mkdir()
    assert cli_main(["export", str(tmp_path / "notarun")], monkeypatch) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "not a run directory" in err and "notarun" in err
    assert cli_main(["export", str(tmp_path / "missing")], monkeypatch) == 2
    assert "run directory not found" in capsys.readouterr().err


def test_export_of_missing_checkpoint_is_one_line_error(run, tmp_path, monkeypatch, capsys):
    assert cli_main(["export", str(run["run_dir"]), "--checkpoint", "last", "--out", str(tmp_path)], monkeypatch) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "last.pt: checkpoint not found" in err


# --- predict ----------------------------------------------------------------------------------------------

def _wavs(run, n=6) -> list[Path]:
    return sorted((run["tree"] / "audio").glob("*.wav"))[:n]


@pytest.mark.parametrize("model_file", ["model.int8.onnx", "model_with_frontend.onnx"])
def test_predict_writes_dcase_submission(exported, run, tmp_path, monkeypatch, capsys, model_file):
    files = [str(p) for p in _wavs(run)]
    csv = tmp_path / "out.csv"
    assert cli_main(["predict", str(exported.out_dir / model_file), *files, "--csv", str(csv)], monkeypatch) == 0
    frame = pd.read_csv(csv, sep="\t")
    assert list(frame.columns) == ["filename", "scene_label", "metro", "park", "street"]
    assert frame["filename"].tolist() == files
    probs = frame[["metro", "park", "street"]].to_numpy()
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
    assert (frame["scene_label"] == frame[["metro", "park", "street"]].idxmax(axis=1)).all()
    # the labels are the fp32 model's on the same front-end
    cfg = FrontendConfig()
    ref = run_onnx(onnx_session(exported.out_dir / "model.onnx"), compute_logmel(files, cfg)[:, None])
    agree = (frame["scene_label"].to_numpy() == np.array(["metro", "park", "street"])[ref.argmax(1)]).mean()
    assert agree >= 5 / 6
    out = capsys.readouterr().out
    assert out.splitlines()[0].split() == ["file", "label", "probability"]
    assert all(Path(f).name in out for f in files)


def test_predict_feeds_features_through_the_one_frontend(exported, run):
    from audio_mrkd.export.predict import load_exported, predict_files

    files = [str(p) for p in _wavs(run, 4)]
    model = load_exported(exported.out_dir / "model.onnx")
    frame, failed = predict_files(model, files, batch_size=3, progress=False)
    assert not failed
    feats = LogMel(FrontendConfig())(torch.stack([load_clip(f, FrontendConfig()) for f in files])).unsqueeze(1)
    logits = run_onnx(onnx_session(exported.out_dir / "model.onnx"), feats.numpy())
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    np.testing.assert_allclose(frame[model.class_names].to_numpy(), probs, atol=1e-6)


def test_predict_reports_bad_files_and_processes_the_rest(exported, run, tmp_path, monkeypatch, capsys):
    good = [str(p) for p in _wavs(run, 3)]
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunkjunkjunk")
    missing = tmp_path / "missing.wav"
    csv = tmp_path / "out.csv"
    argv = ["predict", str(exported.out_dir / "model.onnx"), good[0], str(corrupt), good[1], str(missing), good[2],
            "--csv", str(csv)]
    assert cli_main(argv, monkeypatch) == 1
    err = capsys.readouterr().err
    error_lines = [line for line in err.splitlines() if "error:" in line]
    assert len(error_lines) == 2
    assert "corrupt.wav" in error_lines[0] and "unreadable audio" in error_lines[0]
    assert "missing.wav" in error_lines[1] and "not found" in error_lines[1]
    assert pd.read_csv(csv, sep="\t")["filename"].tolist() == good


def test_predict_without_features_yaml_is_one_line_error(exported, tmp_path, monkeypatch, capsys):
    lonely = tmp_path / "model.onnx"
    lonely.write_bytes((exported.out_dir / "model.onnx").read_bytes())
    assert cli_main(["predict", str(lonely), "x.wav"], monkeypatch) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "features.yaml" in err
    # a features.yaml that does not fit the model's input is caught before any file is decoded
    (tmp_path / "labels.json").write_text((exported.out_dir / "labels.json").read_text())
    (tmp_path / "features.yaml").write_text("n_mels: 128\n")
    assert cli_main(["predict", str(lonely), "x.wav"], monkeypatch) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "does not match" in err

"""The pictures of a study (audio_mrkd/plots.py) on real, tiny runs: ``ablate`` → ablation.png, ``demo`` → demo.png."""
import json
import os

import numpy as np
import pytest
from PIL import Image

from audio_mrkd import plots
from audio_mrkd.studies.ablation import run_ablation

SILENT = lambda *_: None  # noqa: E731


@pytest.fixture(scope="module", autouse=True)
def matplotlib_cache(tmp_path_factory):
    """matplotlib's font cache in a temporary folder, not ~/.cache (read when matplotlib is first imported)."""
    old = os.environ.get("MPLCONFIGDIR")
    os.environ["MPLCONFIGDIR"] = str(tmp_path_factory.mktemp("mplconfig"))
    yield
    if old is None:
        os.environ.pop("MPLCONFIGDIR", None)
    else:
        os.environ["MPLCONFIGDIR"] = old


def check_png(path, size=(900, 450)):
    """A PNG that decodes, has the expected size and is a picture (many colours, some of them ours)."""
    assert path.is_file()
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == size
        pixels = np.asarray(image.convert("RGB")).reshape(-1, 3)
    colours = {tuple(p) for p in pixels}
    assert len(colours) > 50  # not blank: lines, bands, anti-aliased text
    assert (pixels == 255).all(axis=1).mean() > 0.5  # a white page, mostly
    for hex_colour in (plots.REFERENCE_COLOUR, plots.VARIANT_COLOUR):
        rgb = tuple(int(hex_colour[i:i + 2], 16) for i in (1, 3, 5))
        assert rgb in colours, hex_colour
    assert not list(path.parent.glob(f".{path.name}.*"))  # the atomic write left no temporary file


def rgb(hex_colour: str) -> tuple:
    return tuple(int(hex_colour[i:i + 2], 16) for i in (1, 3, 5))


def panel_colours(path) -> tuple[set, set]:
    """The exact colours in the left half (forest plot) and the right half (learning curves) of a picture."""
    with Image.open(path) as image:
        pixels = np.asarray(image.convert("RGB"))
    half = pixels.shape[1] // 2
    return tuple({tuple(p) for p in side.reshape(-1, 3)} for side in (pixels[:, :half], pixels[:, half:]))


@pytest.fixture(scope="module")
def ablation(tmp_path_factory):
    root = tmp_path_factory.mktemp("ablation")
    (root / "recipe.yaml").write_text("""
data: {kind: synthetic, synthetic_items: 48}
model: {name: dcase_cnn}
train: {epochs: 3, batch_size: 16, lr: 0.002}
mrkd: {k: 1}
""")
    (root / "spec.yaml").write_text("config: recipe.yaml\nfolds: 0\nseeds: [0, 1, 2]\nreference: ce\n"
                                    "variants:\n  ce: [method=ce]\n  mrkd: [method=mrkd]\n")
    text = run_ablation(root / "spec.yaml", root / "abl", log=SILENT)
    records = [json.loads(line) for line in (root / "abl" / "runs.jsonl").read_text().splitlines()]
    return root, text, records


def test_mean_sem_and_pairing_by_hand():
    records = [{"variant": v, "fold": f, "seed": s, "m": value} for v, f, s, value in [
        ("ce", 0, 0, 0.50), ("ce", 0, 1, 0.60), ("ce", 1, 0, 0.70), ("ce", 1, 1, 0.65),
        ("a", 0, 0, 0.55), ("a", 0, 1, 0.58), ("a", 1, 0, 0.80), ("a", 1, 1, 0.70),
        ("b", 0, 0, 0.40), ("b", 1, 1, 0.66), ("b", 2, 0, 0.99)]]  # b: (2, 0) has no reference: left out
    diffs = plots.paired_differences(records, "ce", "m")
    assert list(diffs) == ["a", "b"]  # the reference is not a row
    assert diffs["a"] == pytest.approx([0.05, -0.02, 0.10, 0.05])
    assert diffs["b"] == pytest.approx([-0.10, 0.01])
    d = np.array([0.05, -0.02, 0.10, 0.05])
    stats = plots.mean_sem(diffs["a"])
    assert stats["mean"] == pytest.approx(d.mean())
    assert stats["std"] == pytest.approx(d.std(ddof=1))
    assert stats["sem"] == pytest.approx(d.std(ddof=1) / np.sqrt(4))
    assert (stats["n"], stats["wins"]) == (4, 3)
    assert plots.mean_sem([0.3]) == {"mean": 0.3, "std": 0.0, "sem": 0.0, "n": 1, "wins": 1}


def test_ablation_writes_forest_and_curves(ablation):
    root, text, records = ablation
    out = root / "abl"
    check_png(out / "ablation.png")
    assert text.endswith(f"picture: {out / 'ablation.png'}")
    assert "| mrkd | `method=mrkd` |" in text  # the table is still there
    md = (out / "ablation.md").read_text()
    assert md.startswith(text.split("\n\npicture:")[0]) and "](ablation.png)" in md

    # the forest plot's numbers are the paired differences of runs.jsonl, as the summary reports them
    by = {(r["variant"], r["seed"]): r for r in records}
    by_hand = np.array([by[("mrkd", s)]["last_macro_accuracy"] - by[("ce", s)]["last_macro_accuracy"]
                        for s in (0, 1, 2)])
    diffs = plots.paired_differences(records, "ce", "last_macro_accuracy", ["ce", "mrkd"])
    assert diffs["mrkd"] == pytest.approx(by_hand)
    stats = plots.mean_sem(diffs["mrkd"])
    summary = json.loads((out / "ablation.json").read_text())["mrkd"]["delta_last_macro_accuracy"]
    assert stats["mean"] == pytest.approx(summary["mean"]) == pytest.approx(by_hand.mean())
    assert stats["sem"] == pytest.approx(summary["sem"]) == pytest.approx(by_hand.std(ddof=1) / np.sqrt(3))
    assert stats["wins"] == summary["wins"]
    # the best variant is orange in the forest plot and in the curves; the reference's curve is blue
    forest, curves = panel_colours(out / "ablation.png")
    assert plots.method_colours(["ce", "mrkd"]) == {"ce": plots.REFERENCE_COLOUR, "mrkd": plots.VARIANT_COLOUR}
    assert rgb(plots.VARIANT_COLOUR) in forest and rgb(plots.VARIANT_COLOUR) in curves
    assert rgb(plots.REFERENCE_COLOUR) in curves


def test_the_forest_plot_draws_each_variants_confidence_interval(ablation, monkeypatch):
    """The forest rows carry the summary's 95 % CI and Holm p (not the standard error), a significant one marked."""
    root, _, _ = ablation
    drawn = []
    monkeypatch.setattr(plots, "draw_study", lambda path, rows, *a, **k: drawn.append(rows) or path)
    run_ablation(root / "spec.yaml", root / "abl", log=SILENT)  # complete: nothing re-run, only re-summarised
    tested = json.loads((root / "abl" / "ablation.json").read_text())["mrkd"]["delta_last_macro_accuracy"]
    (row,) = drawn[0]
    assert (row.interval.low, row.interval.high) == pytest.approx(tested["ci95"])
    assert row.interval.p_holm == pytest.approx(tested["p_holm"]) and row.interval.unit == "seed"
    assert f"[{100 * tested['ci95'][0]:+.1f}, {100 * tested['ci95'][1]:+.1f}]" in plots._numbers(row.stats, 100,
                                                                                              row.interval)
    marked = plots.Interval(0.02, 0.01, 0.03, p_holm=0.01)
    assert marked.significant and " *\n" in plots._numbers(plots.mean_sem([0.02, 0.021]), 100, marked)
    assert not plots.Interval(0.02, -0.01, 0.05, p_holm=0.2).significant


def test_ablation_curves_come_from_each_runs_metrics_json(ablation):
    root, _, records = ablation
    out = root / "abl"
    run_dirs = plots.ablation_run_dirs(out, records)
    assert all(not os.path.isabs(r["run_dir"]) for r in records)  # relative: the folder can move
    assert {v: len(d) for v, d in run_dirs.items()} == {"ce": 3, "mrkd": 3}
    histories = [json.loads((d / "metrics.json").read_text())["history"] for d in run_dirs["ce"]]
    assert all([h["epoch"] for h in history] == [1, 2, 3] for history in histories)
    c = plots.curve("ce", [plots.read_history(d) for d in run_dirs["ce"]])
    values = np.array([[h["macro_accuracy"] for h in history] for history in histories])
    assert list(c.epochs) == [1, 2, 3] and c.n_runs == 3
    assert c.mean == pytest.approx(values.mean(axis=0))
    assert c.low == pytest.approx(values.min(axis=0)) and c.high == pytest.approx(values.max(axis=0))
    # runs.jsonl from before run_dir was recorded: the same runs are found by seed and fold
    old = [{k: v for k, v in r.items() if k != "run_dir"} for r in records]
    found = plots.ablation_run_dirs(out, old)
    assert {v: sorted(d) for v, d in found.items()} == {v: sorted(d) for v, d in run_dirs.items()}


def test_a_failing_picture_never_loses_the_study(ablation, monkeypatch, capsys):
    root, text, _ = ablation
    out = root / "abl"
    (out / "ablation.md").unlink()
    monkeypatch.setattr(plots, "ablation_picture", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("no ink")))
    again = run_ablation(root / "spec.yaml", out, log=SILENT)  # complete: nothing re-run, only re-summarised
    assert again == text.split("\n\npicture:")[0]
    assert (out / "ablation.md").read_text() == again + "\n"
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("warning: could not draw") and "RuntimeError: no ink" in err[0]


def test_only_the_reference_and_no_history(tmp_path):
    """Nothing to pair and no metrics.json: still a readable picture, not a crash."""
    path = plots.draw_study(tmp_path / "x.png", [], [], reference="ce")
    with Image.open(path) as image:
        assert image.size == (900, 450)


def test_many_variants_make_a_taller_picture(tmp_path):
    rows = [plots.ForestRow(f"variant_{i}", [0.01 * i, -0.02, 0.03]) for i in range(12)]
    path = plots.draw_study(tmp_path / "many.png", rows, [], reference="ce")
    with Image.open(path) as image:
        width, height = image.size
    assert width == 900 and height > 450


def test_demo_writes_demo_png(tmp_path, monkeypatch):
    """run_demo end to end on a tiny prepared DCASE tree (CE, CE + LS and MrKD, two seeds): demo.png and its path
    printed, label smoothing named as itself in its folders, log lines and TensorBoard runs, one colour per method."""
    from audio_mrkd import demo
    from audio_mrkd.data.prepare import prepare
    from tests.conftest import make_dcase_tree

    manifests = tmp_path / "manifests"
    prepared = prepare(make_dcase_tree(tmp_path / "dev", n=36), "tiny", cache_dir=tmp_path / "cache",
                       manifest_dir=manifests, workers=1, overrides=["n_mels=32"], log=SILENT)
    (tmp_path / "recipe.yaml").write_text("""
data: {kind: audio, name: tiny}
model: {name: cp_mobile, options: {base_channels: 8, n_blocks: [1, 1, 1]}}
train: {epochs: 2, batch_size: 8, lr: 0.01, progress: false, save_checkpoints: false}
mrkd: {k: 1}
""")
    for method in ("ce", "mrkd"):
        (tmp_path / f"{method}.yaml").write_text(f"base: recipe.yaml\nname: tiny_{method}\nmethod: {method}\n")
    monkeypatch.setattr(demo, "build_and_prepare", lambda **_: prepared)
    monkeypatch.setattr(demo, "_demo_config", lambda method: tmp_path / f"{method}.yaml")
    printed = []
    text = demo.run_demo(out_dir=tmp_path / "demo", epochs=2, seeds=(0, 1), manifest_dir=manifests,
                         log=printed.append)
    png = tmp_path / "demo" / "demo.png"
    check_png(png)
    assert text.splitlines()[-1] == f"Picture (each method − CE per seed, learning curves): {png}"
    assert (tmp_path / "demo" / "results.md").read_text() == text + "\n" and printed[-1] == "\n" + text
    assert "| CE cp_mobile | 2 |" in text and "| MrKD cp_mobile | 2 |" in text
    assert "| CE + LS 0.1 cp_mobile | 2 |" in text  # the label-smoothing baseline beside them
    assert demo.EVIDENCE in text.splitlines()  # and the one sentence saying what the studies found

    out = tmp_path / "demo"
    tb_runs = sorted(str(p.parent.relative_to(out)) for p in out.rglob("events.out.tfevents.*"))
    runs = {folder: [r.split("/")[1].split("-", 2)[2] for r in tb_runs if r.startswith(folder + "/")]
            for folder in ("ce", "ce_ls", "mrkd")}  # <date>-<time>-<label>-seed<s>
    assert runs == {"ce": ["ce-seed0", "ce-seed1"], "ce_ls": ["ce_ls-seed0", "ce_ls-seed1"],
                    "mrkd": ["mrkd-seed0", "mrkd-seed1"]} and len(tb_runs) == 6
    said = [line.split(": last macro acc")[0] for line in printed if ": last macro acc" in line]
    assert said == ["tiny_ce: seed 0", "tiny_ce: seed 1", "demo_drums_ce_ls: seed 0", "demo_drums_ce_ls: seed 1",
                    "tiny_mrkd: seed 0", "tiny_mrkd: seed 1"]
    assert "demo: training CE + LS 0.1 (cp_mobile, 2 epochs, seeds [0, 1])" in printed

    # each method one colour, the same in the forest plot (CE + LS 0.1 − CE, MrKD − CE) and in the curves
    colours = plots.method_colours(["CE", *demo.DEMO_RUNS])
    assert list(colours) == ["CE", "CE + LS 0.1", "MrKD"] and len(set(colours.values())) == 3
    forest, curves = panel_colours(png)
    for label in ("CE + LS 0.1", "MrKD"):
        assert rgb(colours[label]) in forest and rgb(colours[label]) in curves, label
    assert rgb(colours["CE"]) in curves

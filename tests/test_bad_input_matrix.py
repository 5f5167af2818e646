"""The bad-input matrix: every command given a bad file, row, key or value answers with one line naming it and a
non-zero exit — never a traceback — and every earlier good output (cache, manifests, run directory, export) is
byte-identical afterwards. The table of cases and their messages is docs/reliability.md
(``python -m tests.test_bad_input_matrix`` prints it)."""
from __future__ import annotations

import io
import pickle
import re
import shutil
import sys
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from audio_mrkd.cli import main
from audio_mrkd.data import cache
from audio_mrkd.docs_blocks import read_block
from tests.conftest import make_dcase_tree

ROOT = Path(__file__).resolve().parent.parent
PROTECTED = ("cache", "man", "runs", "export")  # the earlier good outputs, compared byte for byte
PROGRESS = re.compile(r"\d+/\d+ \w+ \(\d+%\), \d+:\d\d elapsed")
# what changes from one run of the matrix to the next, written as a placeholder in the docs: a feature cache's key
# (it hashes file times) and a run folder's time stamp
VOLATILE = [(re.compile(r"\b[0-9a-f]{20}\b"), "<key>"), (re.compile(r"\b\d{8}-\d{6}\b"), "<time>")]


@dataclass
class Case:
    argv: list[str]
    needles: tuple[str, ...]   # all must be in the error line
    lines: int = 1             # predict: one line per failed file, then the count
    output: tuple[str, ...] = ()  # must be on stdout (predict: the good files are still labelled)


CASES: dict[str, callable] = {}


def case(fn):
    CASES[fn.__name__] = fn
    return fn


# ---- the world every case starts from ---------------------------------------------------------------------------
def build_world(w: Path) -> None:
    from tests.image_formats import write_cifar10, write_cinic10
    make_dcase_tree(w / "dev", n=24)
    assert main(["prepare", "--data-dir", str(w / "dev"), "--name", "tiny", "--cache-dir", str(w / "cache"),
                 "--manifest-dir", str(w / "man"), "--workers", "1", "n_mels=32"]) == 0
    assert main(["train", *train_args(w, "runs"), "train.epochs=1"]) == 0
    assert main(["export", str(run_dir(w)), "--out", str(w / "export")]) == 0
    write_cifar10(w / "images")
    write_cinic10(w / "cinic")


def train_args(w: Path, out: str = "new_runs") -> list[str]:
    return ["--config", "configs/experiments/dcase_ce.yaml", "data.name=tiny", f"data.manifest_dir={w / 'man'}",
            f"train.out_dir={w / out}", "model.name=cp_mobile", "model.options={base_channels: 8, n_blocks: [1, 1, 1]}",
            "train.epochs=1", "train.batch_size=8", "train.progress=false"]


def run_dir(w: Path) -> Path:
    return next(p for p in (w / "runs").iterdir() if p.is_dir())


def prepare_args(w: Path, *extra: str) -> list[str]:
    return ["prepare", "--data-dir", str(w / "dev"), "--name", "tiny", "--cache-dir", str(w / "cache"),
            "--manifest-dir", str(w / "man"), "--workers", "1", "n_mels=32", *extra]


def meta_row(w: Path, line: int) -> list[str]:
    return (w / "dev" / "meta.csv").read_text().splitlines()[line - 1].split("\t")


def set_line(path: Path, line: int, text: str) -> None:
    lines = path.read_text().splitlines()
    lines[line - 1] = text
    path.write_text("\n".join(lines) + "\n")


def clip(w: Path, line: int) -> Path:
    return w / "dev" / meta_row(w, line)[0]


def features(w: Path) -> Path:
    entry = next(p for p in (w / "cache" / "tiny").iterdir() if p.is_dir())
    return entry / cache.FEATURES


# ---- prepare ------------------------------------------------------------------------------------------------------
@case
def truncated_wav(w):
    path = clip(w, 3)
    path.write_bytes(path.read_bytes()[:30])
    return Case(prepare_args(w), (path.name, "meta.csv line 3"))


@case
def empty_wav(w):
    sf.write(clip(w, 4), np.zeros(0), 16000)
    return Case(prepare_args(w), (clip(w, 4).name, "meta.csv line 4", "empty audio"))


@case
def nan_wav(w):
    x = np.zeros(16000, dtype=np.float32)
    x[5] = np.nan
    sf.write(clip(w, 5), x, 16000, subtype="FLOAT")
    return Case(prepare_args(w), (clip(w, 5).name, "meta.csv line 5", "NaN"))


@case
def non_audio_wav(w):
    clip(w, 6).write_text("hello, this is text, not audio\n" * 20)
    return Case(prepare_args(w), (clip(w, 6).name, "meta.csv line 6", "unreadable audio"))


@case
def missing_meta_csv(w):
    (w / "dev" / "meta.csv").unlink()
    return Case(prepare_args(w), ("meta.csv",))


@case
def missing_fold_file(w):
    (w / "dev" / "evaluation_setup" / "fold1_train.csv").unlink()
    return Case(prepare_args(w), ("fold1_train.csv",))


@case
def bad_meta_header(w):
    set_line(w / "dev" / "meta.csv", 1, "file\tlabel\tidentifier\tsource_label")
    return Case(prepare_args(w), ("meta.csv line 1", "wrong header"))


@case
def duplicate_meta_row(w):
    set_line(w / "dev" / "meta.csv", 8, "\t".join(meta_row(w, 3)))
    return Case(prepare_args(w), ("meta.csv line 8", "duplicate filename"))


@case
def fold_label_contradicts_meta(w):
    fold = w / "dev" / "evaluation_setup" / "fold1_train.csv"
    name, label = fold.read_text().splitlines()[2].split("\t")
    other = next(c for c in ("metro", "park", "street") if c != label)
    set_line(fold, 3, f"{name}\t{other}")
    return Case(prepare_args(w), ("fold1_train.csv line 3", name, "contradicts meta.csv"))


@case
def missing_audio(w):
    clip(w, 7).unlink()
    return Case(prepare_args(w), ("meta.csv line 7", clip(w, 7).name, "not found"))


@case
def path_escape(w):
    sf.write(w / "outside.wav", np.zeros(16000), 16000)
    set_line(w / "dev" / "meta.csv", 9, "\t".join(["../outside.wav", *meta_row(w, 9)[1:]]))
    return Case(prepare_args(w), ("meta.csv line 9", "../outside.wav", "escapes the data directory"))


@case
def feature_key_typo(w):
    return Case(prepare_args(w, "n_melz=32"), ("n_melz",))


@case
def feature_bad_value(w):
    return Case(prepare_args(w, "n_mels=-4"), ("n_mels",))


@case
def unknown_device(w):
    set_line(w / "dev" / "meta.csv", 10, "\t".join([*meta_row(w, 10)[:3], "phone7"]))
    return Case(prepare_args(w), ("meta.csv line 10", "'phone7'"))


@case
def missing_data_dir(w):
    shutil.rmtree(w / "dev")
    return Case(prepare_args(w), (str(w / "dev"), "not found"))


# ---- train --------------------------------------------------------------------------------------------------------
def train_override_case(name: str, overrides: list[str], needles: tuple[str, ...]) -> None:
    """A case that trains with bad dotted overrides."""
    CASES[name] = lambda w: Case(["train", *train_args(w), *overrides], needles)


for _name, _overrides, _needles in [
    ("config_key_typo", ["train.epohcs=2"], ("train.epohcs", "unknown config key")),
    ("config_wrong_type", ["train.epochs=many"], ("train.epochs", "expected an integer")),
    ("config_out_of_range", ["train.lr=-0.1"], ("train.lr", "-0.1")),
    ("config_bad_choice", ["train.schedule=sawtooth"], ("train.schedule", "'sawtooth'")),
    ("mrkd_k_zero", ["method=mrkd", "mrkd.k=0"], ("mrkd.k", "integer >= 1")),
    ("unknown_method", ["method=magic"], ("method", "'magic'")),
    ("unprepared_dataset", ["data.name=never_prepared"], ("never_prepared",)),
]:
    train_override_case(_name, _overrides, _needles)


@case
def yaml_syntax_error(w):
    bad = w / "bad.yaml"
    bad.write_text("train:\n  epochs: [1, 2\n")
    return Case(["train", "--config", str(bad)], (str(bad), "not valid YAML"))


@case
def missing_config_file(w):
    return Case(["train", "--config", str(w / "none.yaml")], ("none.yaml", "not found"))


@case
def truncated_cache(w):
    path = features(w)
    path.write_bytes(path.read_bytes()[:-512])
    return Case(["train", *train_args(w)], (str(path), "truncated or damaged"))


@case
def changed_cache(w):
    path = features(w)
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x55
    path.write_bytes(bytes(data))
    return Case(["train", *train_args(w)], (str(path), "checksum differs"))


@case
def teacher_logits_nan(w):
    names = [r.split(",")[0] for r in (w / "man" / "tiny" / "train.csv").read_text().splitlines()[1:]]
    rows = [f"{n},1,2,3" for n in names]
    rows[1] = f"{names[1]},1,nan,3"
    (w / "t.csv").write_text("filename,metro,park,street\n" + "\n".join(rows) + "\n")
    return Case(["train", *train_args(w), "method=kd", f"teacher.logits={w / 't.csv'}"],
                ("t.csv", "line 3", names[1], "not a finite number"))


@case
def teacher_logits_wrong_classes(w):
    (w / "t.csv").write_text("filename,metro,park,beach\n")
    return Case(["train", *train_args(w), "method=kd", f"teacher.logits={w / 't.csv'}"],
                ("t.csv", "missing: street"))


@case
def teacher_logits_origin_damaged(w):
    names = [r.split(",")[1] for r in (w / "man" / "tiny" / "train.csv").read_text().splitlines()[1:]]
    (w / "t.csv").write_text("filename,metro,park,street\n" + "".join(f"{n},1,2,3\n" for n in names))
    (w / "t.csv.origin.json").write_text('{"format": 1, "logits_sha256": "' + "0" * 64 + '", "checkpoint": '
                                         '"sometimes", "split": "all", "runs": []}')
    return Case(["train", *train_args(w), "method=kd", f"teacher.logits={w / 't.csv'}"],
                ("t.csv.origin.json", "key 'checkpoint'", "'sometimes'"))


# ---- resume, evaluate -------------------------------------------------------------------------------------------
def resume(w):
    return ["train", "--resume", str(run_dir(w))]


@case
def foreign_checkpoint(w):
    torch.save({"state_dict": {"w": torch.zeros(2)}}, run_dir(w) / "checkpoints" / "last.pt")
    return Case(resume(w), ("last.pt", "not a checkpoint of audio-mrkd"))


@case
def truncated_checkpoint(w):
    path = run_dir(w) / "checkpoints" / "last.pt"
    path.write_bytes(path.read_bytes()[:100])
    return Case(resume(w), ("last.pt", "not a loadable checkpoint"))


class _Exploit:
    def __reduce__(self):  # eval, not print: Ray (imported by the cluster tests) replaces builtins.print
        return (eval, ("print('code ran while loading a checkpoint')",))


@case
def malicious_checkpoint(w):
    path = run_dir(w) / "checkpoints" / "last.pt"
    torch.save({"model": _Exploit()}, path)
    return Case(resume(w), ("last.pt", "not a loadable checkpoint"))


@case
def checkpoint_of_another_model(w):
    path = run_dir(w) / "checkpoints" / "last.pt"
    state = torch.load(path, weights_only=True)
    name = next(k for k, v in state["model"].items() if v.dim() == 4)
    state["model"][name] = torch.zeros(1, 1, 1, 1)
    torch.save(state, path)
    return Case(resume(w), ("last.pt", name, "do not fit the run's model"))


@case
def resume_not_a_run_dir(w):
    return Case(["train", "--resume", str(w / "dev")], (str(w / "dev"), "not a run directory"))


@case
def evaluate_unknown_split(w):
    return Case(["evaluate", str(run_dir(w)), "--split", "nowhere"], ("nowhere", "not found"))


@case
def evaluate_not_a_run_dir(w):
    return Case(["evaluate", str(w / "dev")], (str(w / "dev"), "not a run directory"))


# ---- export, predict -----------------------------------------------------------------------------------------------
@case
def export_not_a_run_dir(w):
    return Case(["export", str(w / "dev"), "--out", str(w / "export2")], (str(w / "dev"), "not a run directory"))


@case
def export_bad_calibration(w):
    return Case(["export", str(run_dir(w)), "--out", str(w / "export2"), "--int8", "--calibration", "0"],
                ("--calibration", "0"))


@case
def predict_non_onnx_model(w):
    fake = w / "fake" / "model.onnx"
    shutil.copytree(w / "export", fake.parent)
    fake.write_bytes(b"not a protobuf at all")
    return Case(["predict", str(fake), str(clip(w, 2))], (str(fake), "not a loadable ONNX model"))


@case
def predict_corrupt_wav_among_good(w):
    bad = w / "corrupt.wav"
    bad.write_bytes(b"RIFF....WAVEfmt garbage")
    good = [str(clip(w, 2)), str(clip(w, 3))]
    return Case(["predict", str(w / "export" / "model.onnx"), good[0], str(bad), good[1]],
                ("corrupt.wav",), lines=2, output=tuple(good))


@case
def predict_missing_model(w):
    return Case(["predict", str(w / "none.onnx"), str(clip(w, 2))], ("none.onnx", "not found"))


# ---- images --------------------------------------------------------------------------------------------------------
def image_train(w, kind: str, root: Path) -> list[str]:
    return ["train", "--config", "configs/experiments/cifar10_resnet18_ce.yaml", f"data.kind={kind}",
            f"data.root={root}", "train.epochs=1", f"train.out_dir={w / 'new_runs'}", "train.progress=false"]


@case
def malicious_cifar_pickle(w):
    batch = next((w / "images").rglob("data_batch_1"))
    batch.write_bytes(pickle.dumps(_Exploit()))
    return Case(image_train(w, "cifar10", w / "images"), ("data_batch_1",))


@case
def missing_cifar_batch(w):
    batch = next((w / "images").rglob("data_batch_2"))
    batch.unlink()
    return Case(image_train(w, "cifar10", w / "images"), ("data_batch_2",))


@case
def corrupt_cinic_png(w):
    png = next((w / "cinic").rglob("*.png"))
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + b"broken" * 10)
    return Case(image_train(w, "cinic10", w / "cinic"), (png.name,))


@case
def wrong_size_cinic_png(w):
    from PIL import Image
    png = next((w / "cinic").rglob("*.png"))
    Image.new("RGB", (16, 16)).save(png)
    return Case(image_train(w, "cinic10", w / "cinic"), (png.name, "16"))


# ---- ablate -------------------------------------------------------------------------------------------------------
def ablation(w: Path, reference: str = "ce", variants: str = "  ce: [method=ce]\n",
             records: str | None = None, *extra: str) -> list[str]:
    """``ablate`` on a spec over dcase_ce.yaml (no CV), with ``records`` as its runs.jsonl when given."""
    spec = w / "spec.yaml"
    spec.write_text(f"config: {ROOT / 'configs/experiments/dcase_ce.yaml'}\nreference: {reference}\nfolds: 0\n"
                    f"variants:\n{variants}")
    if records is not None:
        (w / "abl").mkdir()
        (w / "abl" / "runs.jsonl").write_text(records)
    return ["ablate", str(spec), "--out", str(w / "abl"), *extra]


@case
def ablation_unknown_reference(w):
    return Case(ablation(w, "nope"), ("reference", "'nope'"))


@case
def ablation_record_log_damaged(w):
    records = '{"variant": "ce", "fold": 0, "seed": 0}\nnot json\n{"x": 1}\n'
    return Case(ablation(w, records=records), ("runs.jsonl", "line 2", "not a JSON record"))


@case
def ablation_record_made_with_another_recipe(w):
    records = '{"variant": "ce", "fold": 0, "seed": 0, "recipe": "0123456789abcdef"}\n'
    return Case(ablation(w, records=records), ("runs.jsonl", "line 1", "ce, fold 0, seed 0", "another recipe"))


@case
def ablation_reuse_folder_without_records(w):
    return Case(ablation(w, "ce", "  ce: [method=ce]\n", None, "--reuse", str(w / "runs")),
                ("--reuse", str(w / "runs"), "no runs.jsonl"))


@case
def ablation_unknown_variant_chosen(w):
    return Case(ablation(w, "ce", "  ce: [method=ce]\n  mrkd: [method=mrkd]\n", None, "--variants", "mrdk"),
                ("--variants", "'mrdk'", "ce, mrkd"))


# ---- the test -------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    w = tmp_path_factory.mktemp("world")
    with redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()):
        build_world(w)
    return w


def snapshot(w: Path) -> dict[str, bytes]:
    """Every file of the earlier outputs (lock files, which hold nothing, left out)."""
    return {str(p.relative_to(w)): p.read_bytes() for name in PROTECTED for p in sorted((w / name).rglob("*"))
            if p.is_file() and not p.name.endswith(".lock")}


def relocate(world: Path, w: Path) -> None:
    """The copy's manifests, run and export name the copy's own folders (they hold absolute paths)."""
    for name in PROTECTED:
        for path in (w / name).rglob("*"):
            if path.suffix in (".json", ".yaml") and path.is_file():
                path.write_text(path.read_text().replace(str(world), str(w)))


def run_case(name: str, world: Path, tmp_path: Path) -> tuple[int, str, Case, dict, dict]:
    w = tmp_path / "w"
    shutil.copytree(world, w, symlinks=True)
    relocate(world, w)
    spec = CASES[name](w)
    before = snapshot(w)
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main(spec.argv)
    assert all(text in out.getvalue() for text in spec.output), out.getvalue()
    return code, err.getvalue().strip(), spec, before, snapshot(w)


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input(world, tmp_path, name):
    code, err, spec, before, after = run_case(name, world, tmp_path)
    assert code != 0, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if not PROGRESS.search(line)]  # progress lines are not errors
    assert len(lines) == spec.lines, lines
    assert all(needle in lines[0] for needle in spec.needles), (lines[0], spec.needles)
    assert after == before  # the earlier cache, manifests, run and export are byte-identical
    documented = documented_rows().get(name.replace("_", " "))
    assert documented == table_row(name, code, err, spec, tmp_path), \
        f"docs/reliability.md: the row of {name!r} is not what the command prints now; {REGENERATE}"


def test_the_matrix_has_at_least_forty_cases():
    assert len(CASES) >= 40


def test_the_docs_table_lists_every_case_once():
    assert list(documented_rows()) == [name.replace("_", " ") for name in CASES], REGENERATE


RELIABILITY = Path(__file__).resolve().parent.parent / "docs" / "reliability.md"
REGENERATE = ("regenerate the table between its markers: `python -m tests.test_bad_input_matrix > /tmp/t.md`, "
              "then paste it")


def documented_rows() -> dict[str, str]:
    """docs/reliability.md's bad-input table (its generated block): case name → its whole row."""
    rows = [line for line in read_block(RELIABILITY, "bad input table").splitlines() if line.startswith("| ")][1:]
    return {row.split(" | ")[0].lstrip("| ").strip(): row for row in rows}


def table_row(name: str, code: int, err: str, spec, tmp: Path) -> str:
    message = [line for line in err.splitlines() if not PROGRESS.search(line)][0]
    message = message.replace(str(tmp / "w"), "…")
    for pattern, placeholder in VOLATILE:
        message = pattern.sub(placeholder, message)
    message = message.replace("|", "\\|")
    return f"| {name.replace('_', ' ')} | `{spec.argv[0]}` | {code} | {message} |"


def table(world: Path, tmp: Path) -> str:
    """The Markdown table of docs/reliability.md: case, command, exit code, message."""
    rows = ["| case | command | exit | message |", "|---|---|---|---|"]
    for i, name in enumerate(CASES):
        code, err, spec, _, _ = run_case(name, world, tmp / str(i))
        rows.append(table_row(name, code, err, spec, tmp / str(i)))
    return "\n".join(rows)


if __name__ == "__main__":
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        w = Path(tmp) / "world"
        with redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()):
            build_world(w)
        sys.stdout.write(table(w, Path(tmp)) + "\n")


# ---- the other side: valid but unusual audio ---------------------------------------------------------------------
def _tone(rate: int, seconds: float) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (0.3 * np.sin(2 * np.pi * 440 * t) + 0.2 * np.sin(2 * np.pi * 1900 * t)).astype(np.float32)


def _unusual(path: Path, form: str) -> tuple[Path, np.ndarray, int]:
    """Write ``form`` of a clip at ``path`` → (written path, the plain mono float signal it decodes to, its rate)."""
    rate, x = 32000, _tone(32000, 1.0)
    if form == "stereo":
        sf.write(path, np.stack([x, x], 1), rate, subtype="FLOAT")
    elif form in ("pcm_u8", "pcm_24", "float"):
        sf.write(path, x, rate, subtype={"pcm_u8": "PCM_U8", "pcm_24": "PCM_24", "float": "FLOAT"}[form])
        x = sf.read(path, dtype="float32")[0]  # what the file holds, exactly
    elif form in ("48k", "16k"):
        rate = 48000 if form == "48k" else 16000
        sf.write(path, _tone(rate, 1.0), rate, subtype="FLOAT")
    elif form in ("short", "long"):
        x = _tone(rate, 0.4 if form == "short" else 2.5)
        sf.write(path, x, rate, subtype="FLOAT")
        x = np.pad(x, (0, max(0, rate - len(x))))[:rate]  # the plain form: padded / cut to the clip length
    elif form == "upper_case":
        path = path.with_suffix(".WAV")
        sf.write(path, x, rate, subtype="FLOAT")
    return path, x, rate


FORMS = ["stereo", "pcm_u8", "pcm_24", "float", "48k", "16k", "short", "long", "upper_case"]


def test_valid_unusual_audio_is_accepted_and_gives_the_plain_features(tmp_path):
    """Each unusual form of a clip, through prepare, gives the features of its plain form (mono float at the
    front-end's rate and length, through the same front-end): equal up to one float16 step, or within 0.05 (log
    units, bins within 6 of the peak) where a resampler is involved."""
    from audio_mrkd.data.frontend import compute_logmel, load_frontend_config
    tree = make_dcase_tree(tmp_path / "dev", n=18)
    meta_path = tree / "meta.csv"
    plain, names = {}, {}
    for i, form in enumerate(FORMS):
        old = meta_path.read_text().splitlines()[i + 1].split("\t")[0]
        (tree / old).unlink()
        path, x, _ = _unusual(tree / old, form)
        new = str(path.relative_to(tree))
        for f in [meta_path, *(tree / "evaluation_setup").iterdir()]:
            f.write_text(f.read_text().replace(old, new))
        sf.write(tmp_path / f"plain_{form}.wav", x if form not in ("48k", "16k") else _tone(32000, 1.0), 32000,
                 subtype="FLOAT")
        plain[form], names[form] = tmp_path / f"plain_{form}.wav", new
    assert main(["prepare", "--data-dir", str(tree), "--name", "odd", "--cache-dir", str(tmp_path / "cache"),
                 "--manifest-dir", str(tmp_path / "man"), "--workers", "1", "n_mels=32"]) == 0
    info = __import__("json").loads((tmp_path / "man" / "odd" / "features.json").read_text())
    entry = Path(info["cache_entry"])
    index = (entry / cache.INDEX).read_text().splitlines()
    rows = {line.split(",")[1]: int(line.split(",")[0]) for line in index[1:]}
    array = cache.open_features(entry)
    cfg = load_frontend_config(None, ["n_mels=32"])
    for form in FORMS:
        ours = np.asarray(array[rows[names[form]]], dtype=np.float32)
        ref = compute_logmel([plain[form]], cfg)[0].astype(np.float16).astype(np.float32)  # the cache is float16
        if form in ("48k", "16k"):
            near_peak = ref > ref.max() - 6
            assert np.abs(ours - ref)[near_peak].max() < 0.05, form
        else:  # the same samples: equal up to one float16 step (the cache's precision)
            np.testing.assert_allclose(ours, ref, rtol=1e-3, atol=1e-3, err_msg=form)

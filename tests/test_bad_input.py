"""Bad input to prepare: one line naming the file and row, exit code 2, nothing already written is touched."""
import numpy as np
import pytest
import soundfile as sf

from audio_mrkd.cli import main
from audio_mrkd.data import cache


def run(tree, dirs, capsys, *extra):
    code = main(["prepare", "--data-dir", str(tree), "--name", "dev", "--cache-dir", str(dirs["cache"]),
                 "--manifest-dir", str(dirs["manifests"]), "--workers", "1", *extra])
    err = capsys.readouterr().err.strip()
    return code, err


def edit_line(path, lineno, new):
    lines = path.read_text().splitlines()
    lines[lineno - 1] = new
    path.write_text("\n".join(lines) + "\n")


def meta_line(tree, lineno):
    return (tree / "meta.csv").read_text().splitlines()[lineno - 1]


@pytest.fixture
def prepared(dcase_tree, dirs, capsys):
    """A tree prepared once successfully, so each case can check that the earlier output survives."""
    code, _ = run(dcase_tree, dirs, capsys)
    assert code == 0
    manifests = {p.name: p.read_bytes() for p in (dirs["manifests"] / "dev").iterdir()}
    return dcase_tree, manifests


def assert_failed_cleanly(code, err, dirs, manifests, *needles):
    assert code == 2
    assert len(err.splitlines()) == 1, err
    for needle in needles:
        assert needle in err, err
    after = {p.name: p.read_bytes() for p in (dirs["manifests"] / "dev").iterdir()}
    assert after == manifests  # earlier manifests intact
    leftovers = [p for p in (dirs["cache"] / "dev").iterdir() if ".tmp" in p.name]
    assert leftovers == []
    for entry in (dirs["cache"] / "dev").iterdir():
        if entry.is_dir() and not cache.is_complete(entry):
            pytest.fail(f"incomplete cache entry left: {entry}")


def test_missing_audio_file(prepared, dirs, capsys):
    tree, manifests = prepared
    name = meta_line(tree, 5).split("\t")[0]
    (tree / name).unlink()
    assert_failed_cleanly(*run(tree, dirs, capsys), dirs, manifests, "meta.csv line 5", name, "not found")


def test_unreadable_audio(prepared, dirs, capsys):
    tree, manifests = prepared
    name = meta_line(tree, 6).split("\t")[0]
    (tree / name).write_bytes(b"this is not audio at all" * 10)
    assert_failed_cleanly(*run(tree, dirs, capsys), dirs, manifests, name, "meta.csv line 6", "unreadable audio")


def test_empty_audio(prepared, dirs, capsys):
    tree, manifests = prepared
    name = meta_line(tree, 7).split("\t")[0]
    sf.write(tree / name, np.zeros(0), 16000)
    assert_failed_cleanly(*run(tree, dirs, capsys), dirs, manifests, name, "meta.csv line 7", "empty audio")


def test_nan_audio(prepared, dirs, capsys):
    tree, manifests = prepared
    name = meta_line(tree, 8).split("\t")[0]
    x = np.zeros(16000, dtype=np.float32)
    x[100] = np.nan
    sf.write(tree / name, x, 16000, subtype="FLOAT")
    assert_failed_cleanly(*run(tree, dirs, capsys), dirs, manifests, name, "meta.csv line 8", "NaN")


def test_wrong_header(prepared, dirs, capsys):
    tree, manifests = prepared
    edit_line(tree / "meta.csv", 1, "file\tlabel\tidentifier\tsource_label")
    assert_failed_cleanly(*run(tree, dirs, capsys), dirs, manifests, "meta.csv line 1", "wrong header")


def test_comma_separated_meta_is_a_wrong_header(prepared, dirs, capsys):
    tree, manifests = prepared
    text = (tree / "meta.csv").read_text().replace("\t", ",")
    (tree / "meta.csv").write_text(text)
    assert_failed_cleanly(*run(tree, dirs, capsys), dirs, manifests, "meta.csv line 1", "TAB-separated")


def test_fold_label_absent_from_meta(prepared, dirs, capsys):
    tree, manifests = prepared
    fold = tree / "evaluation_setup/fold1_train.csv"
    name = fold.read_text().splitlines()[2].split("\t")[0]
    edit_line(fold, 3, f"{name}\tairport")
    assert_failed_cleanly(*run(tree, dirs, capsys), dirs, manifests, "fold1_train.csv line 3", "'airport'",
                          "does not occur in meta.csv")


def test_fold_file_not_in_meta(prepared, dirs, capsys):
    tree, manifests = prepared
    edit_line(tree / "evaluation_setup/fold1_evaluate.csv", 2, "audio/ghost.wav\tpark")
    assert_failed_cleanly(*run(tree, dirs, capsys), dirs, manifests, "fold1_evaluate.csv line 2",
                          "audio/ghost.wav")


def test_duplicate_filename(prepared, dirs, capsys):
    tree, manifests = prepared
    edit_line(tree / "meta.csv", 9, meta_line(tree, 4))
    assert_failed_cleanly(*run(tree, dirs, capsys), dirs, manifests, "meta.csv line 9", "duplicate filename",
                          "first at line 4")


def test_unknown_device(prepared, dirs, capsys):
    tree, manifests = prepared
    parts = meta_line(tree, 10).split("\t")
    edit_line(tree / "meta.csv", 10, "\t".join(parts[:3] + ["phone7"]))
    assert_failed_cleanly(*run(tree, dirs, capsys), dirs, manifests, "meta.csv line 10", "unknown device",
                          "'phone7'")


def test_path_escaping_data_dir(prepared, dirs, capsys, tmp_path):
    tree, manifests = prepared
    sf.write(tmp_path / "outside.wav", np.zeros(16000), 16000)
    parts = meta_line(tree, 11).split("\t")
    edit_line(tree / "meta.csv", 11, "\t".join(["../outside.wav"] + parts[1:]))
    assert_failed_cleanly(*run(tree, dirs, capsys), dirs, manifests, "meta.csv line 11", "../outside.wav",
                          "escapes the data directory")


def test_unwritable_cache_dir(prepared, dirs, capsys, tmp_path):
    tree, manifests = prepared
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("a file where the cache folder should be")
    code, err = main(["prepare", "--data-dir", str(tree), "--name", "dev", "--cache-dir", str(blocker / "c"),
                      "--manifest-dir", str(dirs["manifests"])]), capsys.readouterr().err.strip()
    assert_failed_cleanly(code, err, dirs, manifests, str(blocker / "c"), "not writable")


def test_missing_data_dir(dirs, capsys, tmp_path):
    code, err = run(tmp_path / "nowhere", dirs, capsys)
    assert code == 2 and "nowhere" in err and "not found" in err and len(err.splitlines()) == 1

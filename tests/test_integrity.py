"""Integrity on open: a damaged feature cache or a checkpoint of something else is one line, never a traceback."""
import json
import shutil

import pytest
import torch

from audio_mrkd.cli import main
from audio_mrkd.data import cache
from audio_mrkd.data.prepare import prepare
from tests.conftest import make_dcase_tree

TRAIN = ["data.name=tiny", "model.name=cp_mobile", "model.options={base_channels: 8, n_blocks: [1, 1, 1]}",
         "train.epochs=2", "train.batch_size=8", "train.progress=false"]


@pytest.fixture
def prepared(tmp_path):
    tree = make_dcase_tree(tmp_path / "dev", n=24)
    result = prepare(tree, "tiny", cache_dir=tmp_path / "cache", manifest_dir=tmp_path / "manifests", workers=1,
                     overrides=["n_mels=32"], log=lambda *_: None)
    return tmp_path, result.cache_entry


def train(root, capsys, *extra) -> tuple[int, str]:
    code = main(["train", "--config", "configs/experiments/dcase_ce.yaml", *TRAIN,
                 f"data.manifest_dir={root / 'manifests'}", f"train.out_dir={root / 'runs'}", *extra])
    return code, capsys.readouterr().err.strip()


def one_line(err: str, *needles: str) -> None:
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err


def test_cache_records_size_and_checksum(prepared):
    _, entry = prepared
    info = json.loads((entry / cache.INFO).read_text())
    assert info["array"] == cache.array_record(entry / cache.FEATURES)
    assert info["array"]["bytes"] == (entry / cache.FEATURES).stat().st_size


def test_truncated_feature_cache(prepared, capsys):
    root, entry = prepared
    path = entry / cache.FEATURES
    path.write_bytes(path.read_bytes()[:-1000])
    code, err = train(root, capsys)
    assert code == 2
    one_line(err, str(path), "truncated or damaged", "audio-mrkd prepare")


def test_changed_feature_cache(prepared, capsys):
    root, entry = prepared
    path = entry / cache.FEATURES
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF  # the last sampled block: same size, other content
    path.write_bytes(bytes(data))
    code, err = train(root, capsys)
    assert code == 2
    one_line(err, str(path), "checksum differs")


def test_cache_whose_header_is_garbage(prepared, capsys):
    root, entry = prepared
    (entry / cache.FEATURES).write_bytes(b"not an npy file" * 100)
    code, err = train(root, capsys)
    assert code == 2
    one_line(err, "not a readable feature array")


@pytest.fixture
def run_dir(prepared, capsys):
    root, _ = prepared
    code, _ = train(root, capsys, "train.epochs=1")
    assert code == 0
    return next(p for p in (root / "runs").iterdir() if p.is_dir())


@pytest.mark.parametrize("content, message", [
    ({"weights": torch.zeros(3)}, "not a checkpoint of audio-mrkd (no 'model' weights; holds weights)"),
    ([1, 2, 3], "not a checkpoint of audio-mrkd (no 'model' weights; holds list)"),
    ({"model": {"conv.weight": torch.zeros(2)}}, "not a training checkpoint of audio-mrkd (missing optimizer"),
], ids=["foreign_dict", "foreign_list", "weights_only"])
def test_resume_from_a_checkpoint_of_something_else(run_dir, capsys, content, message):
    path = run_dir / "checkpoints" / "last.pt"
    torch.save(content, path)
    assert main(["train", "--resume", str(run_dir)]) == 2
    one_line(capsys.readouterr().err.strip(), str(path), message)


def test_checkpoint_of_another_model(run_dir, tmp_path, capsys):
    """A checkpoint whose tensors have other shapes (another width) is refused by resume, evaluate and export."""
    path = run_dir / "checkpoints" / "last.pt"
    state = torch.load(path, weights_only=True)
    name = next(k for k, v in state["model"].items() if v.dim() == 4)
    state["model"][name] = torch.zeros(3, 3, 3, 3)
    torch.save(state, path)
    shutil.copy(path, run_dir / "checkpoints" / "best.pt")
    assert main(["train", "--resume", str(run_dir)]) == 2
    one_line(capsys.readouterr().err.strip(), str(path), f"tensor {name} is (3, 3, 3, 3)", "'cp_mobile'")
    assert main(["evaluate", str(run_dir)]) == 2
    one_line(capsys.readouterr().err.strip(), "best.pt", "do not fit the run's model")
    assert main(["export", str(run_dir), "--out", str(tmp_path / "export")]) == 2
    one_line(capsys.readouterr().err.strip(), "best.pt", "do not fit the run's model")


def test_truncated_checkpoint(run_dir, capsys):
    path = run_dir / "checkpoints" / "last.pt"
    path.write_bytes(path.read_bytes()[:200])
    assert main(["train", "--resume", str(run_dir)]) == 2
    one_line(capsys.readouterr().err.strip(), str(path), "not a loadable checkpoint")


def test_full_disk_while_writing_a_checkpoint_keeps_the_previous_one(run_dir):
    """A file-size limit on the child process (RLIMIT_FSIZE, SIGXFSZ ignored: writes fail with EFBIG, as on a full
    disk) makes the next checkpoint write fail: one line, non-zero exit, last.pt byte-identical."""
    import subprocess
    import sys
    last = run_dir / "checkpoints" / "last.pt"
    before = last.read_bytes()
    saved = run_dir / "config.yaml"
    saved.write_text(saved.read_text().replace("epochs: 1", "epochs: 2"))
    limit = len(before) // 2
    code = (f"import resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
            f"resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit})); "
            f"from audio_mrkd.cli import main; sys.exit(main(['train', '--resume', {str(run_dir)!r}]))")
    child = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert child.returncode != 0
    err = child.stderr.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in child.stderr, child.stderr
    assert "could not be written" in err[0] and "the previous checkpoint is kept" in err[0], err
    assert last.read_bytes() == before
    assert not [p for p in last.parent.iterdir() if p.name.endswith(".tmp")]


def test_evaluate_and_export_rebuild_the_fold_a_cv_run_held_out(prepared, capsys):
    """A cross-validation run evaluated again scores exactly its held-out fold: metrics.json is reproduced."""
    root, _ = prepared
    code, _ = train(root, capsys, "data.cv_folds=3", "data.cv_fold=1", "data.cv_pool=all", "train.epochs=1")
    assert code == 0
    run_dir = next(p for p in (root / "runs").iterdir() if p.is_dir())
    info = json.loads((run_dir / "data.json").read_text())
    assert (info["cv_folds"], info["cv_fold"], info["cv_pool"]) == (3, 1, "all")
    recorded = json.loads((run_dir / "metrics.json").read_text())["last"]
    assert main(["evaluate", str(run_dir), "--checkpoint", "last"]) == 0
    assert "on fold 1 of 3 (pool all)" in capsys.readouterr().out
    again = json.loads((run_dir / "eval-fold1of3-last.json").read_text())
    assert again["n_items"] == recorded["n_items"] == info["n_eval"]
    for key in ("accuracy", "macro_accuracy", "log_loss"):
        assert again[key] == pytest.approx(recorded[key], abs=1e-6), key
    from audio_mrkd.export.commands import export_run
    report = export_run(run_dir, root / "export", checkpoint="last", log=lambda *_: None).parity
    assert report["items"] == info["n_eval"] and report["split"] == "fold 1 of 3 (pool all)"


def test_full_disk_while_building_a_cache_keeps_the_previous_one(prepared):
    """prepare again (a changed clip: a new cache entry) under a file-size limit smaller than the new array: one
    line naming the cache, non-zero exit, the previous cache and manifests byte-identical, nothing half-built."""
    import subprocess
    import sys
    root, entry = prepared
    before = {p: p.read_bytes() for folder in (entry, root / "manifests") for p in folder.rglob("*") if p.is_file()}
    clip = next((root / "dev" / "audio").iterdir())
    clip.write_bytes(clip.read_bytes())  # same content, new mtime: a new cache key
    limit = (entry / cache.FEATURES).stat().st_size // 2
    args = ["prepare", "--data-dir", str(root / "dev"), "--name", "tiny", "--cache-dir", str(root / "cache"),
            "--manifest-dir", str(root / "manifests"), "--workers", "1", "n_mels=32"]
    code = (f"import resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
            f"resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit})); "
            f"from audio_mrkd.cli import main; sys.exit(main({args!r}))")
    child = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    err = [line for line in child.stderr.strip().splitlines() if "elapsed" not in line]
    assert child.returncode != 0 and "Traceback" not in child.stderr, child.stderr
    assert len(err) == 1 and str(root / "cache") in err[0], err
    after = {p: p.read_bytes() for folder in (entry, root / "manifests") for p in folder.rglob("*") if p.is_file()}
    assert after == before
    assert [p for p in (root / "cache" / "tiny").iterdir() if p.is_dir()] == [entry]

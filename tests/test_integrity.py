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

"""prepare: manifests, cache content, reuse and invalidation, interruption, the dataset API."""
import json
import os

import numpy as np
import pandas as pd
import pytest
import torch

from audio_mrkd.cli import main
from audio_mrkd.data import cache, prepare as prepare_mod
from audio_mrkd.data.frontend import FrontendConfig, compute_logmel
from audio_mrkd.data.prepare import prepare
from audio_mrkd.data.splits import BatchLoader, load_split
from tests.conftest import make_dcase_tree


def run_prepare(tree, dirs, name="dev", **kw):
    return prepare(tree, name, cache_dir=dirs["cache"], manifest_dir=dirs["manifests"], log=lambda *_: None, **kw)


def test_manifests_content_and_device_groups(dcase_tree, dirs):
    result = run_prepare(dcase_tree, dirs)
    meta = pd.read_csv(dcase_tree / "meta.csv", sep="\t")
    train = pd.read_csv(result.manifest_dir / "train.csv", dtype=str)
    evaluate = pd.read_csv(result.manifest_dir / "evaluate.csv", dtype=str)
    test = pd.read_csv(result.manifest_dir / "test.csv", dtype=str)
    assert list(train.columns) == ["row", "filename", "scene_label", "identifier", "source_label", "device_group"]
    fold_train = pd.read_csv(dcase_tree / "evaluation_setup/fold1_train.csv", sep="\t")
    assert train["filename"].tolist() == fold_train["filename"].tolist()
    assert set(train["identifier"]).isdisjoint(set(evaluate["identifier"]))
    assert test["filename"].tolist() == evaluate["filename"].tolist()
    merged = train.merge(meta, on="filename", suffixes=("", "_meta"))
    assert (merged["scene_label"] == merged["scene_label_meta"]).all()
    groups = dict(zip(pd.concat([train, evaluate])["source_label"], pd.concat([train, evaluate])["device_group"]))
    assert groups == {"a": "real", "b": "real", "c": "real", "s1": "seen_sim", "s2": "seen_sim",
                      "s4": "unseen_sim"}
    info = json.loads((result.manifest_dir / "features.json").read_text())
    assert info["class_names"] == ["metro", "park", "street"]
    assert info["shape"] == [36, 256, 65]
    assert info["split_sizes"] == {"train": len(train), "evaluate": len(evaluate), "test": len(test)}
    assert len(info["train_mean"]) == 256 and info["versions"]["torch"].startswith("2.11")


def test_cache_holds_the_frontend_output_in_float16(dcase_tree, dirs):
    result = run_prepare(dcase_tree, dirs)
    features = cache.open_features(result.cache_entry)
    assert features.dtype == np.float16 and features.shape == (36, 256, 65)
    assert isinstance(features, np.memmap)
    index = pd.read_csv(result.cache_entry / cache.INDEX)
    row = 7
    direct = compute_logmel([dcase_tree / index.loc[row, "filename"]], FrontendConfig())[0]
    np.testing.assert_allclose(features[row].astype(np.float32), direct, atol=0.01)  # float16 rounding
    assert not any(p.suffix in (".pkl", ".pickle", ".pt") for p in result.cache_entry.iterdir())


def test_train_stats_are_per_mel_bin_over_the_train_split(dcase_tree, dirs):
    result = run_prepare(dcase_tree, dirs)
    info = json.loads((result.manifest_dir / "features.json").read_text())
    train = pd.read_csv(result.manifest_dir / "train.csv")
    feats = cache.open_features(result.cache_entry)[train["row"].to_numpy()].astype(np.float64)
    np.testing.assert_allclose(info["train_mean"], feats.mean(axis=(0, 2)), atol=1e-4)
    np.testing.assert_allclose(info["train_std"], feats.std(axis=(0, 2)), atol=1e-4)


def test_rerun_reuses_cache_without_decoding(dcase_tree, dirs, monkeypatch):
    first = run_prepare(dcase_tree, dirs)
    assert not first.reused

    def no_decoding(*args, **kwargs):
        raise AssertionError("audio decoded although the cache is complete")

    monkeypatch.setattr(prepare_mod, "_extract", no_decoding)
    monkeypatch.setattr(prepare_mod, "load_clips", no_decoding)
    messages = []
    second = prepare(dcase_tree, "dev", cache_dir=dirs["cache"], manifest_dir=dirs["manifests"],
                     log=messages.append)
    assert second.reused and second.cache_entry == first.cache_entry
    assert any("reusing complete feature cache" in m for m in messages)


def test_reused_cache_gives_the_same_train_stats(dcase_tree, dirs):
    """Fresh: statistics from the sums the workers return; reused: read back from the cache. Same numbers."""
    first = json.loads((run_prepare(dcase_tree, dirs).manifest_dir / "features.json").read_text())
    second_run = run_prepare(dcase_tree, dirs)
    assert second_run.reused
    second = json.loads((second_run.manifest_dir / "features.json").read_text())
    np.testing.assert_allclose(second["train_mean"], first["train_mean"], atol=2e-6)
    np.testing.assert_allclose(second["train_std"], first["train_std"], atol=2e-6)


@pytest.mark.parametrize("override", ["n_mels=128", "hop_length=400", "log_offset=1e-6", "f_max=15000"])
def test_changed_frontend_parameter_gives_new_key(dcase_tree, dirs, override):
    first = run_prepare(dcase_tree, dirs)
    second = run_prepare(dcase_tree, dirs, overrides=[override])
    assert second.cache_entry != first.cache_entry and not second.reused


def test_changed_or_added_file_gives_new_key(dcase_tree, dirs):
    first = run_prepare(dcase_tree, dirs)
    wav = dcase_tree / "audio/street-001.wav"
    os.utime(wav, ns=(wav.stat().st_atime_ns, wav.stat().st_mtime_ns + 10**9))
    second = run_prepare(dcase_tree, dirs)
    assert second.cache_entry != first.cache_entry and not second.reused
    third = run_prepare(dcase_tree, dirs)
    assert third.reused and third.cache_entry == second.cache_entry


def test_interrupted_prepare_leaves_no_complete_cache(dcase_tree, dirs, monkeypatch):
    calls = {"n": 0}
    real = prepare_mod._extract_chunk

    def dies_midway(task):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(task)

    monkeypatch.setattr(prepare_mod, "_extract_chunk", dies_midway)
    with pytest.raises(KeyboardInterrupt):
        run_prepare(dcase_tree, dirs, workers=1)
    entries = [p for p in (dirs["cache"] / "dev").iterdir() if not p.name.endswith(".lock")]
    assert not any(cache.is_complete(p) for p in entries)
    assert not (dirs["manifests"] / "dev").exists()
    monkeypatch.setattr(prepare_mod, "_extract_chunk", real)
    result = run_prepare(dcase_tree, dirs, workers=1)  # a later run builds it fully
    assert not result.reused and cache.is_complete(result.cache_entry)


def test_ten_second_clips_and_2019_layout(tmp_path, dirs):
    tree = make_dcase_tree(tmp_path / "dev19", n=18, seconds=10.0, source_label=False)
    result = run_prepare(tree, dirs, name="tau19", overrides=["clip_seconds=10"])
    features = cache.open_features(result.cache_entry)
    assert features.shape == (18, 256, 641)
    train = pd.read_csv(result.manifest_dir / "train.csv", dtype=str)
    assert set(train["source_label"]) == {"a"} and set(train["device_group"]) == {"real"}


def test_train_split_option(dcase_tree, dirs):
    fold = pd.read_csv(dcase_tree / "evaluation_setup/fold1_train.csv", sep="\t")
    fold.iloc[::2].to_csv(dcase_tree / "evaluation_setup/split50.csv", sep="\t", index=False)
    result = run_prepare(dcase_tree, dirs, train_split="split50.csv")
    train = pd.read_csv(result.manifest_dir / "train.csv")
    assert train["filename"].tolist() == fold["filename"].iloc[::2].tolist()


def test_parallel_and_serial_extraction_agree(dcase_tree, dirs, tmp_path):
    parallel = run_prepare(dcase_tree, dirs, workers=2)
    serial = prepare(dcase_tree, "dev", cache_dir=tmp_path / "c2", manifest_dir=tmp_path / "m2",
                     workers=1, log=lambda *_: None)
    assert np.array_equal(cache.open_features(parallel.cache_entry), cache.open_features(serial.cache_entry))


def test_dataset_api_items_and_batches(dcase_tree, dirs):
    result = run_prepare(dcase_tree, dirs)
    split = load_split("dev", "train", dirs["manifests"])
    raw = cache.open_features(result.cache_entry)
    x, label, device, row = split[3]
    assert x.shape == (1, 256, 65) and x.dtype == torch.float32
    assert np.array_equal(x[0].numpy(), raw[row].astype(np.float32))
    assert split.class_names[label] == split.items.loc[3, "scene_label"]
    assert split.device_names[device] == split.items.loc[3, "source_label"]
    lazy = load_split("dev", "train", dirs["manifests"], in_memory=False)
    assert np.array_equal(np.asarray(lazy.features[[3, 1]]), np.asarray(split.features[[3, 1]]))
    loader = BatchLoader(split, batch_size=8, shuffle=True, seed=0, normalize=True)
    seen = []
    for batch in loader:
        assert batch.x.shape[1:] == (1, 256, 65)
        expected = (torch.from_numpy(split.features[batch.index.numpy()]).float() - loader.mean) * loader.inv_std
        assert torch.allclose(batch.x, expected)
        assert torch.equal(batch.y, torch.from_numpy(split.labels[batch.index.numpy()]))
        seen.extend(batch.index.tolist())
    assert sorted(seen) == list(range(len(split)))
    state = loader.state_dict()
    first = [b.index.tolist() for b in loader]
    loader.load_state_dict(state)
    assert [b.index.tolist() for b in loader] == first


def test_cli_prepare_and_script(dcase_tree, dirs, capsys):
    args = ["--data-dir", str(dcase_tree), "--name", "dev", "--cache-dir", str(dirs["cache"]),
            "--manifest-dir", str(dirs["manifests"]), "--workers", "1"]
    assert main(["prepare", *args]) == 0
    import subprocess, sys
    from pathlib import Path
    script = Path(__file__).parent.parent / "scripts/prepare_dcase.py"
    out = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "reusing complete feature cache" in out.stdout

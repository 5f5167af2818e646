"""Demo datasets (Drums-5 / Birds-3): parsing, class mapping, dedupe, clip cutting, DCASE layout and split.

Everything runs on fake drumkit trees and a fake pykanto wheel written here; only the slow test downloads.
"""
from __future__ import annotations

import csv
import io
import json
import os
import shutil
import time
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from audio_mrkd.data import demo_sets, packages
from audio_mrkd.data.cache import default_cache_dir
from audio_mrkd.errors import InputError

NS = "http://www.hydrogen-music.org/drumkit"


# ----------------------------------------------------------------------------------------------- fakes
def tone(rate: int, seconds: float, freq: float, channels: int = 1, gain: float = 0.5) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    x = gain * np.sin(2 * np.pi * freq * t).astype(np.float32)
    return np.stack([x, 0.5 * x], axis=1) if channels == 2 else x


def layer_kit(name: str, instruments: list[tuple[str, list[str]]]) -> str:
    """drumkit.xml with the default namespace and <layer><filename> (current layout)."""
    body = "".join(
        f"<instrument><id>{i}</id><name>{inst}</name>"
        + "".join(f"<layer><filename>{f}</filename><min>0</min><max>1</max></layer>" for f in files)
        + "</instrument>" for i, (inst, files) in enumerate(instruments))
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n<drumkit_info xmlns="{NS}"><name>{name}</name>'
            f"<instrumentList>{body}</instrumentList></drumkit_info>")


def old_kit(name: str, instruments: list[tuple[str, str]]) -> str:
    """drumkit.xml of the old layout: <filename> directly under <instrument>."""
    body = "".join(f"<instrument><id>{i}</id><filename>{f}</filename><name>{inst}</name></instrument>"
                   for i, (inst, f) in enumerate(instruments))
    return f'<drumkit_info xmlns="{NS}"><name>{name}</name><instrumentList>{body}</instrumentList></drumkit_info>'


CLASSES = ("kick", "snare", "tom", "hihat", "cymbal")
FREQS = {"kick": 60.0, "snare": 200.0, "tom": 120.0, "hihat": 6000.0, "cymbal": 4000.0}


def make_drumkits(root: Path) -> Path:
    """Three acoustic kits (44.1 kHz stereo wav, 48 kHz wav, old-layout 22.05 kHz flac) + one synthetic kit."""
    kits = root / "usr/share/hydrogen/data/drumkits"
    a = kits / "Audiophob"
    a.mkdir(parents=True)
    for i, c in enumerate(CLASSES):
        sf.write(a / f"{c}.wav", tone(44100, 0.5 + 0.5 * i, FREQS[c], channels=2), 44100)
    sf.write(a / "clap.wav", tone(44100, 0.3, 900.0), 44100)
    (a / "drumkit.xml").write_text(layer_kit("Audiophob", [
        ("Kick", ["kick.wav"]), ("Bass Drum 2", ["kick.wav"]),          # one file, two instruments: a duplicate
        ("Snare", ["snare.wav"]), ("Tom Hi", ["tom.wav"]), ("Sabian Hat closed", ["hihat.wav"]),
        ("Crash", ["cymbal.wav"]), ("Hand Clap", ["clap.wav"])]))
    v = kits / "VariBreaks"
    v.mkdir()
    for c in CLASSES:
        for layer in range(2):
            sf.write(v / f"{c}{layer}.wav", tone(48000, 1.5, FREQS[c], gain=0.3 + 0.2 * layer), 48000)
    (v / "drumkit.xml").write_text(layer_kit("VariBreaks", [
        ("VariBreaks Kick 1", ["kick0.wav", "kick1.wav"]), ("VariBreaks Snare", ["snare0.wav", "snare1.wav"]),
        ("VariBreaks Tom", ["tom0.wav", "tom1.wav"]), ("VariBreaks Hat 1", ["hihat0.wav", "hihat1.wav"]),
        ("Ride", ["cymbal0.wav", "cymbal1.wav"])]))
    m = kits / "Millo-Drums_v.1"
    m.mkdir()
    for c in CLASSES:
        sf.write(m / f"{c}.wav", tone(44100, 0.8, FREQS[c] * 1.1), 44100)
    sf.write(m / "hh.flac", tone(22050, 0.7, 3000.0), 22050, format="FLAC")
    sf.write(m / "stick.wav", tone(44100, 0.2, 2500.0), 44100)
    (m / "drumkit.xml").write_text(old_kit("Millo-Drums_v.1", [
        ("BD", "kick.wav"), ("Stick", "stick.wav"), ("Snare Jazz", "snare.wav"), ("Tom Low", "tom.wav"),
        ("HH closed", "hh.flac"), ("China", "cymbal.wav")]))
    e = kits / "HardElectro1"
    e.mkdir()
    sf.write(e / "k.wav", tone(44100, 0.4, 50.0), 44100)
    (e / "drumkit.xml").write_text(layer_kit("HardElectro1", [("Kick", ["k.wav"])]))
    return kits


def read_tsv(path: Path) -> list[list[str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.reader(handle, delimiter="\t"))


@pytest.fixture
def drumkits(tmp_path: Path) -> Path:
    return make_drumkits(tmp_path / "extracted")


# ------------------------------------------------------------------------------------------ class regexes
@pytest.mark.parametrize("name, label", [
    ("Kick", "kick"), ("Bass Drum", "kick"), ("BassDrum soft", "kick"), ("BD", "kick"), ("bd 2", "kick"),
    ("Snare Rock", "snare"), ("Snare Kick-ish", "kick"),                    # first match in order wins
    ("Sabian Hat Open", "hihat"), ("VariBreaks Hat 2", "hihat"), ("Hi-Hat Closed", "hihat"),
    ("HiHat pedal", "hihat"), ("Hihat", "hihat"), ("HH open", "hihat"), ("Hi Hat", "hihat"),
    ("Tom Hi", "tom"), ("Floor tom", "tom"), ("Ride", "cymbal"), ("Crash 16", "cymbal"), ("Splash", "cymbal"),
    ("China", "cymbal"), ("Cymbal", "cymbal"),
    ("Stick", None), ("Hand Clap", None), ("Cowbell", None), ("Tambourine", None), ("Custom", None),
    ("Atom", None), ("Bdrum", None), ("What", None),
])
def test_classify_instrument(name, label):
    assert demo_sets.classify_instrument(name) == label


# ------------------------------------------------------------------------------------------------ drums
def test_parse_drumkit_strips_namespace_and_reads_both_layouts(drumkits):
    new = dict(demo_sets.parse_drumkit(drumkits / "VariBreaks" / "drumkit.xml"))
    assert new["VariBreaks Kick 1"] == ["kick0.wav", "kick1.wav"]
    old = demo_sets.parse_drumkit(drumkits / "Millo-Drums_v.1" / "drumkit.xml")
    assert old[0] == ("BD", ["kick.wav"]) and old[1] == ("Stick", ["stick.wav"]) and len(old) == 6


def test_collect_maps_acoustic_kits_and_dedupes(drumkits):
    files = demo_sets.collect_drum_files(drumkits)
    assert {f.kit for f in files} == {"Audiophob", "VariBreaks", "Millo-Drums_v.1"}   # HardElectro1 skipped
    assert not any(f.path.name in ("clap.wav", "stick.wav") for f in files)          # unmapped dropped
    assert len(files) == 6 + 10 + 5
    kept, removed = demo_sets.dedupe(files)
    assert removed == 1 and len(kept) == 20
    assert [f.path.name for f in kept].count("kick.wav") == 2                         # Audiophob + Millo
    counts = Counter(f.scene_label for f in kept)
    assert counts == {"kick": 4, "snare": 4, "tom": 4, "hihat": 4, "cymbal": 4}


def test_missing_sample_file_is_an_input_error(drumkits):
    (drumkits / "Audiophob" / "tom.wav").unlink()
    with pytest.raises(InputError, match=r"drumkit.xml: instrument 'Tom Hi' refers to missing file 'tom.wav'"):
        demo_sets.collect_drum_files(drumkits)


def test_build_from_tree_writes_dcase_layout(drumkits, tmp_path):
    out = tmp_path / "demo" / "drums5"
    lines = []
    summary = demo_sets.build_drums5_from_tree(drumkits, out, log=lines.append)
    meta = read_tsv(out / "meta.csv")
    assert meta[0] == ["filename", "scene_label", "identifier", "source_label"]
    rows = meta[1:]
    assert len(rows) == 20 == summary["items"] and summary["duplicates_removed"] == 1
    assert {r[2] for r in rows} == {"Audiophob", "VariBreaks", "Millo-Drums_v_1"}
    device = {r[0]: r[3] for r in rows}
    assert device["audio/Audiophob-kick-000.wav"] == "a"
    assert device["audio/VariBreaks-hihat-001.wav"] == "b"
    assert device["audio/Millo-Drums_v_1-hihat-000.wav"] == "c"                       # the 22.05 kHz flac
    for name, label, ident, _ in rows:
        assert name.startswith(f"audio/{ident}-{label}-")
        data, rate = sf.read(out / name)
        assert sf.info(out / name).subtype == "PCM_16" and data.ndim == 1 and data.shape[0] == rate
    # mono mix of the stereo (x, 0.5x) source, first second, zero-padded after its 0.5 s
    kick, rate = sf.read(out / "audio/Audiophob-kick-000.wav", dtype="float32")
    expected = 0.75 * tone(44100, 0.5, FREQS["kick"])
    np.testing.assert_allclose(kick[:22050], expected, atol=2e-4)
    assert rate == 44100 and not kick[22050:].any()
    assert (out / ".complete").is_file() and json.loads((out / ".complete").read_text())["items"] == 20
    assert "duplicates removed 1" in lines[-1] and "'kick': 4" in lines[-1]
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]               # no temp folder left
    assert out.stat().st_mode & 0o777 == 0o755                                          # not mkdtemp's 0700


def test_fold_files_grouped_and_complete(drumkits, tmp_path):
    out = tmp_path / "drums5"
    demo_sets.build_drums5_from_tree(drumkits, out, log=lambda s: None)
    meta = {r[0]: r for r in read_tsv(out / "meta.csv")[1:]}
    setup = out / "evaluation_setup"
    train, evaluate, test = (read_tsv(setup / f"fold1_{s}.csv") for s in ("train", "evaluate", "test"))
    assert train[0] == evaluate[0] == ["filename", "scene_label"] and test[0] == ["filename"]
    assert [r[0] for r in test[1:]] == [r[0] for r in evaluate[1:]]
    assert sorted(r[0] for r in train[1:] + evaluate[1:]) == sorted(meta)
    for row in train[1:] + evaluate[1:]:
        assert meta[row[0]][1] == row[1]
    kits = lambda rows: {meta[r[0]][2] for r in rows[1:]}                                 # noqa: E731
    assert not kits(train) & kits(evaluate)
    assert {r[1] for r in train[1:]} == {r[1] for r in evaluate[1:]} == set(CLASSES)


def test_corrupt_sample_is_an_input_error(drumkits, tmp_path):
    (drumkits / "VariBreaks" / "tom1.wav").write_bytes(b"RIFF not really a wav")
    with pytest.raises(InputError, match="VariBreaks/tom1.wav: unreadable audio"):
        demo_sets.build_drums5_from_tree(drumkits, tmp_path / "drums5", log=lambda s: None)


def test_interrupted_write_keeps_previous_build(drumkits, tmp_path):
    out = tmp_path / "demo" / "drums5"
    first = demo_sets.build_drums5_from_tree(drumkits, out, log=lambda s: None)
    records = demo_sets.drum_records(demo_sets.dedupe(demo_sets.collect_drum_files(drumkits))[0])

    def fail():
        raise InputError("simulated: decoding stopped")
    records[12].load = fail
    with pytest.raises(InputError, match="simulated"):
        demo_sets.write_dcase(out, "drums5", records, log=lambda s: None)
    assert [p.name for p in out.parent.iterdir()] == ["drums5"]                          # temp folder removed
    assert demo_sets.read_summary(out) == first and len(read_tsv(out / "meta.csv")) == 21


def test_build_drums5_reuses_extracted_tree_without_commands(drumkits, tmp_path, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    (work / "hydrogen-drumkits_1.0_all.deb").write_bytes(b"unused: the extracted tree is reused")
    target = work / demo_sets.EXTRACTED_NAME
    shutil.copytree(drumkits.parents[4], target)
    (target / demo_sets.MARKER).write_text("x")
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))                             # no apt-get, no dpkg-deb
    out = demo_sets.build_drums5(tmp_path / "out", work, log=lambda s: None)
    assert len(read_tsv(out / "meta.csv")) == 21


def fake_command(bin_dir: Path, name: str, script: str) -> None:
    bin_dir.mkdir(exist_ok=True)
    path = bin_dir / name
    path.write_text("#!/bin/sh\n" + script + "\n")
    path.chmod(0o755)


def test_apt_get_failure_is_one_line_input_error(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    fake_command(bin_dir, "apt-get", 'echo "$1" >> "$(dirname "$0")/calls"\n[ "$1" = update ] && exit 0\n'
                                     'echo "E: Unable to locate package $2" >&2; exit 100')
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    with pytest.raises(InputError, match=r"^apt-get download hydrogen-drumkits: exit 100: E: Unable to locate "
                                         r"package hydrogen-drumkits$"):
        packages.fetch_deb(demo_sets.DRUMS_PACKAGE, tmp_path / "work")
    assert (bin_dir / "calls").read_text().split() == ["download", "update", "download"]


def test_fetch_deb_runs_apt_get_download_in_work_dir(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    fake_command(bin_dir, "apt-get", 'echo fake > "$2_9.9_all.deb"')
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    deb = packages.fetch_deb(demo_sets.DRUMS_PACKAGE, tmp_path / "work")
    assert deb == tmp_path / "work" / "hydrogen-drumkits_9.9_all.deb" and deb.read_text() == "fake\n"


# ------------------------------------------------------------------------------------------------- split
def test_split_by_group_is_grouped_stratified_deterministic():
    rng = np.random.default_rng(3)
    groups = [f"g{i}" for i in range(9) for _ in range(rng.integers(5, 40))]
    labels = [CLASSES[int(k)] for k in rng.integers(0, 5, len(groups))]
    mask = demo_sets.split_by_group(labels, groups)
    g, y = np.array(groups), np.array(labels)
    assert not set(g[mask]) & set(g[~mask])
    assert set(y[mask]) == set(y[~mask]) == set(CLASSES)
    assert 0.2 <= mask.mean() <= 0.35
    np.testing.assert_array_equal(mask, demo_sets.split_by_group(labels, groups))


def test_split_needs_two_groups_per_class():
    with pytest.raises(InputError, match="each class needs two groups"):
        demo_sets.split_by_group(["a", "a", "b", "b"], ["g1", "g1", "g1", "g2"])


# ------------------------------------------------------------------------------------------------- birds
def make_wheel(work: Path) -> Path:
    """A fake pykanto wheel with the real inner paths: 3 + 2 + 2 recordings, one stereo, mixed rates."""
    work.mkdir(parents=True, exist_ok=True)
    wheel = work / demo_sets.BIRDS_WHEEL
    files = {
        "segmented/great_tit/WAV/2021-B32-0415_05-3.wav": (22050, 2.4, 1),
        "segmented/great_tit/WAV/2021-B32-0415_05-11.wav": (22050, 1.2, 1),
        "segmented/great_tit/WAV/2021-SW83-0418_04-77.wav": (22050, 3.0, 1),
        "raw/BENGALESE_FINCH/bird_3/348.wav": (32000, 3.5, 1),
        "raw/BENGALESE_FINCH/bird_3/363.wav": (32000, 2.2, 1),
        "raw/STORM-PETREL/XC46092.wav": (44100, 2.9, 1),
        "raw/STORM-PETREL/XC663885.wav": (48000, 2.1, 2),
        "raw/AM/20210502_040000.WAV": (48000, 1.5, 1),                    # another species: ignored
    }
    with zipfile.ZipFile(wheel, "w") as zf:
        for i, (inner, (rate, seconds, ch)) in enumerate(files.items()):
            buf = io.BytesIO()
            sf.write(buf, tone(rate, seconds, 500.0 + 100 * i, channels=ch), rate, format="WAV")
            zf.writestr(f"pykanto/data/{inner}", buf.getvalue())
        zf.writestr("pykanto/__init__.py", "")
    return wheel


def test_cut_clips_drops_partial_tail():
    x = np.arange(25, dtype=np.float32)
    clips = demo_sets.cut_clips(x, rate=10)
    assert len(clips) == 2 and clips[1].tolist() == list(range(10, 20))


def test_bird_records_from_wheel(tmp_path):
    records = demo_sets.bird_records(make_wheel(tmp_path / "work"))
    counts = Counter(r.scene_label for r in records)
    assert counts == {"great_tit": 2 + 1 + 3, "bengalese_finch": 3 + 2, "storm_petrel": 2 + 2}
    assert Counter(r.identifier for r in records)["2021-B32-0415_05"] == 3                # segments → recording
    assert {r.identifier for r in records} >= {"348", "363", "XC46092", "XC663885", "2021-SW83-0418_04"}
    for r in records:
        clip = r.load()
        assert clip.ndim == 1 and clip.shape[0] == r.sample_rate


def test_build_birds3_layout(tmp_path):
    work = tmp_path / "work"
    make_wheel(work)
    out = demo_sets.build_birds3(tmp_path / "out" / "birds3", work, log=lambda s: None)
    rows = read_tsv(out / "meta.csv")[1:]
    assert len(rows) == 15 and {r[1] for r in rows} == {"great_tit", "bengalese_finch", "storm_petrel"}
    assert {r[3] for r in rows if r[2] == "XC663885"} == {"b"} and {r[3] for r in rows if r[2] == "348"} == {"c"}
    evaluate = read_tsv(out / "evaluation_setup" / "fold1_evaluate.csv")[1:]
    ident = {r[0]: r[2] for r in rows}
    train_ids = {ident[r[0]] for r in read_tsv(out / "evaluation_setup" / "fold1_train.csv")[1:]}
    assert not {ident[r[0]] for r in evaluate} & train_ids
    assert {r[1] for r in evaluate} == {"great_tit", "bengalese_finch", "storm_petrel"}


def test_build_demo_falls_back_to_birds_and_reuses(tmp_path, monkeypatch):
    work = tmp_path / "work"
    make_wheel(work)
    monkeypatch.setattr(demo_sets.shutil, "which", lambda name: None)
    lines = []
    data_dir, name = demo_sets.build_demo(tmp_path / "demo", work, log=lines.append)
    assert (data_dir, name) == (tmp_path / "demo" / "birds3", "birds3")
    assert any("no apt-get" in line for line in lines)
    stamp = (data_dir / "meta.csv").stat().st_mtime_ns
    time.sleep(0.01)
    lines.clear()
    assert demo_sets.build_demo(tmp_path / "demo", work, log=lines.append) == (data_dir, name)
    assert any("reusing the complete birds3 build" in line for line in lines)
    assert (data_dir / "meta.csv").stat().st_mtime_ns == stamp


# -------------------------------------------------------------------------------------------- real build
@pytest.mark.slow
def test_real_drums5_build(tmp_path):
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        pytest.skip("apt-get/dpkg-deb not available: Drums-5 is built from Debian's hydrogen-drumkits")
    work = default_cache_dir() / "demo_work"  # the session's private cache (conftest): one download per session
    out = demo_sets.build_drums5(tmp_path / "drums5", work, log=lambda s: None)
    rows = read_tsv(out / "meta.csv")[1:]
    assert len(rows) == 430
    assert Counter(r[1] for r in rows) == {"kick": 39, "snare": 83, "tom": 78, "hihat": 111, "cymbal": 119}
    assert len({r[2] for r in rows}) == 10
    evaluate = read_tsv(out / "evaluation_setup" / "fold1_evaluate.csv")[1:]
    assert 0.25 <= len(evaluate) / 430 <= 0.30
    assert json.loads((out / ".complete").read_text())["duplicates_removed"] == 18

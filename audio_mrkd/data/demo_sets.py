"""Real-audio demo datasets built from packages, written in the DCASE Task 1 development-set layout.

* **Drums-5** (default): one-shot drum hits from Debian's ``hydrogen-drumkits`` (acoustic kits only), five
  classes kick/snare/tom/hihat/cymbal, 430 files after removing byte-identical duplicates; identifier = kit.
* **Birds-3** (fallback where ``apt-get`` is missing): 1-s clips cut from the recordings shipped inside the
  ``pykanto==0.1.8`` wheel (read with zipfile, never installed), 120 clips; identifier = recording.

Layout written (see design.md §3): ``audio/<identifier>-<class>-<n>.wav`` (mono PCM_16, first 1 s, zero-padded,
at the source file's own sample rate), ``meta.csv`` and ``evaluation_setup/fold1_{train,evaluate,test}.csv``.

Device tag (``source_label``): these sets have no recording devices, so the tag is derived from the source
file's original sample rate — 44100 Hz → ``a``, 48000 Hz → ``b``, any other rate → ``c`` — which gives the
per-device metrics a real (if mild) acquisition difference to report on.

Split (fold1): grouped by identifier (a kit/recording is never in both splits) and stratified by class. These
sets have 8-10 groups, so every subset of groups is tried (more than 16 groups: the folds of
``StratifiedGroupKFold(k, shuffle=True, random_state=s)``, k 3-5, s 0-19); among the candidates with every class in
both splits, the evaluate split is the one minimising |evaluate share - 27.5 %| + mean over classes of
|class share - 27.5 %| (first in enumeration order on ties), so the split is deterministic.

Builds go to a temporary sibling folder renamed into place at the end; ``.complete`` (the summary, JSON) is
written last, so an interrupted build never reads as complete.
"""
from __future__ import annotations

import hashlib
import io
import json
import re
import shutil
import xml.etree.ElementTree as ET
import zipfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import soundfile as sf
from sklearn.model_selection import StratifiedGroupKFold

from audio_mrkd.data import packages
from audio_mrkd.data.frontend import read_audio, read_sample_rate
from audio_mrkd.errors import InputError
from audio_mrkd.fileio import building_dir
from audio_mrkd.progress import progress

MARKER = ".complete"
CLIP_SECONDS = 1.0

DRUMS_PACKAGE = "hydrogen-drumkits"
DRUMKITS_IN_DEB = "usr/share/hydrogen/data/drumkits"
EXTRACTED_NAME = "hydrogen-drumkits-extracted"
#: Instrument name → class; case-insensitive, first match wins.
DRUM_CLASSES: tuple[tuple[str, re.Pattern], ...] = tuple(
    (label, re.compile(pattern, re.IGNORECASE)) for label, pattern in (
        ("kick", r"kick|bass ?drum|\bbd\b"),
        ("snare", r"snare"),
        ("hihat", r"h(i-?)?\s?-?hat|\bhh\b|\bhat\b"),
        ("tom", r"\btom"),
        ("cymbal", r"crash|ride|splash|china|cymbal"),
    ))
ACOUSTIC_KITS = ("Audiophob", "BJA_Pacific", "ColomboAcousticDrumkit", "ForzeeStereo", "Millo-Drums_v.1",
                 "Millo_MultiLayered2", "Millo_MultiLayered3", "The Black Pearl 1.0", "rumpf_kit_z01_h2",
                 "VariBreaks")

BIRDS_REQUIREMENT = "pykanto==0.1.8"
BIRDS_WHEEL = "pykanto-0.1.8-py3-none-any.whl"
#: Class → regex on the wheel member path (pykanto/data/**).
BIRD_SOURCES = {
    "great_tit": re.compile(r"^pykanto/data/segmented/great_tit/WAV/[^/]+\.wav$", re.IGNORECASE),
    "bengalese_finch": re.compile(r"^pykanto/data/raw/BENGALESE_FINCH/bird_3/[^/]+\.wav$", re.IGNORECASE),
    "storm_petrel": re.compile(r"^pykanto/data/raw/STORM-PETREL/[^/]+\.wav$", re.IGNORECASE),
}


@dataclass
class ClipRecord:
    """One output clip: its metadata and a loader returning the mono 1-s waveform (float32)."""

    scene_label: str
    identifier: str
    sample_rate: int
    load: Callable[[], np.ndarray]
    filename: str = ""


@dataclass(frozen=True)
class DrumFile:
    """A sample file referenced by an instrument of an acoustic kit."""

    path: Path
    scene_label: str
    kit: str


# ----------------------------------------------------------------------------------------------- helpers
def sanitize(name: str) -> str:
    """Identifier-safe form of ``name``: runs of characters outside [A-Za-z0-9_-] become one ``_``."""
    clean = re.sub(r"[^A-Za-z0-9_-]+", "_", name).strip("_")
    if not clean:
        raise InputError(f"{name!r}: no usable characters for an identifier")
    return clean


def device_for_rate(sample_rate: int) -> str:
    """Device tag from the source sample rate: 44100 → a, 48000 → b, other → c."""
    return {44100: "a", 48000: "b"}.get(int(sample_rate), "c")


def fit_length(mono: np.ndarray, length: int) -> np.ndarray:
    """Crop to ``length`` samples or zero-pad at the end."""
    out = np.zeros(length, dtype=np.float32)
    n = min(length, mono.shape[0])
    out[:n] = mono[:n]
    return out


def read_head(path: Path, seconds: float = CLIP_SECONDS) -> tuple[np.ndarray, int]:
    """The first ``seconds`` of an audio file as mono float32 (zero-padded) and its sample rate."""
    samples, rate = read_audio(path)
    return fit_length(samples, int(round(seconds * rate))), rate


# ------------------------------------------------------------------------------------------------- split
def _candidate_masks(y: np.ndarray, g: np.ndarray):
    """Evaluate masks to score: every group subset (<= 16 groups), else StratifiedGroupKFold folds."""
    names = sorted(set(g))
    if len(names) <= 16:
        for bits in range(1, 2 ** len(names) - 1):
            chosen = [n for i, n in enumerate(names) if bits >> i & 1]
            yield np.isin(g, chosen)
        return
    for n_splits in (3, 4, 5):
        for seed in range(20):
            cv = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
            for _, eval_idx in cv.split(np.zeros(len(y)), y, g):
                yield np.isin(np.arange(len(y)), eval_idx)


def split_score(y: np.ndarray, mask: np.ndarray, target: float) -> float:
    """|evaluate share - target| plus the mean over classes of |class's evaluate share - target|."""
    shares = np.array([mask[y == c].mean() for c in sorted(set(y))])
    return abs(mask.mean() - target) + float(np.abs(shares - target).mean())


def split_by_group(labels: list[str], groups: list[str], target: float = 0.275) -> np.ndarray:
    """Boolean evaluate mask: whole groups, every class in both splits, lowest :func:`split_score`."""
    y, g = np.asarray(labels), np.asarray(groups)
    classes = set(y)
    best, best_score = None, np.inf
    for mask in _candidate_masks(y, g):
        if set(y[mask]) != classes or set(y[~mask]) != classes:
            continue
        score = split_score(y, mask, target)
        if score < best_score - 1e-12:
            best, best_score = mask, score
    if best is None:
        raise InputError(f"split: no grouped split puts every class in both train and evaluate "
                         f"({len(set(g))} groups, classes {sorted(classes)}); each class needs two groups")
    return best


# ------------------------------------------------------------------------------------------------ writer
def assign_filenames(records: list[ClipRecord]) -> None:
    """Set ``audio/<identifier>-<class>-<n>.wav``, n counting per (identifier, class) from 000."""
    seen: Counter = Counter()
    for rec in records:
        key = (rec.identifier, rec.scene_label)
        rec.filename = f"audio/{rec.identifier}-{rec.scene_label}-{seen[key]:03d}.wav"
        seen[key] += 1


def summarize(name: str, records: list[ClipRecord], evaluate: np.ndarray, duplicates: int) -> dict:
    """Counts per class, per identifier and per split, plus the duplicates removed."""
    return {
        "name": name,
        "items": len(records),
        "classes": dict(sorted(Counter(r.scene_label for r in records).items())),
        "identifiers": dict(sorted(Counter(r.identifier for r in records).items())),
        "devices": dict(sorted(Counter(device_for_rate(r.sample_rate) for r in records).items())),
        "train": int((~evaluate).sum()),
        "evaluate": int(evaluate.sum()),
        "duplicates_removed": duplicates,
    }


def _tsv(path: Path, header: list[str], rows: list[list[str]]) -> None:
    lines = ["\t".join(header)] + ["\t".join(row) for row in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def write_tables(root: Path, records: list[ClipRecord], evaluate: np.ndarray) -> None:
    """meta.csv and evaluation_setup/fold1_{train,evaluate,test}.csv (TAB-separated)."""
    _tsv(root / "meta.csv", ["filename", "scene_label", "identifier", "source_label"],
         [[r.filename, r.scene_label, r.identifier, device_for_rate(r.sample_rate)] for r in records])
    setup = root / "evaluation_setup"
    setup.mkdir()
    train = [r for r, e in zip(records, evaluate) if not e]
    held = [r for r, e in zip(records, evaluate) if e]
    _tsv(setup / "fold1_train.csv", ["filename", "scene_label"], [[r.filename, r.scene_label] for r in train])
    _tsv(setup / "fold1_evaluate.csv", ["filename", "scene_label"], [[r.filename, r.scene_label] for r in held])
    _tsv(setup / "fold1_test.csv", ["filename"], [[r.filename] for r in held])


def write_dcase(out_dir: Path, name: str, records: list[ClipRecord], duplicates: int = 0,
                log: Callable[[str], None] = print) -> dict:
    """Decode every record and write the DCASE layout atomically into ``out_dir``; returns the summary."""
    if not records:
        raise InputError(f"{out_dir}: no clips to write for {name}")
    out_dir = Path(out_dir)
    assign_filenames(records)
    evaluate = split_by_group([r.scene_label for r in records], [r.identifier for r in records])
    with building_dir(out_dir) as tmp:
        (tmp / "audio").mkdir()
        for rec in progress(records, desc=f"writing {name}", unit="clip", min_interval=5):
            sf.write(str(tmp / rec.filename), np.clip(rec.load(), -1.0, 1.0), rec.sample_rate, subtype="PCM_16")
        write_tables(tmp, records, evaluate)
        summary = summarize(name, records, evaluate, duplicates)
        (tmp / MARKER).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    log(f"{name}: {summary['items']} clips ({summary['train']} train / {summary['evaluate']} evaluate); "
        f"classes {summary['classes']}; identifiers {summary['identifiers']}; "
        f"duplicates removed {duplicates}; written to {out_dir}")
    return summary


def read_summary(data_dir: Path) -> dict | None:
    """The summary of a complete build in ``data_dir``, or None."""
    marker = Path(data_dir) / MARKER
    if not marker.is_file():
        return None
    return json.loads(marker.read_text(encoding="utf-8"))


# ------------------------------------------------------------------------------------------------- drums
def classify_instrument(name: str) -> str | None:
    """Drum class of a Hydrogen instrument name, or None when it maps to no class."""
    for label, pattern in DRUM_CLASSES:
        if pattern.search(name):
            return label
    return None


def _strip_namespace(root: ET.Element) -> None:
    for elem in root.iter():
        if isinstance(elem.tag, str) and "}" in elem.tag:
            elem.tag = elem.tag.rsplit("}", 1)[1]


def parse_drumkit(xml_path: Path) -> list[tuple[str, list[str]]]:
    """(instrument name, every <filename> of it) for each instrument of a drumkit.xml, namespace stripped."""
    try:
        root = ET.parse(xml_path).getroot()
    except (ET.ParseError, OSError) as exc:
        raise InputError(f"{xml_path}: cannot parse drumkit XML ({exc})") from exc
    _strip_namespace(root)
    instruments = []
    for inst in root.iter("instrument"):
        name = (inst.findtext("name") or "").strip()
        files = [(f.text or "").strip() for f in inst.iter("filename")]
        instruments.append((name, [f for f in files if f]))
    return instruments


def kit_files(kit_dir: Path) -> list[DrumFile]:
    """The mapped sample files of one kit, in XML order (duplicates kept)."""
    xml_path = kit_dir / "drumkit.xml"
    if not xml_path.is_file():
        raise InputError(f"{xml_path}: file not found")
    out = []
    for name, files in parse_drumkit(xml_path):
        label = classify_instrument(name)
        if label is None:
            continue
        for rel in files:
            path = kit_dir / rel
            if not path.is_file():
                raise InputError(f"{xml_path}: instrument {name!r} refers to missing file {rel!r}")
            out.append(DrumFile(path, label, kit_dir.name))
    return out


def collect_drum_files(drumkits_dir: Path, kits: tuple[str, ...] = ACOUSTIC_KITS) -> list[DrumFile]:
    """Mapped files of the acoustic kits found in ``drumkits_dir`` (other kits skipped), kit by kit."""
    drumkits_dir = Path(drumkits_dir)
    if not drumkits_dir.is_dir():
        raise InputError(f"{drumkits_dir}: drumkits folder not found")
    present = sorted(d.name for d in drumkits_dir.iterdir() if d.is_dir() and d.name in kits)
    if not present:
        raise InputError(f"{drumkits_dir}: none of the acoustic kits {list(kits)} is there")
    return [f for kit in present for f in kit_files(drumkits_dir / kit)]


def file_hash(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def dedupe(files: list[DrumFile]) -> tuple[list[DrumFile], int]:
    """Keep the first of each group of byte-identical files; returns (kept, number removed)."""
    seen, kept = set(), []
    for f in files:
        digest = file_hash(f.path)
        if digest not in seen:
            seen.add(digest)
            kept.append(f)
    return kept, len(files) - len(kept)


def drum_records(files: list[DrumFile]) -> list[ClipRecord]:
    """One lazy clip record per drum file (first second, mono, at the file's own rate)."""
    return [ClipRecord(f.scene_label, sanitize(f.kit), read_sample_rate(f.path),
                       (lambda p=f.path: read_head(p)[0])) for f in files]


def build_drums5_from_tree(drumkits_dir: Path, out_dir: Path, log: Callable[[str], None] = print) -> dict:
    """Steps after extraction: parse, map, dedupe, decode, write the layout; returns the summary."""
    files, duplicates = dedupe(collect_drum_files(drumkits_dir))
    return write_dcase(Path(out_dir), "drums5", drum_records(files), duplicates, log)


def build_drums5(out_dir: Path, work_dir: Path, log: Callable[[str], None] = print) -> Path:
    """Fetch Debian's hydrogen-drumkits .deb (``apt-get download`` in ``work_dir``; ``apt-get update`` only
    if that fails; .deb and extracted tree reused), map the acoustic kits' instruments to 5 classes,
    dedupe by content (430 files), and write the DCASE layout of the first 1 s of each into ``out_dir``."""
    work_dir = Path(work_dir)
    deb = packages.fetch_deb(DRUMS_PACKAGE, work_dir)
    drumkits = packages.extract_deb(deb, work_dir / EXTRACTED_NAME, DRUMKITS_IN_DEB)
    build_drums5_from_tree(drumkits, Path(out_dir), log)
    return Path(out_dir)


# ------------------------------------------------------------------------------------------------- birds
def recording_id(label: str, member: str) -> str:
    """Recording of a wheel member: great-tit segments drop their trailing ``-<n>`` (``…0415_05-11``)."""
    stem = Path(member).stem
    if label == "great_tit":
        stem = re.sub(r"-\d+$", "", stem)
    return sanitize(stem)


def cut_clips(data: np.ndarray, rate: int, seconds: float = CLIP_SECONDS) -> list[np.ndarray]:
    """Consecutive non-overlapping ``seconds`` windows of a mono signal; the partial tail is dropped."""
    size = int(round(seconds * rate))
    return [data[i * size:(i + 1) * size] for i in range(data.shape[0] // size)]


def bird_records(wheel: Path) -> list[ClipRecord]:
    """1-s clip records of the three species' recordings inside the pykanto wheel."""
    try:
        archive = zipfile.ZipFile(wheel)
    except (zipfile.BadZipFile, OSError) as exc:
        raise InputError(f"{wheel}: not a readable wheel ({exc})") from exc
    records = []
    with archive:
        names = sorted(archive.namelist())
        for label, pattern in BIRD_SOURCES.items():
            members = [n for n in names if pattern.match(n)]
            if not members:
                raise InputError(f"{wheel}: no {pattern.pattern} member for {label}")
            for member in members:
                records += _member_records(archive, member, label)
    return records


def _member_records(archive: zipfile.ZipFile, member: str, label: str) -> list[ClipRecord]:
    data, rate = read_audio(io.BytesIO(archive.read(member)), where=f"{archive.filename}:{member}")
    ident = recording_id(label, member)
    return [ClipRecord(label, ident, rate, (lambda c=clip: c)) for clip in cut_clips(data, rate)]


def build_birds3(out_dir: Path, work_dir: Path, log: Callable[[str], None] = print) -> Path:
    """``pip download --no-deps pykanto==0.1.8`` into ``work_dir`` (wheel reused), read pykanto/data/** with
    zipfile, cut 1-s clips (120) and write the DCASE layout into ``out_dir``; identifier = recording."""
    wheel = packages.fetch_wheel(BIRDS_REQUIREMENT, BIRDS_WHEEL, Path(work_dir))
    write_dcase(Path(out_dir), "birds3", bird_records(wheel), 0, log)
    return Path(out_dir)


# -------------------------------------------------------------------------------------------------- demo
def build_demo(out_dir: Path, work_dir: Path, log: Callable[[str], None] = print) -> tuple[Path, str]:
    """Drums-5 where apt-get exists, else Birds-3, in ``out_dir/<name>``; a complete earlier build is reused."""
    if shutil.which("apt-get"):
        name, builder = "drums5", build_drums5
        log("demo data: apt-get found, building Drums-5 from Debian's hydrogen-drumkits")
    else:
        name, builder = "birds3", build_birds3
        log("demo data: no apt-get on this machine, building Birds-3 from the pykanto==0.1.8 wheel instead")
    data_dir = Path(out_dir) / name
    summary = read_summary(data_dir)
    if summary is not None:
        log(f"demo data: reusing the complete {name} build in {data_dir} ({summary.get('items')} clips)")
        return data_dir, name
    builder(data_dir, Path(work_dir), log=log)
    return data_dir, name

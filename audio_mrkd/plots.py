"""Pictures of a study: a forest plot of paired differences to a reference and the learning curves behind them.

Drawn with matplotlib's object-oriented API (``Figure`` + ``FigureCanvasAgg``): no pyplot, no global backend
switch. Every PNG is written atomically (temporary name in the same folder, fsync, rename).

``audio-mrkd ablate`` writes ``ablation.png`` (one forest row per variant against the reference, curves of the
reference and the best variant); ``audio-mrkd demo`` writes ``demo.png`` (each method − CE paired by seed, curves of
all). A method has one colour (:func:`method_colours`) in both panels of a picture.
"""
from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from audio_mrkd import fileio
from audio_mrkd.runs.run import Run, run_folders

#: Figure size in inches at ``DPI``: 900 × 450 px (taller when the forest plot has many rows).
WIDTH, HEIGHT, DPI = 9.0, 4.5, 100
REFERENCE_COLOUR, VARIANT_COLOUR, OTHER_COLOUR = "#4c72b0", "#dd8452", "#333333"
#: Colours given to methods in order: the reference first (blue), then orange, green, red, purple.
PALETTE = (REFERENCE_COLOUR, VARIANT_COLOUR, "#55a868", "#c44e52", "#8172b3")
METRIC_NAMES = {"macro_accuracy": "macro accuracy", "accuracy": "accuracy", "log_loss": "log loss"}


# ---------------------------------------------------------------------------------------------------- numbers
def mean_sem(values: Iterable[float]) -> dict:
    """Mean, sample std (ddof=1), standard error std/√n (0 for one value), n and wins (values > 0)."""
    arr = np.asarray(list(values), dtype=float)
    if arr.size == 0:
        raise ValueError("mean_sem: no values")
    std = float(arr.std(ddof=1)) if arr.size > 1 else 0.0
    return {"mean": float(arr.mean()), "std": std, "sem": std / math.sqrt(arr.size) if arr.size > 1 else 0.0,
            "n": int(arr.size), "wins": int((arr > 0).sum())}


def paired_differences(records: list[dict], reference: str, metric: str,
                       variants: Iterable[str] | None = None) -> dict[str, list[float]]:
    """Per variant (not the reference): ``metric`` minus the reference's, one value per (fold, seed) unit present
    for both, in (fold, seed) order. ``records`` are the rows of an ablation's ``runs.jsonl``."""
    by_key = {(r["variant"], r.get("fold", 0), r["seed"]): r for r in records}
    names = list(variants) if variants is not None else list(dict.fromkeys(r["variant"] for r in records))
    out: dict[str, list[float]] = {}
    for variant in names:
        if variant == reference:
            continue
        units = sorted((f, s) for (v, f, s) in by_key if v == variant)
        diffs = [by_key[(variant, f, s)][metric] - by_key[(reference, f, s)][metric]
                 for f, s in units if (reference, f, s) in by_key]
        if diffs:
            out[variant] = diffs
    return out


@dataclass
class Curve:
    """One method's evaluated metric per epoch over several runs (mean and min–max band)."""
    label: str
    epochs: np.ndarray
    mean: np.ndarray
    low: np.ndarray
    high: np.ndarray
    n_runs: int


def read_history(run_dir: str | Path) -> list[dict]:
    """The per-epoch evaluation history of the run in ``run_dir`` ([] when it has none)."""
    return list((Run(run_dir).metrics() or {}).get("history") or [])


def curve(label: str, histories: list[list[dict]], metric: str = "macro_accuracy") -> Curve | None:
    """Mean and min–max over runs of ``metric`` at each evaluated epoch (runs missing an epoch are left out
    of that epoch). None when no run has a history."""
    per_epoch: dict[int, list[float]] = {}
    runs = 0
    for history in histories:
        points = [(int(h["epoch"]), float(h[metric])) for h in history if metric in h and "epoch" in h]
        runs += bool(points)
        for epoch, value in points:
            per_epoch.setdefault(epoch, []).append(value)
    if not per_epoch:
        return None
    epochs = np.array(sorted(per_epoch))
    values = [np.asarray(per_epoch[e]) for e in epochs]
    return Curve(label, epochs, np.array([v.mean() for v in values]), np.array([v.min() for v in values]),
                 np.array([v.max() for v in values]), runs)


def method_colours(labels: Iterable[str]) -> dict[str, str]:
    """Label → colour from :data:`PALETTE` in the order given (the reference first), repeating after five."""
    return {label: PALETTE[i % len(PALETTE)] for i, label in enumerate(dict.fromkeys(labels))}


@dataclass(frozen=True)
class Interval:
    """A paired difference's 95 % confidence interval from its test, around the test's ``estimate`` (the mean of its
    units), with the Holm-corrected p-value; ``unit`` and ``units``: what the test counted (fold means or seeds)."""
    estimate: float
    low: float
    high: float
    p_holm: float
    unit: str = "fold"
    units: int = 0

    @property
    def significant(self) -> bool:
        return self.p_holm < 0.05


@dataclass
class ForestRow:
    label: str
    diffs: list[float]
    colour: str = OTHER_COLOUR  # the variant's colour in the curves, when it has one there
    interval: Interval | None = None  # drawn instead of mean ± s.e. when given
    stats: dict = field(init=False)

    def __post_init__(self) -> None:
        self.stats = mean_sem(self.diffs)


# ---------------------------------------------------------------------------------------------------- drawing
def _numbers(stats: dict, scale: float, interval: Interval | None = None) -> str:
    if interval is not None:
        p = "<0.001" if interval.p_holm < 0.001 else f"{interval.p_holm:.3f}"
        return (f"{scale * interval.estimate:+.1f} [{scale * interval.low:+.1f}, {scale * interval.high:+.1f}]"
                f"{' *' if interval.significant else ''}\np Holm {p}, wins {stats['wins']}/{stats['n']}")
    if stats["n"] == 1:
        return f"{scale * stats['mean']:+.1f}\n1 pair: no s.e."
    return f"{scale * stats['mean']:+.1f} ± {scale * stats['sem']:.1f}\nwins {stats['wins']}/{stats['n']}"


def _forest(ax, rows: list[ForestRow], xlabel: str, title: str, scale: float) -> None:
    ax.set_title(title, fontsize=10)
    ax.axvline(0.0, color="#888888", linewidth=1, linestyle="--", zorder=1)
    if not rows:
        ax.text(0.5, 0.5, "no paired variants", ha="center", va="center", transform=ax.transAxes, color="#666666")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_xlabel(xlabel, fontsize=9)
        return
    rng = np.random.default_rng(0)  # fixed jitter: the same study draws the same picture
    for y, row in enumerate(rows):
        colour = row.colour
        diffs = scale * np.asarray(row.diffs, dtype=float)
        if len(diffs) > 1:
            ax.scatter(diffs, y + rng.uniform(-0.18, 0.18, len(diffs)), s=14, color=colour, alpha=0.35,
                       linewidths=0, zorder=2)
        st, ci = row.stats, row.interval
        if ci is None:
            ax.errorbar(scale * st["mean"], y, xerr=scale * st["sem"], fmt="s", color=colour, markersize=7,
                        capsize=4, elinewidth=2, zorder=3)
            continue
        # the 95 % CI; a filled marker where the Holm-corrected p is below 0.05, hollow where not
        ax.errorbar(scale * ci.estimate, y, xerr=[[scale * (ci.estimate - ci.low)], [scale * (ci.high - ci.estimate)]],
                    fmt="s", color=colour, markersize=7, capsize=4, elinewidth=2, zorder=3,
                    markerfacecolor=colour if ci.significant else "white", markeredgewidth=2)
    ax.set_yticks(range(len(rows)), [r.label for r in rows], fontsize=9)
    ax.set_ylim(len(rows) - 0.5, -0.5)  # first row on top
    # the numbers, as tick labels on the right (so the layout engine makes room for them)
    right = ax.twinx()
    right.set_ylim(ax.get_ylim())
    right.set_yticks(range(len(rows)), [_numbers(r.stats, scale, r.interval) for r in rows], fontsize=8)
    right.tick_params(length=0)
    ax.spines["top"].set_visible(False)
    right.spines["top"].set_visible(False)
    lo, hi = ax.get_xlim()
    span = max(abs(lo), abs(hi), 0.01 * scale)  # at least ±1 pt: identical runs do not zoom in on rounding noise
    ax.set_xlim(-span, span)  # 0 in the middle: left of it worse, right of it better
    ax.set_xlabel(xlabel, fontsize=9)
    ax.grid(axis="x", color="#eeeeee", zorder=0)


def _curves(ax, curves: list[tuple[Curve, str]], ylabel: str, title: str, scale: float) -> None:
    if any(c.n_runs > 1 for c, _ in curves):
        title += "\nmean over runs, band min–max"
    ax.set_title(title, fontsize=10)
    if not curves:
        ax.text(0.5, 0.5, "no per-epoch history yet", ha="center", va="center", transform=ax.transAxes,
                color="#666666")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_xlabel("epoch", fontsize=9)
        ax.set_ylabel(ylabel, fontsize=9)
        return
    for c, colour in curves:
        many = c.n_runs > 1
        label = f"{c.label} ({c.n_runs} run{'s' if many else ''})"
        ax.plot(c.epochs, scale * c.mean, color=colour, linewidth=2, label=label,
                marker="o" if len(c.epochs) <= 12 else None, markersize=4)
        if many:
            ax.fill_between(c.epochs, scale * c.low, scale * c.high, color=colour, alpha=0.2, linewidth=0)
    epochs = np.unique(np.concatenate([c.epochs for c, _ in curves]))
    if len(epochs) <= 12:
        ax.set_xticks(epochs)
    ax.set_xlabel("epoch", fontsize=9)
    ax.set_ylabel(ylabel, fontsize=9)
    ax.grid(color="#eeeeee")
    ax.spines["top"].set_visible(False)
    ax.spines["right"].set_visible(False)
    # below the axes: inside, it would hide a band sooner or later
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=len(curves), frameon=False)


def draw_study(path: str | Path, rows: list[ForestRow], curves: list[tuple[Curve, str]], *, reference: str,
               metric: str = "macro_accuracy", which: str = "last-epoch", units: str = "pairs",
               scale: float = 100.0, dpi: int = DPI) -> Path:
    """Write one PNG: the forest plot of paired differences (left) and the learning curves (right).

    ``rows`` hold the paired differences as fractions; ``scale`` 100 draws them in percentage points."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    name = METRIC_NAMES.get(metric, metric)
    unit = " (pt)" if scale == 100 else ""
    ns = sorted({r.stats["n"] for r in rows})
    n_text = (f"{ns[0]}" if len(ns) == 1 else f"{ns[0]}–{ns[-1]}") if ns else "0"
    if n_text == "1":
        units = units.replace("pairs", "pair")
    height = max(HEIGHT, 1.6 + 0.45 * len(rows))
    fig = Figure(figsize=(WIDTH, height), dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)
    fig.get_layout_engine().set(wspace=0.06)  # room between the forest's numbers and the curves' axis label
    left, right = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1, 1]})
    intervals = [r.interval for r in rows if r.interval is not None]
    if intervals:
        tested = sorted({f"{i.units} {i.unit} {'means' if i.unit == 'fold' else 'differences'}" for i in intervals})
        what = (f": estimate and 95 % CI\n(t-test on {' / '.join(tested)}); filled, *: Holm-corrected p < 0.05")
    else:
        what = f": mean ± s.e. over {n_text} {units}" if rows else ""
    _forest(left, rows, xlabel=f"Δ {which} {name} vs {reference}{unit}",
            title=f"Paired difference to {reference}{what}", scale=scale)
    _curves(right, curves, ylabel=f"{name}{' (%)' if scale == 100 else ''}",
            title="Learning curves on the evaluated split", scale=scale)
    path = Path(path)
    with fileio.atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            fig.savefig(handle, format="png", dpi=dpi)
            handle.flush()
            os.fsync(handle.fileno())
    return path


def safely(draw: Callable[[], Path], what: str) -> Path | None:
    """Run ``draw``; on failure print one warning line to stderr and return None (a picture never sinks a study)."""
    try:
        return draw()
    except Exception as err:  # noqa: BLE001 — the text results are what matter; say why the picture is missing
        print(f"warning: could not draw {what}: {type(err).__name__}: {err}", file=sys.stderr, flush=True)
        return None


# ---------------------------------------------------------------------------------------------------- studies
def ablation_run_dirs(out_dir: str | Path, records: list[dict]) -> dict[str, list[Path]]:
    """Per variant, the run directories of its recorded (fold, seed) runs: the record's ``run_dir`` (relative to
    ``out_dir`` or absolute), else the newest complete run in ``<out_dir>/<variant>/`` with that seed and fold
    (runs.jsonl written before run_dir was recorded)."""
    out_dir = Path(out_dir)
    found: dict[str, list[Path]] = {}
    scanned: dict[str, dict[tuple, Path]] = {}
    for r in records:
        variant = r["variant"]
        if r.get("run_dir"):
            run_dir = Path(r["run_dir"])
            run_dir = run_dir if run_dir.is_absolute() else out_dir / run_dir
        else:
            if variant not in scanned:
                scanned[variant] = {}
                for run in run_folders(out_dir / variant):
                    m = run.metrics()
                    if m and m.get("complete"):
                        scanned[variant][(m.get("fold") or 0, m.get("seed"))] = run.folder
            run_dir = scanned[variant].get((r.get("fold", 0), r["seed"]))
        if run_dir is not None:
            found.setdefault(variant, []).append(run_dir)
    return found


def ablation_picture(out_dir: str | Path, records: list[dict], variants: Iterable[str], reference: str,
                     metric: str = "last_macro_accuracy", intervals: dict[str, Interval] | None = None) -> Path:
    """``<out_dir>/ablation.png``: forest plot of every variant against ``reference`` (paired by fold and seed) and
    the learning curves of the reference and the variant with the largest mean paired difference. ``intervals``: per
    variant, the 95 % CI and Holm p of its test (drawn instead of the standard error, significant ones filled). A
    ``test_`` metric (the official test split, ``data.final_test``) → ``ablation_test.png``, the curves still of the
    evaluated split."""
    variants = list(variants)
    diffs = paired_differences(records, reference, metric, variants)
    best = max(diffs, key=lambda v: mean_sem(diffs[v])["mean"]) if diffs else None
    colours = method_colours([reference, *([best] if best else [])])  # the other variants: grey, no curve
    rows = [ForestRow(v, diffs[v], colours.get(v, OTHER_COLOUR), (intervals or {}).get(v))
            for v in variants if v in diffs]
    run_dirs = ablation_run_dirs(out_dir, records)
    curves = []
    test = metric.startswith("test_")
    which, name = metric.removeprefix("test_").split("_", 1)
    for variant, colour in colours.items():
        c = curve(variant, [read_history(d) for d in run_dirs.get(variant, [])], name)
        if c is not None:
            curves.append((c, colour))
    units = "fold × seed pairs" if len({r.get("fold", 0) for r in records}) > 1 else "seed pairs"
    return draw_study(Path(out_dir) / ("ablation_test.png" if test else "ablation.png"), rows, curves,
                      reference=reference, metric=name, which=f"{'test-split ' if test else ''}{which}-epoch",
                      units=units)


def demo_picture(out_path: str | Path, run_dirs: dict[str, list[Path]], reference: str = "CE",
                 metric: str = "macro_accuracy") -> Path:
    """``demo.png``: each method's last-epoch ``metric`` minus the reference's, paired by seed, and the learning
    curves of all methods, a method in the same colour in both. ``run_dirs`` maps a method label (one of them
    ``reference``) to its run directories."""
    records, histories = [], {}
    for label, dirs in run_dirs.items():
        histories[label] = []
        for d in dirs:
            m = Run(d).metrics()
            records.append({"variant": label, "fold": 0, "seed": m["seed"], "value": m["last"][metric]})
            histories[label].append(m.get("history") or [])
    diffs = paired_differences(records, reference, "value", run_dirs)
    colours = method_colours([reference, *run_dirs])
    rows = [ForestRow(f"{label} − {reference}", d, colours[label]) for label, d in diffs.items()]
    curves = [(c, colours[label]) for label in colours
              if label in histories and (c := curve(label, histories[label], metric)) is not None]
    return draw_study(out_path, rows, curves, reference=reference, metric=metric, units="seed pairs")

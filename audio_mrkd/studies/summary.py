"""A study's tables: per variant the mean ± std of its metrics and its paired difference to the reference (same fold
and seed) with a test that respects the design (:mod:`audio_mrkd.studies.statistics`), then what the design
resolves — written to ``ablation.md`` / ``ablation.json`` by :mod:`audio_mrkd.studies.ablation`."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from audio_mrkd.studies import statistics
from audio_mrkd.studies.spec import AblationSpec
from audio_mrkd.train.metrics import mean_std


def teacher_summary(records: list[dict]) -> dict:
    """Mean ± std of the teacher runs' own metrics (each teacher alone), or {} without teachers."""
    rows = [r for r in records if r["variant"] == "teacher"]
    return {m: mean_std([r[m] for r in rows]) for m in
            ("last_macro_accuracy", "best_macro_accuracy", "last_log_loss")} if rows else {}


#: Per variant: mean ± std of these, and the paired difference to the reference of ``PAIRED``; each also with the
#: prefix ``test_`` when every run of the variant was scored on the official test split (``data.final_test``).
SUMMARISED = ("last_macro_accuracy", "best_macro_accuracy", "last_accuracy", "last_log_loss")
PAIRED = ("last_macro_accuracy", "best_macro_accuracy", "last_log_loss")


def summarize(records: list[dict], spec: AblationSpec) -> dict:
    """Per variant: mean ± std of each metric and the paired difference to the reference (same fold and seed), each
    difference with its test (:func:`statistics.paired_test`) and the p-value Holm-corrected over the variants
    compared to the reference (``p_holm``)."""
    by_key = {(r["variant"], r["fold"], r["seed"]): r for r in records}
    out = {}
    for variant in spec.variants:
        rows = [r for r in records if r["variant"] == variant]
        if not rows:
            continue
        entry = {}
        for prefix in ("", "test_"):
            entry |= {prefix + m: mean_std([r[prefix + m] for r in rows]) for m in SUMMARISED
                      if all(prefix + m in r for r in rows)}
            entry |= _paired(rows, by_key, spec.reference, [prefix + m for m in PAIRED])
        out[variant] = entry
    for key in {k for e in out.values() for k in e if k.startswith("delta_")}:
        family = {v: e[key]["p"] for v, e in out.items() if v != spec.reference and key in e}
        for variant, p in statistics.holm(family).items():
            out[variant][key]["p_holm"] = p
    return out


def _pairs(rows: list[dict], by_key: dict, reference: str, metric: str) -> list[tuple[int, int, float]]:
    """``(fold, seed, difference)`` of each run in ``rows`` whose reference run (same fold and seed) is recorded."""
    pairs = []
    for r in rows:
        ref = by_key.get((reference, r["fold"], r["seed"]))
        if ref is not None and metric in r and metric in ref:
            pairs.append((r["fold"], r["seed"], r[metric] - ref[metric]))
    return pairs


def _paired(rows: list[dict], by_key: dict, reference: str, metrics: list[str]) -> dict:
    """``delta_<metric>``: mean ± std, standard error and wins of the differences to the reference's run, and (not for
    the reference itself) their test on the complete pairs: ``ci95``, ``p``, ``unit``, ``units``, ``df``,
    ``estimate``."""
    out = {}
    for m in metrics:
        pairs = _pairs(rows, by_key, reference, m)
        if not pairs:
            continue
        values = [d for _, _, d in pairs]
        stat = mean_std(values)
        stat["sem"] = stat["std"] / np.sqrt(len(values)) if len(values) > 1 else 0.0
        stat["wins"] = int(sum(v > 0 for v in values))
        if rows[0]["variant"] != reference:
            test = statistics.paired_test(pairs)
            stat |= {k: test[k] for k in ("ci95", "p", "unit", "units", "df", "estimate")}
        out[f"delta_{m}"] = stat
    return out


#: The metrics whose study-level resolution (detectable difference, --target) is stated: the headline one, and the
#: same on the official test split when the runs were scored there.
RESOLVED = ("last_macro_accuracy", "test_last_macro_accuracy")


def study_resolution(records: list[dict], spec: AblationSpec, target: float | None = None) -> dict:
    """Per metric of :data:`RESOLVED` the runs have: the variance components of the paired differences, pooled over
    the variants compared to the reference, and what the spec's design (folds × seeds) resolves with them — the
    difference detectable at 80 % power and, for a ``target`` difference (a fraction, like the metric), the seeds or
    folds that would detect it (:func:`statistics.resolution`)."""
    by_key = {(r["variant"], r["fold"], r["seed"]): r for r in records}
    out = {}
    for metric in RESOLVED:
        groups = [_pairs([r for r in records if r["variant"] == v], by_key, spec.reference, metric)
                  for v in spec.variants if v != spec.reference]
        groups = [g for g in groups if g]
        if groups:
            components = statistics.variance_components(groups)
            out[metric] = components | {"variants": len(groups)} | statistics.resolution(
                components, max(spec.folds, 1), len(spec.seeds), target)
    return out


def _ms(s: dict, scale: float = 100) -> str:
    return f"{scale * s['mean']:.1f} ± {scale * s['std']:.1f}"


def _p(p: float) -> str:
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def _tested(d: dict | None, pairs: int) -> str:
    """The cells ``CI95 | p (Holm)`` of one paired difference: empty for the reference, — where it cannot be tested;
    ``n=`` in the interval's cell when fewer than the design's ``pairs`` were complete."""
    if not d or "p" not in d:
        return "|"
    if d["ci95"] is None:
        return f"— ({d['units']} {d['unit']}{'s' if d['units'] != 1 else ''}) | —"
    low, high = (100 * x for x in d["ci95"])
    n = f" n={d['n']}" if d["n"] < pairs else ""
    return f"[{low:+.1f}, {high:+.1f}]{n} | {_p(d['p'])} ({_p(d['p_holm'])})"


def _deltas(e: dict, pairs: int, prefix: str = "") -> str:
    """The table cells ``Δ last macro (sem) | wins | CI95 | p (Holm) | Δ best macro (sem) | CI95 best |
    p best (Holm)`` of a summary entry; ``pairs``: the (fold, seed) pairs of the design."""
    d_last, d_best = e.get(f"delta_{prefix}last_macro_accuracy"), e.get(f"delta_{prefix}best_macro_accuracy")
    delta = f"{100 * d_last['mean']:+.1f} ± {100 * d_last['std']:.1f} ({100 * d_last['sem']:.1f})" if d_last else ""
    wins = f"{d_last['wins']}/{d_last['n']}" if d_last else ""
    delta_b = f"{100 * d_best['mean']:+.1f} ({100 * d_best['sem']:.1f})" if d_best else ""
    return f"{delta} | {wins} | {_tested(d_last, pairs)} | {delta_b} | {_tested(d_best, pairs)}"


EMPTY_DELTAS = "| | | | | | | |"


def format_table(summary: dict, spec: AblationSpec, teachers: dict | None = None, study: dict | None = None) -> str:
    """The Markdown table of :func:`summarize`, then what the study resolves (:func:`study_resolution`)."""
    where = f"{spec.folds} recording-grouped folds" if spec.folds else "the evaluated split"
    pairs = max(spec.folds, 1) * len(spec.seeds)
    lines = [f"{where} × {len(spec.seeds)} seeds {spec.seeds}; Δ = paired difference "
             f"to `{spec.reference}` (same fold and seed), mean ± std (± standard error); accuracies in %.", "",
             "| variant | overrides | last macro acc | best macro acc | last log loss | Δ last macro (sem) | wins "
             "| CI95 | p (Holm) | Δ best macro (sem) | CI95 best | p best (Holm) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for variant, e in summary.items():
        over = " ".join(spec.variants[variant]) or "—"
        lines.append(f"| {variant} | `{over}` | {_ms(e['last_macro_accuracy'])} | {_ms(e['best_macro_accuracy'])} | "
                     f"{e['last_log_loss']['mean']:.3f} | {_deltas(e, pairs)} |")
    if teachers:
        lines.append(f"| teacher (each run alone) | `{Path(spec.teachers.config).name}` "
                     f"{' '.join(spec.teachers.overrides)} | {_ms(teachers['last_macro_accuracy'])} | "
                     f"{_ms(teachers['best_macro_accuracy'])} | {teachers['last_log_loss']['mean']:.3f} "
                     f"{EMPTY_DELTAS}")
    lines += _notes(summary, spec, (study or {}).get("last_macro_accuracy"), "last macro accuracy")
    return "\n".join(lines + _test_table(summary, spec, (study or {}).get("test_last_macro_accuracy")))


def _pt(fraction: float) -> str:
    return f"{100 * fraction:.1f} pt"


def _notes(summary: dict, spec: AblationSpec, resolved: dict | None, name: str, prefix: str = "") -> list[str]:
    """The lines under a table: which test gave CI95 and p, and what the design resolves (and --target)."""
    key = f"delta_{prefix}last_macro_accuracy"
    tested = [e[key] for v, e in summary.items() if v != spec.reference and key in e]
    if not tested:
        return []
    family = sum(d["p"] is not None for d in tested)
    holm = (f"p (Holm): two-sided p, then Holm-corrected over the {family} variant{'s' if family != 1 else ''} "
            f"against `{spec.reference}`" if family else "—: fewer than two units to test so far")
    folds, seeds = max(spec.folds, 1), len(spec.seeds)
    if folds > 1:
        test = (f"CI95 and p: paired t-test of the fold means of Δ ({folds} folds, df {folds - 1}): the fold is the "
                f"unit of replication (the seeds of a fold share its data and only reduce the noise within it)")
    else:
        test = (f"CI95 and p: one evaluated split, so no fold replication: the seeds are the unit (paired t-test on "
                f"the {seeds} seed differences, df {seeds - 1}), and they speak of this split only")
    lines = ["", f"{test}; {holm}; n=: complete pairs, where fewer than {folds * seeds}."]
    return lines + ([_resolution_line(resolved, name), *_target_line(resolved)] if resolved else [])


def _resolution_line(r: dict, name: str) -> str:
    pooled = f"pooled over {r['variants']} variant{'s' if r['variants'] != 1 else ''}"
    one_fold = r["unit"] == "seed"
    design = f"on this split with {r['seeds']} seeds" if one_fold else f"with {r['folds']} folds × {r['seeds']} seeds"
    said = f"Smallest Δ {name} detectable at 80 % power (two-sided α 0.05) {design}: "
    if r["detectable"] is None:
        return said + f"not estimable from the pairs so far (fewer than two {r['unit']}s)."
    if one_fold:
        spread = (f"between seeds σ_s {_pt(r['sigma2_seed'] ** 0.5)}, {pooled}; the variation between splits is not "
                  f"estimable from one")
    elif r["sigma2_seed"] is not None:
        spread = (f"between folds σ_f {_pt(r['sigma2_fold'] ** 0.5)}, between the seeds of a fold σ_s "
                  f"{_pt(r['sigma2_seed'] ** 0.5)}, {pooled}")
    else:
        spread = (f"σ of a fold's Δ {_pt(r['sigma2_fold'] ** 0.5)}, {pooled}; one seed per fold: seed noise not "
                  f"separable")
    return said + f"{_pt(r['detectable'])} (variance components of the paired differences: {spread})."


def _target_line(r: dict) -> list[str]:
    """The --target answer: the seeds with these folds, or that none suffice and the folds that would."""
    if "target" not in r:
        return []
    said = f"--target {100 * r['target']:g} pt at 80 % power: "
    if r["detectable"] is None:
        return [said + "not estimable from the pairs so far."]
    seeds = (f"{r['seeds_needed']} seeds" if r["seeds_needed"] is not None
             else f"more than {statistics.MOST} seeds")
    folds = (f"{r['folds_needed']} folds × {r['seeds']} seeds" if r["folds_needed"] is not None
             else f"more than {statistics.MOST} folds of {r['seeds']} seeds")
    if r["unit"] == "seed":
        return [said + f"{seeds} on this split (the folds it would need are not estimable from one split)."]
    if r["sigma2_seed"] is None:
        return [said + f"{folds} (what more seeds per fold would bring is not estimable from one seed per fold)."]
    if r["power_any_seeds"] < statistics.POWER:
        return [said + f"no number of seeds suffices with {r['folds']} folds (the variation between folds alone "
                       f"leaves {100 * r['power_any_seeds']:.0f} % power); {folds} would."]
    return [said + f"{r['folds']} folds × {seeds}, or {folds}."]


def _test_table(summary: dict, spec: AblationSpec, resolved: dict | None = None) -> list[str]:
    """The official test split's table (runs with ``data.final_test``), or no lines."""
    tested = {v: e for v, e in summary.items() if "test_last_macro_accuracy" in e}
    if not tested:
        return []
    pairs = max(spec.folds, 1) * len(spec.seeds)
    lines = ["", f"The official test split, scored once after the last epoch — the last model, and the best epoch's "
                 f"checkpoint (chosen on the evaluated split) — never used to choose; Δ to `{spec.reference}` as "
                 f"above:", "",
             "| variant | test last macro acc | test best macro acc | test last acc | test last log loss "
             "| Δ test last macro (sem) | wins | CI95 | p (Holm) | Δ test best macro (sem) | CI95 best "
             "| p best (Holm) |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for variant, e in tested.items():
        best = _ms(e["test_best_macro_accuracy"]) if "test_best_macro_accuracy" in e else ""
        lines.append(f"| {variant} | {_ms(e['test_last_macro_accuracy'])} | {best} | {_ms(e['test_last_accuracy'])} "
                     f"| {e['test_last_log_loss']['mean']:.3f} | {_deltas(e, pairs, 'test_')} |")
    return lines + _notes(tested, spec, resolved, "test last macro accuracy", "test_")

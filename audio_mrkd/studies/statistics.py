"""What a study can resolve: the test of a variant's paired differences to the reference, Holm's correction over a
study's variants, and the power of the study's design (folds × seeds) — computed with scipy.stats.

A paired difference is one ``(fold, seed, d)``: the variant's metric minus the reference's in the same fold and seed.
The fold is the unit of replication: the seeds of one fold train and score on the same data, so they share whatever
that split favours, and only the folds replicate the comparison. Seeds reduce the noise within a fold; they do not add
independent evidence about the method. The test is therefore a one-sample t-test on the per-fold means of ``d``
(df = folds − 1), which is the paired t-test of the variant's fold means against the reference's. A study of one fold
(one evaluated split) has no fold replication: its seeds become the unit, and what it says holds for that split only.
"""
from __future__ import annotations

import math

import numpy as np
from scipy import optimize, stats

ALPHA = 0.05    # two-sided
POWER = 0.80
MOST = 10_000   # the most seeds or folds a design search tries


def by_fold(pairs: list[tuple[int, int, float]]) -> dict[int, np.ndarray]:
    """The differences of each fold, folds in order."""
    out: dict[int, list[float]] = {}
    for fold, _, d in sorted(pairs, key=lambda p: (p[0], p[1])):
        out.setdefault(fold, []).append(float(d))
    return {fold: np.asarray(ds) for fold, ds in out.items()}


def paired_test(pairs: list[tuple[int, int, float]]) -> dict:
    """The t-test of the complete pairs' differences: on the fold means (``unit`` "fold", df = folds − 1), or, with a
    single fold, on its seeds (``unit`` "seed", df = seeds − 1). ``n`` pairs, ``units`` tested, ``estimate`` (the
    mean of the units), ``se``, ``t``, two-sided ``p`` and ``ci95`` [low, high]; p and ci95 are None with fewer than
    two units or no spread among them (nothing to test against)."""
    folds = by_fold(pairs)
    unit = "fold" if len(folds) > 1 else "seed"
    values = np.array([ds.mean() for ds in folds.values()]) if unit == "fold" else next(iter(folds.values()), [])
    values = np.asarray(values, dtype=float)
    out = {"unit": unit, "n": len(pairs), "units": int(values.size), "df": int(values.size) - 1,
           "estimate": float(values.mean()) if values.size else None, "se": None, "t": None, "p": None,
           "ci95": None}
    if values.size < 2 or np.ptp(values) == 0:
        return out
    result = stats.ttest_1samp(values, 0.0)
    ci = result.confidence_interval(1 - ALPHA)
    return out | {"se": float(values.std(ddof=1) / math.sqrt(values.size)), "t": float(result.statistic),
                  "p": float(result.pvalue), "ci95": [float(ci.low), float(ci.high)]}


def holm(p_values: dict[str, float | None]) -> dict[str, float | None]:
    """Holm's step-down adjusted p-values over the family given (None stays None and is not counted): the k-th
    smallest of m is multiplied by m − k + 1, kept at least its predecessor's, at most 1."""
    named = sorted(((p, name) for name, p in p_values.items() if p is not None), key=lambda x: x[0])
    out: dict[str, float | None] = {name: None for name in p_values}
    running = 0.0
    for k, (p, name) in enumerate(named):
        running = max(running, min(1.0, (len(named) - k) * p))
        out[name] = running
    return out


def variance_components(groups: list[list[tuple[int, int, float]]]) -> dict:
    """Between-fold variance of the true difference ``sigma2_fold`` and within-fold seed variance ``sigma2_seed``, by
    one-way random-effects ANOVA moments (folds as groups), the sums of squares pooled over ``groups`` (one list of
    pairs per variant: the variants are assumed to share their variance components; they also share the reference's
    runs, so the pooled df overstate how well the components are known), σ_f² truncated at 0.
    One fold: σ_f² is None (not estimable). One seed per fold: σ_s² is None and σ_f² holds all the variance of a
    fold's difference (seed noise included)."""
    ssb = ssw = dfb = dfw = n0_weighted = 0.0
    for pairs in groups:
        folds = list(by_fold(pairs).values())
        if not folds:
            continue
        sizes = np.array([len(ds) for ds in folds], dtype=float)
        grand = np.concatenate(folds).mean()
        ssb += float(sum(len(ds) * (ds.mean() - grand) ** 2 for ds in folds))
        ssw += float(sum(((ds - ds.mean()) ** 2).sum() for ds in folds))
        dfb += len(folds) - 1
        dfw += sizes.sum() - len(folds)
        if len(folds) > 1:  # the effective group size of an unbalanced design, weighted by its df
            n0_weighted += sizes.sum() - (sizes ** 2).sum() / sizes.sum()
    msw = float(ssw / dfw) if dfw else None
    msb = float(ssb / dfb) if dfb else None
    if msb is None:
        sigma2_fold = None
    elif msw is None:
        sigma2_fold = msb
    else:
        sigma2_fold = max(0.0, float((msb - msw) / (n0_weighted / dfb)))
    return {"sigma2_fold": sigma2_fold, "sigma2_seed": msw, "df_fold": int(dfb), "df_seed": int(dfw)}


def power(delta: float, sd_unit: float, units: int) -> float:
    """Power of the two-sided one-sample t-test (α :data:`ALPHA`) on ``units`` values of standard deviation
    ``sd_unit`` when their true mean is ``delta``: noncentral t, df = units − 1, noncentrality δ / (sd / √units).
    """
    if units < 2:
        return 0.0
    if sd_unit == 0:
        return 1.0 if delta != 0 else ALPHA
    df, nc = units - 1, abs(delta) * math.sqrt(units) / sd_unit
    crit = stats.t.ppf(1 - ALPHA / 2, df)
    # the lower tail as the upper tail of −T: scipy's nct.cdf far in the lower tail can return nan
    return float(stats.nct.sf(crit, df, nc) + stats.nct.sf(crit, df, -nc))


def detectable(sd_unit: float, units: int, want: float = POWER) -> float | None:
    """The smallest true difference the test on ``units`` values detects with power ``want`` (None below 2 units)."""
    if units < 2:
        return None
    if sd_unit == 0:
        return 0.0
    high = sd_unit
    while power(high, sd_unit, units) < want:
        high *= 2
    return float(optimize.brentq(lambda d: power(d, sd_unit, units) - want, 0.0, high, xtol=1e-12 * high))


def unit_sd(components: dict, seeds: int) -> float:
    """Standard deviation of a fold mean over ``seeds`` seeds, √(σ_f² + σ_s²/S). An unknown σ_s² (one seed per
    fold) counts as 0: σ_f² then holds it."""
    return math.sqrt(components["sigma2_fold"] + (components["sigma2_seed"] or 0.0) / seeds)


def _fewest(enough, start: int) -> int | None:
    """The smallest n ≥ start with enough(n) (monotone), or None up to :data:`MOST`."""
    if enough(start):
        return start
    low, high = start, start
    while not enough(high):
        if high >= MOST:
            return None
        low, high = high, min(2 * high, MOST)
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (low, mid) if enough(mid) else (mid, high)
    return high


def resolution(components: dict, folds: int, seeds: int, target: float | None = None) -> dict:
    """What a design of ``folds`` × ``seeds`` resolves with these variance components: ``detectable`` (the smallest
    difference found at :data:`POWER`; None where the pairs so far cannot tell), and for a ``target`` difference the
    ``seeds_needed`` with these folds, or None when none suffices (``power_any_seeds``: the power σ_f² alone leaves,
    however many seeds), and the ``folds_needed`` at this many seeds (None past :data:`MOST`). One fold: the seeds are
    the units, and folds cannot be counted (σ_f² is not estimable from one split)."""
    one_fold = folds < 2
    fold2, seed2 = components["sigma2_fold"], components["sigma2_seed"]
    known = seed2 is not None if one_fold else fold2 is not None

    def sd(s: int) -> float:  # of a tested unit: a seed's difference (one fold), else a fold mean over s seeds
        return math.sqrt(seed2) if one_fold else unit_sd(components, s)

    out = {"folds": folds, "seeds": seeds, "unit": "seed" if one_fold else "fold",
           "detectable": detectable(sd(seeds), seeds if one_fold else folds) if known else None}
    if target is None:
        return out
    out |= {"target": target, "seeds_needed": None, "folds_needed": None, "power_any_seeds": None}
    if not known:
        return out
    if one_fold:
        out["seeds_needed"] = _fewest(lambda s: power(target, sd(s), s) >= POWER, 2)
        return out
    out["folds_needed"] = _fewest(lambda f: power(target, sd(seeds), f) >= POWER, 2)
    if seed2 is not None:  # one seed per fold: what more seeds would bring is unknown
        out["power_any_seeds"] = power(target, math.sqrt(fold2), folds)
        if out["power_any_seeds"] >= POWER:
            out["seeds_needed"] = _fewest(lambda s: power(target, sd(s), folds) >= POWER, 1)
    return out

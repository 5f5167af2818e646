"""What a study can resolve (audio_mrkd/train/study_statistics.py), each number checked against an independent
computation: scipy.stats.ttest_rel / ttest_1samp on fold means made by hand, Holm's correction by hand, power by
Monte Carlo."""
import math

import numpy as np
import pytest
from scipy import stats

from audio_mrkd.train import study_statistics as ss


def grid(values: dict[tuple[int, int], float]) -> list[tuple[int, int, float]]:
    return [(f, s, d) for (f, s), d in values.items()]


# ---------------------------------------------------------------------------------------------------- the test
REF = {(f, s): 0.80 + 0.02 * f + 0.003 * s for f in range(4) for s in range(3)}
VAR = {(f, s): REF[(f, s)] + d for (f, s), d in zip(REF, [0.010, 0.030, 0.020, -0.010, 0.005, 0.000,
                                                          0.040, 0.030, 0.050, 0.015, -0.005, 0.010])}


def test_the_test_is_a_paired_t_test_on_fold_means():
    pairs = grid({k: VAR[k] - REF[k] for k in REF})
    got = ss.paired_test(pairs)
    var_means = [np.mean([VAR[(f, s)] for s in range(3)]) for f in range(4)]
    ref_means = [np.mean([REF[(f, s)] for s in range(3)]) for f in range(4)]
    expected = stats.ttest_rel(var_means, ref_means)
    assert (got["unit"], got["units"], got["n"], got["df"]) == ("fold", 4, 12, 3)
    assert got["t"] == pytest.approx(expected.statistic) and got["p"] == pytest.approx(expected.pvalue)
    diff = np.subtract(var_means, ref_means)
    half = stats.t.ppf(0.975, 3) * diff.std(ddof=1) / 2
    assert got["estimate"] == pytest.approx(diff.mean())
    assert got["ci95"] == pytest.approx([diff.mean() - half, diff.mean() + half])


def test_one_fold_falls_back_to_its_seeds():
    ref = {(0, s): v for s, v in enumerate([0.90, 0.91, 0.905, 0.899])}
    var = {(0, s): v for s, v in enumerate([0.91, 0.915, 0.92, 0.90])}
    got = ss.paired_test(grid({k: var[k] - ref[k] for k in ref}))
    expected = stats.ttest_rel(list(var.values()), list(ref.values()))
    assert (got["unit"], got["units"], got["df"]) == ("seed", 4, 3)
    assert got["p"] == pytest.approx(expected.pvalue)
    ci = expected.confidence_interval(0.95)
    assert got["ci95"] == pytest.approx([ci.low, ci.high])


def test_nothing_to_test_is_said_not_invented():
    assert ss.paired_test(grid({(0, 0): 0.01}))["p"] is None  # one pair
    flat = ss.paired_test(grid({(f, s): 0.02 for f in range(3) for s in range(2)}))
    assert flat["p"] is None and flat["ci95"] is None and flat["estimate"] == pytest.approx(0.02)


def test_correlated_seeds_are_not_counted_as_independent():
    """Seeds of a fold that agree closely (they share its data): the fold means carry the evidence, and their test
    gives a far larger p than a naive test that counts every fold × seed pair as independent."""
    rng = np.random.default_rng(3)
    fold_effect = [0.030, -0.010, 0.045, 0.000, 0.020]
    pairs = [(f, s, fold_effect[f] + 0.001 * rng.standard_normal()) for f in range(5) for s in range(6)]
    got = ss.paired_test(pairs)
    naive = stats.ttest_1samp([d for _, _, d in pairs], 0.0).pvalue
    by_hand = stats.ttest_1samp([np.mean([d for f2, _, d in pairs if f2 == f]) for f in range(5)], 0.0).pvalue
    assert got["p"] == pytest.approx(by_hand)
    assert got["p"] > 0.05 > naive and got["p"] > 1000 * naive, (got["p"], naive)
    # and the design's resolution knows that more seeds cannot help: the variation is between folds
    components = ss.variance_components([pairs])
    assert components["sigma2_fold"] > 100 * components["sigma2_seed"]
    r = ss.resolution(components, folds=5, seeds=6, target=0.01)
    assert r["seeds_needed"] is None and r["power_any_seeds"] < 0.8 and r["folds_needed"] > 5


# ---------------------------------------------------------------------------------------------------- Holm
def test_holm_by_hand():
    p = {"a": 0.01, "b": 0.04, "c": 0.03, "d": 0.005, "e": 0.5, "ref": None}
    # sorted: d 0.005·5 = 0.025, a 0.01·4 = 0.04, c 0.03·3 = 0.09, b 0.04·2 = 0.08 → 0.09 (monotone),
    # e 0.5·1 = 0.5
    assert ss.holm(p) == pytest.approx({"a": 0.04, "b": 0.09, "c": 0.09, "d": 0.025, "e": 0.5, "ref": None})
    assert ss.holm({"a": 0.3, "b": 0.4, "c": 0.9}) == pytest.approx({"a": 0.9, "b": 0.9, "c": 0.9})
    assert ss.holm({"a": 0.6, "b": 0.7}) == {"a": 1.0, "b": 1.0}  # capped at 1


# ---------------------------------------------------------------------------------------------------- power
def test_variance_components_are_the_anova_moments():
    rng = np.random.default_rng(0)
    d = 0.01 + 0.02 * rng.standard_normal((6, 1)) + 0.01 * rng.standard_normal((6, 4))  # folds × seeds
    pairs = [(f, s, d[f, s]) for f in range(6) for s in range(4)]
    c = ss.variance_components([pairs])
    within = d.var(axis=1, ddof=1).mean()
    assert c["sigma2_seed"] == pytest.approx(within)
    assert c["sigma2_fold"] == pytest.approx(d.mean(axis=1).var(ddof=1) - within / 4)
    assert (c["df_fold"], c["df_seed"]) == (5, 18)
    # truncated at 0 where the fold means vary less than their seeds' noise explains
    flat = [(f, s, (-1) ** s * 0.01) for f in range(3) for s in range(2)]
    assert ss.variance_components([flat])["sigma2_fold"] == 0.0
    # one fold: σ_f² is not estimable; one seed per fold: σ_s² is not
    assert ss.variance_components([[(0, s, 0.01 * s) for s in range(3)]])["sigma2_fold"] is None
    assert ss.variance_components([[(f, 0, 0.01 * f) for f in range(3)]])["sigma2_seed"] is None


def simulated_power(delta, sigma_f, sigma_s, folds, seeds, trials=40_000, seed=0):
    """The rejection rate of the fold-means t-test on simulated studies (an independent check of the noncentral t)."""
    rng = np.random.default_rng(seed)
    d = (delta + sigma_f * rng.standard_normal((trials, folds, 1))
         + sigma_s * rng.standard_normal((trials, folds, seeds)))
    p = stats.ttest_1samp(d.mean(axis=2), 0.0, axis=1).pvalue
    return float((p < 0.05).mean())


@pytest.mark.parametrize("sigma_f, sigma_s, folds, seeds", [(0.012, 0.044, 5, 3), (0.0, 0.005, 3, 4),
                                                             (0.01, 0.0, 8, 1)])
def test_the_detectable_difference_is_detected_80_percent_of_the_time(sigma_f, sigma_s, folds, seeds):
    components = {"sigma2_fold": sigma_f ** 2, "sigma2_seed": sigma_s ** 2}
    found = ss.resolution(components, folds, seeds)["detectable"]
    assert simulated_power(found, sigma_f, sigma_s, folds, seeds) == pytest.approx(0.80, abs=0.01)
    assert simulated_power(found / 2, sigma_f, sigma_s, folds, seeds) == pytest.approx(
        ss.power(found / 2, math.sqrt(sigma_f ** 2 + sigma_s ** 2 / seeds), folds), abs=0.01)


def test_target_seeds_or_folds_needed():
    components = {"sigma2_fold": 0.005 ** 2, "sigma2_seed": 0.03 ** 2}
    r = ss.resolution(components, folds=5, seeds=3, target=0.02)
    s = r["seeds_needed"]
    assert s > 3 and simulated_power(0.02, 0.005, 0.03, 5, s) >= 0.79
    assert ss.power(0.02, ss.unit_sd(components, s), 5) >= 0.8 > ss.power(0.02, ss.unit_sd(components, s - 1), 5)
    f = r["folds_needed"]
    assert ss.power(0.02, ss.unit_sd(components, 3), f) >= 0.8 > ss.power(0.02, ss.unit_sd(components, 3), f - 1)
    # σ_f² alone prevents it with 5 folds: no number of seeds, and the folds that would do it
    r = ss.resolution({"sigma2_fold": 0.02 ** 2, "sigma2_seed": 0.03 ** 2}, folds=5, seeds=3, target=0.02)
    assert r["seeds_needed"] is None
    assert r["power_any_seeds"] == pytest.approx(simulated_power(0.02, 0.02, 0.0, 5, 1), abs=0.01)
    assert r["power_any_seeds"] < 0.8 and r["folds_needed"] > 5
    # one fold: the seeds needed on that split, no folds
    r = ss.resolution({"sigma2_fold": None, "sigma2_seed": 0.004 ** 2}, folds=1, seeds=3, target=0.005)
    assert r["unit"] == "seed" and r["folds_needed"] is None
    assert ss.power(0.005, 0.004, r["seeds_needed"]) >= 0.8 > ss.power(0.005, 0.004, r["seeds_needed"] - 1)


def test_a_design_the_pairs_cannot_yet_tell_is_said_so():
    """A 5-fold study with fold 0 alone recorded: nothing about folds is known yet; one seed per fold: the folds
    needed are known, what more seeds would bring is not."""
    first_fold = ss.variance_components([[(0, s, 0.01 * s) for s in range(3)]])
    r = ss.resolution(first_fold, folds=5, seeds=3, target=0.01)
    assert r["detectable"] is None and r["seeds_needed"] is None and r["folds_needed"] is None
    one_seed = ss.variance_components([[(f, 0, 0.01 * f) for f in range(4)]])
    r = ss.resolution(one_seed, folds=4, seeds=1, target=0.02)
    assert r["detectable"] == pytest.approx(ss.detectable(math.sqrt(one_seed["sigma2_fold"]), 4))
    assert r["seeds_needed"] is None and r["power_any_seeds"] is None and r["folds_needed"] >= 2

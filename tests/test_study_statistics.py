"""What a study can resolve (audio_mrkd/studies/statistics.py and the ablate summary built on it), each number
checked against an independent computation: scipy.stats.ttest_rel / ttest_1samp on fold means made by hand, Holm's
correction by hand, power by Monte Carlo; and ``ablate --summary`` on every study kept in docs/studies."""
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from audio_mrkd.studies import statistics as ss
from audio_mrkd.studies.spec import AblationSpec
from audio_mrkd.studies.summary import format_table, study_resolution, summarize

ROOT = Path(__file__).resolve().parent.parent
DATA_ROOT = ["--run", "data.root=/nowhere"]  # the image studies' recipes name a data root; --summary reads no data
#: drums_decide stopped at the end of its second session, part-way through a seed: its rule is applied to the seeds
#: complete by then (docs/results.md).
DECIDED_SEEDS = "seeds=[0,1,2,3]"
#: Every records file kept in docs/studies, with the spec and the overrides its study was run with
#: (docs/studies/README.md).
STUDIES = {
    "drums_kd": ("configs/ablations/drums_kd.yaml", []),
    "drums_kd_mixup": ("configs/ablations/drums_kd_mixup.yaml", []),
    "drums_pskd_store": ("configs/ablations/drums_pskd_store.yaml", []),
    "drums_decide": ("configs/ablations/drums_decide.yaml", [DECIDED_SEEDS]),
    "fmnist_self_kd": ("configs/ablations/fmnist_self_kd.yaml", DATA_ROOT),
    "fmnist_kd": ("configs/ablations/fmnist_kd.yaml", DATA_ROOT),
    "fmnist_self_kd_test": ("configs/ablations/fmnist_self_kd.yaml",
                            [*DATA_ROOT, "--run", "data.eval_split=test", "--variants", "ce_ls", "pskd"]),
    "fmnist_kd_wrn": ("configs/ablations/fmnist_kd_wrn.yaml", DATA_ROOT),
    "fmnist_kd_wrn_test": ("docs/studies/fmnist_kd_wrn_test.spec.yaml", [*DATA_ROOT, "--run", "data.eval_split=test"]),
}


def grid(values: dict[tuple[int, int], float]) -> list[tuple[int, int, float]]:
    return [(f, s, d) for (f, s), d in values.items()]


def records(reference: dict, **variants: dict) -> list[dict]:
    """runs.jsonl-like records: ``{(fold, seed): last_macro_accuracy}`` per variant (best = last − 0.01)."""
    out = []
    for name, values in {"ce": reference, **variants}.items():
        for (fold, seed), value in values.items():
            out.append({"variant": name, "fold": fold, "seed": seed, "last_macro_accuracy": value,
                        "best_macro_accuracy": value - 0.01, "last_accuracy": value, "last_log_loss": 1 - value})
    return out


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


def test_missing_pairs_use_the_complete_ones():
    """Runs without their reference (or reference runs without the variant's) are left out; a fold left with none is
    not a unit; n says how many pairs were complete."""
    ref = {k: v for k, v in REF.items() if k not in {(1, 2), (3, 0), (3, 1), (3, 2)}}  # fold 3: no reference at all
    summary = summarize(records(ref, x=VAR), AblationSpec(config="-", variants={"ce": [], "x": []}, folds=4,
                                                            seeds=[0, 1, 2]))
    d = summary["x"]["delta_last_macro_accuracy"]
    means = [np.mean([VAR[(f, s)] - REF[(f, s)] for s in range(3) if (f, s) in ref]) for f in range(3)]
    assert (d["n"], d["units"], d["df"]) == (8, 3, 2)
    assert d["p"] == pytest.approx(stats.ttest_1samp(means, 0.0).pvalue)
    table = format_table(summary, AblationSpec(config="-", variants={"ce": [], "x": []}, folds=4, seeds=[0, 1, 2]))
    assert "] n=8 |" in table  # the interval says it stands on 8 of the 12 pairs


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


def test_the_summary_holm_corrects_over_the_variants_against_the_reference():
    other = {k: v + 0.002 * (k[1] - 1) for k, v in REF.items()}
    spec = AblationSpec(config="-", variants={"ce": [], "x": [], "y": []}, folds=4, seeds=[0, 1, 2])
    summary = summarize(records(REF, x=VAR, y=other), spec)
    raw = {v: summary[v]["delta_last_macro_accuracy"]["p"] for v in ("x", "y")}
    assert summary["x"]["delta_last_macro_accuracy"]["p_holm"] == pytest.approx(ss.holm(raw)["x"])
    assert summary["y"]["delta_last_macro_accuracy"]["p_holm"] == pytest.approx(ss.holm(raw)["y"])
    assert "p" not in summary["ce"]["delta_last_macro_accuracy"]  # the reference is not tested against itself
    for metric in ("last_macro_accuracy", "best_macro_accuracy"):  # a family per metric
        assert summary["x"][f"delta_{metric}"]["p_holm"] >= summary["x"][f"delta_{metric}"]["p"]


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


def test_study_resolution_pools_the_variants_and_the_table_says_it():
    other = {k: v + 0.002 * (k[1] - 1) + 0.004 * (k[0] % 2) for k, v in REF.items()}
    spec = AblationSpec(config="-", variants={"ce": [], "x": [], "y": []}, folds=4, seeds=[0, 1, 2])
    recs = records(REF, x=VAR, y=other)
    study = study_resolution(recs, spec, target=0.05)
    pooled = ss.variance_components([grid({k: VAR[k] - REF[k] for k in REF}),
                                     grid({k: other[k] - REF[k] for k in REF})])
    got = study["last_macro_accuracy"]
    assert got["sigma2_fold"] == pytest.approx(pooled["sigma2_fold"]) and got["variants"] == 2
    assert got["detectable"] == pytest.approx(ss.resolution(pooled, 4, 3)["detectable"])
    table = format_table(summarize(recs, spec), spec, study=study)
    assert "| CI95 | p (Holm) |" in table and "paired t-test of the fold means of Δ (4 folds, df 3)" in table
    assert f"detectable at 80 % power (two-sided α 0.05) with 4 folds × 3 seeds: {100 * got['detectable']:.1f} pt" \
        in table
    assert "--target 5 pt at 80 % power: " in table


# ---------------------------------------------------------------------------------------------------- the studies
def test_every_kept_study_is_listed_here():
    assert {p.name.split(".")[0] for p in (ROOT / "docs" / "studies").glob("*.runs.jsonl")} == set(STUDIES)


def kept_summary(name: str, tmp_path, capsys, monkeypatch) -> tuple[str, dict]:
    """``ablate --summary --target 1.0`` of a kept study's records, as its spec and overrides give: (printed, JSON)."""
    from audio_mrkd import plots
    from audio_mrkd.cli import main
    monkeypatch.setattr(plots, "ablation_picture", lambda *a, **k: None)  # the table is what is checked here
    spec, extra = STUDIES[name]
    out = tmp_path / name
    out.mkdir()
    shutil.copy(ROOT / "docs" / "studies" / f"{name}.runs.jsonl", out / "runs.jsonl")
    monkeypatch.chdir(ROOT)
    assert main(["ablate", spec, "--out", str(out), *extra, "--summary", "--target", "1.0"]) == 0
    return capsys.readouterr().out, json.loads((out / "ablation.json").read_text())


@pytest.mark.parametrize("name", sorted(STUDIES))
def test_ablate_summary_of_a_kept_study_says_what_it_resolves(name, tmp_path, capsys, monkeypatch):
    printed, summary = kept_summary(name, tmp_path, capsys, monkeypatch)
    header = "| Δ last macro (sem) | wins | CI95 | p (Holm) | Δ best macro (sem) | CI95 best | p best (Holm) |"
    assert header in printed
    assert "Smallest Δ last macro accuracy detectable at 80 % power" in printed
    assert "--target 1 pt at 80 % power: " in printed
    reference = next(v for v, e in summary.items() if v not in ("study", "teachers") and "p" not in
                     e["delta_last_macro_accuracy"])
    tested = {v: e["delta_last_macro_accuracy"] for v, e in summary.items()
              if v not in ("study", "teachers", reference)}
    assert tested and all(d["p_holm"] is not None and d["ci95"][0] < d["estimate"] < d["ci95"][1]
                          for d in tested.values())
    assert {v: d["p_holm"] for v, d in tested.items()} == pytest.approx(ss.holm({v: d["p"] for v, d in tested.items()}))
    for variant, d in tested.items():  # each row's cells are the JSON's numbers
        low, high = (100 * x for x in d["ci95"])
        assert f"| [{low:+.1f}, {high:+.1f}] | " in printed, variant
    assert summary["study"]["last_macro_accuracy"]["detectable"] > 0


def test_the_deciding_study_s_rule_is_what_the_demo_and_the_docs_follow(tmp_path, capsys, monkeypatch):
    """drums_decide's rule (its spec's header), applied to its complete seeds: a variant becomes the recommended
    method — the demo's third beside CE and CE + label smoothing — only if it beats ``ce_ls`` with a Holm-corrected
    p < 0.05 on the 7 fold means (the largest such difference if several); otherwise the demo keeps MrKD there and
    label smoothing stays the baseline to beat. The demo and docs/results.md must say what the records give."""
    from audio_mrkd.demo import DEMO_RUNS
    _, summary = kept_summary("drums_decide", tmp_path, capsys, monkeypatch)
    tested = {v: e["delta_last_macro_accuracy"] for v, e in summary.items()
              if v not in ("study", "teachers", "ce_ls")}
    assert sorted(tested) == ["ce", "dlb", "kd", "mrkd_cached", "pskd"]
    seeds = len(DECIDED_SEEDS.split(","))
    assert all(d["unit"] == "fold" and d["units"] == 7 and d["n"] == 7 * seeds for d in tested.values())
    beating = sorted((d["estimate"], v) for v, d in tested.items() if d["estimate"] > 0 and d["p_holm"] < 0.05)
    recommended = beating[-1][1] if beating else None
    assert [name for _, _, name in DEMO_RUNS.values()] == ["ce", "ce_ls", recommended or "mrkd"]
    results = (ROOT / "docs" / "results.md").read_text()
    outcome = (f"Outcome, by the rule: **`{recommended}` becomes the recommended method**" if recommended else
               "Outcome, by the rule: **no variant beats label smoothing**")
    assert outcome in results

"""Drift statistics against scipy and direct numpy formulas, and the decision rule."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from scipy.spatial.distance import jensenshannon

from pipeline.estimators.drift import (
    METHODS,
    PSI_SMOOTHING,
    Summary,
    adjust_p_values,
    chi_square,
    compare,
    decide,
    histograms,
    jensen_shannon,
    ks,
    out_of_range_rate,
    psi,
    type_mismatch,
    unseen_categories,
    wasserstein,
    wasserstein_normalised,
)
from pipeline.estimators.features import OTHER, FeatureWindow, bucket_index, category_key

Sampler = Callable[[np.random.Generator, int, float], np.ndarray]
SAMPLERS: dict[str, Sampler] = {
    "normal": lambda g, n, s: g.normal(s, 1.0, n),
    "lognormal": lambda g, n, s: g.lognormal(s, 1.0, n),
    "discrete": lambda g, n, s: g.poisson(3.0 + 3 * s, n).astype(float),
    "heavy": lambda g, n, s: g.standard_t(1.5, n) * 10 + 10 * s,
}
CASES = [(name, shift) for name in SAMPLERS for shift in (0.0, 0.3)]


def pair(name: str, shift: float, n: int, m: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    g = np.random.default_rng(seed)
    return SAMPLERS[name](g, n, shift), SAMPLERS[name](g, m, 0.0)


def summaries(w: np.ndarray, r: np.ndarray, exact_max: int = 1000) -> tuple[Summary, Summary]:
    return Summary.from_values(w, exact_max=exact_max), Summary.from_values(r, exact_max=exact_max)


@pytest.mark.parametrize(("name", "shift"), CASES)
def test_ks_exact_path_is_scipy(name: str, shift: float) -> None:
    w, r = pair(name, shift, 400, 700)
    got = ks(*summaries(w, r))
    ref = stats.ks_2samp(w, r)
    assert got.exact and got.error_bound == 0.0
    assert abs(got.statistic - ref.statistic) <= 1e-12
    assert abs(got.p_value - ref.pvalue) <= 1e-12


@pytest.mark.parametrize(("name", "shift"), CASES)
def test_ks_sketch_path_within_its_bound(name: str, shift: float) -> None:
    w, r = pair(name, shift, 6000, 9000)
    got = ks(*summaries(w, r))
    exact = stats.ks_2samp(w, r, method="asymp")
    assert not got.exact
    assert got.statistic - 1e-12 <= exact.statistic <= got.statistic + got.error_bound + 1e-12
    if name == "discrete":  # one value per bucket: exact statistic, but the bound cannot know
        assert got.statistic == pytest.approx(exact.statistic, abs=1e-12)
        assert got.p_value == pytest.approx(exact.pvalue, rel=1e-9, abs=1e-300)
    else:
        assert got.error_bound <= 0.02


@pytest.mark.parametrize(("name", "shift"), CASES)
def test_wasserstein_exact_and_sketch_paths(name: str, shift: float) -> None:
    w, r = pair(name, shift, 500, 800)
    exact = stats.wasserstein_distance(w, r)
    got = wasserstein(*summaries(w, r))
    assert got.exact and abs(got.statistic - exact) <= 1e-9 * max(exact, 1.0)
    w, r = pair(name, shift, 5000, 7000, seed=1)
    exact = stats.wasserstein_distance(w, r)
    got = wasserstein(*summaries(w, r))
    assert not got.exact
    assert abs(got.statistic - exact) <= got.error_bound + 1e-9 * max(exact, 1.0)
    assert got.error_bound <= 0.05 * np.std(r)
    normed = wasserstein_normalised(*summaries(w, r))
    assert normed.statistic == pytest.approx(got.statistic / np.std(r), rel=1e-6)


def direct_bins(w: np.ndarray, r: np.ndarray, bins: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Reference quantile bins on bucket indices, written out directly."""
    iw, ir = bucket_index(w, 0.01), np.sort(bucket_index(r, 0.01))
    n = ir.size
    positions = [math.ceil(q * n / bins) - 1 for q in range(1, bins)]
    cuts = np.unique(ir[positions])
    size = cuts.size + 1

    def count(i: np.ndarray) -> np.ndarray:
        return np.bincount(np.searchsorted(cuts, i, side="left"), minlength=size).astype(float)

    return count(iw), count(ir)


def psi_formula(cw: np.ndarray, cr: np.ndarray) -> float:
    a = (cw + PSI_SMOOTHING) / (cw.sum() + PSI_SMOOTHING * cw.size)
    b = (cr + PSI_SMOOTHING) / (cr.sum() + PSI_SMOOTHING * cr.size)
    return float(np.sum((a - b) * np.log(a / b)))


@pytest.mark.parametrize(("name", "shift"), CASES)
def test_psi_and_js_numeric_match_direct_formulas(name: str, shift: float) -> None:
    w, r = pair(name, shift, 3000, 5000)
    sw, sr = summaries(w, r)
    cw, cr = direct_bins(w, r)
    hw, hr = histograms(sw, sr)
    np.testing.assert_array_equal(hw, cw)
    np.testing.assert_array_equal(hr, cr)
    assert psi(sw, sr).statistic == pytest.approx(psi_formula(cw, cr), rel=1e-12, abs=1e-15)
    js = jensenshannon(cw / cw.sum(), cr / cr.sum(), base=2)
    assert jensen_shannon(sw, sr).statistic == pytest.approx(js, rel=1e-9, abs=1e-12)


def test_categorical_psi_js_and_chi_square() -> None:
    g = np.random.default_rng(4)
    cats = np.array(list("abcdefg"))
    w = cats[g.choice(7, 3000, p=[0.3, 0.2, 0.2, 0.1, 0.1, 0.05, 0.05])]
    r = cats[:6][g.choice(6, 4000, p=[0.25, 0.25, 0.2, 0.1, 0.1, 0.1])]
    sw, sr = Summary.from_values(w.tolist()), Summary.from_values(r.tolist())
    labels = sorted(set(w) | set(r))
    cw = np.array([np.sum(w == c) for c in labels], dtype=float)
    cr = np.array([np.sum(r == c) for c in labels], dtype=float)
    chi = stats.chi2_contingency(np.vstack([cw, cr]))
    got = chi_square(sw, sr)
    assert got.statistic == pytest.approx(chi.statistic, rel=1e-12)
    assert got.p_value == pytest.approx(chi.pvalue, rel=1e-9, abs=1e-300)
    assert psi(sw, sr).statistic == pytest.approx(psi_formula(cw, cr), rel=1e-12)
    js = jensenshannon(cw / cw.sum(), cr / cr.sum(), base=2)
    assert jensen_shannon(sw, sr).statistic == pytest.approx(js, rel=1e-9)
    two = chi_square(Summary.from_values(["a"] * 30 + ["b"] * 5), Summary.from_values(["a"] * 20))
    assert two.statistic == stats.chi2_contingency([[30, 5], [20, 0]]).statistic


def test_chi_square_is_scipys_to_the_last_bit() -> None:
    """Every table shape: one category (no test), two (Yates' correction), many; small and
    large counts; categories seen on one side only."""
    g = np.random.default_rng(12)
    checked = 0
    for trial in range(600):
        k = int(g.integers(1, 10))
        high = (3, 40, 5000, 10**7)[trial % 4]
        cw, cr = g.integers(0, high, size=(2, k))
        cw[g.integers(0, k)] *= trial % 3 == 0  # sometimes a category the window lacks
        if not cw.sum() or not cr.sum():
            continue
        names = [f"c{i}" for i in range(k)]

        def summary(counts: np.ndarray, names: list[str] = names) -> Summary:
            n = int(counts.sum())
            kept = {c: int(x) for c, x in zip(names, counts, strict=True) if x}
            return Summary(present=n, text=n, categories=kept)

        table = np.vstack([cw, cr]).astype(float)
        want = stats.chi2_contingency(table[:, table.sum(axis=0) > 0])
        got = chi_square(summary(cw), summary(cr))
        assert (got.statistic, got.p_value) == (float(want.statistic), float(want.pvalue))
        checked += 1
    assert checked > 500


def test_categories_capped_on_either_side_compare_like_with_like() -> None:
    g = np.random.default_rng(8)
    names = [f"v{i}" for i in range(60)]
    w = [names[i] for i in g.integers(0, 60, 5000)]
    r = [names[i] for i in g.integers(0, 20, 5000)]
    sw = Summary.from_values(w, max_categories=10)
    sr = Summary.from_values(r, max_categories=10)
    hw, hr = histograms(sw, sr)
    assert hw.sum() == 5000 and hr.sum() == 5000
    # a column per category whose count is known on both sides (exactly), then "other"
    known = sorted(
        c
        for c in set(sw.categories) | set(sr.categories)
        if (c in sw.categories or not sw.hides(c)) and (c in sr.categories or not sr.hides(c))
    )
    assert hw.size == len(known) + 1 and len(known) >= 10
    for i, c in enumerate(known):
        assert (hw[i], hr[i]) == (w.count(c), r.count(c))
    assert chi_square(sw, sr).p_value < 1e-10


def test_identical_distributions_show_no_drift() -> None:
    for name in SAMPLERS:
        w, r = pair(name, 0.0, 20000, 20000, seed=3)
        sw, sr = summaries(w, r)
        assert psi(sw, sr).statistic < 0.01 and jensen_shannon(sw, sr).statistic < 0.05
        assert ks(sw, sr).p_value > 0.01
        assert psi(sr, sr).statistic == 0.0 and jensen_shannon(sr, sr).statistic == 0.0
        assert ks(sr, sr).statistic == 0.0 and ks(sr, sr).p_value == 1.0


def test_summary_from_partial_rows_equals_one_pass() -> None:
    g = np.random.default_rng(9)
    values = [*g.normal(size=900).tolist(), *[f"c{i}" for i in g.integers(0, 50, 400)]]
    parts = []
    for chunk in np.array_split(np.arange(len(values)), 4):
        fw = FeatureWindow(max_categories=10)
        fw.update([{"f": values[i]} for i in g.permutation(chunk)])
        parts.extend(fw.rows())
    merged = Summary.from_rows(parts, max_categories=10)
    whole = Summary.from_values(values, max_categories=10)
    for name in ("present", "numeric", "text", "min", "max", "other", "sketch", "categories"):
        assert getattr(merged, name) == getattr(whole, name), name
    assert merged.sum == pytest.approx(whole.sum, rel=1e-15)
    np.testing.assert_array_equal(merged.values, whole.values)
    strings = [v for v in values if isinstance(v, str)]
    kept = sorted(set(strings), key=category_key)[:10]
    assert merged.categories == {c: strings.count(c) for c in sorted(kept)}
    assert merged.values is not None  # 900 <= exact_max in every part
    capped = FeatureWindow(exact_max=1)
    capped.update([{"f": 1.0}, {"f": 2.0}])
    assert Summary.from_rows([*parts, *capped.rows()]).values is None


def test_from_series_and_from_rows_with_null_extremes() -> None:
    s = Summary.from_series(pd.Series([1.0, None, np.nan, 3.0]))
    assert (s.present, s.count, s.values.tolist()) == (2, 2, [1.0, 3.0])
    fw = FeatureWindow()
    fw.update([{"a": None}])
    empty = Summary.from_rows([{**fw.rows()[0], "min": None, "max": None}])
    assert (empty.count, empty.kind, empty.min) == (0, None, math.inf)
    assert math.isnan(ks(empty, s).statistic) and math.isnan(psi(empty, s).statistic)


@pytest.mark.parametrize("seed", range(3))
def test_benjamini_hochberg_and_bonferroni_match_scipy(seed: int) -> None:
    p = np.random.default_rng(seed).random(50) ** 3
    np.testing.assert_allclose(
        adjust_p_values(p, "bh"), stats.false_discovery_control(p, method="bh"), rtol=1e-12
    )
    np.testing.assert_allclose(adjust_p_values(p, "bonferroni"), np.minimum(p * 50, 1.0))
    with_nan = adjust_p_values(np.r_[p, np.nan], "bh")
    assert math.isnan(with_nan[-1])
    np.testing.assert_allclose(with_nan[:-1], stats.false_discovery_control(p), rtol=1e-12)


def test_decision_rule_ignores_tiny_shifts_of_large_windows() -> None:
    g = np.random.default_rng(12)
    ref = Summary.from_values(g.normal(0.0, 1.0, 100_000))
    windows = {
        "tiny": Summary.from_values(g.normal(0.04, 1.0, 100_000)),
        "same": Summary.from_values(g.normal(0.0, 1.0, 100_000)),
        "real": Summary.from_values(g.normal(0.5, 1.0, 100_000)),
        "few": Summary.from_values(g.normal(3.0, 1.0, 50)),
    }
    results = {f: compare(w, ref) for f, w in windows.items()}
    d = decide(results)
    assert d["tiny"].adjusted["ks"] < 1e-6 and not d["tiny"].drifted
    assert not d["same"].drifted and d["same"].adjusted["ks"] > 0.05
    assert d["real"].drifted and "wasserstein_normalised" in d["real"].flagged
    assert d["few"].flagged and not d["few"].drifted and d["few"].count == 50
    by_test = decide(results, rule="test", correction="bonferroni")
    assert by_test["tiny"].drifted and not by_test["same"].drifted
    assert decide(results, min_count=10)["few"].drifted
    raw = [results[f]["ks"].p_value for f in windows]
    np.testing.assert_allclose(
        [d[f].adjusted["ks"] for f in windows], stats.false_discovery_control(raw), rtol=1e-12
    )


def test_methods_registry_is_complete() -> None:
    assert set(METHODS) == {
        "psi", "jensen_shannon", "wasserstein", "wasserstein_normalised", "ks", "chi_square",
    }  # fmt: skip
    for m in METHODS.values():
        assert m.kind in ("effect", "test") and set(m.applies_to) <= {"numeric", "categorical"}
    assert {m.threshold for m in METHODS.values() if m.kind == "test"} == {0.05}


def test_out_of_range_exact_and_from_sketch() -> None:
    g = np.random.default_rng(13)
    r, w = g.normal(0, 1, 5000), g.normal(0.5, 1.5, 5000)
    true = np.mean((w < r.min()) | (w > r.max()))
    sr = Summary.from_values(r)
    exact = out_of_range_rate(Summary.from_values(w, exact_max=10_000), sr)
    assert exact.rate == true and exact.error_bound == 0.0
    approx = out_of_range_rate(Summary.from_values(w), sr)
    assert approx.rate <= true <= approx.rate + approx.error_bound
    assert approx.error_bound < 0.01


def test_unseen_categories_and_type_mismatch() -> None:
    ref = Summary.from_values(["a", "b", "c"] * 10 + [1.0])
    win = Summary.from_values(["a", "z", "z", "y", 2.0, 3.0, None])
    q = unseen_categories(win, ref)
    assert (q.count, q.total, q.rate, q.error_bound) == (3, 4, 0.75, 0.0)
    t = type_mismatch(win, ref)
    assert (t.count, t.total) == (2, 6)
    numeric_ref = Summary.from_values([1.0, 2.0])
    assert type_mismatch(win, numeric_ref).count == 4
    capped = Summary.from_values([f"r{i}" for i in range(50)], max_categories=5)
    hidden = unseen_categories(Summary.from_values(["zz"] * 4), capped)
    assert hidden.count + hidden.error_bound * hidden.total == 4
    assert OTHER not in capped.categories


@pytest.mark.parametrize(("name", "shift"), CASES)
def test_large_raw_samples_give_scipys_numbers(name: str, shift: float) -> None:
    """Past ``KS_EXACT_MAX_PRODUCT`` raw values still give ks_2samp's statistic (and its
    asymptotic p-value), and ``wasserstein`` is scipy's, from one shared pass over both."""
    w, r = pair(name, shift, 1200, 1900)
    window, reference = summaries(w, r, exact_max=2000)
    got = ks(window, reference)
    ref = stats.ks_2samp(w, r, method="asymp")
    assert got.exact and got.statistic == ref.statistic and got.p_value == ref.pvalue
    exact = stats.wasserstein_distance(w, r)
    assert wasserstein(window, reference).statistic == pytest.approx(exact, rel=1e-12, abs=0)


def test_empirical_cdfs_are_scipys_construction() -> None:
    """The merge gives the floats of ``searchsorted(sample, union, "right") / size``, with
    ties within and across the samples, and signed zeros."""
    from pipeline.estimators.drift import _empirical_cdfs

    g = np.random.default_rng(21)
    for trial in range(300):
        w, r = (g.integers(-3, 4, int(g.integers(1, 80))) * 0.5 for _ in range(2))
        if trial % 3 == 0:
            w = np.where(w == 0, -0.0, w)
        window, reference = Summary.from_values(w), Summary.from_values(r)
        union, f, h = _empirical_cdfs(window, reference)
        a, b = window.values, reference.values
        assert a is not None and b is not None
        np.testing.assert_array_equal(union, np.sort(np.concatenate((a, b))))
        np.testing.assert_array_equal(f, np.searchsorted(a, union, side="right") / a.size)
        np.testing.assert_array_equal(h, np.searchsorted(b, union, side="right") / b.size)


def test_merge_equals_from_rows_of_every_part() -> None:
    """Merging summaries gives what summing all their partial rows gives: the category cap,
    raw values and sketches exactly, the float sums up to rounding."""
    g = np.random.default_rng(3)
    windows = [FeatureWindow(max_categories=10, exact_max=400, projections=0) for _ in range(3)]
    for w in windows:
        w.update_column("x", g.normal(size=300).tolist() + [f"c{k}" for k in g.integers(0, 40, 80)])
    rows = [[r for r in w.rows() if r["feature"] == "x"] for w in windows]
    merged = Summary.merge([Summary.from_rows(rs, max_categories=10) for rs in rows])
    direct = Summary.from_rows([r for rs in rows for r in rs], max_categories=10)
    for name in ("present", "numeric", "nonfinite", "text", "min", "max", "sketch"):
        assert getattr(merged, name) == getattr(direct, name), name
    assert (merged.categories, merged.other) == (direct.categories, direct.other)
    assert np.array_equal(merged.values, direct.values)
    assert merged.sum == pytest.approx(direct.sum, rel=1e-12)
    assert merged.sum_sq == pytest.approx(direct.sum_sq, rel=1e-12)
    big = FeatureWindow(exact_max=10, projections=0)
    big.update_column("x", g.normal(size=50).tolist())
    capped = Summary.from_rows(big.rows())
    assert capped.values is None and Summary.merge([merged, capped]).values is None

"""Drift and data-quality statistics of one feature: a window ``Summary`` against a reference.

A :class:`Summary` is the merged view of one feature's partial rows
(:meth:`pipeline.estimators.features.FeatureWindow.rows`, summed across partitions). Every
statistic is a pure function ``f(window, reference) -> Result``, registered in
:data:`METHODS` under a stable name with a default threshold; :func:`decide` turns the
results of one window into per-feature decisions. ``docs/metrics.md`` ("Drift and data
quality") gives the definitions, error bounds and defaults.

Exact where the data allow it: when both summaries carry their raw values (at most
``exact_max`` finite values), ``ks`` and ``wasserstein`` are scipy's statistics on them;
otherwise they are computed from the sketches and report a bound on their error
(``Result.error_bound``) computed from the data.
"""

from __future__ import annotations

import functools
import math
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np
from scipy import special, stats

from pipeline.estimators.family import (
    INSERTED_AT,
    VERSION,
    Accumulator,
    Column,
    Derivation,
    MetricFamily,
    Pairs,
    Predictions,
    Row,
    Table,
    Views,
    derived_table,
    finite,
    partial_table,
)
from pipeline.estimators.features import (
    OTHER,
    FeatureWindow,
    bucket_bounds,
    cap_categories,
    category_key,
)

if TYPE_CHECKING:
    from pipeline.settings import Settings

__all__ = [
    "METHODS",
    "Decision",
    "Method",
    "Quality",
    "Result",
    "Summary",
    "adjust_p_values",
    "chi_square",
    "compare",
    "decide",
    "exact_sum",
    "histograms",
    "jensen_shannon",
    "ks",
    "out_of_range_rate",
    "outside_reference",
    "psi",
    "type_mismatch",
    "unseen_categories",
    "wasserstein",
    "wasserstein_normalised",
]

Kind = Literal["numeric", "categorical"]
#: Added to every bin count before PSI's proportions: p = (count + 0.5) / (n + 0.5 · bins).
PSI_SMOOTHING = 0.5


@dataclass(frozen=True, eq=False)
class Summary:
    """Merged summaries of one feature (a window's partials, or a reference).

    ``sketch`` maps bucket index to count (finite numeric values), ``categories`` maps the
    kept strings to counts and ``other`` counts the rest; ``values`` holds every finite
    numeric value, sorted, or is ``None`` when some partial had too many to keep.

    Examples
    --------
    >>> s = Summary.from_values([1.0, 2.0, float("nan"), "a", None])
    >>> s.present, s.numeric, s.nonfinite, s.text, s.count, s.kind
    (4, 3, 1, 1, 2, 'numeric')
    >>> s.values.tolist(), s.categories, s.min, s.max
    ([1.0, 2.0], {'a': 1}, 1.0, 2.0)
    """

    present: int = 0
    numeric: int = 0
    nonfinite: int = 0
    text: int = 0
    sum: float = 0.0
    sum_sq: float = 0.0
    min: float = math.inf
    max: float = -math.inf
    sketch: Mapping[int, int] = field(default_factory=dict)
    categories: Mapping[str, int] = field(default_factory=dict)
    other: int = 0
    values: np.ndarray | None = None
    relative_accuracy: float = 0.01
    max_categories: int = 100

    @classmethod
    def from_rows(
        cls,
        rows: Iterable[Mapping[str, Any]],
        relative_accuracy: float = 0.01,
        max_categories: int = 100,
    ) -> Summary:
        """Sum partial rows of one feature (any order; ``min``/``max`` ``None`` = none).

        The category cap is applied again to the sum, which makes the kept counts exact
        (see :func:`~pipeline.estimators.features.cap_categories`).
        """
        counts = dict.fromkeys(("present", "numeric", "nonfinite", "text"), 0)
        sums: list[float] = []
        squares: list[float] = []
        low, high = math.inf, -math.inf
        sketch: dict[int, int] = {}
        categories: dict[str, int] = {}
        values: list[float] | None = []
        for row in rows:
            for name in counts:
                counts[name] += int(row[name])
            sums.append(float(row["sum"]))
            squares.append(float(row["sum_sq"]))
            if row["min"] is not None:
                low, high = min(low, float(row["min"])), max(high, float(row["max"]))
            _add(sketch, row["sketch"])
            _add(categories, row["categories"])
            if values is not None and len(row["values"]) == row["numeric"] - row["nonfinite"]:
                values.extend(row["values"])
            else:
                values = None
        other = categories.pop(OTHER, 0) + cap_categories(categories, max_categories)
        return cls(
            **counts,
            sum=exact_sum(sums),
            sum_sq=exact_sum(squares),
            min=low,
            max=high,
            sketch=dict(sorted(sketch.items())),
            categories=dict(sorted(categories.items())),
            other=other,
            values=None if values is None else _frozen(np.sort(np.asarray(values, float))),
            relative_accuracy=relative_accuracy,
            max_categories=max_categories,
        )

    @classmethod
    def merge(cls, parts: Sequence[Summary]) -> Summary:
        """The summary of the union of the data of ``parts`` (at least one), as
        :meth:`from_rows` of all their rows would give it (the sums up to rounding).

        >>> a, b = Summary.from_values([1.0, "x"]), Summary.from_values([3.0, 2.0])
        >>> m = Summary.merge([a, b])
        >>> m.present, m.values.tolist(), m.categories, m.min
        (4, [1.0, 2.0, 3.0], {'x': 1}, 1.0)
        """
        first = parts[0]
        if len(parts) == 1:
            return first
        index, inverse = np.unique(
            np.concatenate([p.buckets[0] for p in parts]), return_inverse=True
        )
        counts = np.bincount(inverse, np.concatenate([p.buckets[1] for p in parts]))
        categories: dict[str, int] = {}
        for part in parts:
            _add(categories, part.categories)
        values = [p.values for p in parts]
        other = sum(p.other for p in parts) + cap_categories(categories, first.max_categories)
        return cls(
            present=sum(p.present for p in parts),
            numeric=sum(p.numeric for p in parts),
            nonfinite=sum(p.nonfinite for p in parts),
            text=sum(p.text for p in parts),
            sum=exact_sum([p.sum for p in parts]),
            sum_sq=exact_sum([p.sum_sq for p in parts]),
            min=min(p.min for p in parts),
            max=max(p.max for p in parts),
            sketch=dict(zip(index.tolist(), counts.astype(np.int64).tolist(), strict=True)),
            categories=dict(sorted(categories.items())),
            other=other,
            values=None
            if any(v is None for v in values)
            else _frozen(np.sort(np.concatenate(values))),  # type: ignore[arg-type]
            relative_accuracy=first.relative_accuracy,
            max_categories=first.max_categories,
        )

    @classmethod
    def from_values(
        cls,
        values: Iterable[Any],
        relative_accuracy: float = 0.01,
        max_categories: int = 100,
        exact_max: int = 1000,
    ) -> Summary:
        """Summary of one feature's values, by the same accumulator as the windows.

        ``None`` is a missing value; floats (NaN and inf included) are numeric, strings are
        categories. Raw values are kept if there are at most ``exact_max`` finite ones.
        """
        w = FeatureWindow(relative_accuracy, max_categories, exact_max, projections=0)
        w.update_column("x", values)
        return cls.from_rows(
            (r for r in w.rows() if r["feature"] == "x"), relative_accuracy, max_categories
        )

    @classmethod
    def from_series(cls, series: Any, **options: Any) -> Summary:
        """:meth:`from_values` of a pandas Series, its NA values (NaN included) as missing."""
        return cls.from_values(series.dropna().to_numpy(), **options)

    @functools.cached_property
    def buckets(self) -> tuple[np.ndarray, np.ndarray]:
        """``sketch`` as arrays: the bucket indices, ascending, and their counts (float64)."""
        index = np.fromiter(self.sketch.keys(), np.int64, len(self.sketch))
        counts = np.fromiter(self.sketch.values(), np.float64, len(self.sketch))
        order = np.argsort(index, kind="stable")
        return _frozen(index[order]), _frozen(counts[order])

    @property
    def count(self) -> int:
        """Finite numeric values."""
        return self.numeric - self.nonfinite

    @property
    def kind(self) -> Kind | None:
        """``"numeric"`` or ``"categorical"``: the more frequent kind (ties: numeric)."""
        if self.numeric == 0 and self.text == 0:
            return None
        return "numeric" if self.numeric >= self.text else "categorical"

    @property
    def std(self) -> float:
        """Population standard deviation of the finite values (NaN if none).

        From the raw values when kept, else from ``sum`` and ``sum_sq`` (which loses
        precision when the mean is large against the spread).
        """
        n = self.count
        if n == 0:
            return math.nan
        if self.values is not None:
            return float(np.std(self.values))
        mean = self.sum / n
        return math.sqrt(max(self.sum_sq / n - mean * mean, 0.0))

    def hides(self, category: str) -> bool:
        """Whether ``category`` may be counted in ``other`` (beyond the category cap)."""
        if self.other == 0:
            return False
        if not self.categories:
            return True
        return category_key(category) > max(map(category_key, self.categories))


@dataclass(frozen=True)
class Result:
    """One statistic of one feature: ``window`` against ``reference``.

    ``error_bound`` bounds ``|statistic − exact statistic on the raw values|`` (for ``ks``
    on sketches: the exact statistic lies in ``[statistic, statistic + error_bound]``);
    ``exact`` says it was computed from raw values or is exact by definition. ``n_window``
    and ``n_reference`` are the values compared (finite numbers or strings).
    """

    method: str
    statistic: float
    p_value: float | None = None
    error_bound: float = 0.0
    exact: bool = True
    n_window: int = 0
    n_reference: int = 0


def _add(dst: dict[Any, int], src: Mapping[Any, int]) -> None:
    for key, count in src.items():
        dst[key] = dst.get(key, 0) + int(count)


def exact_sum(values: list[float]) -> float:
    """Correctly rounded sum (so independent of row order); inf/NaN as float arithmetic."""
    try:
        return math.fsum(values)
    except (OverflowError, ValueError):
        return float(np.sum(values))


def _frozen(a: np.ndarray) -> np.ndarray:
    a.flags.writeable = False
    return a


def _kind(window: Summary, reference: Summary) -> Kind | None:
    return reference.kind or window.kind


def _undefined(method: str, n_window: int, n_reference: int, test: bool) -> Result:
    p = math.nan if test else None
    return Result(method, math.nan, p, math.nan, False, n_window, n_reference)


def _aligned(window: Summary, reference: Summary) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sorted union of the bucket indices and both sketches' counts on it."""
    (iw, nw), (ir, nr) = window.buckets, reference.buckets
    index = np.union1d(iw, ir)
    cw, cr = np.zeros(index.size), np.zeros(index.size)
    cw[np.searchsorted(index, iw)] = nw
    cr[np.searchsorted(index, ir)] = nr
    return index, cw, cr


def _quantile_cuts(reference: Summary, bins: int) -> np.ndarray:
    """Bucket indices closing the reference's ``bins``-quantile bins (duplicates removed).

    Cut ``q`` is the bucket holding the ``q / bins`` quantile: the first bucket whose
    cumulative count reaches ``q · n / bins``.
    """
    index, counts = reference.buckets
    cum = np.cumsum(counts.astype(np.int64))
    targets = np.arange(1, bins, dtype=np.int64) * cum[-1]
    return np.unique(index[np.searchsorted(cum * bins, targets, side="left")])


def _category_table(window: Summary, reference: Summary) -> tuple[np.ndarray, np.ndarray]:
    """Counts on the union of categories (+ ``other``), both sides comparable.

    A category kept on one side that the other side may hold in ``other`` (past its cap)
    is moved to ``other`` on both, so every column counts the same strings on both sides.
    """
    wc, rc = dict(window.categories), dict(reference.categories)
    wo, ro = window.other, reference.other
    for c in sorted(set(wc) ^ set(rc)):
        if c in wc and reference.hides(c):
            wo += wc.pop(c)
        elif c in rc and window.hides(c):
            ro += rc.pop(c)
    labels = sorted(set(wc) | set(rc))
    w = [wc.get(c, 0) for c in labels] + ([wo] if wo or ro else [])
    r = [rc.get(c, 0) for c in labels] + ([ro] if wo or ro else [])
    return _frozen(np.array(w, dtype=np.float64)), _frozen(np.array(r, dtype=np.float64))


@functools.lru_cache(maxsize=4)
def histograms(
    window: Summary, reference: Summary, bins: int = 10
) -> tuple[np.ndarray, np.ndarray]:
    """Window and reference counts on the bins of ``psi`` and ``jensen_shannon``.

    Numeric (the reference's kind): ``bins`` reference quantile bins snapped to sketch
    buckets — bin ``j`` holds the buckets after cut ``j − 1`` up to cut ``j``, the last bin
    everything above — so the counts are exact for the bucketed data. Categorical: the
    categories of either side, plus ``other`` when either has one.

    >>> ref = Summary.from_values(np.arange(100.0))
    >>> w, r = histograms(Summary.from_values(np.arange(50.0)), ref, bins=4)
    >>> w.tolist(), r.tolist()
    ([25.0, 25.0, 0.0, 0.0], [25.0, 25.0, 26.0, 24.0])
    """
    if _kind(window, reference) == "categorical":
        return _category_table(window, reference)
    if reference.count == 0:
        return _frozen(np.zeros(1)), _frozen(np.zeros(1))
    index, cw, cr = _aligned(window, reference)
    cuts = _quantile_cuts(reference, bins)
    which = np.searchsorted(cuts, index, side="left")
    size = cuts.size + 1
    return _frozen(np.bincount(which, cw, size)), _frozen(np.bincount(which, cr, size))


def psi(window: Summary, reference: Summary, bins: int = 10) -> Result:
    """Population Stability Index on :func:`histograms` (natural log, smoothed counts).

    ``PSI = Σ (p_w − p_r) · ln(p_w / p_r)`` with ``p = (count + 0.5) / (n + 0.5 · B)``
    over the ``B`` bins.

    >>> ref = Summary.from_values(np.arange(100.0))
    >>> round(psi(ref, ref).statistic, 12)
    0.0
    >>> round(psi(Summary.from_values(np.arange(50.0)), ref).statistic, 3)
    1.385
    """
    cw, cr = histograms(window, reference, bins)
    nw, nr = int(cw.sum()), int(cr.sum())
    if nw == 0 or nr == 0:
        return _undefined("psi", nw, nr, test=False)
    pw = (cw + PSI_SMOOTHING) / (nw + PSI_SMOOTHING * cw.size)
    pr = (cr + PSI_SMOOTHING) / (nr + PSI_SMOOTHING * cr.size)
    value = float(np.sum((pw - pr) * np.log(pw / pr)))
    return Result("psi", value, n_window=nw, n_reference=nr)


def jensen_shannon(window: Summary, reference: Summary, bins: int = 10) -> Result:
    """Jensen–Shannon distance (base 2, in [0, 1]) on :func:`histograms`, unsmoothed.

    ``sqrt(½ KL(p ‖ m) + ½ KL(q ‖ m))`` with ``m = (p + q) / 2`` and ``0 · log 0 = 0``:
    ``scipy.spatial.distance.jensenshannon(p, q, base=2)``.

    >>> ref = Summary.from_values(["a"] * 50 + ["b"] * 50)
    >>> round(jensen_shannon(Summary.from_values(["a"] * 10), ref).statistic, 4)
    0.5579
    """
    cw, cr = histograms(window, reference, bins)
    nw, nr = int(cw.sum()), int(cr.sum())
    if nw == 0 or nr == 0:
        return _undefined("jensen_shannon", nw, nr, test=False)
    p, q = cw / nw, cr / nr
    m = (p + q) / 2.0

    def kl(a: np.ndarray) -> float:
        nz = a > 0
        return float(np.sum(a[nz] * np.log2(a[nz] / m[nz])))

    value = math.sqrt(min(max((kl(p) + kl(q)) / 2.0, 0.0), 1.0))
    return Result("jensen_shannon", value, n_window=nw, n_reference=nr)


@functools.lru_cache(maxsize=4)
def _empirical_cdfs(
    window: Summary, reference: Summary
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The sorted union of both samples' raw values, and each sample's empirical CDF on it.

    The floats of scipy's construction in ``ks_2samp`` and ``wasserstein_distance``
    (``searchsorted(sample, union, side="right") / size``), so the same statistics, done
    once per pair for ``ks``, ``wasserstein`` and ``wasserstein_normalised``. Both
    ``values`` arrays are sorted already, so one stable merge gives every count: a value's
    CDF counts the values of a sample up to the last value equal to it.
    """
    a, b = window.values, reference.values
    assert a is not None and b is not None
    both = np.concatenate((a, b))
    order = np.argsort(both, kind="stable")  # a merge of two sorted runs
    union = both[order]
    ends = np.flatnonzero(np.r_[union[1:] != union[:-1], True])  # last of each equal run
    at = np.repeat(ends, np.diff(ends, prepend=-1))
    in_a = np.cumsum(order < a.size)[at]
    return union, in_a / a.size, (at + 1 - in_a) / b.size


#: Largest n1·n2 for which ks gives scipy's exact p-value (scipy's own "auto" goes up to
#: 10 000 values a side, O(n1·n2) work); past it, the asymptotic one.
KS_EXACT_MAX_PRODUCT = 1_000_000


def _ks_p_value(d: float, n1: int, n2: int) -> float:
    """ks_2samp's asymptotic two-sided p-value: ``kstwo.sf(D, round(n1·n2 / (n1 + n2)))``."""
    big, small = max(n1, n2), min(n1, n2)
    return float(np.clip(stats.kstwo.sf(d, np.round(big * small / (big + small))), 0.0, 1.0))


def ks(window: Summary, reference: Summary) -> Result:
    """Two-sample Kolmogorov–Smirnov statistic and two-sided p-value (numeric).

    Raw values on both sides: ``scipy.stats.ks_2samp`` with its exact p-value while
    ``n1·n2 <= KS_EXACT_MAX_PRODUCT`` (the exact method costs O(n1·n2): ~5 ms per feature at
    1 000 x 5 000 values); beyond, the same statistic from the empirical CDFs and
    ks_2samp's asymptotic p-value. The statistic is exact either way.
    Otherwise the largest CDF gap at bucket boundaries, a lower bound of the exact statistic:
    the exact one is at most ``error_bound`` larger, a bound that only buckets holding values
    of both samples contribute to. Its p-value is ks_2samp's asymptotic one.

    >>> ref = Summary.from_values(np.linspace(0.0, 1.0, 200))
    >>> r = ks(Summary.from_values(np.linspace(0.5, 1.5, 200)), ref)
    >>> round(r.statistic, 3), r.p_value < 1e-6, r.exact
    (0.5, True, True)
    """
    nw, nr = window.count, reference.count
    if nw == 0 or nr == 0:
        return _undefined("ks", nw, nr, test=True)
    if window.values is not None and reference.values is not None:
        if nw * nr <= KS_EXACT_MAX_PRODUCT:
            res = stats.ks_2samp(window.values, reference.values, method="exact")
            return Result("ks", float(res.statistic), float(res.pvalue), 0.0, True, nw, nr)
        _, f, g = _empirical_cdfs(window, reference)
        d = float(max(np.clip(-np.min(f - g), 0.0, 1.0), np.max(f - g)))
        return Result("ks", d, _ks_p_value(d, nw, nr), 0.0, True, nw, nr)
    index, cw, cr = _aligned(window, reference)
    f, g = np.cumsum(cw) / nw, np.cumsum(cr) / nr
    d = float(np.max(np.abs(f - g)))
    fp, gp = np.r_[0.0, f[:-1]], np.r_[0.0, g[:-1]]
    both = (cw > 0) & (cr > 0) & (index != 0)
    inner = np.maximum(f - gp, g - fp)[both]
    bound = max(float(inner.max()) - d, 0.0) if inner.size else 0.0
    return Result("ks", d, _ks_p_value(d, nw, nr), bound, False, nw, nr)


def _abs_linear_integral(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``∫₀¹ |a + b·t| dt`` elementwise."""
    end = a + b
    same = a * end >= 0.0
    crossing = (a * a + end * end) / (2.0 * np.where(same, 1.0, np.abs(b)))
    return np.where(same, (np.abs(a) + np.abs(end)) / 2.0, crossing)


def _wasserstein_sketch(window: Summary, reference: Summary) -> tuple[float, float]:
    """``∫|F − G|`` with CDFs linear inside buckets, and a bound on its error.

    Between buckets the CDFs are exact and constant. Inside a bucket ``F`` and ``G`` stay
    between their values at its ends, so ``|F − G|`` lies between ``L`` and ``U`` there and
    the error of the bucket is at most ``max(U·w − est, est − L·w)`` (``w`` its width,
    clipped to the range of the data).
    """
    index, cw, cr = _aligned(window, reference)
    low, high = bucket_bounds(index, reference.relative_accuracy)
    lo_all, hi_all = min(window.min, reference.min), max(window.max, reference.max)
    low, high = np.clip(low, lo_all, hi_all), np.clip(high, lo_all, hi_all)
    width = high - low
    f, g = np.cumsum(cw) / cw.sum(), np.cumsum(cr) / cr.sum()
    fp, gp = np.r_[0.0, f[:-1]], np.r_[0.0, g[:-1]]
    inside = _abs_linear_integral(fp - gp, (f - fp) - (g - gp)) * width
    upper = np.maximum(f - gp, g - fp) * width
    lower = np.maximum(np.maximum(fp - g, gp - f), 0.0) * width
    gaps = np.abs(f[:-1] - g[:-1]) * np.maximum(low[1:] - high[:-1], 0.0)
    error = np.maximum(upper - inside, inside - lower)
    return float(inside.sum() + gaps.sum()), float(error.sum())


def wasserstein(window: Summary, reference: Summary) -> Result:
    """Wasserstein-1 distance between the finite values (numeric), in the feature's units.

    Raw values on both sides: ``scipy.stats.wasserstein_distance``'s sum over the empirical
    CDFs (the same floats). Otherwise from the
    sketches (see ``error_bound``): CDFs exact at bucket boundaries, linear inside buckets.

    >>> ref = Summary.from_values(np.arange(10.0))
    >>> wasserstein(Summary.from_values(np.arange(10.0) + 2.0), ref).statistic
    2.0
    """
    nw, nr = window.count, reference.count
    if nw == 0 or nr == 0:
        return _undefined("wasserstein", nw, nr, test=False)
    if window.values is not None and reference.values is not None:
        union, f, g = _empirical_cdfs(window, reference)
        value = float(np.dot(np.abs(f[:-1] - g[:-1]), np.diff(union)))
        return Result("wasserstein", value, n_window=nw, n_reference=nr)
    value, bound = _wasserstein_sketch(window, reference)
    return Result("wasserstein", value, None, bound, False, nw, nr)


def wasserstein_normalised(window: Summary, reference: Summary) -> Result:
    """:func:`wasserstein` divided by the reference's standard deviation (an effect size).

    ``inf`` when the reference is constant and the distance is not 0.

    >>> ref = Summary.from_values(np.arange(10.0))
    >>> round(wasserstein_normalised(Summary.from_values(np.arange(10.0) + 2.0), ref).statistic, 4)
    0.6963
    """
    r = wasserstein(window, reference)
    std = reference.std
    if std > 0.0:
        value, bound = r.statistic / std, r.error_bound / std
    else:
        value, bound = (math.inf if r.statistic > 0.0 else r.statistic), r.error_bound
    return Result("wasserstein_normalised", value, None, bound, r.exact, r.n_window, r.n_reference)


def chi_square(window: Summary, reference: Summary) -> Result:
    """Chi-square test of homogeneity (categorical): ``scipy.stats.chi2_contingency``.

    On the 2 × K table of window and reference counts over the categories of
    :func:`histograms`, zero columns dropped (Yates' correction when K = 2, as scipy does).

    >>> ref = Summary.from_values(["a"] * 50 + ["b"] * 50)
    >>> r = chi_square(Summary.from_values(["a"] * 90 + ["b"] * 10), ref)
    >>> round(r.statistic, 2), r.p_value < 1e-6
    (36.21, True)
    """
    cw, cr = _category_table(window, reference)
    nw, nr = int(cw.sum()), int(cr.sum())
    if nw == 0 or nr == 0:
        return _undefined("chi_square", nw, nr, test=True)
    statistic, p_value = _chi2_homogeneity(np.vstack([cw, cr]))
    return Result("chi_square", statistic, p_value, 0.0, True, nw, nr)


def _chi2_homogeneity(table: np.ndarray) -> tuple[float, float]:
    """``chi2_contingency(table)``'s statistic and p-value for a 2 × K table with non-zero
    rows, zero columns dropped: scipy's own arithmetic, in the same order (so the same
    floats), without its argument handling, which cost ten times the computation."""
    observed = table[:, table.sum(axis=0) > 0]
    dof = observed.shape[1] - 1
    if dof == 0:
        return 0.0, 1.0
    expected = observed.sum(axis=1, keepdims=True) * observed.sum(axis=0, keepdims=True)
    expected /= observed.sum()
    if dof == 1:  # Yates' correction, no larger than the difference
        diff = expected - observed
        observed = observed + np.minimum(0.5, np.abs(diff)) * np.sign(diff)
    statistic = float(np.sum((observed - expected) ** 2 / expected))
    return statistic, float(special.chdtrc(dof, statistic))


@dataclass(frozen=True)
class Method:
    """A registered statistic: what it applies to, how it decides, and its default threshold.

    ``kind`` ``"effect"``: drift when ``statistic > threshold`` (``None``: reported only);
    ``"test"``: drift when the adjusted p-value ``< threshold``.
    """

    name: str
    applies_to: tuple[Kind, ...]
    kind: Literal["effect", "test"]
    threshold: float | None
    function: Callable[[Summary, Summary], Result]


#: Every statistic by stable name.
METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("psi", ("numeric", "categorical"), "effect", 0.2, psi),
        Method("jensen_shannon", ("numeric", "categorical"), "effect", 0.1, jensen_shannon),
        Method("wasserstein", ("numeric",), "effect", None, wasserstein),
        Method("wasserstein_normalised", ("numeric",), "effect", 0.1, wasserstein_normalised),
        Method("ks", ("numeric",), "test", 0.05, ks),
        Method("chi_square", ("categorical",), "test", 0.05, chi_square),
    )
}


def compare(
    window: Summary, reference: Summary, methods: Sequence[str] | None = None
) -> dict[str, Result]:
    """Every method (or those named) that applies to the reference's kind, by name.

    >>> ref = Summary.from_values(["a", "b"] * 50)
    >>> sorted(compare(Summary.from_values(["a"] * 100), ref))
    ['chi_square', 'jensen_shannon', 'psi']
    """
    kind = _kind(window, reference)
    chosen = [METHODS[name] for name in (methods if methods is not None else METHODS)]
    return {m.name: m.function(window, reference) for m in chosen if kind in m.applies_to}


def adjust_p_values(
    p_values: Sequence[float] | np.ndarray,
    correction: Literal["bh", "bonferroni", "none"] = "bh",
) -> np.ndarray:
    """P-values adjusted for multiple testing; NaN stays NaN and does not count.

    ``"bh"``: Benjamini–Hochberg, ``p_(i) · m / i`` made monotone from the largest down
    (``scipy.stats.false_discovery_control``); ``"bonferroni"``: ``min(p · m, 1)``.

    >>> adjust_p_values([0.01, 0.04, 0.03]).round(4).tolist()
    [0.03, 0.04, 0.04]
    """
    p = np.asarray(p_values, dtype=np.float64)
    out = p.copy()
    ok = np.isfinite(p)
    q, m = p[ok], int(ok.sum())
    if correction == "none" or m == 0:
        return out
    if correction == "bonferroni":
        out[ok] = np.minimum(q * m, 1.0)
    elif correction == "bh":
        order = np.argsort(q, kind="stable")
        scaled = q[order] * m / np.arange(1, m + 1)
        adjusted = np.empty(m)
        adjusted[order] = np.minimum(np.minimum.accumulate(scaled[::-1])[::-1], 1.0)
        out[ok] = adjusted
    else:
        raise ValueError(f"unknown correction {correction!r}")
    return out


@dataclass(frozen=True)
class Decision:
    """Drift decision of one feature in one window.

    ``flagged``: the methods whose rule fired (effects over threshold, or adjusted
    p-values under it with ``rule="test"``); ``adjusted``: every test's adjusted p-value.
    """

    feature: str
    drifted: bool
    count: int
    flagged: tuple[str, ...]
    adjusted: Mapping[str, float]


def decide(
    results: Mapping[str, Mapping[str, Result]],
    correction: Literal["bh", "bonferroni", "none"] = "bh",
    alpha: float = 0.05,
    min_count: int = 100,
    rule: Literal["effect", "test"] = "effect",
    thresholds: Mapping[str, float | None] | None = None,
) -> dict[str, Decision]:
    """Per-feature drift decisions from one window's results (feature → method → Result).

    A feature drifted iff its window has at least ``min_count`` values and, with
    ``rule="effect"`` (default), an effect size exceeds its threshold (``thresholds``
    overrides :data:`METHODS`' defaults); with ``rule="test"``, a test's p-value adjusted
    across every (feature, test) of the window is below ``alpha``. Adjusted p-values are
    reported either way: with large windows tests flag shifts too small to matter.

    >>> ref = Summary.from_values(np.arange(1000.0))
    >>> res = {"x": compare(Summary.from_values(np.arange(1000.0) + 300.0), ref)}
    >>> d = decide(res)["x"]
    >>> d.drifted, d.flagged, d.adjusted["ks"] < 0.05
    (True, ('jensen_shannon', 'psi', 'wasserstein_normalised'), True)
    """
    keys = [(f, m) for f, rs in results.items() for m, r in rs.items() if r.p_value is not None]
    raw = np.array([results[f][m].p_value for f, m in keys], dtype=np.float64)
    adjusted = dict(zip(keys, adjust_p_values(raw, correction), strict=True))
    limits = {m.name: m.threshold for m in METHODS.values()} | dict(thresholds or {})
    decisions = {}
    for feature, rs in results.items():
        count = max((r.n_window for r in rs.values()), default=0)
        adj = {m: float(adjusted[feature, m]) for m in rs if (feature, m) in adjusted}
        if rule == "effect":
            flagged = [
                m
                for m, r in rs.items()
                if METHODS[m].kind == "effect"
                and limits.get(m) is not None
                and r.statistic > limits[m]
            ]
        else:
            flagged = [m for m, p in adj.items() if p < alpha]
        flagged.sort()
        drifted = count >= min_count and bool(flagged)
        decisions[feature] = Decision(feature, drifted, count, tuple(flagged), adj)
    return decisions


@dataclass(frozen=True)
class Quality:
    """A data-quality count of a window against its reference.

    ``count`` of ``total`` values are flagged for sure; up to ``error_bound · total`` more
    may be (values the sketch or the category cap cannot place). ``rate`` is
    ``count / total`` (NaN when undefined).
    """

    name: str
    count: int
    total: int
    rate: float
    error_bound: float = 0.0


def _quality(name: str, count: int, total: int, unsure: int = 0) -> Quality:
    if total == 0:
        return Quality(name, 0, 0, math.nan)
    return Quality(name, count, total, count / total, unsure / total)


def out_of_range_rate(window: Summary, reference: Summary) -> Quality:
    """Share of the window's finite values outside ``[reference.min, reference.max]``.

    Exact with raw values; from the sketch otherwise, where buckets holding the reference's
    min or max are undecided (``error_bound``).

    >>> ref = Summary.from_values(np.arange(10.0))
    >>> out_of_range_rate(Summary.from_values([-1.0, 5.0, 20.0, 3.0]), ref).rate
    0.5
    """
    n = window.count
    if reference.count == 0:
        return _quality("out_of_range_rate", 0, 0)
    lo, hi = reference.min, reference.max
    if window.values is not None:
        v = window.values
        return _quality("out_of_range_rate", int(np.sum((v < lo) | (v > hi))), n)
    first, last = min(reference.sketch), max(reference.sketch)
    out = sum(c for i, c in window.sketch.items() if i < first or i > last)
    edge = set()
    if window.min < lo:
        edge.add(first)
    if window.max > hi:
        edge.add(last)
    unsure = sum(window.sketch.get(i, 0) for i in edge)
    return _quality("out_of_range_rate", out, n, unsure)


def unseen_categories(window: Summary, reference: Summary) -> Quality:
    """Window strings whose category the reference never saw (count and share).

    Categories the reference may hold past its cap, and the window's own ``other``, are
    undecided (``error_bound``).

    >>> ref = Summary.from_values(["a", "b"])
    >>> q = unseen_categories(Summary.from_values(["a", "c", "c", "d"]), ref)
    >>> q.count, q.rate
    (3, 0.75)
    """
    unseen = unsure = 0
    for category, c in window.categories.items():
        if category in reference.categories:
            continue
        if reference.hides(category):
            unsure += c
        else:
            unseen += c
    return _quality("unseen_categories", unseen, window.text, unsure + window.other)


def outside_reference(window: Summary, reference: Summary) -> Quality:
    """Window values the reference does not cover: finite numbers outside its range
    (:func:`out_of_range_rate`) and strings of categories it never saw
    (:func:`unseen_categories`), out of the window's finite numbers and strings.

    >>> ref = Summary.from_values([0.0, 1.0, "a"])
    >>> q = outside_reference(Summary.from_values([0.5, 2.0, "a", "b"]), ref)
    >>> q.count, q.total, q.rate
    (2, 4, 0.5)
    """
    numeric = out_of_range_rate(window, reference)
    text = unseen_categories(window, reference)
    total = numeric.total + text.total
    unsure = (numeric.error_bound * numeric.total) + (text.error_bound * text.total)
    return _quality("outside_reference", numeric.count + text.count, total, round(unsure))


def type_mismatch(window: Summary, reference: Summary) -> Quality:
    """Window values of the other kind than the reference's (strings for a numeric feature,
    numbers for a categorical one), out of the window's present values.

    >>> ref = Summary.from_values([1.0, 2.0, 3.0])
    >>> type_mismatch(Summary.from_values([1.0, "oops", None]), ref).rate
    0.5
    """
    kind = reference.kind
    if kind is None:
        return _quality("type_mismatch", 0, 0)
    count = window.text if kind == "numeric" else window.numeric
    return _quality("type_mismatch", count, window.present)


# --- the family: feature summaries per window, for drift and data quality -------------------

#: The summary columns of a feature (a row of :meth:`FeatureWindow.rows`).
SUMMARY_COLUMNS: tuple[Column, ...] = (
    Column("feature", "String"),
    Column("present", "UInt64"),
    Column("numeric", "UInt64"),
    Column("nonfinite", "UInt64"),
    Column("text", "UInt64"),
    Column("sum", "Nullable(Float64)"),
    Column("sum_sq", "Nullable(Float64)"),
    Column("min", "Nullable(Float64)"),
    Column("max", "Nullable(Float64)"),
    Column("sketch", "Map(Int32, UInt64)"),
    Column("categories", "Map(String, UInt64)"),
    Column("values", "Array(Float64)"),
)
#: The feature a regression model's targets are summarised as (its labels, for label drift).
TARGET = "__target__"


class FeatureSummaries(Accumulator):
    """The feature summaries of one window on one partition: of every prediction's observed
    features (:meth:`Predictions.observed`) and, for regression models, of the targets their
    labels bring (feature ``__target__``). Feature rows are versioned by the predictions
    folded in, the only thing they depend on, so a window's labels do not re-send (nor make
    the sink re-derive) them; the target's by the targets folded in.

    >>> s = FeatureSummaries()
    >>> s.add_predictions(Predictions("regression", [2.5], [None], [None], [{"x": 1.0}], [None]))
    >>> sorted((r["feature"], r["version"]) for r in s.rows()["feature_partials"])
    [('__prediction__', 1), ('x', 1)]
    >>> s.add_pairs(Pairs("regression", ["3"], [2.5], [None], [None]))
    >>> [(r["feature"], r["version"]) for r in s.rows()["feature_partials"]]
    [('__target__', 1)]
    """

    def __init__(self) -> None:
        self.window = FeatureWindow()
        self.targets = FeatureWindow()
        self._emitted = (0, 0)

    def add_predictions(self, batch: Predictions) -> None:
        self.window.update(batch.observed())

    def add_pairs(self, batch: Pairs) -> None:
        if batch.task == "regression":
            self.targets.update_column(TARGET, np.asarray(batch.y_true, dtype=np.float64))

    def merge(self, other: FeatureSummaries) -> None:
        self.window.merge(other.window)
        self.targets.merge(other.targets)

    @property
    def version(self) -> int:
        return self.window.events + self.targets.events

    def rows(self) -> dict[str, list[Row]]:
        out: list[Row] = []
        for summary, emitted in zip((self.window, self.targets), self._emitted, strict=True):
            if summary.events != emitted:
                out += [r | {"version": summary.events} for r in summary.rows()]
        self._emitted = (self.window.events, self.targets.events)
        return {"feature_partials": out} if out else {}


class DriftFamily(MetricFamily):
    """Feature summaries of every prediction, compared by the sink with a reference (drift)
    and checked against it (data quality); see :mod:`pipeline.sink.derive`."""

    name: ClassVar[str] = "features"
    label_tasks: ClassVar[frozenset[str]] = frozenset({"regression"})
    tables = (
        partial_table("feature_partials", SUMMARY_COLUMNS, key=("feature",)),
        Table(
            "reference_profiles",
            (
                Column("model", "String"),
                Column("model_version", "String"),
                Column("name", "String"),
                *SUMMARY_COLUMNS,
                Column("rows", "UInt64"),
                VERSION,
                INSERTED_AT,
            ),
            ("model", "model_version", "name", "feature"),
        ),
    )
    derived_tables = (
        derived_table(
            "drift_rows",
            (
                Column("feature", "String"),
                Column("reference", "String"),
                Column("method", "String"),
                Column("statistic", "Nullable(Float64)"),
                Column("p_value", "Nullable(Float64)"),
                Column("p_adjusted", "Nullable(Float64)"),
                Column("threshold", "Nullable(Float64)"),
                Column("drifted", "UInt8"),
                Column("window_count", "UInt64"),
                Column("reference_count", "UInt64"),
            ),
            key=("feature", "method"),
        ),
        derived_table(
            "data_quality_rows",
            (
                Column("feature", "String"),
                Column("events", "UInt64"),
                Column("present", "UInt64"),
                Column("missing_rate", "Float64"),
                Column("nonfinite", "UInt64"),
                Column("type_mismatch", "UInt64"),
                Column("out_of_range_rate", "Nullable(Float64)"),
                Column("unseen_categories", "UInt64"),
            ),
            key=("feature",),
        ),
    )

    def accepts_label(self, task: str, label: Any) -> bool:
        return is_number(label)

    def accumulator(self, counters: Counter[str]) -> FeatureSummaries:
        return FeatureSummaries()

    def derivation(self, settings: Settings) -> DriftDerivation:
        return DriftDerivation(settings)

    def views(self, views: Views) -> list[str]:
        db = views.db
        return [
            *(
                f"CREATE OR REPLACE VIEW {db}.{name} AS SELECT * FROM {db}.{name}_rows FINAL"
                for name in ("drift", "data_quality")
            ),
            # One row per window: how many features drifted (by the decision rule), the
            # largest PSI and the feature that has it.
            f"""CREATE OR REPLACE VIEW {db}.drift_windows AS
        SELECT model, model_version, segment, window_start, window_end,
               uniqExactIf(feature, method = 'decision' AND drifted = 1) AS features_drifted,
               uniqExact(feature) AS features,
               maxIf(statistic, method = 'psi') AS max_psi,
               argMaxIf(feature, statistic, method = 'psi') AS most_drifted
        FROM {db}.drift
        GROUP BY model, model_version, segment, window_start, window_end""",
        ]


def summaries(rows: Iterable[Mapping[str, Any]]) -> dict[str, Summary]:
    """The summary of each feature in rows of summary columns (partials merged per window,
    or a profile)."""
    by_feature: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for r in rows:
        by_feature[r["feature"]].append(r)
    return {f: Summary.from_rows(rs) for f, rs in by_feature.items()}


def is_number(label: Any) -> bool:
    """Whether a decoded label is a number (a regression target): a float, or the decimal
    text an integer-valued label is decoded to.

    >>> is_number(2.5), is_number("-3"), is_number("cat")
    (True, True, False)
    """
    return isinstance(label, float) or (isinstance(label, str) and label.lstrip("-").isdigit())


class DriftDerivation(Derivation):
    """Each window's ``drift`` rows (every method's statistic of every feature against its
    reference, and the decision) and ``data_quality`` rows (missing, non-finite, mistyped,
    out-of-range and unseen values), from a :class:`pipeline.sink.derive.Chunk`."""

    triggers = ("feature_partials",)
    rederive_on = ("reference_profiles",)

    def __init__(self, settings: Settings) -> None:
        self.correction = settings.drift_correction
        self.min_count = settings.drift_min_count
        # Effect sizes not chosen to decide are reported without a threshold.
        self.thresholds: dict[str, float | None] = {
            m.name: None
            for m in METHODS.values()
            if m.kind == "effect" and m.name not in settings.drift_deciders
        }

    def rows(self, chunk: Any, segment: str, window_start: int) -> dict[str, list[Row]]:
        window = chunk.features(segment, window_start)
        if not window:
            return {}
        references = chunk.references(segment, window_start)
        base = chunk.key(segment, window_start)
        version = {"version": chunk.version(segment, window_start)}
        events = chunk.events(segment, window_start)
        drift, quality = self._window(window, references, events)
        return {
            "drift_rows": [base | r | version for r in drift],
            "data_quality_rows": [base | r | version for r in quality],
        }

    def _window(
        self,
        window: Mapping[str, Summary],
        references: Mapping[str, tuple[str, Summary]],
        events: int,
    ) -> tuple[list[Row], list[Row]]:
        results = {f: compare(window[f], ref) for f, (_, ref) in references.items()}
        decisions = decide(
            results,
            correction=self.correction,  # type: ignore[arg-type]
            min_count=self.min_count,
            thresholds=self.thresholds,
        )
        drift = []
        for feature, by_method in results.items():
            name, ref = references[feature]
            decision = decisions[feature]
            for method, result in by_method.items():
                drift.append(
                    {
                        "feature": feature,
                        "reference": name,
                        "method": method,
                        "statistic": finite(result.statistic),
                        "p_value": finite(result.p_value),
                        "p_adjusted": finite(decision.adjusted.get(method)),
                        "threshold": self.thresholds.get(method, METHODS[method].threshold),
                        "drifted": int(method in decision.flagged),
                        "window_count": result.n_window,
                        "reference_count": result.n_reference,
                    }
                )
            drift.append(
                {
                    "feature": feature,
                    "reference": name,
                    "method": "decision",
                    "statistic": None,
                    "p_value": None,
                    "p_adjusted": None,
                    "threshold": 0.0,
                    "drifted": int(decision.drifted),
                    "window_count": decision.count,
                    "reference_count": ref.count,
                }
            )
        quality = []
        for feature, summary in window.items():
            ref = references.get(feature, (None, None))[1]
            present = summary.present
            quality.append(
                {
                    "feature": feature,
                    "events": max(events, present),
                    "present": present,
                    "missing_rate": 1.0 - present / events if events > present else 0.0,
                    "nonfinite": summary.nonfinite,
                    "type_mismatch": type_mismatch(summary, ref).count if ref else 0,
                    "out_of_range_rate": finite(out_of_range_rate(summary, ref).rate)
                    if ref
                    else None,
                    "unseen_categories": unseen_categories(summary, ref).count if ref else 0,
                }
            )
        return drift, quality

"""RegressionWindow against exact fractions and scikit-learn, on random and adversarial data;
the residual sketch's documented bound; batching and merge-order invariance."""

from __future__ import annotations

import math
import sys
import warnings
import zlib
from collections.abc import Callable, Mapping, Sequence
from decimal import Decimal, localcontext
from fractions import Fraction
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import (
    mean_absolute_error,
    mean_absolute_percentage_error,
    mean_squared_error,
    r2_score,
    root_mean_squared_error,
)

from pipeline.estimators.family import Predictions
from pipeline.estimators.features import bucket_index
from pipeline.estimators.regression import (
    _SQ_BITS,
    _SQ_CHUNK,
    EPS,
    METRICS,
    QUANTILES,
    RegressionFamily,
    RegressionWindow,
    _exact_square_sums,
    _sqrt_ratio,
    metrics,
    residual_quantile,
    sketch_constants,
)

U = Fraction(1, 2**53)  # the unit roundoff of float64
TINY = Fraction(2) ** -1074  # the smallest subnormal
MAX = sys.float_info.max


def residuals(y: np.ndarray, p: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        return p - y


def num(x: float | int | None) -> float:
    """A metric that must not be NULL."""
    assert x is not None
    return float(x)


def to_float(x: Fraction) -> float:
    try:
        return float(x)
    except OverflowError:
        return math.inf if x > 0 else -math.inf


def exact_metrics(y: np.ndarray, p: np.ndarray) -> dict[str, Any]:
    """The definitions in exact arithmetic over the float residuals (and, for mape, the
    float ratios scikit-learn computes); ``inf`` where a residual or ratio overflowed."""
    e = residuals(y, p)
    n = y.size
    fy = [Fraction(v) for v in y.tolist()]
    out: dict[str, Any] = {"labelled": n, "zero_targets": int(np.sum(y == 0.0))}
    if n == 0:
        return out
    out["mean_target"] = ybar = sum(fy) / n
    out["max_abs_target"] = max(abs(v) for v in fy)
    sst = sum(((v - ybar) ** 2 for v in fy), Fraction(0))
    out["spread"] = decimal_sqrt(sst / n)
    if not np.isfinite(e).all():
        out.update(mae=math.inf, mse=math.inf, rmse=math.inf, mean_error=None, sse=math.inf)
        out["r2"] = None if n < 2 else (0.0 if sst == 0 else -math.inf)
    else:
        fe = [Fraction(v) for v in e.tolist()]
        sse = sum((v * v for v in fe), Fraction(0))
        out.update(mae=sum(abs(v) for v in fe) / n, mse=sse / n, mean_error=sum(fe) / n)
        out["rmse"] = decimal_sqrt(sse / n)
        if n >= 2:
            out["r2"] = Fraction(1) if sse == 0 else Fraction(0) if sst == 0 else 1 - sse / sst
    nz = y != 0.0
    if nz.any():
        with np.errstate(over="ignore"):
            ratio = np.abs(e[nz]) / np.maximum(np.abs(y[nz]), EPS)
        finite = np.isfinite(ratio).all()
        out["mape"] = sum(Fraction(v) for v in ratio.tolist()) / ratio.size if finite else math.inf
    return out


def decimal_sqrt(x: Fraction) -> Fraction:
    """√x to 60 significant digits."""
    with localcontext() as ctx:
        ctx.prec = 60
        ctx.Emax, ctx.Emin = 10**6, -(10**6)
        return Fraction((Decimal(x.numerator) / Decimal(x.denominator)).sqrt())


def partition_rows(
    y: np.ndarray, p: np.ndarray, parts: int, rng: np.random.Generator
) -> list[dict[str, Any]]:
    """Rows of ``parts`` partitions, each fed its pairs in random batches, plus a partition
    that saw only predictions."""
    owner = rng.integers(parts, size=y.size)
    rows = []
    for k in range(parts):
        w = RegressionWindow()
        idx = np.flatnonzero(owner == k)
        w.add_predictions(count(idx.size))
        cuts = np.sort(rng.integers(0, idx.size + 1, size=int(rng.integers(0, 4))))
        for chunk in np.split(idx, cuts):
            w.add_labelled(y[chunk], p[chunk])
        rows.append(w.row())
    idle = RegressionWindow()
    idle.add_predictions(count(3))
    rows.append(idle.row())
    return rows


def assert_close(got: float | None, exact: Any, bound: Fraction, what: str) -> None:
    """``|got − exact| ≤ bound`` exactly; inf, None and overflow must agree."""
    if exact is None or got is None:
        assert got is None and exact is None, (what, got, exact)
        return
    if isinstance(exact, float) and math.isinf(exact):
        assert got == exact, (what, got, exact)
        return
    if math.isinf(got):  # allowed only when the exact value is beyond float64
        assert abs(exact) > MAX and (got > 0) == (exact > 0), (what, got)
        return
    err = abs(Fraction(got) - Fraction(exact))
    assert err <= bound, (what, got, to_float(Fraction(exact)), float(err / max(bound, TINY)))


def check_against_exact(
    m: Mapping[str, Any], ref: Mapping[str, Any], rows: Sequence[Mapping[str, Any]]
) -> None:
    """The bounds documented in the module docstring: with ``P`` partitions, relative
    ``(P + 4)·2⁻⁵³`` plus half a subnormal unit per rounding, and for ``r2`` the relative
    precision of its float64 inputs, which is less than 2⁻⁵³ for subnormal ones."""
    assert m["labelled"] == ref["labelled"] and m["zero_targets"] == ref["zero_targets"]
    if ref["labelled"] == 0:
        assert all(m[k] is None for k in METRICS[3:])
        return
    parts = sum(1 for r in rows if r["labelled"])
    rel, slack = (parts + 4) * U, (parts + 4) * TINY
    for key in ("mae", "mse", "rmse", "mape"):
        exact = ref.get(key)
        bound = rel * abs(exact) + slack if isinstance(exact, Fraction) else U
        assert_close(m[key], exact, bound, key)
    if ref["mean_error"] is not None:
        bound = rel * ref["mae"] + slack
        assert_close(m["mean_error"], ref["mean_error"], bound, "mean_error")
    else:
        assert m["mean_error"] is None
    bound = rel * ref["max_abs_target"] + slack
    assert_close(m["mean_target"], ref["mean_target"], bound, "mean_target")
    r2 = ref.get("r2")
    if isinstance(r2, Fraction):
        inputs = [r[k] for r in rows for k in ("target_std", "rms_error") if r["labelled"]]
        smallest = min((Fraction(v) for v in inputs if v > 0), default=Fraction(1))
        u = max(U, TINY / smallest)  # relative precision of the columns
        bound = (parts + 8) * u * abs(1 - r2) + U * abs(r2)
        if ref["spread"] < Fraction(1e-323):  # documented: counts as constant
            assert m["r2"] == (1.0 if ref["mse"] == 0 else 0.0) or (
                abs(Fraction(num(m["r2"])) - r2) <= bound
            )
        else:
            assert_close(m["r2"], r2, bound, "r2")
    else:
        assert m["r2"] == r2, (m["r2"], r2)


def make_data(name: str) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    n = 1500
    if name == "normal":
        y = rng.normal(50.0, 10.0, n)
        return y, y + rng.normal(0.0, 2.0, n)
    if name == "one_row":
        return np.array([3.0]), np.array([2.5])
    if name == "two_rows":
        return np.array([1.0, 4.0]), np.array([2.0, 3.5])
    if name == "constant_target":
        return np.full(n, 5.0), 5.0 + rng.normal(0.0, 1.0, n)
    if name == "constant_perfect":
        return np.full(n, -2.5), np.full(n, -2.5)
    if name == "constant_tenth":  # sklearn's rounded mean is not 0.1 here
        return np.full(3, 0.1), np.full(3, 0.2)
    if name == "large_mean_noise":  # Σy² − (Σy)²/n cancels 22 digits
        y = 1e8 + rng.normal(0.0, 1e-3, n)
        return y, 1e8 + 0.9 * (y - 1e8) + rng.normal(0.0, 1e-4, n)
    if name == "large_mean_constant_noise":  # constant up to a few ulps
        y = 1e8 + rng.integers(-3, 4, n) * np.spacing(1e8)
        return y, y + rng.integers(-2, 3, n) * np.spacing(1e8)
    if name == "zero_targets":
        y = np.where(rng.random(n) < 0.3, 0.0, rng.normal(0.0, 3.0, n))
        return y, y + rng.normal(0.0, 1.0, n)
    if name == "huge_1e150":
        y = rng.normal(0.0, 1.0, n) * 1e150
        return y, y + rng.normal(0.0, 1.0, n) * 1e149
    if name == "huge_1e300":  # sklearn: e² overflows (mse, rmse inf; r2 nan)
        y = rng.normal(0.0, 1.0, n) * 1e300
        return y, y * (1.0 + rng.normal(0.0, 0.1, n))
    if name == "tiny_1e-300":  # sklearn: e² underflows to 0
        y = rng.normal(0.0, 1.0, n) * 1e-300
        return y, y + rng.normal(0.0, 1.0, n) * 1e-301
    if name == "subnormal":
        k = rng.integers(-50, 50, n)
        return k * 5e-324, (k + rng.integers(-3, 4, n)) * 5e-324
    if name == "mixed_signs_heavy":
        y = rng.standard_cauchy(n) * 100.0
        return y, y + rng.standard_cauchy(n)
    if name == "spanning":
        y = np.where(rng.random(n) < 0.5, -1.0, 1.0) * 10.0 ** rng.uniform(-300, 300, n)
        return y, y * rng.uniform(0.5, 1.5, n)
    if name == "opposite_extremes":  # the targets span more than float64's largest value
        y = np.where(rng.random(n) < 0.5, -1.5e308, 1.5e308) * rng.uniform(0.9, 1.0, n)
        return y, y * 0.999
    if name == "tiny_targets":  # mape divides by max(|y|, eps)
        y = np.array([1e-20, -3e-17, 1.0, 2.3e-16, 0.0, 5.0])
        return y, np.array([1e-3, 0.0, 1.5, 1e-16, 2.0, 4.0])
    if name == "ape_overflow":
        return np.array([1e-300, 1.0, 2.0]), np.array([1e300, 1.5, 2.0])
    if name == "residual_overflow":
        return np.array([-1.5e308, 1.0, 2.0]), np.array([1.5e308, 1.5, 2.0])
    raise KeyError(name)


DATA = [
    "normal",
    "one_row",
    "two_rows",
    "constant_target",
    "constant_perfect",
    "constant_tenth",
    "large_mean_noise",
    "large_mean_constant_noise",
    "zero_targets",
    "huge_1e150",
    "huge_1e300",
    "tiny_1e-300",
    "subnormal",
    "mixed_signs_heavy",
    "spanning",
    "opposite_extremes",
    "tiny_targets",
    "ape_overflow",
    "residual_overflow",
]


@pytest.mark.parametrize("parts", [1, 3, 64])
@pytest.mark.parametrize("name", DATA)
def test_metrics_match_exact_definitions(name: str, parts: int) -> None:
    y, p = make_data(name)
    rows = partition_rows(y, p, parts, np.random.default_rng(parts))
    m = metrics(rows)
    check_against_exact(m, exact_metrics(y, p), rows)
    assert m["predictions"] == y.size + 3


#: The data where scikit-learn's float intermediates are accurate, with the metrics compared.
SKLEARN = {
    "normal": ("mae", "mse", "rmse", "mape", "r2"),
    "two_rows": ("mae", "mse", "rmse", "mape", "r2"),
    "constant_target": ("mae", "mse", "rmse", "mape", "r2"),
    "constant_perfect": ("mae", "mse", "rmse", "mape", "r2"),
    "zero_targets": ("mae", "mse", "rmse", "mape", "r2"),
    "huge_1e150": ("mae", "mse", "rmse", "mape", "r2"),
    "mixed_signs_heavy": ("mae", "mse", "rmse", "mape", "r2"),
    "tiny_targets": ("mae", "mse", "rmse", "mape", "r2"),
    "huge_1e300": ("mae", "mse", "mape"),  # mse inf in both
    "tiny_1e-300": ("mae", "mape"),
    "ape_overflow": ("mae", "mape"),
    "residual_overflow": ("mae", "mse", "rmse", "mape"),
}


def sklearn_metrics(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        nz = y != 0.0
        return {
            "mae": mean_absolute_error(y, p),
            "mse": mean_squared_error(y, p),
            "rmse": root_mean_squared_error(y, p),
            "mape": mean_absolute_percentage_error(y[nz], p[nz]),
            "r2": r2_score(y, p),
        }


@pytest.mark.parametrize("parts", [1, 7])
@pytest.mark.parametrize("name", sorted(SKLEARN))
def test_metrics_match_sklearn(name: str, parts: int) -> None:
    y, p = make_data(name)
    m = metrics(partition_rows(y, p, parts, np.random.default_rng(parts)))
    ref = sklearn_metrics(y, p)
    for key in SKLEARN[name]:
        got, want = num(m[key]), ref[key]
        if math.isinf(want):
            assert got == want, (key, got, want)
        elif key == "r2":  # relative to 1 − r2 near 1, to r2 elsewhere
            assert abs(got - want) <= 1e-12 * max(abs(want), abs(1.0 - want)), (got, want)
        else:
            assert abs(got - want) <= 1e-12 * abs(want), (key, got, want)


def test_where_sklearn_overflows_or_rounds() -> None:
    """The documented differences: finite exact values where scikit-learn's intermediates
    overflow, and a constant target that its rounded mean makes look spread."""
    y, p = make_data("huge_1e300")
    m = metrics(partition_rows(y, p, 3, np.random.default_rng(0)))
    sk, ref = sklearn_metrics(y, p), exact_metrics(y, p)
    assert sk["rmse"] == math.inf and math.isnan(sk["r2"])
    assert m["mse"] == math.inf and math.isfinite(num(m["rmse"])) and math.isfinite(num(m["r2"]))
    assert abs(num(m["rmse"]) - ref["rmse"]) <= 1e-15 * ref["rmse"]
    assert abs(num(m["r2"]) - float(ref["r2"])) <= 1e-14

    y, p = make_data("constant_tenth")
    assert r2_score(y, p) < -1e30  # Σ(y − fl(ȳ))² > 0 for three equal targets
    assert metrics([window(y, p).row()])["r2"] == 0.0

    y, p = make_data("tiny_1e-300")  # sklearn: 0/0 -> 1.0; the definition: a real fit
    assert r2_score(y, p) == 1.0
    assert abs(num(metrics([window(y, p).row()])["r2"]) - float(exact_metrics(y, p)["r2"])) < 1e-14


def test_r2_constant_and_small_windows() -> None:
    for y, p, want in (
        ([3.0], [1.0], None),  # fewer than two pairs
        ([], [], None),
        ([2.0, 2.0], [2.0, 2.0], 1.0),  # constant, perfect
        ([2.0, 2.0], [2.0, 2.5], 0.0),  # constant, not perfect
        ([0.1] * 3, [0.1] * 3, 1.0),
        ([1e8 + 1.4901161193847656e-08] * 5, [1e8] * 5, 0.0),
    ):
        m = metrics([window(np.array(y), np.array(p)).row()])
        assert m["r2"] == want, (y, p, m["r2"])
    # The same constant target spread over partitions is still constant.
    rows = [window(np.full(4, 0.1), np.full(4, 0.1 + k)).row() for k in range(3)]
    assert metrics(rows)["r2"] == 0.0


def test_partition_means_further_apart_than_float64_holds() -> None:
    y = np.array([-1.5e308, -1.5e308, 1.5e308, 1.5e308, 1.5e308])
    p = np.array([-1.4e308, -1.5e308, 1.5e308, 1.5e308, 1.3e308])
    rows = [window(y[:2], p[:2]).row(), window(y[2:], p[2:]).row()]
    m, ref = metrics(rows), exact_metrics(y, p)
    assert m["mean_target"] == float(ref["mean_target"])
    assert abs(num(m["r2"]) - float(ref["r2"])) <= 1e-15
    # constant subnormal targets over partitions stay constant
    rows = [window(np.full(3, 5e-324), np.full(3, 5e-324 * k)).row() for k in (1, 3)]
    assert metrics(rows)["r2"] == 0.0 and metrics(rows[:1])["r2"] == 1.0
    # Σe²/Σ(y − ȳ)² near float64's largest value stays finite
    y, p = np.array([0.0, 0.0, 1.0]), np.array([0.0, 0.0, 1e154])
    assert num(metrics([window(y, p).row()])["r2"]) == pytest.approx(
        float(exact_metrics(y, p)["r2"])
    )
    # a spread below float64's resolution counts as constant (exactly, r2 would be -1)
    rows = [window(np.array([0.0]), np.array([0.0])).row()]
    rows.append(window(np.array([5e-324]), np.array([0.0])).row())
    assert metrics(rows)["r2"] == 0.0


def test_large_mean_r2_is_exact_across_many_partitions() -> None:
    """1e8 + noise of 1e-3: the naive Σy² − (Σy)²/n would lose every digit."""
    rng = np.random.default_rng(11)
    y = 1e8 + rng.normal(0.0, 1e-3, 20_000)
    p = 1e8 + 0.5 * (y - 1e8) + rng.normal(0.0, 1e-4, y.size)
    ref = exact_metrics(y, p)["r2"]
    for parts in (1, 16, 200):
        got = num(metrics(partition_rows(y, p, parts, rng))["r2"])
        assert abs(Fraction(got) - ref) <= (parts + 8) * U * abs(1 - ref) + U * abs(ref)
    ybar = sum(Fraction(v) for v in y.tolist()) / y.size
    sst = float(sum((Fraction(v) - ybar) ** 2 for v in y.tolist()))
    naive = np.sum(y * y) - np.sum(y) ** 2 / y.size  # what the one-pass formula gives
    assert abs(naive - sst) > 0.5 * sst


# -- exact sums ------------------------------------------------------------------------------


def fraction_sum_squares(x: np.ndarray) -> Fraction:
    return sum((Fraction(v) ** 2 for v in x.tolist()), Fraction(0))


def adversarial_columns(rng: np.random.Generator) -> list[np.ndarray]:
    full_mantissa = 1.0 - 2.0**-53  # all 53 bits set: the largest limb products
    return [
        np.empty(0),
        np.array([0.0, -0.0]),
        np.array([5e-324, -5e-324, 2.2250738585072014e-308, 1e-310]),
        np.array([MAX, -MAX, 1.3407807929942596e154]),
        np.array([full_mantissa * 2.0**k for k in range(-1074 + 53, 1024, 37)]),
        rng.normal(0.0, 1.0, 1000) * 10.0 ** rng.uniform(-320, 308, 1000),
        np.full(3 * _SQ_CHUNK + 17, full_mantissa),  # past the chunk bound, one exponent
        np.full(_SQ_CHUNK, -full_mantissa * 2.0**1023),
        np.concatenate([np.full(100, 1e200), np.full(100, -1e-200), [0.1, 0.2, 0.3]]),
    ]


def test_exact_square_sums_match_fractions() -> None:
    rng = np.random.default_rng(5)
    cols = adversarial_columns(rng)
    for x in cols:
        (got,) = _exact_square_sums(x[None, :])
        assert Fraction(got, 1 << _SQ_BITS) == fraction_sum_squares(x)
    a, b = cols[5], cols[4][: cols[5].size]
    m = np.stack([a[: b.size], b])  # several rows in one call
    assert [Fraction(t, 1 << _SQ_BITS) for t in _exact_square_sums(m)] == [
        fraction_sum_squares(r) for r in m
    ]


def test_sqrt_ratio_is_correctly_rounded() -> None:
    rng = np.random.default_rng(9)
    cases = [(1, 1), (2, 1), (1, 3), (4, 1), (1 << 2252, 1), (1, 1 << 2000), (3, 2**2252)]
    cases += [
        (int(rng.integers(1, 2**62)) << int(rng.integers(0, 2200)), int(rng.integers(1, 2**40)))
        for _ in range(300)
    ]
    for num, den in cases:
        got = _sqrt_ratio(num, den, 1126)
        x = Fraction(num, den) / Fraction(2) ** 2252  # got should be the float nearest √x
        g = Fraction(got)
        below, above = Fraction(np.nextafter(got, 0.0)), Fraction(np.nextafter(got, math.inf))
        assert ((g + below) / 2) ** 2 <= x <= ((g + above) / 2) ** 2, (num, den)


# -- the residual sketch ---------------------------------------------------------------------


def sketch_of(rows: Sequence[Mapping[str, Any]]) -> tuple[list[int], list[int]]:
    total: dict[int, int] = {}
    for r in rows:
        for k, c in r["residual_sketch"].items():
            total[k] = total.get(k, 0) + c
    keys = sorted(total)
    return keys, [total[k] for k in keys]


def heavy(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.standard_cauchy(n) * 1e3


def pareto(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.pareto(0.7, n) * np.where(rng.random(n) < 0.3, -1.0, 1.0)


def bimodal(rng: np.random.Generator, n: int) -> np.ndarray:
    far = rng.random(n) < 0.37
    return np.where(far, rng.normal(1e250, 1e248, n), rng.normal(1.0, 0.01, n))


def all_equal(rng: np.random.Generator, n: int) -> np.ndarray:
    return np.full(n, -3.7)


def many_zeros(rng: np.random.Generator, n: int) -> np.ndarray:
    return np.where(rng.random(n) < 0.95, 0.0, rng.normal(0.0, 1e-5, n))


def mixed_signs(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.normal(0.0, 1.0, n) * rng.choice([1e-8, 1.0, 1e8], n)


def spanning(rng: np.random.Generator, n: int) -> np.ndarray:
    return np.where(rng.random(n) < 0.5, -1.0, 1.0) * 10.0 ** rng.uniform(-300, 300, n)


def boundaries(rng: np.random.Generator, n: int) -> np.ndarray:
    """Values on and next to the bucket boundaries γ^k, where log rounding decides."""
    log_gamma, _, _ = sketch_constants(0.01)
    edge = np.exp(rng.integers(-30000, 30000, n) * log_gamma)
    return edge * (1.0 + rng.integers(-4, 5, n) * 2.0**-52)


DISTRIBUTIONS: list[Callable[[np.random.Generator, int], np.ndarray]] = [
    heavy,
    pareto,
    bimodal,
    all_equal,
    many_zeros,
    mixed_signs,
    spanning,
    boundaries,
]
PS = (0.0, 1e-6, 0.001, 0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99, 0.999, 1.0 - 1e-6, 1.0)


def assert_quantile_bound(q: float | int | None, x: float, alpha: float) -> None:
    """The bound of :func:`residual_quantile`, checked in exact arithmetic."""
    assert q is not None
    if x == 0.0:
        assert q == 0.0
        return
    err = abs(Fraction(q) - Fraction(x))
    if abs(x) >= sys.float_info.min:
        assert err <= (Fraction(alpha) + Fraction(1, 10**12)) * abs(Fraction(x)), (q, x)
    else:
        assert err <= Fraction(alpha) * abs(Fraction(x)) + Fraction(1e-322), (q, x)


@pytest.mark.parametrize("dist", DISTRIBUTIONS, ids=lambda f: f.__name__)
def test_quantile_bound_on_a_million_residuals(dist: Callable[..., np.ndarray]) -> None:
    rng = np.random.default_rng(3)
    x = dist(rng, 1_000_000)
    zeros = np.zeros_like(x)
    parts = []
    for chunk in np.array_split(np.arange(x.size), 4):  # four partitions, summed like SQL
        w = RegressionWindow()
        for batch in np.array_split(chunk, 50):
            w.add_labelled(zeros[batch], x[batch])  # residual = x exactly
        parts.append(w.row())
    keys, counts = sketch_of(parts)
    lower = np.quantile(x, PS, method="lower")
    for p, lo in zip(PS, lower.tolist(), strict=True):
        assert_quantile_bound(residual_quantile(keys, counts, p), lo, 0.01)
    m = metrics(parts)
    for quantile in QUANTILES:
        lo = float(np.quantile(x, quantile, method="lower"))
        assert_quantile_bound(m[f"residual_p{round(quantile * 100)}"], lo, 0.01)


@pytest.mark.parametrize("alpha", [0.05, 0.001])
def test_quantile_bound_other_accuracies_and_subnormals(alpha: float) -> None:
    rng = np.random.default_rng(4)
    x = np.concatenate(
        [
            rng.integers(-2000, 2000, 20_000) * 5e-324,  # subnormal
            rng.normal(0.0, 1.0, 20_000) * 10.0 ** rng.uniform(-307, 307, 20_000),
            [MAX, -MAX, sys.float_info.min],
        ]
    )
    w = RegressionWindow(relative_accuracy=alpha)
    w.add_labelled(np.zeros_like(x), x)
    keys, counts = sketch_of([w.row()])
    for p in PS:
        lo = float(np.quantile(x, p, method="lower"))
        assert_quantile_bound(residual_quantile(keys, counts, p, alpha), lo, alpha)


def test_overflowed_residuals_are_infinite_in_the_sketch() -> None:
    y = np.array([-1.5e308, 1.5e308, 0.0, 1.0])
    p = np.array([1.5e308, -1.5e308, 0.0, 1.0])
    row = window(y, p).row()
    _, _, top = sketch_constants()
    assert row["residual_overflow"] == 2 and row["residual_sketch"] == {-top: 1, 0: 2, top: 1}
    keys, counts = sketch_of([row])
    e = residuals(y, p)
    for q in (0.0, 0.4, 0.6, 1.0):
        assert residual_quantile(keys, counts, q) == np.quantile(e, q, method="lower")
    assert orjson.loads(orjson.dumps(row, option=orjson.OPT_NON_STR_KEYS))["error_mean"] == 0.0


def test_quantile_rule_and_validation() -> None:
    assert residual_quantile([5], [0], 0.5) is None
    with pytest.raises(ValueError, match="p must be"):
        residual_quantile([0], [1], 1.5)
    # rank floor(p (N - 1)): 10 values, p = 0.9 -> rank 8 (the 9th smallest)
    keys = bucket_index(np.arange(1.0, 11.0), 0.01).tolist()
    assert residual_quantile(keys, [1] * 10, 0.9) == pytest.approx(9.0, rel=0.01)
    assert residual_quantile(keys, [1] * 10, 0.88) == pytest.approx(8.0, rel=0.01)


# -- the accumulator's contract --------------------------------------------------------------


def window(y: np.ndarray, p: np.ndarray) -> RegressionWindow:
    w = RegressionWindow()
    w.add_predictions(count(y.size))
    w.add_labelled(y, p)
    return w


def test_bad_input_leaves_state_untouched() -> None:
    w = window(np.array([1.0, 2.0]), np.array([1.5, 2.5]))
    before = state(w)
    for y, p, match in (
        (np.array([1.0, 2.0]), np.array([1.0]), "differ in length"),
        (np.array([1.0, np.nan]), np.array([1.0, 2.0]), "finite"),
        (np.array([1.0, 2.0]), np.array([np.inf, 2.0]), "finite"),
        (np.ones((2, 2)), np.ones((2, 2)), "1-d"),
    ):
        with pytest.raises(ValueError, match=match):
            w.add_labelled(y, p)
        assert state(w) == before
    with pytest.raises(ValueError, match="relative_accuracy differs"):
        w.merge(RegressionWindow(relative_accuracy=0.02))
    with pytest.raises(ValueError, match="Int32"):
        RegressionWindow(relative_accuracy=1e-7)
    with pytest.raises(ValueError, match="relative_accuracy"):
        RegressionWindow(relative_accuracy=1.0)


def test_row_is_json_and_finite_on_every_data_set() -> None:
    for name in DATA:
        y, p = make_data(name)
        row = window(y, p).row()
        back = orjson.loads(orjson.dumps(row, option=orjson.OPT_NON_STR_KEYS))
        assert back == {
            **row,
            "residual_sketch": {str(k): c for k, c in row["residual_sketch"].items()},
        }
        assert all(math.isfinite(v) for v in row.values() if isinstance(v, float)), name
    declared = RegressionFamily.tables[0].written
    assert set(window(np.array([1.0]), np.array([2.0])).row()) == set(declared[6:-1])


def test_empty_window_metrics_are_null() -> None:
    w = RegressionWindow()
    w.add_predictions(count(5))
    m = metrics([w.row(), RegressionWindow().row()])
    assert m["predictions"] == 5 and m["labelled"] == 0
    assert all(m[k] is None for k in METRICS[3:])
    assert metrics([])["predictions"] == 0


finite_floats = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    st.floats(-1e6, 1e6, allow_nan=False),
    st.sampled_from([0.0, -0.0, 5e-324, -1e-310, 1e8, 1e8 + 2**-26, MAX, -MAX, 0.1]),
)
pairs = st.lists(st.tuples(finite_floats, finite_floats), max_size=60)


@settings(max_examples=150, deadline=None)
@given(pairs, st.randoms(use_true_random=False), st.integers(1, 5))
def test_batching_and_merge_order_do_not_matter(
    data: list[tuple[float, float]], rnd: Any, parts: int
) -> None:
    y = np.array([a for a, _ in data], dtype=np.float64)
    p = np.array([b for _, b in data], dtype=np.float64)
    whole = window(y, p)
    owner = [rnd.randrange(parts) for _ in data]
    windows = []
    for k in range(parts):
        idx = np.array([i for i, o in enumerate(owner) if o == k], dtype=np.int64)
        w = RegressionWindow()
        w.add_predictions(count(idx.size))
        cuts = sorted(rnd.randrange(idx.size + 1) for _ in range(rnd.randrange(4)))
        for chunk in np.split(idx, cuts):
            w.add_labelled(y[chunk], p[chunk])
        windows.append(w)
    rnd.shuffle(windows)
    merged = RegressionWindow()
    for w in windows:
        merged.merge(w)
    assert state(merged) == state(whole)
    assert merged.row() == whole.row()
    m = metrics([w.row() for w in windows])
    assert m["labelled"] == y.size and m["predictions"] == y.size
    assert not any(isinstance(v, float) and math.isnan(v) for v in m.values()), m


near = st.builds(
    lambda base, k, sign: sign * base * (1.0 + k * 2.0**-50),
    st.sampled_from([0.0, 1.0, 0.1, 3.0, 1e8, 1e154, 1e300, 1e-300]),
    st.integers(-64, 64),
    st.sampled_from([1.0, -1.0]),
)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.tuples(near | finite_floats, near), min_size=1, max_size=80),
    st.integers(1, 12),
    st.integers(0, 2**32 - 1),
)
def test_metrics_within_documented_bounds(
    data: list[tuple[float, float]], parts: int, seed: int
) -> None:
    """Values a few ulps apart around large means, extremes mixed in, any partitioning."""
    y = np.array([a for a, _ in data], dtype=np.float64)
    p = np.array([b for _, b in data], dtype=np.float64)
    rows = partition_rows(y, p, parts, np.random.default_rng(seed))
    check_against_exact(metrics(rows), exact_metrics(y, p), rows)


def count(n: int) -> Predictions:
    """A batch of ``n`` predictions (only their number counts here)."""
    return Predictions("regression", *([None] * n,) * 5)


def state(w: RegressionWindow) -> dict[str, Any]:
    """Every count and exact sum, and the compacted sketch: to compare bit for bit."""
    keys, counts = w._sketch()
    sums = {k: v for k, v in vars(w).items() if k.startswith(("sum_", "labelled", "predictions"))}
    return sums | {"sketch": (keys.tolist(), counts.tolist())}

"""Regression quality, a metric family: mergeable sufficient statistics of one window on one
partition, its partial table, and the views that turn them into metrics.

A :class:`RegressionWindow` folds joined (target ``y``, prediction ``ŷ``) pairs into exact
integer sums, so its state is the same bit for bit whatever the batching and merge order;
:meth:`RegressionWindow.row` rounds each sum once into the partial row of its partition.
The metric formulas combine the partial rows of every partition with what ClickHouse has
(sums over rows, arithmetic, array functions on a summed sparse map); :func:`metrics` is
their reference implementation.

Definitions, over the labelled pairs of a window, with ``e = fl(ŷ − y)`` the residual as
float64 computes it (scikit-learn's ``y − ŷ`` has the same magnitude):

- ``mae`` = mean |e|, ``mse`` = mean e², ``rmse`` = √mse.
- ``mean_error`` = mean e: the bias, positive when the model predicts too high.
- ``mape`` = mean of ``fl(|e| / max(|y|, ε))``, ε = 2.22e-16 (scikit-learn's denominator,
  so a target below ε divides by ε), over the pairs with ``y ≠ 0``; pairs with ``y = 0`` are
  left out and counted in ``zero_targets``. NULL when no target is non-zero.
- ``r2`` = 1 − Σe² / Σ(y − ȳ)², with scikit-learn's ``force_finite``: 1.0 when Σe² = 0, else
  0.0 when Σ(y − ȳ)² = 0. NULL with fewer than two pairs.
- ``mean_target`` = ȳ; ``residual_p50``/``p90``/``p99``: :func:`residual_quantile`.
- ``predictions``, ``labelled``, ``zero_targets``: counts. Metrics over pairs are NULL when
  ``labelled`` = 0.

Every sum is exact (``Σy``, ``Σe``, ``Σ|e|``, the ratios' sum in units of 2⁻¹¹²⁶, ``Σy²`` and
``Σe²`` in units of 2⁻²²⁵²) and every partial column is its correctly rounded value; the
target's spread is ``√(Σ(y − ȳ)²/n)`` computed from ``nΣy² − (Σy)²`` in integers, so a
target of 1e8 plus tiny noise loses nothing to cancellation. Combining ``P`` partitions
costs a few roundings per partition: ``mae``, ``mse``, ``rmse`` and ``mape`` are within about
``(P + 4)·2⁻⁵³`` relative of the exact value; ``mean_error`` within that times mean |e|,
``mean_target`` within that times max |y|; ``1 − r2`` within about ``(P + 8)·2⁻⁵³`` relative
(the partitions' means are combined about their midpoint, each mean carried as the sum of
two floats). One partition gives correctly rounded means. Subnormal values (below
2.2e-308) carry fewer bits: there each rounding costs up to 2.5e-324 instead.

Where float64 cannot hold a value, this differs from scikit-learn, which computes through
float intermediates: its e² overflows for |e| > 1.3e154 (``mse`` and ``rmse`` become inf,
``r2`` NaN when both sums overflow), where here ``rmse`` and ``r2`` stay finite and exact and
``mse`` is inf only when its value exceeds 1.8e308; and its rounded ȳ makes a constant
target like three times 0.1 look spread (``r2_score`` gives about −5e31 where the definition
gives 0.0). A residual that overflows (``|ŷ − y| > 1.8e308``) is counted in
``residual_overflow``: then ``mae``, ``mse``, ``rmse`` and ``mape`` are inf (as in
scikit-learn), ``r2`` is −inf (0.0 for a constant target), ``mean_error`` NULL, and the
sketch holds it as ±inf. A ratio of ``mape`` that overflows counts in ``ape_overflow`` and
makes ``mape`` inf. Targets that differ by less than about 1e-323 count as constant.

Partial row (:meth:`RegressionWindow.row`), every float finite; the means are 0.0 over no
pairs:

==================== ================== ==================================================
column               ClickHouse type    value for this partition
==================== ================== ==================================================
predictions          UInt64             predictions, labelled or not
labelled             UInt64             n, the labelled pairs
zero_targets         UInt64             pairs with y = 0
residual_overflow    UInt64             pairs whose residual overflowed
ape_overflow         UInt64             pairs with y ≠ 0 whose ratio overflowed
target_mean          Float64            ȳ rounded
target_mean_low      Float64            ȳ − target_mean, rounded
target_std           Float64            √(Σ(y − ȳ)² / n)
error_mean           Float64            mean e over finite residuals
abs_error_mean       Float64            mean |e| over finite residuals
rms_error            Float64            √(mean e²) over finite residuals
ape_mean             Float64            mean ratio over pairs with y ≠ 0 and a finite ratio
residual_sketch      Map(Int32, UInt64) residual counts per sketch bucket
==================== ================== ==================================================

Sketch: the buckets of :func:`pipeline.estimators.features.bucket_index` with relative
accuracy α (negative, zero and positive residuals), and ``±overflow_index`` of
:func:`sketch_constants` for residuals that overflowed.
"""

from __future__ import annotations

import math
import sys
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np

from pipeline.estimators.drift import is_number
from pipeline.estimators.family import (
    Accumulator,
    Column,
    Metric,
    MetricFamily,
    Pairs,
    Predictions,
    Row,
    Views,
    partial_table,
)
from pipeline.estimators.features import (
    EXP_BIAS,
    SUM_BITS,
    bucket_index,
    bucket_offset,
    exact_row_sums,
    gamma_log,
)
from schemas.events import Prediction

__all__ = [
    "DEFAULT_RELATIVE_ACCURACY",
    "EPS",
    "METRICS",
    "QUANTILES",
    "RegressionFamily",
    "RegressionWindow",
    "metrics",
    "residual_quantile",
    "sketch_constants",
]

#: Relative accuracy α of the residual sketch.
DEFAULT_RELATIVE_ACCURACY = 0.01
#: Smallest denominator of the ``mape`` ratios, scikit-learn's.
EPS = float(np.finfo(np.float64).eps)
#: Quantiles of the residuals among the metrics, as ``residual_p<100 q>``.
QUANTILES: tuple[float, ...] = (0.5, 0.9, 0.99)
#: The keys of :func:`metrics`.
METRICS: tuple[str, ...] = (
    "predictions",
    "labelled",
    "zero_targets",
    "mae",
    "mse",
    "rmse",
    "mape",
    "r2",
    "mean_error",
    "mean_target",
    *(f"residual_p{round(q * 100)}" for q in QUANTILES),
)

_MAX = sys.float_info.max
#: Squares are exact integers in units of 2**-_SQ_BITS: a float64 is M * 2**(e - 53) with
#: integer M < 2**53 and e >= -1073, so its square is M² * 2**(2e - 106), a multiple of
#: 2**-2252.
_SQ_BITS = 2 * SUM_BITS
#: A mantissa M < 2**53 is split into three limbs of 18 bits (the top one 17): the five
#: products of the square are < 2**37, so 2**16 of them sum exactly in float64.
_LIMB = 18
_SQ_CHUNK = 1 << 16
#: ``np.frexp`` exponents of nonzero finite values shifted by ``EXP_BIAS`` lie in [1, 2098].
_EXP_SLOTS = EXP_BIAS + 1025
_INT32_MAX = 2**31 - 1


def sketch_constants(
    relative_accuracy: float = DEFAULT_RELATIVE_ACCURACY,
) -> tuple[float, int, int]:
    """``(log_gamma, offset, overflow_index)`` of the residual sketch with accuracy α.

    A bucket index ``k ≠ 0`` with ``|k| < overflow_index`` stands for the value
    ``sign(k) · min(1.7976931348623157e308, (1 + α) · exp((|k| − offset − 1) · log_gamma))``
    (the bucket ``(γ^(j−1), γ^j]``, ``j = |k| − offset``, has its values within relative
    error α of ``(1 + α)γ^(j−1) = (1 − α)γ^j``); ``k = 0`` stands for 0 and
    ``±overflow_index`` for ±inf, the residuals that overflowed.

    >>> log_gamma, offset, overflow_index = sketch_constants(0.01)
    >>> offset, overflow_index
    (37221, 72710)
    """
    log_gamma = gamma_log(relative_accuracy)
    top = int(bucket_index(np.array([_MAX]), relative_accuracy)[0])
    return log_gamma, bucket_offset(log_gamma), top + 1


def _representative(index: int, relative_accuracy: float) -> float:
    """The value bucket ``index`` stands for (:func:`sketch_constants`)."""
    if index == 0:
        return 0.0
    log_gamma, offset, overflow_index = sketch_constants(relative_accuracy)
    if abs(index) >= overflow_index:
        return math.copysign(math.inf, index)
    try:
        value = (1.0 + relative_accuracy) * math.exp((abs(index) - offset - 1) * log_gamma)
    except OverflowError:  # the top bucket's lower bound may round past float64's largest
        value = _MAX
    return math.copysign(min(_MAX, value), index)


def residual_quantile(
    index: Sequence[int],
    counts: Sequence[int],
    p: float,
    relative_accuracy: float = DEFAULT_RELATIVE_ACCURACY,
) -> float | None:
    """The ``p``-quantile of the residuals from a summed sketch; None when it is empty.

    ``index`` holds the sketch's bucket indices in ascending order, ``counts`` their counts
    (summed over partitions). With ``N = Σ counts``, the rank is ``r = floor(p · (N − 1))``
    (the float64 product, as ``numpy.quantile(method="lower")`` computes it); the estimate
    is the value of the bucket holding the ``r``-th smallest residual (0-based): the first
    bucket whose cumulative count exceeds ``r``.

    Bound: for every data set, the estimate ``q`` and the lower order statistic
    ``x = numpy.quantile(residuals, p, method="lower")`` satisfy
    ``|q − x| ≤ (α + 1e-12)·|x|`` when ``|x| ≥ 2.3e-308``, and ``|q − x| ≤ α·|x| + 1e-322``
    for subnormal ``x`` (float64's own spacing); ``x = 0`` gives ``q = 0``, and an
    overflowed residual gives ±inf. So ``q`` is within relative error α of a sample value
    between the lower and the higher order statistic around ``p · (N − 1)``.

    >>> bucket_index(np.array([0.0, 1.0, 1.0, 2.0]), 0.01).tolist()
    [0, 37221, 37221, 37256]
    >>> residual_quantile([0, 37221, 37256], [1, 2, 1], 0.5)  # r = floor(0.5 * 3): a 1.0
    0.9900000000000001
    >>> residual_quantile([], [], 0.5) is None
    True
    """
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p must be in [0, 1], got {p!r}")
    cum = np.cumsum(np.asarray(counts, dtype=np.int64))
    if cum.size == 0 or cum[-1] == 0:
        return None
    rank = math.floor(p * float(cum[-1] - 1))
    j = int(np.searchsorted(cum, rank, side="right"))
    return _representative(int(index[j]), relative_accuracy)


def _exact_square_sums(m: np.ndarray) -> list[int]:
    """Exact sum of squares of each row of a 2-d array of finite float64 values, as an
    integer in units of 2**-_SQ_BITS.

    ``|x| = M · 2**(e − 53)`` with integer ``M < 2**53`` split into limbs ``M = a·2**36 +
    b·2**18 + c``; ``M²`` is the sum of five limb products (each < 2**37) weighted by
    ``2**(18 j)``. The products are summed per (row, exponent, j) by ``np.bincount`` in
    float64, exact below 2**53 whatever the order; only the distinct exponents meet Python
    integers.

    >>> from fractions import Fraction
    >>> x = np.array([[0.1, -3e-310, 1e154]])
    >>> Fraction(_exact_square_sums(x)[0], 1 << _SQ_BITS) == sum(Fraction(v) ** 2 for v in x[0])
    True
    """
    rows, n = m.shape
    if n > _SQ_CHUNK:
        totals = [0] * rows
        for i in range(0, n, _SQ_CHUNK):
            for r, t in enumerate(_exact_square_sums(m[:, i : i + _SQ_CHUNK])):
                totals[r] += t
        return totals
    mantissa, exponent = np.frexp(m)
    big = np.abs(mantissa) * 2.0**53  # integer-valued, exact
    a = np.floor(big * 2.0 ** (-2 * _LIMB))
    rest = big - a * 2.0 ** (2 * _LIMB)
    b = np.floor(rest * 2.0**-_LIMB)
    c = rest - b * 2.0**_LIMB
    products = (c * c, 2.0 * b * c, b * b + 2.0 * a * c, 2.0 * a * b, a * a)  # × 2**(18 j)
    slot = ((exponent + EXP_BIAS) + (np.arange(rows) * _EXP_SLOTS)[:, None]).ravel()
    size = rows * _EXP_SLOTS
    sums = np.stack([np.bincount(slot, weights=t.ravel(), minlength=size) for t in products])
    used = np.flatnonzero(sums.any(axis=0))
    totals = [0] * rows
    for u, digits in zip(used.tolist(), sums[:, used].T.astype(np.int64).tolist(), strict=True):
        r, s = divmod(u, _EXP_SLOTS)
        value = 0
        for j, d in enumerate(digits):
            value += d << (_LIMB * j)
        # M² · 2**(2(s − 1074) − 106) in units of 2**-2252 is M² · 2**(2s − 2)
        totals[r] += value << (2 * s - 2)
    return totals


def _sqrt_ratio(num: int, den: int, bits: int) -> float:
    """``√(num / den) · 2**-bits`` correctly rounded (``num >= 0``, ``den > 0``).

    ``r = isqrt(num · 4**k // den)`` with at least 55 bits; when the root is not exact the
    true value lies strictly between ``r`` and ``r + 1``, so ``r + 1/2`` rounds the same way
    (every rounding boundary of a 55-bit value is an integer) and ``int / int`` is correctly
    rounded.
    """
    if num == 0:
        return 0.0
    k = max(0, (110 - num.bit_length() + den.bit_length()) // 2 + 1)
    q, rem = divmod(num << (2 * k), den)
    r = math.isqrt(q)
    inexact = 1 if rem or r * r != q else 0
    return (2 * r + inexact) / (1 << (k + 1 + bits))


def _column(x: np.ndarray, name: str) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 1:
        raise ValueError(f"{name} must be 1-d, got shape {a.shape}")
    return a


class RegressionWindow(Accumulator):
    """Mergeable sufficient statistics of one window's regression quality on one partition.

    Keeps the prediction count and, of the labelled pairs, their counts, exact sums of the
    targets, residuals, absolute residuals, percentage ratios and squares (see the module
    docstring), and a sparse log-bucket sketch of the residuals. Partials of the same window
    merge by addition.

    Parameters
    ----------
    relative_accuracy
        ``α`` of the residual sketch; partials that are merged or combined must share it.

    Examples
    --------
    >>> w = RegressionWindow()
    >>> w.add_labelled(np.array([3.0, -0.5, 2.0, 0.0]), np.array([2.5, 0.0, 2.5, 0.5]))
    >>> w.predictions = 4  # what add_predictions counts
    >>> row = w.row()
    >>> row["labelled"], row["zero_targets"], row["abs_error_mean"], row["target_mean"]
    (4, 1, 0.5, 1.125)
    >>> m = metrics([row])
    >>> m["mae"], m["mse"], m["mean_error"], round(m["r2"], 6), round(m["mape"], 6)
    (0.5, 0.25, 0.25, 0.877863, 0.472222)
    >>> other = RegressionWindow()
    >>> other.merge(w); other.merge(w)
    >>> metrics([other.row()])["labelled"], metrics([other.row()])["mae"]
    (8, 0.5)
    >>> w.version, list(w.rows()), w.rows()
    (8, ['regression_partials'], {})
    """

    def __init__(self, relative_accuracy: float = DEFAULT_RELATIVE_ACCURACY) -> None:
        _, _, overflow_index = sketch_constants(relative_accuracy)
        if overflow_index > _INT32_MAX:
            raise ValueError(
                f"relative_accuracy {relative_accuracy!r} needs sketch indices beyond Int32"
            )
        self.relative_accuracy = float(relative_accuracy)
        self._overflow_index = overflow_index
        self.predictions = 0
        self.labelled = 0
        self.zero_targets = 0
        self.residual_overflow = 0
        self.ape_overflow = 0
        # Exact sums: linear ones in units of 2**-SUM_BITS, squares in 2**-_SQ_BITS.
        self.sum_target = 0
        self.sum_target_sq = 0
        self.sum_error = 0
        self.sum_abs_error = 0
        self.sum_error_sq = 0
        self.sum_ape = 0
        #: The sketch as (ascending distinct indices, counts) array pairs, one per batch
        #: since the last compaction.
        self._parts: list[tuple[np.ndarray, np.ndarray]] = []
        self._emitted = 0  # the version of the last rows()

    def add_predictions(self, batch: Predictions) -> None:
        """Count a batch of predictions, labelled or not."""
        self.predictions += len(batch)

    def add_pairs(self, batch: Pairs) -> None:
        # Integer-valued targets are decoded as their decimal text: numbers again here.
        self.add_labelled(
            np.asarray(batch.y_true, dtype=np.float64), np.asarray(batch.y_pred, dtype=np.float64)
        )

    @property
    def version(self) -> int:
        """Predictions and labelled pairs folded in."""
        return self.predictions + self.labelled

    def rows(self) -> dict[str, list[Row]]:
        if self.version == self._emitted:
            return {}
        self._emitted = self.version
        return {"regression_partials": [self.row() | {"version": self.version}]}

    def add_labelled(self, y_true: np.ndarray, y_pred: np.ndarray) -> None:
        """Fold a batch of joined (target, prediction) pairs in, as float64 columns.

        Raises ``ValueError`` (leaving the state untouched) when the columns are not 1-d,
        differ in length or hold a NaN or an infinity.
        """
        y = _column(y_true, "y_true")
        p = _column(y_pred, "y_pred")
        if y.shape != p.shape:
            raise ValueError(f"y_true and y_pred differ in length: {y.size}, {p.size}")
        if not (np.isfinite(y).all() and np.isfinite(p).all()):
            raise ValueError("y_true and y_pred must be finite")
        if y.size == 0:
            return
        with np.errstate(over="ignore"):
            e = p - y
            ratio = np.abs(e) / np.maximum(np.abs(y), EPS)
        finite = np.isfinite(e)
        nonzero = y != 0.0
        ratio_ok = nonzero & np.isfinite(ratio)
        overflow = int(finite.size - np.count_nonzero(finite))
        if overflow:
            e = np.where(finite, e, 0.0)
        ratio = np.where(ratio_ok, ratio, 0.0)
        s_target, s_error, s_abs, s_ape = exact_row_sums(np.stack([y, e, np.abs(e), ratio]))
        sq_target, sq_error = _exact_square_sums(np.stack([y, e]))
        index = bucket_index(e, self.relative_accuracy)
        if overflow:
            # the residuals that overflowed were set to 0 above: ±overflow_index by sign
            bad = ~finite
            index[bad] = np.where(p[bad] > y[bad], self._overflow_index, -self._overflow_index)
        keys, counts = np.unique(index, return_counts=True)
        zero = int(y.size - np.count_nonzero(nonzero))
        self.labelled += y.size
        self.zero_targets += zero
        self.residual_overflow += overflow
        self.ape_overflow += int(y.size - zero - np.count_nonzero(ratio_ok))
        self.sum_target += s_target
        self.sum_target_sq += sq_target
        self.sum_error += s_error
        self.sum_abs_error += s_abs
        self.sum_error_sq += sq_error
        self.sum_ape += s_ape
        self._add_sketch(keys, counts.astype(np.int64, copy=False))

    def _add_sketch(self, keys: np.ndarray, counts: np.ndarray) -> None:
        self._parts.append((keys, counts))
        if len(self._parts) >= 8:  # bounded memory: merge the batches' parts
            self._sketch()

    def _sketch(self) -> tuple[np.ndarray, np.ndarray]:
        """The sketch as (ascending distinct indices, counts), compacted."""
        if not self._parts:
            return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
        if len(self._parts) > 1:
            keys, inverse = np.unique(
                np.concatenate([k for k, _ in self._parts]), return_inverse=True
            )
            counts = np.zeros(keys.size, dtype=np.int64)
            np.add.at(counts, inverse, np.concatenate([c for _, c in self._parts]))
            self._parts = [(keys, counts)]
        return self._parts[0]

    def merge(self, other: RegressionWindow) -> None:
        """Add ``other``'s statistics (same ``relative_accuracy``) to this one."""
        if other.relative_accuracy != self.relative_accuracy:
            raise ValueError(
                f"relative_accuracy differs: {self.relative_accuracy} vs {other.relative_accuracy}"
            )
        for name in _COUNTS + _SUMS:
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for keys, counts in list(other._parts):  # arrays are never changed: shared safely
            self._add_sketch(keys, counts)

    def row(self) -> dict[str, Any]:
        """The partial-row columns of this partition (module docstring), without keys."""
        n = self.labelled
        finite = n - self.residual_overflow
        ratios = n - self.zero_targets - self.ape_overflow
        one = 1 << SUM_BITS
        mean = low = std = 0.0
        if n:
            mean = self.sum_target / (n * one)
            num, den = mean.as_integer_ratio()  # den is a power of two <= 2**1074
            low = (self.sum_target * den - num * one * n) / (n * one * den)
            spread = n * self.sum_target_sq - self.sum_target * self.sum_target
            std = _sqrt_ratio(spread, n * n, SUM_BITS)
        keys, counts = self._sketch()
        return {
            "predictions": self.predictions,
            "labelled": n,
            "zero_targets": self.zero_targets,
            "residual_overflow": self.residual_overflow,
            "ape_overflow": self.ape_overflow,
            "target_mean": mean,
            "target_mean_low": low,
            "target_std": std,
            "error_mean": self.sum_error / (finite * one) if finite else 0.0,
            "abs_error_mean": self.sum_abs_error / (finite * one) if finite else 0.0,
            "rms_error": _sqrt_ratio(self.sum_error_sq, finite, SUM_BITS) if finite else 0.0,
            "ape_mean": self.sum_ape / (ratios * one) if ratios else 0.0,
            "residual_sketch": dict(zip(keys.tolist(), counts.tolist(), strict=True)),
        }


_COUNTS = ("predictions", "labelled", "zero_targets", "residual_overflow", "ape_overflow")
_SUMS = (
    "sum_target",
    "sum_target_sq",
    "sum_error",
    "sum_abs_error",
    "sum_error_sq",
    "sum_ape",
)


def _total(values: np.ndarray) -> float:
    """Left-to-right float64 sum, as ClickHouse's ``arraySum`` (numpy's is pairwise)."""
    total = 0.0
    for v in values.tolist():
        total += v
    return total


def metrics(
    rows: Sequence[Mapping[str, Any]], relative_accuracy: float = DEFAULT_RELATIVE_ACCURACY
) -> dict[str, float | int | None]:
    """Every metric of one window from the partial rows of its partitions (any number).

    The reference of the ClickHouse view: over the rows with ``labelled > 0``, with
    ``n_i`` their ``labelled``, ``N = Σ n_i`` and ``w_i = n_i / N``, it uses only sums,
    arithmetic and, for the quantiles, the summed sketch. A formula over pairs is NULL
    (None) when ``N = 0``; ``residual_overflow`` and ``ape_overflow`` are summed.

    - ``mae = Σ w_i·abs_error_mean_i``, inf when ``residual_overflow > 0``.
    - ``mean_error = Σ w_i·error_mean_i``, NULL when ``residual_overflow > 0``.
    - with ``s = max rms_error_i`` and ``X = Σ w_i·(rms_error_i / s)²`` (0 if ``s = 0``):
      ``mse = (s·X)·s`` and ``rmse = s·√X``; inf when ``residual_overflow > 0``.
    - ``mape = Σ ((n_i − zero_targets_i) / N')·ape_mean_i``, ``N' = N − Σ zero_targets``;
      NULL when ``N' = 0``, inf when ``ape_overflow > 0``.
    - with ``c = lo/2 + hi/2`` for ``lo, hi`` the least and greatest ``target_mean_i``,
      ``a_i = (target_mean_i/2 − c/2) + target_mean_low_i/2`` (half the partition mean's
      offset from ``c``: exact when the means are close, and nothing overflows),
      ``ā = Σ w_i·a_i``: ``mean_target = c + 2ā``.
    - ``r2``, NULL when ``N < 2``. At half scale, ``d_i = a_i − ā`` and
      ``t = max(max target_std_i/2, max |d_i|)``. The target is constant when
      ``max target_std_i = 0`` and ``lo = hi``, or when ``t = 0`` (a spread below float64's
      resolution): then 1.0 when ``s = 0`` and ``residual_overflow = 0``, else 0.0.
      Otherwise ``r2 = 1 − ((X / T)·q)·q`` with ``q = (s/2) / t`` and
      ``T = Σ w_i·((target_std_i/2 / t)² + (d_i / t)²)`` (Chan's parallel formula for
      Σ(y − ȳ)² / N, divided by ``(2t)²``): ``Σe² / Σ(y − ȳ)²`` scaled so that nothing
      overflows unless the ratio does; −inf when ``residual_overflow > 0``.
    - ``residual_p<q>``: :func:`residual_quantile` of the ``sumMap`` of ``residual_sketch``.

    >>> a, b = RegressionWindow(), RegressionWindow()
    >>> a.add_labelled(np.array([1.0, 2.0]), np.array([1.5, 2.0]))
    >>> b.add_labelled(np.array([3.0]), np.array([2.0]))
    >>> m = metrics([a.row(), b.row()])
    >>> m["mae"], m["mean_error"], m["mean_target"], m["r2"]
    (0.5, -0.16666666666666666, 2.0, 0.375)
    """
    parts = [r for r in rows if r["labelled"] > 0]
    out: dict[str, float | int | None] = dict.fromkeys(METRICS)
    out["predictions"] = sum(int(r["predictions"]) for r in rows)
    n_total = sum(int(r["labelled"]) for r in parts)
    zeros = sum(int(r["zero_targets"]) for r in parts)
    out["labelled"], out["zero_targets"] = n_total, zeros
    sketch: dict[int, int] = {}
    for r in parts:
        for k, c in r["residual_sketch"].items():
            sketch[int(k)] = sketch.get(int(k), 0) + int(c)
    keys = sorted(sketch)
    for q in QUANTILES:
        out[f"residual_p{round(q * 100)}"] = residual_quantile(
            keys, [sketch[k] for k in keys], q, relative_accuracy
        )
    if n_total == 0:
        return out

    def col(name: str) -> np.ndarray:
        return np.array([float(r[name]) for r in parts])

    overflow = sum(int(r["residual_overflow"]) for r in parts) > 0
    n = col("labelled")
    w = n / n_total
    rms, std, mean = col("rms_error"), col("target_std"), col("target_mean")
    with np.errstate(over="ignore"):  # an overflow is inf, as in SQL
        s = float(rms.max())
        x = _total(w * ((rms / s) * (rms / s))) if s else 0.0
        if overflow:
            out["mae"] = out["mse"] = out["rmse"] = math.inf
        else:
            out["mae"] = _total(w * col("abs_error_mean"))
            out["mean_error"] = _total(w * col("error_mean"))
            out["mse"], out["rmse"] = (s * x) * s, s * math.sqrt(x)

        ratios = n_total - zeros
        if ratios and sum(int(r["ape_overflow"]) for r in parts):
            out["mape"] = math.inf
        elif ratios:
            out["mape"] = _total((n - col("zero_targets")) / ratios * col("ape_mean"))

        lo, hi = float(mean.min()), float(mean.max())
        c = 0.5 * lo + 0.5 * hi
        a = (0.5 * mean - 0.5 * c) + 0.5 * col("target_mean_low")
        a_bar = _total(w * a)
        out["mean_target"] = c + 2.0 * a_bar
        if n_total < 2:
            return out
        d, hs = a - a_bar, 0.5 * std  # halved
        t = max(float(hs.max()), float(np.abs(d).max()))
        if (std.max() == 0.0 and lo == hi) or t == 0.0:
            out["r2"] = 1.0 if not overflow and s == 0.0 else 0.0
            return out
        spread = _total(w * ((hs / t) * (hs / t) + (d / t) * (d / t)))
        q = 0.5 * s / t
        out["r2"] = -math.inf if overflow else 1.0 - ((x / spread) * q) * q
    return out


# --- the family ----------------------------------------------------------------------------

_DEFINITIONS = {
    "predictions": "number of predictions in the window, labelled or not",
    "labelled": "number of predictions joined with a label (a target) in the window",
    "zero_targets": "labelled pairs whose target is 0, left out of mape",
    "mae": "mean |y_pred - y_true|",
    "mse": "mean (y_pred - y_true)^2",
    "rmse": "sqrt(mse)",
    "mape": "mean |y_pred - y_true| / max(|y_true|, eps) over pairs with y_true != 0",
    "r2": "1 - sum (y_pred - y_true)^2 / sum (y_true - mean y_true)^2 (sklearn's r2_score)",
    "mean_error": "mean (y_pred - y_true): the bias, positive when predictions are too high",
    "mean_target": "mean y_true",
    "residual_p50": "median of y_pred - y_true, within relative error 0.01 (docs/metrics.md)",
    "residual_p90": "90th percentile of y_pred - y_true, within relative error 0.01",
    "residual_p99": "99th percentile of y_pred - y_true, within relative error 0.01",
}
_WINDOW = "model, model_version, segment, window_start"
#: The per-partition columns the view combines, in the order of its ``parts`` tuples.
_PART_COLUMNS = (
    "toFloat64(labelled)",
    "toFloat64(zero_targets)",
    "target_mean",
    "target_mean_low",
    "target_std",
    "error_mean",
    "abs_error_mean",
    "rms_error",
    "ape_mean",
)


def _quantile_sql(p: float, relative_accuracy: float) -> str:
    """:func:`residual_quantile` in SQL, over the summed sketch's sorted keys ``ks``, their
    cumulative counts ``cum`` and their total."""
    log_gamma, offset, overflow_index = sketch_constants(relative_accuracy)
    k = f"ks[arrayFirstIndex(c -> c > toUInt64(floor({p!r} * (total - 1))), cum)]"
    value = f"(1 + {relative_accuracy!r}) * exp((abs({k}) - {offset} - 1) * {log_gamma!r})"
    return (
        f"if(total = 0, NULL, multiIf({k} = 0, 0., abs({k}) >= {overflow_index},"
        f" sign({k}) * inf, sign({k}) * least({_MAX!r}, {value})))"
    )


class RegressionFamily(MetricFamily):
    """Regression models (a price, a demand forecast): errors, fit and residual quantiles of
    each window, from :class:`RegressionWindow` partials (see :func:`metrics`).

    Parameters
    ----------
    relative_accuracy
        ``α`` of the residual quantiles.

    >>> family = RegressionFamily()
    >>> family.accepts_label("regression", "12"), family.accepts_label("regression", "cat")
    (True, False)
    >>> family.error("regression", 10.0, "12")
    2.0
    """

    name: ClassVar[str] = "regression"
    tasks: ClassVar[frozenset[str]] = frozenset({"regression"})
    label_tasks: ClassVar[frozenset[str]] = tasks
    counts_predictions: ClassVar[bool] = True
    tables = (
        partial_table(
            "regression_partials",
            (
                Column("predictions", "UInt64"),
                Column("labelled", "UInt64"),
                Column("zero_targets", "UInt64"),
                Column("residual_overflow", "UInt64"),
                Column("ape_overflow", "UInt64"),
                Column("target_mean", "Float64"),
                Column("target_mean_low", "Float64"),
                Column("target_std", "Float64"),
                Column("error_mean", "Float64"),
                Column("abs_error_mean", "Float64"),
                Column("rms_error", "Float64"),
                Column("ape_mean", "Float64"),
                Column("residual_sketch", "Map(Int32, UInt64)"),
            ),
        ),
    )
    metrics = tuple(Metric("regression", name, _DEFINITIONS[name]) for name in METRICS)

    def __init__(self, relative_accuracy: float = DEFAULT_RELATIVE_ACCURACY) -> None:
        self.relative_accuracy = relative_accuracy

    def accumulator(self, counters: Counter[str]) -> RegressionWindow:
        return RegressionWindow(self.relative_accuracy)

    def accepts_label(self, task: str, label: Any) -> bool:
        return is_number(label)

    def score(self, prediction: Prediction) -> float | None:
        """The predicted value: its stream shifts when the model's outputs do."""
        return float(prediction.prediction)  # type: ignore[arg-type]

    def error(self, task: str, y_pred: Any, label: Any) -> float | None:
        """The absolute error."""
        return abs(float(y_pred) - float(label))

    def views(self, views: Views) -> list[str]:
        db = views.db
        parts = ", ".join(_PART_COLUMNS)
        names = ("ns", "zs", "hs", "ls", "sds", "bs", "maes", "rmss", "apes")
        columns = ",\n        ".join(
            f"arrayMap(p -> p.{i + 2}, parts) AS {name}" for i, name in enumerate(names)
        )
        quantiles = ",\n    ".join(
            f"{_quantile_sql(q, self.relative_accuracy)} AS residual_p{round(q * 100)}"
            for q in QUANTILES
        )
        long_rows = ",\n        ".join(
            f"('{m.name}', CAST({m.name} AS Nullable(Float64)))" for m in self.metrics
        )
        return [
            # Each partition's means combine by Chan's parallel formula (module docstring of
            # pipeline.estimators.regression, function metrics), the partitions in order.
            f"""CREATE OR REPLACE VIEW {db}.regression_windows AS
SELECT model, model_version, segment, window_start, window_end,
    n_predictions AS predictions, n_labelled AS labelled, n_zero AS zero_targets,
    if(n_labelled = 0, NULL, if(overflow > 0, inf,
        arraySum(arrayMap((w, v) -> w * v, ws, maes)))) AS mae,
    if(n_labelled = 0, NULL, if(overflow > 0, inf, (s * x) * s)) AS mse,
    if(n_labelled = 0, NULL, if(overflow > 0, inf, s * sqrt(x))) AS rmse,
    if(n_labelled = n_zero, NULL, if(n_ape_overflow > 0, inf,
        arraySum(arrayMap((n, z, a) -> (n - z) / (n_labelled - n_zero) * a, ns, zs, apes))))
        AS mape,
    if(n_labelled < 2, NULL,
        if((arrayMax(sds) = 0 AND lo = hi) OR t = 0, if(overflow = 0 AND s = 0, 1., 0.),
        if(overflow > 0, -inf, 1 - ((x / arraySum(arrayMap((w, sd, d) ->
            w * ((0.5 * sd / t) * (0.5 * sd / t) + (d / t) * (d / t)), ws, sds, ds)))
            * (0.5 * s / t)) * (0.5 * s / t)))) AS r2,
    if(n_labelled = 0 OR overflow > 0, NULL, arraySum(arrayMap((w, b) -> w * b, ws, bs)))
        AS mean_error,
    if(n_labelled = 0, NULL, c + 2 * abar) AS mean_target,
    {quantiles}
FROM (
    SELECT *,
        arrayMap(n -> n / n_labelled, ns) AS ws, arrayMax(rmss) AS s,
        if(s = 0, 0., arraySum(arrayMap((w, u) -> w * ((u / s) * (u / s)), ws, rmss))) AS x,
        arrayMin(hs) AS lo, arrayMax(hs) AS hi, 0.5 * lo + 0.5 * hi AS c,
        arrayMap((h, l) -> (0.5 * h - 0.5 * c) + 0.5 * l, hs, ls) AS avals,
        arraySum(arrayMap((w, a) -> w * a, ws, avals)) AS abar,
        arrayMap(a -> a - abar, avals) AS ds,
        greatest(0.5 * arrayMax(sds), arrayMax(arrayMap(d -> abs(d), ds))) AS t,
        arraySort(mapKeys(sketch)) AS ks, arrayCumSum(arrayMap(k -> sketch[k], ks)) AS cum,
        arraySum(mapValues(sketch)) AS total
    FROM (
        SELECT *,
        {columns}
        FROM (
            SELECT {_WINDOW}, max(window_end) AS window_end,
                sum(predictions) AS n_predictions, sum(labelled) AS n_labelled,
                sum(zero_targets) AS n_zero, sum(residual_overflow) AS overflow,
                sum(ape_overflow) AS n_ape_overflow,
                arraySort(groupArrayIf(tuple(partition, {parts}), labelled > 0)) AS parts,
                sumMap(residual_sketch) AS sketch
            FROM {db}.regression_partials FINAL
            GROUP BY {_WINDOW}
        )
    )
)""",
            f"""CREATE OR REPLACE VIEW {db}.regression_metrics AS
SELECT model, model_version, segment, window_start, window_end,
    kv.1 AS metric, kv.2 AS value
FROM {db}.regression_windows
ARRAY JOIN [
        {long_rows}
    ] AS kv""",
        ]

"""Input features of one window on one partition: mergeable summaries for drift and data quality.

Each feature gets counts (present, numeric, non-finite, text), an exact sum and sum of
squares, min/max, a sparse log-bucket sketch of its finite numeric values (DDSketch's
bucketing), capped category counts and, while there are few, the raw finite values. Partials
of the same window merge by plain summation (``min``/``max`` by min/max); the statistics that
compare a window with a reference live in :mod:`pipeline.estimators.drift`.

Bucketing (the same for every window and reference with the same relative accuracy ``α``):
with ``γ = (1 + α) / (1 − α)`` and ``k = ceil(log_γ |x|)``, a value ``x > 0`` lies in
``(γ^(k−1), γ^k]`` and gets index ``k + OFFSET``; ``x < 0`` gets ``−(k + OFFSET)``; ``0`` gets
index 0. ``OFFSET`` makes every positive index ≥ 1 (down to the smallest subnormal), so the
order of indices is the order of values. Any value of a bucket is within relative error ``α``
of the bucket's representative ``2γ^k / (γ + 1)``.

Vectors (1-d float arrays) become derived numeric features: ``<name>.norm`` (L2 norm),
``<name>.mean`` (mean of the components) and ``<name>.rp<k>`` for ``k < projections``, the
dot product with a fixed random unit vector drawn from
``np.random.default_rng([PROJECTION_SEED, len(vector)])`` (row ``k`` of a standard normal
``(projections, len)`` matrix, normalised), so it is the same in every process and run and
``rp<k>`` does not depend on ``projections``. An empty vector has ``.norm`` 0 and no other
derived value.
"""

from __future__ import annotations

import math
import zlib
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache
from itertools import chain
from typing import Any

import numpy as np

__all__ = [
    "OTHER",
    "PROJECTION_SEED",
    "Feature",
    "FeatureWindow",
    "bucket_bounds",
    "bucket_index",
    "cap_categories",
    "category_key",
]

Feature = float | str | None | np.ndarray

#: Key of the category counts that holds every value beyond the cap (reserved: a real
#: category named ``"__other__"`` is counted there too).
OTHER = "__other__"
#: First word of the seed of the random projections of vector features.
PROJECTION_SEED = 0x6D6F6E
#: Sums are kept as integers in units of 2**-1126: every float64 is an integer multiple of
#: that, so the sums are exact and do not depend on batching or merge order.
SUM_BITS = 1126
_SPLIT = 26  # mantissas are summed as two int64 halves of at most 27 bits each


def gamma_log(relative_accuracy: float) -> float:
    """``log(γ)`` of the buckets of relative accuracy ``α`` (see the module docstring)."""
    if not 0.0 < relative_accuracy < 1.0:
        raise ValueError(f"relative_accuracy must be in (0, 1), got {relative_accuracy!r}")
    return math.log((1.0 + relative_accuracy) / (1.0 - relative_accuracy))


def bucket_offset(log_gamma: float) -> int:
    """``OFFSET`` of the module docstring for ``log(γ)``."""
    smallest = math.log(math.ulp(0.0))  # the smallest positive subnormal
    return 1 - math.ceil(smallest / log_gamma)


def bucket_index(x: np.ndarray, relative_accuracy: float) -> np.ndarray:
    """Sketch bucket index (int64) of each finite value of ``x``; see the module docstring.

    >>> bucket_index(np.array([-1.0, 0.0, 1.0, 1.02, 1.03]), 0.01).tolist()
    [-37221, 0, 37221, 37222, 37223]
    """
    lg = gamma_log(relative_accuracy)
    x = np.asarray(x, dtype=np.float64)
    mag = np.abs(x)
    nonzero = mag > 0.0
    k = np.zeros(x.shape, dtype=np.int64)
    k[nonzero] = np.ceil(np.log(mag[nonzero]) / lg).astype(np.int64) + bucket_offset(lg)
    return np.where(x < 0.0, -k, k)


def bucket_bounds(index: np.ndarray, relative_accuracy: float) -> tuple[np.ndarray, np.ndarray]:
    """``(low, high)`` value bounds of each bucket index (both 0 for the zero bucket).

    Positive buckets are ``(low, high]``, negative ones ``[low, high)``; ``high`` of the top
    positive bucket may be ``inf``.

    >>> low, high = bucket_bounds(np.array([37221]), 0.01)
    >>> float(low[0]) < 1.0 <= float(high[0])
    True
    """
    lg = gamma_log(relative_accuracy)
    index = np.asarray(index, dtype=np.int64)
    k = (np.abs(index) - bucket_offset(lg)).astype(np.float64)
    with np.errstate(over="ignore"):
        inner, outer = np.exp((k - 1.0) * lg), np.exp(k * lg)
    low = np.where(index > 0, inner, np.where(index < 0, -outer, 0.0))
    high = np.where(index > 0, outer, np.where(index < 0, -inner, 0.0))
    return low, high


def category_key(category: str) -> tuple[int, str]:
    """Stable order of categories for the cap: CRC-32 of the UTF-8 bytes, then the string."""
    return zlib.crc32(category.encode("utf-8", "surrogatepass")), category


def cap_categories(counts: dict[str, int], cap: int) -> int:
    """Keep the ``cap`` categories of smallest :func:`category_key` in ``counts``.

    Removes the others from ``counts`` in place and returns their total count. Keeping the
    smallest keys (not the first or most frequent categories) makes the kept set and its
    counts exact under any batching and merge order: a category among the ``cap`` smallest
    keys of all categories seen was among the smallest of every part that saw it.

    >>> counts = {"a": 3, "b": 2, "c": 1}
    >>> cap_categories(counts, 2), sorted(counts)
    (3, ['b', 'c'])
    """
    if len(counts) <= cap:
        return 0
    dropped = sorted(counts, key=category_key)[cap:]
    return sum(counts.pop(c) for c in dropped)


#: ``np.frexp`` exponents of finite float64 values lie in [-1073, 1024]; shifted by this they
#: index a bincount.
EXP_BIAS = 1074
#: Per-exponent sums of the mantissa halves are accumulated in float64 by ``np.bincount``:
#: exact while every partial sum stays below 2**53, i.e. for up to 2**26 values per call.
_CHUNK = 1 << 25


def _exact_sum(x: np.ndarray) -> int:
    """Exact sum of finite float64 values, as an integer in units of 2**-SUM_BITS.

    Each value is ``m * 2**(e - 53)`` with an integer mantissa ``|m| < 2**53``; ``m`` is split
    into a high and a low half of at most 27 bits, and the halves are summed per exponent in
    float64, where integer sums below 2**53 are exact whatever the order. Only the distinct
    exponents meet Python integers.

    >>> _exact_sum(np.array([0.1, 0.2, -0.3])) / (1 << SUM_BITS) == (0.1 + 0.2 - 0.3)
    False
    >>> from fractions import Fraction
    >>> Fraction(_exact_sum(np.array([0.1, 0.2, -0.3])), 1 << SUM_BITS) == (
    ...     Fraction(0.1) + Fraction(0.2) - Fraction(0.3))
    True
    """
    if x.size == 0:
        return 0
    if x.size > _CHUNK:
        return sum(_exact_sum(x[i : i + _CHUNK]) for i in range(0, x.size, _CHUNK))
    mantissa, exponent = np.frexp(x)
    m = mantissa * 2.0**53  # integer-valued, exact: |m| < 2**53
    high = np.floor(m * 2.0**-_SPLIT)  # exact: a power-of-two scaling, then floor
    low = m - high * 2.0**_SPLIT  # exact, in [0, 2**_SPLIT)
    slot = exponent + EXP_BIAS
    highs = np.bincount(slot, weights=high)
    lows = np.bincount(slot, weights=low)
    used = np.flatnonzero((highs != 0.0) | (lows != 0.0))
    total = 0
    for s, h, lo in zip(
        used.tolist(),
        highs[used].astype(np.int64).tolist(),
        lows[used].astype(np.int64).tolist(),
        strict=True,
    ):
        total += ((h << _SPLIT) + lo) << (s - EXP_BIAS - 53 + SUM_BITS)
    return total


def exact_row_sums(m: np.ndarray) -> list[int]:
    """:func:`_exact_sum` of each row of a 2-d array of finite values, in one pass."""
    rows, n = m.shape
    if n == 0 or n > _CHUNK:
        return [_exact_sum(row) for row in m]
    mantissa, exponent = np.frexp(m)
    mm = mantissa * 2.0**53
    high = np.floor(mm * 2.0**-_SPLIT)
    low = mm - high * 2.0**_SPLIT
    stride = 2 * EXP_BIAS  # > every slot of one row
    slot = (exponent + EXP_BIAS) + (np.arange(rows, dtype=np.int64) * stride)[:, None]
    highs = np.bincount(slot.ravel(), weights=high.ravel(), minlength=rows * stride)
    lows = np.bincount(slot.ravel(), weights=low.ravel(), minlength=rows * stride)
    used = np.flatnonzero((highs != 0.0) | (lows != 0.0))
    totals = [0] * rows
    for u, h, lo in zip(
        used.tolist(),
        highs[used].astype(np.int64).tolist(),
        lows[used].astype(np.int64).tolist(),
        strict=True,
    ):
        r, s = divmod(u, stride)
        totals[r] += ((h << _SPLIT) + lo) << (s - EXP_BIAS - 53 + SUM_BITS)
    return totals


def _add_numeric_rows(
    stats: list[_Stats], m: np.ndarray, relative_accuracy: float, exact_max: int
) -> None:
    """``stats[i].add_numeric(m[i])`` for every row, with one numpy pass over the matrix
    when every value and square is finite (else row by row)."""
    with np.errstate(over="ignore"):
        squares = m * m
    if not (np.isfinite(m).all() and np.isfinite(squares).all()):
        for st, row in zip(stats, m, strict=True):
            st.add_numeric(row, relative_accuracy, exact_max)
        return
    k, n = m.shape
    sums = exact_row_sums(m)
    sq_sums = exact_row_sums(squares)
    lows = m.min(axis=1).tolist()
    highs = m.max(axis=1).tolist()
    index = np.sort(bucket_index(m, relative_accuracy), axis=1)
    starts = np.ones((k, n), dtype=bool)
    starts[:, 1:] = index[:, 1:] != index[:, :-1]
    flat_starts = np.flatnonzero(starts)
    counts = np.diff(np.r_[flat_starts, k * n])
    buckets = index.ravel()[flat_starts]
    bounds = np.searchsorted(flat_starts, np.arange(k + 1) * n).tolist()  # each row's buckets
    for i, st in enumerate(stats):
        st.present += n
        st.numeric += n
        st.sum_fixed += sums[i]
        st.sq_fixed += sq_sums[i]
        if lows[i] < st.min:
            st.min = lows[i]
        if highs[i] > st.max:
            st.max = highs[i]
        st.keep(m[i].copy(), exact_max)  # a row of its own, not a view holding all of m
        st.add_buckets(buckets[bounds[i] : bounds[i + 1]], counts[bounds[i] : bounds[i + 1]])


def _fixed_to_float(total: int) -> float:
    try:
        return total / (1 << SUM_BITS)  # int / int is correctly rounded
    except OverflowError:
        return math.inf if total > 0 else -math.inf


_FLOAT: frozenset[type] = frozenset({float})
_STR: frozenset[type] = frozenset({str})
#: Sketch parts a summary holds before merging them (see ``_Stats.parts``).
_MAX_PARTS = 8
_NO_BUCKETS = np.empty(0, dtype=np.int64)
_NO_BUCKETS.flags.writeable = False


def _float_array(chunks: list[Iterable[Any]]) -> np.ndarray:
    if len(chunks) == 1:
        return np.asarray(chunks[0], dtype=np.float64)
    return np.asarray(list(chain.from_iterable(chunks)), dtype=np.float64)


@lru_cache(maxsize=64)
def _projection(length: int, projections: int) -> np.ndarray:
    rng = np.random.default_rng([PROJECTION_SEED, length])
    g = rng.standard_normal((projections, length))
    g /= np.sqrt((g * g).sum(axis=1, keepdims=True))
    g.flags.writeable = False
    return g


class _Stats:
    """Summaries of one feature (the columns of one row, in mergeable form)."""

    __slots__ = (
        "categories",
        "kept",
        "max",
        "min",
        "nonfinite",
        "numeric",
        "other",
        "parts",
        "present",
        "sq_fixed",
        "sq_inf",
        "sum_fixed",
        "text",
        "values",
    )

    def __init__(self) -> None:
        self.present = 0
        self.numeric = 0
        self.nonfinite = 0
        self.text = 0
        self.sum_fixed = 0
        self.sq_fixed = 0
        self.sq_inf = False  # a square overflowed: sum_sq is inf
        self.min = math.inf
        self.max = -math.inf
        #: The sketch, as (bucket indices ascending, counts) int64 arrays: one pair once read,
        #: the pairs of the batches since then (merged when there are _MAX_PARTS).
        self.parts: list[tuple[np.ndarray, np.ndarray]] = []
        self.categories: dict[str, int] = {}
        self.other = 0
        #: The raw finite values in arrival order, as the arrays they came in (8 bytes a
        #: value, not a Python float's 32); None once more than ``exact_max`` came.
        self.values: list[np.ndarray] | None = []
        self.kept = 0

    def keep(self, finite: np.ndarray, exact_max: int) -> None:
        """Keep ``finite`` (which nothing else may change) while at most ``exact_max`` values
        were kept in all."""
        if self.values is not None:
            self.kept += finite.size
            if self.kept > exact_max:
                self.values = None
            else:
                self.values.append(finite)

    def _values(self) -> np.ndarray:
        return np.concatenate(self.values) if self.values else np.empty(0)

    def add_buckets(self, index: np.ndarray, counts: np.ndarray) -> None:
        """Count ``counts[j]`` values in bucket ``index[j]`` (ascending, distinct)."""
        self.parts.append((index, counts))
        if len(self.parts) >= _MAX_PARTS:
            self.sketch()

    def sketch(self) -> tuple[np.ndarray, np.ndarray]:
        """Bucket indices (ascending) and their counts."""
        parts = self.parts
        if len(parts) > 1:
            index = np.concatenate([i for i, _ in parts])
            counts = np.concatenate([c for _, c in parts])
            order = np.argsort(index, kind="stable")
            index, counts = index[order], counts[order]
            starts = np.flatnonzero(np.r_[True, index[1:] != index[:-1]])
            self.parts = parts = [(index[starts], np.add.reduceat(counts, starts))]
        return parts[0] if parts else (_NO_BUCKETS, _NO_BUCKETS)

    def add_numeric(self, x: np.ndarray, relative_accuracy: float, exact_max: int) -> None:
        n = x.size
        self.present += n
        self.numeric += n
        if n == 0:
            return
        finite_mask = np.isfinite(x)
        finite = x if finite_mask.all() else x[finite_mask]
        self.nonfinite += n - finite.size
        if finite.size == 0:
            return
        self.sum_fixed += _exact_sum(finite)
        with np.errstate(over="ignore"):
            squares = finite * finite
        fits = np.isfinite(squares)
        if not fits.all():
            self.sq_inf = True
            squares = squares[fits]
        self.sq_fixed += _exact_sum(squares)
        low, high = float(finite.min()), float(finite.max())
        if low < self.min:
            self.min = low
        if high > self.max:
            self.max = high
        index, count = np.unique(bucket_index(finite, relative_accuracy), return_counts=True)
        self.add_buckets(index, count.astype(np.int64, copy=False))
        self.keep(finite, exact_max)

    def add_text(self, values: list[str], max_categories: int) -> None:
        self.present += len(values)
        self.text += len(values)
        self.add_categories(Counter(values), 0, max_categories)

    def add_categories(self, counts: Mapping[str, int], other: int, cap: int) -> None:
        self.other += other + counts.get(OTHER, 0)
        for c, n in counts.items():
            if c != OTHER:
                self.categories[c] = self.categories.get(c, 0) + n
        self.other += cap_categories(self.categories, cap)

    def merge(self, o: _Stats, exact_max: int, max_categories: int) -> None:
        self.present += o.present
        self.numeric += o.numeric
        self.nonfinite += o.nonfinite
        self.text += o.text
        self.sum_fixed += o.sum_fixed
        self.sq_fixed += o.sq_fixed
        self.sq_inf |= o.sq_inf
        self.min = min(self.min, o.min)
        self.max = max(self.max, o.max)
        self.parts = [*self.parts, *o.parts]  # arrays are never changed: shared safely
        if len(self.parts) >= _MAX_PARTS:
            self.sketch()
        self.add_categories(o.categories, o.other, max_categories)
        if self.values is None or o.values is None:
            self.values = None
        else:
            self.values = [*self.values, *o.values]
            self.kept += o.kept
            if self.kept > exact_max:
                self.values = None

    def row(self, feature: str) -> dict[str, Any]:
        categories = dict(sorted(self.categories.items()))
        if self.other:
            categories[OTHER] = self.other
        return {
            "feature": feature,
            "present": self.present,
            "numeric": self.numeric,
            "nonfinite": self.nonfinite,
            "text": self.text,
            "sum": _fixed_to_float(self.sum_fixed),
            "sum_sq": math.inf if self.sq_inf else _fixed_to_float(self.sq_fixed),
            "min": self.min,
            "max": self.max,
            "sketch": dict(zip(*(a.tolist() for a in self.sketch()), strict=True)),
            "categories": categories,
            # stable: -0.0 and 0.0 stay in arrival order, as Python's sorted() keeps them
            "values": []
            if self.values is None
            else np.sort(self._values(), kind="stable").tolist(),
        }


class FeatureWindow:
    """Mergeable summaries of every feature of one window on one partition.

    Parameters
    ----------
    relative_accuracy
        ``α`` of the sketch buckets (module docstring); every window and reference that are
        compared must use the same value.
    max_categories
        Distinct string values kept per feature, those of smallest :func:`category_key`;
        the others are counted under ``"__other__"``.
    exact_max
        The raw finite numeric values of a feature are kept while there are at most this
        many (for exact statistics on small windows).
    projections
        Random projections per vector feature (``<name>.rp0`` ...).

    Examples
    --------
    >>> w = FeatureWindow(max_categories=1)
    >>> w.update([{"age": 31.0, "city": "Oslo"}, {"age": None, "city": "Rome"}, None])
    >>> rows = {r["feature"]: r for r in w.rows()}
    >>> rows["age"]["present"], rows["age"]["sum"], rows["age"]["values"]
    (1, 31.0, [31.0])
    >>> rows["city"]["text"], rows["city"]["categories"]
    (2, {'Oslo': 1, '__other__': 1})
    >>> other = FeatureWindow(max_categories=1)
    >>> other.merge(w); other.merge(w)
    >>> [r["present"] for r in other.rows()], other.events
    ([2, 4], 6)
    """

    def __init__(
        self,
        relative_accuracy: float = 0.01,
        max_categories: int = 100,
        exact_max: int = 1000,
        projections: int = 4,
    ) -> None:
        gamma_log(relative_accuracy)
        for name, value in (
            ("max_categories", max_categories),
            ("exact_max", exact_max),
            ("projections", projections),
        ):
            if int(value) < 0:
                raise ValueError(f"{name} must be >= 0, got {value!r}")
        self.relative_accuracy = float(relative_accuracy)
        self.max_categories = int(max_categories)
        self.exact_max = int(exact_max)
        self.projections = int(projections)
        #: Events folded in, with or without features (missing = events − present).
        self.events = 0
        self._stats: dict[str, _Stats] = {}

    def _get(self, feature: str) -> _Stats:
        stats = self._stats.get(feature)
        if stats is None:
            stats = self._stats[feature] = _Stats()
        return stats

    def update(self, features: Sequence[Mapping[str, Feature] | None]) -> None:
        """Fold in a batch of events' feature mappings (``None``: the event had none).

        Events with the same feature names in the same order (the usual case: one producer)
        are transposed into columns at C speed; a column of only floats or only strings goes
        to numpy or a counter whole, any other column value by value.
        """
        shapes: dict[tuple[str, ...], list[Iterable[Feature]]] = {}
        for event in features:
            if event:
                names = tuple(event)
                rows = shapes.get(names)
                if rows is None:
                    shapes[names] = [event.values()]
                else:
                    rows.append(event.values())
        self.events += len(features)
        numbers: dict[str, list[Iterable[Any]]] = {}
        texts: dict[str, list[Iterable[str]]] = {}
        vectors: dict[tuple[str, int], list[np.ndarray]] = {}
        for names, rows in shapes.items():
            for name, column in zip(names, zip(*rows, strict=True), strict=True):
                kinds = set(map(type, column))
                if kinds == _FLOAT:
                    numbers.setdefault(name, []).append(column)
                elif kinds == _STR:
                    texts.setdefault(name, []).append(column)
                else:
                    self._add_mixed(name, column, numbers, texts, vectors)
        arrays = {k: _float_array(v) for k, v in numbers.items()}
        for (name, length), vrows in vectors.items():
            for derived, x in self._derive(name, length, vrows):
                arrays[derived] = np.concatenate([arrays[derived], x]) if derived in arrays else x
        by_length: dict[int, list[str]] = {}
        for name, x in arrays.items():
            by_length.setdefault(x.size, []).append(name)
        for size, names in by_length.items():
            if len(names) == 1 or size == 0:
                for name in names:
                    self._get(name).add_numeric(
                        arrays[name], self.relative_accuracy, self.exact_max
                    )
            else:  # features present in the same events: one pass over them all
                _add_numeric_rows(
                    [self._get(name) for name in names],
                    np.stack([arrays[name] for name in names]),
                    self.relative_accuracy,
                    self.exact_max,
                )
        for name, t in texts.items():
            self._get(name).add_text(
                list(t[0]) if len(t) == 1 else list(chain.from_iterable(t)), self.max_categories
            )

    def _add_mixed(
        self,
        name: str,
        column: Iterable[Feature],
        numbers: dict[str, list[Iterable[Any]]],
        texts: dict[str, list[Iterable[str]]],
        vectors: dict[tuple[str, int], list[np.ndarray]],
    ) -> None:
        """One column of mixed types, value by value."""
        nums: list[Any] = []
        strs: list[str] = []
        for value in column:
            if type(value) is float:
                nums.append(value)
            elif value is None:
                self._get(name)
            elif isinstance(value, str):
                strs.append(value)
            elif isinstance(value, np.ndarray):
                vectors.setdefault((name, value.size), []).append(value)
            else:
                nums.append(value)
        if nums:
            numbers.setdefault(name, []).append(nums)
        if strs:
            texts.setdefault(name, []).append(strs)

    def _derive(
        self, name: str, length: int, rows: list[np.ndarray]
    ) -> Iterable[tuple[str, np.ndarray]]:
        """Derived numeric features of equal-length vectors.

        Only row-wise reductions over the last axis (no BLAS), so a vector's derived values
        do not depend on which other vectors share its batch.
        """
        m = np.stack(rows).astype(np.float64, copy=False)
        yield f"{name}.norm", np.sqrt((m * m).sum(axis=1))
        if length == 0:
            return
        yield f"{name}.mean", m.sum(axis=1) / length
        for k, unit in enumerate(_projection(length, self.projections)):
            yield f"{name}.rp{k}", (m * unit).sum(axis=1)

    def update_column(self, feature: str, values: Iterable[Feature]) -> None:
        """Fold in one feature's values of many events (e.g. a column of a reference file)."""
        if isinstance(values, np.ndarray) and values.dtype.kind in "fiu":
            self.events += values.size
            x = values.astype(np.float64).ravel()  # a copy: the summary keeps the values
            self._get(feature).add_numeric(x, self.relative_accuracy, self.exact_max)
        else:
            self.update([{feature: v} for v in values])

    def merge(self, other: FeatureWindow) -> None:
        """Add ``other``'s summaries (same ``relative_accuracy``) to this one."""
        if other.relative_accuracy != self.relative_accuracy:
            raise ValueError(
                f"relative_accuracy differs: {self.relative_accuracy} vs {other.relative_accuracy}"
            )
        self.events += other.events
        for name, stats in other._stats.items():
            self._get(name).merge(stats, self.exact_max, self.max_categories)

    def rows(self) -> list[dict[str, Any]]:
        """One row per feature seen (sorted by name), without key columns.

        ``min``/``max`` are ``inf``/``-inf`` when the feature has no finite numeric value;
        ``sum``/``sum_sq`` are the correctly rounded exact sums (``sum_sq`` is ``inf`` if a
        square overflowed); ``values`` are sorted, empty once past ``exact_max``.
        """
        return [s.row(name) for name, s in sorted(self._stats.items())]

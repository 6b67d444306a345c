"""FeatureWindow: exact merges under any batching, state round trips, caps and vectors."""

from __future__ import annotations

import itertools
import math
from copy import deepcopy
from typing import Any

import numpy as np
import orjson
import pytest

from pipeline.estimators.features import (
    OTHER,
    PROJECTION_SEED,
    FeatureWindow,
    bucket_bounds,
    bucket_index,
    category_key,
)


def make_events(rng: np.random.Generator, n: int) -> list[dict[str, Any] | None]:
    """Mixed events: normal, heavy-tailed and non-finite numbers, strings, vectors, gaps."""
    events: list[dict[str, Any] | None] = []
    for _ in range(n):
        if rng.random() < 0.05:
            events.append(None)
            continue
        e: dict[str, Any] = {"x": float(rng.normal(3.0, 2.0))}
        if rng.random() < 0.9:
            e["heavy"] = float(rng.standard_cauchy() * 1e6)
        if rng.random() < 0.1:
            e["x"] = [math.nan, math.inf, -math.inf, None][int(rng.integers(4))]
        e["city"] = f"c{int(rng.zipf(1.5)) % 40}"
        if rng.random() < 0.02:
            e["city"] = 7.0  # a number where strings are expected
        vec = rng.normal(size=int(rng.choice([3, 8, 0])))
        vec.flags.writeable = False
        e["emb"] = vec
        events.append(e)
    return events


def canonical(rows: list[dict[str, Any]]) -> bytes:
    """Rows as bytes with every float by its bits (so equality is bit for bit)."""

    def fix(v: Any) -> Any:
        if isinstance(v, float):
            return v.hex()
        if isinstance(v, dict):
            return {str(k): fix(x) for k, x in v.items()}
        if isinstance(v, list):
            return [fix(x) for x in v]
        return v

    return orjson.dumps([fix(r) for r in rows])


def split_points(rng: np.random.Generator, n: int, parts: int) -> list[int]:
    return [0, *sorted(rng.integers(0, n + 1, size=parts - 1).tolist()), n]


def accumulate(events: list[Any], cuts: list[int], **options: Any) -> FeatureWindow:
    w = FeatureWindow(**options)
    for a, b in itertools.pairwise(cuts):
        w.update(events[a:b])
    return w


OPTIONS = {"max_categories": 8, "exact_max": 300}


@pytest.mark.parametrize("seed", range(5))
def test_rows_identical_under_any_batching_and_merge_order(seed: int) -> None:
    rng = np.random.default_rng(seed)
    events = make_events(rng, 700)
    expected = canonical(accumulate(events, [0, 700], **OPTIONS).rows())
    assert canonical(accumulate(events, split_points(rng, 700, 9), **OPTIONS).rows()) == expected
    cuts = split_points(rng, 700, 5)
    parts = [
        accumulate(events[a:b], split_points(rng, b - a, 4), **OPTIONS)
        for a, b in itertools.pairwise(cuts)
    ]
    rng.shuffle(parts)
    merged = deepcopy(parts[0])
    for p in parts[1:]:
        merged.merge(p)
    assert canonical(merged.rows()) == expected
    assert merged.events == 700


def test_counts_sums_and_extremes_match_numpy() -> None:
    events = make_events(np.random.default_rng(3), 900)
    rows = {r["feature"]: r for r in accumulate(events, [0, 333, 900], **OPTIONS).rows()}
    x = [e["x"] for e in events if e and "x" in e]
    nums = np.array([v for v in x if v is not None], dtype=float)
    fin = nums[np.isfinite(nums)]
    r = rows["x"]
    assert r["present"] == len(nums) and r["numeric"] == len(nums) and r["text"] == 0
    assert r["nonfinite"] == int((~np.isfinite(nums)).sum()) > 0
    assert r["sum"] == math.fsum(fin) and r["sum_sq"] == math.fsum(fin * fin)
    assert (r["min"], r["max"]) == (fin.min(), fin.max())
    assert sum(r["sketch"].values()) == fin.size and r["values"] == []  # 800+ > exact_max
    idx, cnt = np.unique(bucket_index(fin, 0.01), return_counts=True)
    assert r["sketch"] == dict(zip(idx.tolist(), cnt.tolist(), strict=True))
    city = rows["city"]
    assert (city["numeric"], city["sum"], city["present"]) == (
        sum(1 for e in events if e and e["city"] == 7.0),
        7.0 * sum(1 for e in events if e and e["city"] == 7.0),
        sum(1 for e in events if e),
    )


def test_null_only_feature_gets_a_row_and_empty_extremes() -> None:
    w = FeatureWindow()
    w.update([{"a": None}, {"a": math.nan}, {}])
    (row,) = w.rows()
    assert (row["present"], row["numeric"], row["nonfinite"]) == (1, 1, 1)
    assert (row["min"], row["max"], row["sum"], row["sketch"]) == (math.inf, -math.inf, 0.0, {})
    assert w.events == 3


def test_sums_are_exact_at_extremes() -> None:
    w = FeatureWindow()
    w.update([{"a": v} for v in (1e308, 1e308, -1e308, 5e-324, 1e-300, -0.0)])
    (row,) = w.rows()
    assert row["sum"] == 1e308  # the exact sum, 1e308 + 1e-300 + 5e-324, rounded
    assert row["sum_sq"] == math.inf  # (1e308)**2 overflows
    w2 = FeatureWindow()
    w2.update([{"a": 1e308}, {"a": 1e308}])
    assert w2.rows()[0]["sum"] == math.inf


def test_exact_values_dropped_past_exact_max() -> None:
    a, b = FeatureWindow(exact_max=10), FeatureWindow(exact_max=10)
    a.update([{"v": float(i)} for i in range(6)])
    b.update([{"v": float(i)} for i in range(6, 10)])
    merged = deepcopy(a)
    merged.merge(b)
    assert merged.rows()[0]["values"] == [float(i) for i in range(10)]
    merged.merge(b)
    assert merged.rows()[0]["values"] == []
    a.update([{"v": float(i)} for i in range(5)])
    assert a.rows()[0]["values"] == []


def test_exact_values_are_pythons_sorted_of_what_came() -> None:
    """Kept values are sorted as Python's ``sorted`` sorts them: equal values (0.0 and -0.0)
    in the order they came, over batches, both numeric paths, states and merges."""
    rng = np.random.default_rng(5)
    came: list[float] = []
    came_other: list[float] = []
    w, other = FeatureWindow(exact_max=400), FeatureWindow(exact_max=400)
    for batch in range(6):
        x = rng.integers(-2, 3, size=30) * 0.5
        x[rng.random(30) < 0.3] = -0.0
        came += x.tolist()
        if batch % 2:  # the matrix path: two features present in the same events
            w.update([{"v": float(v), "u": 1.0} for v in x])
        else:
            w.update_column("v", x)
            x[:] = 7.0  # the caller's array stays the caller's
        later = rng.integers(-1, 2, size=10) * -0.0
        came_other += later.tolist()
        other.update_column("v", later)
    w.merge(other)
    got = {r["feature"]: r for r in w.rows()}["v"]["values"]
    want = sorted(came + came_other)
    assert [(v, math.copysign(1.0, v)) for v in got] == [(v, math.copysign(1.0, v)) for v in want]


def test_categories_keep_the_smallest_keys_with_exact_counts() -> None:
    rng = np.random.default_rng(11)
    cats = [f"k{int(i)}" for i in rng.integers(0, 30, size=2000)] + [OTHER] * 3
    w = FeatureWindow(max_categories=5)
    w.update([{"c": c} for c in cats])
    row = w.rows()[0]
    names, counts = np.unique([c for c in cats if c != OTHER], return_counts=True)
    kept = sorted(names.tolist(), key=category_key)[:5]
    full = dict(zip(names.tolist(), counts.tolist(), strict=True))
    assert row["categories"] == {c: full[c] for c in sorted(kept)} | {
        OTHER: len(cats) - sum(full[c] for c in kept)
    }
    assert len(row["categories"]) == 6 and row["text"] == len(cats)


def test_vectors_become_derived_numeric_features() -> None:
    rng = np.random.default_rng(5)
    vecs = [rng.normal(size=6) for _ in range(20)]
    w = FeatureWindow(projections=3, exact_max=100)
    w.update([{"emb": v} for v in vecs] + [{"emb": np.zeros(0)}])
    rows = {r["feature"]: r for r in w.rows()}
    assert sorted(rows) == ["emb.mean", "emb.norm", "emb.rp0", "emb.rp1", "emb.rp2"]
    g = np.random.default_rng([PROJECTION_SEED, 6]).standard_normal((3, 6))
    units = g / np.linalg.norm(g, axis=1, keepdims=True)
    m = np.stack(vecs)
    expect = {
        "emb.norm": np.r_[np.linalg.norm(m, axis=1), 0.0],
        "emb.mean": m.mean(axis=1),
        **{f"emb.rp{k}": m @ units[k] for k in range(3)},
    }
    for name, values in expect.items():
        np.testing.assert_allclose(rows[name]["values"], np.sort(values), rtol=1e-12, atol=1e-14)
    assert rows["emb.norm"]["present"] == 21 and rows["emb.mean"]["present"] == 20
    # the same unit vectors for every projection count, in every process
    w4 = FeatureWindow(projections=4, exact_max=100)
    w4.update([{"emb": v} for v in vecs])
    assert {r["feature"]: r for r in w4.rows()}["emb.rp2"]["values"] == rows["emb.rp2"]["values"]


def test_bucket_relative_accuracy_and_order() -> None:
    rng = np.random.default_rng(2)
    x = np.concatenate([rng.lognormal(0, 20, 5000), -rng.lognormal(0, 20, 5000), [0.0]])
    x = x[np.isfinite(x)]
    for alpha in (0.01, 0.05):
        idx = bucket_index(x, alpha)
        low, high = bucket_bounds(idx, alpha)
        gamma = (1 + alpha) / (1 - alpha)
        rep = np.where(idx > 0, 2 * high / (gamma + 1), np.where(idx < 0, 2 * low / (gamma + 1), 0))
        np.testing.assert_array_less(np.abs(rep - x), alpha * np.abs(x) * (1 + 1e-12) + 1e-300)
        assert np.all(np.diff(idx[np.argsort(x)]) >= 0)
        small, big = np.minimum(abs(low), abs(high)), np.maximum(abs(low), abs(high))
        assert np.all((abs(x) >= small * (1 - 1e-12)) & (abs(x) <= big * (1 + 1e-12)))
    with pytest.raises(ValueError):
        FeatureWindow(relative_accuracy=1.5)


@pytest.mark.parametrize("special", [None, math.nan, math.inf, 1e200, 5e-324])
def test_features_of_the_same_events_summed_together_equal_each_alone(special: Any) -> None:
    """Features present in the same events are summarised in one pass over all of them; the
    rows equal those of each feature summarised on its own, bit for bit."""
    rng = np.random.default_rng(11)
    data = {
        f"f{i}": rng.standard_cauchy(300) * 10.0 ** float(rng.integers(-5, 5)) for i in range(6)
    }
    if special is not None:
        data["f3"][7] = special
    events = [{name: float(x[j]) for name, x in data.items()} for j in range(300)]
    together = FeatureWindow(exact_max=500)
    together.update(events[:120])
    together.update(events[120:])
    alone = FeatureWindow(exact_max=500)
    for name, x in data.items():
        alone.update_column(name, x[:120])
        alone.update_column(name, x[120:])
    alone.events = together.events
    assert canonical(together.rows()) == canonical(alone.rows())
    exact = {n: (st.sum_fixed, st.sq_fixed) for n, st in together._stats.items()}
    assert exact == {n: (st.sum_fixed, st.sq_fixed) for n, st in alone._stats.items()}

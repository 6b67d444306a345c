"""The quality views in a real chDB, against scikit-learn on the concatenated data."""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Mapping, Sequence
from copy import deepcopy
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    log_loss,
    precision_recall_fscore_support,
    roc_auc_score,
)

from pipeline.estimators.classification import ClassificationFamily, ClassificationWindow
from pipeline.estimators.family import Predictions, Views
from pipeline.estimators.registry import names

FAMILY = ClassificationFamily()
METRICS = names("classification")


def ddl(db: str) -> list[str]:
    """The family's tables and views, alone."""
    tables = [s for t in FAMILY.tables for s in t.ddl(db)]
    return [*tables, *FAMILY.views(Views(db, (FAMILY,), {}))]


DB = "q_test"
BINS = 200
T0 = datetime(2026, 11, 2, 12, 0, tzinfo=UTC)
Batch = tuple[list[str], list[str], list[dict[str, float] | None]]


@pytest.fixture(scope="module")
def ch(chdb: Any) -> Iterator[Any]:
    chdb.command(f"CREATE DATABASE IF NOT EXISTS {DB}")
    for _ in range(2):  # idempotent
        for statement in ddl(DB):
            chdb.command(statement)
    yield chdb


def make_batch(rng: np.random.Generator, n: int, classes: Sequence[str]) -> Batch:
    k = len(classes)
    truth = rng.integers(k, size=n)
    alpha = np.ones((n, k))
    alpha[np.arange(n), truth] += 2.0
    g = rng.gamma(alpha)
    p = g / g.sum(axis=1, keepdims=True)
    pred = np.where(rng.random(n) < 0.8, p.argmax(axis=1), rng.integers(k, size=n))
    proba = [
        None if rng.random() < 0.15 else {classes[j]: float(p[i, j]) for j in range(k)}
        for i in range(n)
    ]
    return [classes[i] for i in truth], [classes[i] for i in pred], proba


def insert(
    ch: Any, model: str, start: datetime, partition: int, version: int, w: ClassificationWindow
) -> None:
    key = {
        "model": model,
        "model_version": "v1",
        "segment": "all",
        "window_start": start,
        "window_end": start + timedelta(minutes=1),
        "partition": partition,
        "version": version,
    }
    window, classes = w.partials()
    row = key | window
    ch.insert(f"{DB}.quality_partials", [list(row.values())], column_names=list(row))
    if classes:
        rows = [key | c for c in classes]
        ch.insert(
            f"{DB}.quality_class_partials",
            [list(r.values()) for r in rows],
            column_names=list(rows[0]),
        )


def load(
    ch: Any, model: str, start: datetime, parts: Sequence[Batch], unlabelled: int = 0
) -> Batch:
    """One accumulator per partition (the first fed in two steps) plus a stale version-1 row
    inserted last, which FINAL must discard. Returns the concatenated batch."""
    for partition, (y_true, y_pred, proba) in enumerate(parts):
        w = ClassificationWindow(auc_bins=BINS)
        w.add_predictions(Predictions("multiclass", *([None] * (len(y_true) + unlabelled),) * 5))
        half = len(y_true) // 2
        w.add_labelled(y_true[:half], y_pred[:half], proba[:half])
        stale = deepcopy(w)
        w.add_labelled(y_true[half:], y_pred[half:], proba[half:])
        insert(ch, model, start, partition, 5, w)
        if partition == 0:
            insert(ch, model, start, partition, 1, stale)
    y_true, y_pred, proba = ([x for p in parts for x in p[i]] for i in range(3))
    return y_true, y_pred, proba


def query(ch: Any, sql: str) -> list[dict[str, Any]]:
    result = ch.query(sql)
    return [dict(zip(result.column_names, r, strict=True)) for r in result.result_rows]


def reference(
    y_true: list[str], y_pred: list[str], proba: Sequence[Mapping[str, float] | None]
) -> dict[str, Any]:
    """scikit-learn's numbers, exact AUCs and the binning error bound of each class."""
    labels = sorted(set(y_true) | set(y_pred))
    out: dict[str, Any] = {"labels": labels, "classes": {}}
    if labels:
        out["accuracy"] = accuracy_score(y_true, y_pred)
        p, r, f, s = precision_recall_fscore_support(
            y_true, y_pred, labels=labels, average=None, zero_division=0
        )
        out["classes"] = {c: (p[i], r[i], f[i], s[i]) for i, c in enumerate(labels)}
        out["macro"] = precision_recall_fscore_support(
            y_true, y_pred, labels=labels, average="macro", zero_division=0
        )[:3]
    scored = [t for t, d in zip(y_true, proba, strict=True) if d]
    out["auc"] = {}
    if scored:
        universe = sorted(set(labels) | {c for d in proba if d for c in d})
        matrix = np.array([[d.get(c, 0.0) for c in universe] for d in proba if d])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            out["log_loss"] = log_loss(scored, matrix, labels=universe)
        for j, c in enumerate(universe):
            y = np.array(scored) == c
            if y.any() and not y.all():
                b = np.minimum((matrix[:, j] * BINS).astype(np.int64), BINS - 1)
                pos, neg = np.bincount(b[y], minlength=BINS), np.bincount(b[~y], minlength=BINS)
                bound = 0.5 * float(pos @ neg) / (y.sum() * (~y).sum())
                out["auc"][c] = (roc_auc_score(y, matrix[:, j]), bound)
    return out


def check(ch: Any, model: str, start: datetime, batch: Batch, predictions: int) -> dict[str, Any]:
    y_true, y_pred, proba = batch
    ref = reference(y_true, y_pred, proba)
    [w] = query(
        ch,
        f"SELECT * FROM {DB}.quality_windows WHERE model = '{model}' "
        f"AND window_start = '{start:%Y-%m-%d %H:%M:%S}'",
    )
    assert (w["predictions"], w["labelled"]) == (predictions, len(y_true))
    if not y_true:
        assert w["accuracy"] is None and w["macro_f1"] is None
    else:
        assert w["accuracy"] == pytest.approx(ref["accuracy"], abs=1e-9)
        got = (w["macro_precision"], w["macro_recall"], w["macro_f1"])
        assert got == pytest.approx(ref["macro"], abs=1e-9)
    if "log_loss" in ref:
        assert w["log_loss"] == pytest.approx(ref["log_loss"], abs=1e-9)
    else:
        assert w["log_loss"] is None

    classes = {
        r["class"]: r
        for r in query(
            ch,
            f"SELECT * FROM {DB}.quality_classes WHERE model = '{model}' "
            f"AND window_start = '{start:%Y-%m-%d %H:%M:%S}'",
        )
    }
    for c, (p, r, f, s) in ref["classes"].items():
        got = classes[c]
        assert (got["precision"], got["recall"], got["f1"]) == pytest.approx((p, r, f), abs=1e-9)
        assert got["support"] == s
    for c, row in classes.items():
        if c in ref["auc"]:
            exact, bound = ref["auc"][c]
            assert row["roc_auc_error_bound"] == pytest.approx(bound, abs=1e-12)
            assert abs(row["roc_auc"] - exact) <= bound + 1e-9
        else:
            assert row["roc_auc"] is None

    if not ref["auc"]:
        assert w["roc_auc"] is None
    elif set(classes) <= {"0", "1"}:
        exact, bound = ref["auc"]["1"]
        assert abs(w["roc_auc"] - exact) <= bound + 1e-9
    else:
        exact = np.mean([a for a, _ in ref["auc"].values()])
        bound = np.mean([b for _, b in ref["auc"].values()])
        assert abs(w["roc_auc"] - exact) <= bound + 1e-9
    return w


def test_multiclass_across_partitions(ch: Any) -> None:
    rng = np.random.default_rng(1)
    # The last partition never sees class "c": its events still count as negatives of "c".
    parts = [make_batch(rng, 300, "abc"), make_batch(rng, 250, "abc"), make_batch(rng, 200, "ab")]
    batch = load(ch, "multi", T0, parts, unlabelled=4)
    w = check(ch, "multi", T0, batch, predictions=750 + 12)
    y_true, _, proba = batch
    scored = [(t, d) for t, d in zip(y_true, proba, strict=True) if d]
    matrix = np.array([[d.get(c, 0.0) for c in "abc"] for _, d in scored])
    ovr = roc_auc_score([t for t, _ in scored], matrix, multi_class="ovr", labels=list("abc"))
    assert w["roc_auc"] == pytest.approx(ovr, abs=0.01)


def test_binary_score_only_across_partitions(ch: Any) -> None:
    rng = np.random.default_rng(2)
    parts = []
    for n in (400, 333):
        y = rng.integers(2, size=n)
        s = np.clip(rng.normal(0.35 + 0.3 * y, 0.2), 0.0, 1.0)
        proba = [{"1": float(v), "0": 1.0 - float(v)} for v in s]
        parts.append(([str(v) for v in y], [str(int(v >= 0.5)) for v in s], proba))
    batch = load(ch, "binary", T0, parts)
    check(ch, "binary", T0, batch, predictions=733)


def test_auc_exact_on_bin_centres(ch: Any) -> None:
    rng = np.random.default_rng(3)
    parts = []
    for n in (150, 170):
        y = rng.integers(2, size=n)
        s = (np.clip(rng.integers(BINS, size=n) + 40 * y, 0, BINS - 1) + 0.5) / BINS
        proba = [{"1": float(v), "0": float(1.0 - v)} for v in s]
        parts.append(([str(v) for v in y], ["1"] * n, proba))
    y_true, _, proba = load(ch, "centres", T0, parts)
    [w] = query(ch, f"SELECT roc_auc FROM {DB}.quality_windows WHERE model = 'centres'")
    s = np.array([d["1"] for d in proba if d])
    assert w["roc_auc"] == pytest.approx(roc_auc_score(np.array(y_true) == "1", s), abs=1e-9)


def test_adversarial_windows(ch: Any) -> None:
    starts = [T0 + timedelta(minutes=i) for i in range(5)]
    cases: list[list[Batch]] = [
        [
            (["1"] * 3, ["1", "0", "1"], [{"1": 0.9, "0": 0.1}, {"1": 0.3, "0": 0.7}, None]),
            (["1"] * 2, ["1", "1"], [{"1": 0.8, "0": 0.2}, {"1": 0.6, "0": 0.4}]),
        ],  # one class
        [([], [], []), ([], [], [])],  # predictions only
        [(["a", "b"], ["a", "a"], [None, None]), (["c"], ["b"], [None])],  # no probabilities
        [
            (
                ["a", "b", "x"],
                ["a", "only", "b"],
                [{"a": 0.7, "b": 0.3}, {"b": 0.9, "a": 0.1}, {"a": 0.2, "b": 0.3, "x": 0.5}],
            ),
            (["b", "x"], ["b", "b"], [{"b": 0.6, "x": 0.4}, {"x": 1.0}]),
        ],  # never predicted: x
        [(["0", "1", "1"], ["0", "1", "0"], [{"1": 0.2}, {"1": 0.7}, {"1": 0.45, "0": 0.55}])],
    ]
    for start, parts in zip(starts, cases, strict=True):
        batch = load(ch, "adversarial", start, parts, unlabelled=2)
        check(ch, "adversarial", start, batch, predictions=len(batch[0]) + 2 * len(parts))
    rows = query(
        ch, f"SELECT * FROM {DB}.quality_windows WHERE model = 'adversarial' ORDER BY window_start"
    )
    assert [r["window_start"].replace(tzinfo=UTC) for r in rows] == starts
    one_class, empty, unscored = rows[0], rows[1], rows[2]
    assert one_class["roc_auc"] is None and one_class["accuracy"] == pytest.approx(0.8)
    assert empty["labelled"] == 0 and empty["predictions"] == 4
    assert all(empty[m] is None for m in METRICS if m not in ("predictions", "labelled"))
    assert unscored["log_loss"] is None and unscored["roc_auc"] is None


def test_long_view_has_every_registered_metric(ch: Any) -> None:
    rng = np.random.default_rng(4)
    load(ch, "long", T0, [make_batch(rng, 50, "ab"), make_batch(rng, 40, "abc")])
    rows = query(
        ch, f"SELECT * FROM {DB}.quality_metrics WHERE model = 'long' ORDER BY window_start, metric"
    )
    assert {r["metric"] for r in rows} == set(names("classification")) == set(METRICS)
    assert len(rows) == len(METRICS)
    [wide] = query(ch, f"SELECT * FROM {DB}.quality_windows WHERE model = 'long'")
    for r in rows:
        assert r["value"] == pytest.approx(wide[r["metric"]], abs=1e-12)
    all_metrics = {
        r[0] for r in ch.query(f"SELECT DISTINCT metric FROM {DB}.quality_metrics").result_rows
    }
    assert all_metrics == set(names("classification"))


def test_view_columns(ch: Any) -> None:
    def columns(view: str) -> list[str]:
        return [r[0] for r in ch.query(f"DESCRIBE {DB}.{view}").result_rows]

    assert columns("quality_windows") == [
        "model",
        "model_version",
        "segment",
        "window_start",
        "window_end",
        *METRICS,
    ]
    assert columns("quality_metrics") == [
        "model",
        "model_version",
        "segment",
        "window_start",
        "window_end",
        "metric",
        "value",
    ]
    assert columns("quality_classes") == [
        "model",
        "model_version",
        "segment",
        "window_start",
        "window_end",
        "class",
        "tp",
        "fp",
        "fn",
        "support",
        "precision",
        "recall",
        "f1",
        "roc_auc",
        "roc_auc_error_bound",
    ]

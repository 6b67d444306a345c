"""The regression views in a real chDB give exactly what the reference combination of the
partial rows (:func:`pipeline.estimators.regression.metrics`) gives, bit for bit, on every
data set of the estimator's tests: the formulas are written once in SQL, checked here."""

from __future__ import annotations

import math
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pytest

from pipeline.estimators.family import Views
from pipeline.estimators.regression import METRICS, RegressionFamily, metrics
from tests.unit.test_regression import DATA, make_data, partition_rows

DB = "regression_sql"
FAMILY = RegressionFamily()
START = 1_700_000_040_000


@pytest.fixture(scope="module")
def ch(chdb: Any) -> Iterator[Any]:
    chdb.command(f"CREATE DATABASE IF NOT EXISTS {DB}")
    statements = [s for t in FAMILY.tables for s in t.ddl(DB)]
    for statement in [*statements, *FAMILY.views(Views(DB, (FAMILY,), {}))]:
        chdb.command(statement)
    yield chdb


def store(ch: Any, model: str, rows: list[dict[str, Any]]) -> None:
    """The rows as partitions 0..n of one window of ``model``, each also once with a lower
    version (a stale partial FINAL must drop)."""
    table = FAMILY.tables[0]
    out = []
    for partition, row in enumerate(rows):
        key = {
            "model": model,
            "model_version": "",
            "segment": "",
            "window_start": START,
            "window_end": START + 60_000,
            "partition": partition,
        }
        stale = {**row, "labelled": 0, "residual_sketch": {}, "predictions": 0}
        for version, values in ((1, stale), (2, row)):
            full = key | values | {"version": version}
            table.check(full)
            out.append([_value(c, full[c]) for c in table.written])
    ch.insert(f"{DB}.{table.name}", out, column_names=list(table.written))


def _value(column: str, value: Any) -> Any:
    if column.startswith("window_"):
        return datetime.fromtimestamp(value / 1000, UTC)
    return value


@pytest.mark.parametrize("name", DATA)
@pytest.mark.parametrize("parts", [1, 3, 16])
def test_the_view_equals_the_reference_bit_for_bit(ch: Any, name: str, parts: int) -> None:
    y, p = make_data(name)
    rows = partition_rows(y, p, parts, np.random.default_rng(parts))
    model = f"{name}-{parts}"
    store(ch, model, rows)
    result = ch.query(f"SELECT * FROM {DB}.regression_windows WHERE model = '{model}'")
    (got,) = [dict(zip(result.column_names, r, strict=True)) for r in result.result_rows]
    expected = metrics(rows)
    for m in METRICS:
        a, b = got[m], expected[m]
        if isinstance(b, float) and math.isnan(b):
            assert a is None or math.isnan(a), (m, a, b)
        else:
            assert a == b, (name, parts, m, a, b)
    long = ch.query(
        f"SELECT metric, value FROM {DB}.regression_metrics WHERE model = '{model}'"
    ).result_rows
    assert [m for m, _ in long] == list(METRICS)


def test_an_empty_window_is_null_but_for_its_counts(ch: Any) -> None:
    from pipeline.estimators.regression import RegressionWindow

    store(ch, "empty", [RegressionWindow().row()])
    result = ch.query(f"SELECT * FROM {DB}.regression_windows WHERE model = 'empty'")
    (got,) = [dict(zip(result.column_names, r, strict=True)) for r in result.result_rows]
    assert (got["predictions"], got["labelled"]) == (0, 0)
    assert all(got[m] is None for m in METRICS[3:]), got

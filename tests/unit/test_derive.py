"""The sink's derive step on a real chDB: which reference each window gets, and that a window
is never part of its own reference."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipeline.estimators.drift import Summary, psi
from pipeline.estimators.features import FeatureWindow
from pipeline.settings import Settings
from pipeline.sink.clickhouse import ClickHouseSink
from pipeline.sink.derive import Deriver

MINUTE = 60_000
T0 = 1_700_000_040_000


def partials(window_start: int, values: np.ndarray) -> list[dict]:
    window = FeatureWindow()
    window.update([{"x": float(v)} for v in values])
    key = {
        "model": "m",
        "model_version": "v",
        "segment": "",
        "window_start": window_start,
        "window_end": window_start + MINUTE,
        "partition": 0,
        "version": len(values),
    }
    return [key | row for row in window.rows()]


@pytest.fixture
def sink(chdb_path: Path, request: pytest.FixtureRequest) -> ClickHouseSink:
    sink = ClickHouseSink(f"chdb://{chdb_path}", f"derive_{request.node.name[5:30]}")
    sink.migrate()
    rng = np.random.default_rng(0)
    rows = []
    for k in range(6):  # six windows; the last two shifted
        rows += partials(T0 + k * MINUTE, rng.normal(3.0 if k >= 4 else 0.0, 1.0, 2000))
    sink.insert("feature_partials", rows)
    return sink


def decisions(sink: ClickHouseSink, settings: Settings) -> dict[int, tuple[str, int, float]]:
    out = Deriver(sink, settings).rederive([("m", "v")])
    psis = {r["window_start"]: r["statistic"] for r in out["drift"] if r["method"] == "psi"}
    return {
        r["window_start"]: (r["reference"], r["drifted"], psis[r["window_start"]])
        for r in out["drift"]
        if r["method"] == "decision"
    }


def test_previous_windows_are_the_default_reference(sink: ClickHouseSink) -> None:
    got = decisions(sink, Settings.load(env={}, overrides={"drift_previous_windows": 2}))
    assert T0 not in got  # the first window has nothing before it
    assert {ref for ref, _, _ in got.values()} == {"previous:2"}
    assert [got[T0 + k * MINUTE][1] for k in range(1, 6)] == [0, 0, 0, 1, 1]


def test_a_fixed_range_never_includes_the_window_itself(sink: ClickHouseSink) -> None:
    start, end = T0 / 1000, (T0 + 3 * MINUTE) / 1000
    settings = Settings.load(env={}, overrides={"drift_reference_range": f"{start}/{end}"})
    got = decisions(sink, settings)
    assert {ref for ref, _, _ in got.values()} == {f"range:{start}/{end}"}
    assert [got[T0 + k * MINUTE][1] for k in range(6)] == [0, 0, 0, 0, 1, 1]
    # A window inside the range is compared with the range's other windows only.
    _, rows = sink.query(
        "SELECT toUnixTimestamp64Milli(window_start), feature, present, numeric, nonfinite, "
        "text, sum, sum_sq, min, max, sketch, categories, values FROM feature_partials FINAL"
    )
    columns = (
        "feature",
        "present",
        "numeric",
        "nonfinite",
        "text",
        "sum",
        "sum_sq",
        "min",
        "max",
        "sketch",
        "categories",
        "values",
    )
    by_start = {r[0]: dict(zip(columns, r[1:], strict=True)) for r in rows}
    window = Summary.from_rows([by_start[T0 + MINUTE]])
    others = Summary.from_rows([by_start[T0], by_start[T0 + 2 * MINUTE]])
    assert got[T0 + MINUTE][2] == psi(window, others).statistic

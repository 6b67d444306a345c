"""The sink's derive step on a real chDB: which reference each window gets, and that a window
is never part of its own reference."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from pipeline.estimators.drift import Summary, psi
from pipeline.estimators.features import FeatureWindow
from pipeline.partition import PartitionState
from pipeline.reference import profile_rows
from pipeline.settings import Settings
from pipeline.sink.clickhouse import ClickHouseSink
from pipeline.sink.derive import CHUNK_STARTS, Deriver, window_of
from schemas.events import Prediction

ROOT = Path(__file__).resolve().parents[2]
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
    drift = [
        r for chunk in Deriver(sink, settings).rederive([("m", "v")]) for r in chunk["drift_rows"]
    ]
    psis = {r["window_start"]: r["statistic"] for r in drift if r["method"] == "psi"}
    return {
        r["window_start"]: (r["reference"], r["drifted"], psis[r["window_start"]])
        for r in drift
        if r["method"] == "decision"
    }


def test_rows_come_a_few_window_starts_at_a_time(sink: ClickHouseSink) -> None:
    """A derive over many windows (a new profile, a sink catching up) holds the rows of
    ``CHUNK_STARTS`` window starts at once, never all of them."""
    chunks = list(Deriver(sink, Settings.load(env={})).rederive([("m", "v")]))
    starts = [{r["window_start"] for r in chunk["data_quality_rows"]} for chunk in chunks]
    assert [len(s) for s in starts] == [CHUNK_STARTS, 6 - CHUNK_STARTS]
    assert starts[0] | starts[1] == {T0 + k * MINUTE for k in range(6)}


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


def test_client_activity_finds_the_prober_and_the_burst(chdb_path: Path) -> None:
    """Client rows from the compute stage's own state, derived on chDB, against numpy."""
    sink = ClickHouseSink(f"chdb://{chdb_path}", "derive_clients")
    sink.migrate()
    rng = np.random.default_rng(7)
    sink.insert(
        "reference_profiles",
        profile_rows(
            (
                {"x": float(v), "c": str(c)}
                for v, c in zip(rng.normal(0, 1, 5000), "pq" * 2500, strict=True)
            ),
            "m",
            "v",
        ),
    )
    _, [(ref_min, ref_max)] = sink.query(
        "SELECT min, max FROM reference_profiles FINAL WHERE feature = 'x'"
    )
    state = PartitionState.from_settings(
        0, Settings.load(env={}, overrides={"lateness_seconds": 0, "label_ttl_seconds": 0})
    )
    sent: dict[tuple[int, str], list[tuple[float, str]]] = {}
    n = 0
    for k in range(4):
        ws = T0 + k * MINUTE
        traffic = [(f"user{u}", 50) for u in range(5)] + [("prober", 40)]
        traffic.append(("burst", 500 if k == 3 else 20))
        preds = []
        for client, count in traffic:
            if client == "prober":  # half inside the range, half far outside; some new categories
                x = np.where(rng.random(count) < 0.5, rng.uniform(-1, 1, count), 8.0)
                c = rng.choice(["p", "zzz"], count, p=[0.8, 0.2])
            else:
                x, c = rng.normal(0, 1, count).clip(-2, 2), rng.choice(["p", "q"], count)
            for xi, ci in zip(x.tolist(), c.tolist(), strict=True):
                sent.setdefault((ws, client), []).append((xi, ci))
                features = {"x": xi, "c": ci}
                preds.append(
                    Prediction(
                        f"e{n}",
                        "m",
                        "v",
                        ws + 1,
                        "binary",
                        "1",
                        features=features,
                        client_id=client,
                    )
                )
                n += 1
        state.add_predictions(k, preds)
    rows = state.flush()
    for table, batch in rows.by_table():
        sink.insert(table, batch)
    settings = Settings.load(env={}, overrides={"drift_previous_windows": 2})
    chunks = Deriver(sink, settings).derive(map(window_of, rows.tables["client_partials"]))
    activity = [r for chunk in chunks for r in chunk["client_activity_rows"]]
    got = {(r["window_start"], r["client_id"]): r for r in activity}
    assert set(got) == set(sent)
    for (ws, client), events in sent.items():
        r = got[(ws, client)]
        x = np.array([e[0] for e in events])
        c = [e[1] for e in events]
        window = sum(len(v) for (w, _), v in sent.items() if w == ws)
        previous = [len(sent.get((ws - j * MINUTE, client), [])) for j in (1, 2)]
        assert (r["requests"], r["window_requests"]) == (len(events), window)
        assert r["traffic_share"] == pytest.approx(len(events) / window)
        assert r["previous_requests"] == pytest.approx(sum(previous) / 2)
        expected = {
            "x": float(np.mean((x < ref_min) | (x > ref_max))),
            "c": sum(ci not in ("p", "q") for ci in c) / len(c),
        }
        # The profile covers x and c; the prediction is compared with the previous windows.
        if ws > T0:
            expected["__prediction__"] = 0.0
        assert r["outside_reference"] == pytest.approx(expected)
        assert r["outside_reference_share"] == pytest.approx(max(expected.values()))
    # What an alert rule sees: the prober covers least of the reference, the burst client
    # jumps above its previous windows.
    last = T0 + 3 * MINUTE
    worst = max(
        (r for r in activity if r["window_start"] == last),
        key=lambda r: r["outside_reference_share"],
    )
    assert (worst["client_id"], worst["outside_reference_feature"]) == ("prober", "x")
    jumps = [
        r["client_id"]
        for r in activity
        if r["window_start"] == last and r["requests"] > 5 * (r["previous_requests"] or 0)
    ]
    assert jumps == ["burst"]

    # The alert rule documented in docs/metrics.md, run as written at the end of the last window.
    sink.insert("client_activity_rows", activity)
    doc = (ROOT / "docs" / "metrics.md").read_text()
    rule = re.search(r"<!-- alert-rule: client-activity -->\n```sql\n(.*?)```", doc, re.S)
    assert rule is not None
    sql = rule.group(1).replace("modelmon.", "").replace("now()", "{now:DateTime64(3)}")
    _, alerts = sink.query(sql, {"now": (last + MINUTE) / 1000})
    flagged = [(round(row[3].timestamp() * 1000) - T0, row[4]) for row in alerts]
    probes = [(k * MINUTE, "prober") for k in range(3)]
    assert flagged == [*probes, (3 * MINUTE, "burst"), (3 * MINUTE, "prober")]

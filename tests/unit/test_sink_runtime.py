"""The sink runtime on a real chDB: commits pass a message only once its rows are inserted
and the windows they changed are derived; derives are coalesced while input flows."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from faust.types import TP
from faust.types.tuples import ConsumerMessage

from pipeline.agents import sink as sink_agent
from pipeline.agents.sink import SinkRuntime
from pipeline.estimators.features import FeatureWindow
from pipeline.settings import Settings
from pipeline.sink.clickhouse import ClickHouseSink
from pipeline.sink.derive import CHUNK_STARTS, Deriver
from schemas.rows import encode_rows
from schemas.topics import Topics

MINUTE = 60_000
T0 = 1_700_000_040_000
TOPICS = Topics("sinkrt.")
METRICS_0 = TP(TOPICS.metrics, 0)


class Consumer:
    """Records how far the runtime lets each partition's commits go."""

    def __init__(self) -> None:
        self.committable: dict[TP, int] = {}

    def advance(self, tp: TP, offset: int) -> None:
        self.committable[tp] = offset


def feature_rows(k: int, seed: int) -> list[dict[str, Any]]:
    window = FeatureWindow()
    window.update([{"x": float(v)} for v in np.random.default_rng(seed).normal(0, 1, 500)])
    key = {
        "model": "m",
        "model_version": "v",
        "segment": "",
        "window_start": T0 + k * MINUTE,
        "window_end": T0 + (k + 1) * MINUTE,
        "partition": seed,
        "version": 500,
    }
    return [key | row for row in window.rows()]


def counter_rows() -> list[dict[str, Any]]:
    row = {"stage": "compute", "run_id": "r", "partition": 0, "counter": "c", "value": 1}
    return [row | {"version": 1}]


class Batches:
    """Metrics messages as Faust delivers them."""

    def __init__(self) -> None:
        self.offset = 0

    def __call__(self, *tables: tuple[str, list[dict[str, Any]]]) -> list[Any]:
        events = []
        for table, rows in tables:
            value = encode_rows(table, rows)
            message = ConsumerMessage(
                TOPICS.metrics, 0, self.offset, time.time(), 0, [], None, value, None
            )
            events.append(SimpleNamespace(message=message, value=value))
            self.offset += 1
        return events


def runtime(chdb_path: Path, name: str, **settings: Any) -> tuple[SinkRuntime, Consumer]:
    consumer = Consumer()
    s = Settings.load(
        env={},
        overrides={
            "clickhouse_dsn": f"chdb://{chdb_path}",
            "clickhouse_database": f"sinkrt_{name}",
            "window": "60s",
            "drift_previous_windows": 1,
            **settings,
        },
    )
    return SinkRuntime(SimpleNamespace(consumer=consumer), s, TOPICS, "t"), consumer  # type: ignore[arg-type]


def drift_windows(rt: SinkRuntime) -> set[int]:
    _, rows = rt.open().query(
        "SELECT DISTINCT toUnixTimestamp64Milli(window_start) FROM drift WHERE method = 'psi'"
    )
    return {r[0] for r in rows}


@pytest.fixture
def derive_calls(monkeypatch: pytest.MonkeyPatch) -> list[set[Any]]:
    calls: list[set[Any]] = []
    original = Deriver.derive

    def counted(self: Deriver, windows: Any) -> Any:
        calls.append(set(windows))
        return original(self, windows)

    monkeypatch.setattr(Deriver, "derive", counted)
    return calls


def test_messages_wait_for_the_derive_that_covers_them(
    chdb_path: Path, derive_calls: list[set[Any]]
) -> None:
    rt, consumer = runtime(chdb_path, "wait", derive_interval_seconds=60)
    batch = Batches()

    async def run() -> None:
        await rt.write(batch(("feature_partials", feature_rows(0, 0))))
        await rt.write(batch(("feature_partials", feature_rows(1, 1))))
        await rt.write(batch(("feature_partials", feature_rows(1, 2))))
        # Inserted, but the windows are not derived yet: commits do not advance.
        assert consumer.committable == {} and derive_calls == [] and not rt.idle()
        await rt.derive_if_due()  # input flowing, interval not over: still waits
        assert derive_calls == []
        rt.last_input -= rt.settings.sink_batch_seconds  # the input paused
        await rt.derive_if_due()

    asyncio.run(run())
    assert len(derive_calls) == 1  # both windows, window 1 once for its two partials
    assert {w[3] for w in derive_calls[0]} == {T0, T0 + MINUTE}
    assert drift_windows(rt) == {T0 + MINUTE}  # window 0 is window 1's reference
    assert consumer.committable == {METRICS_0: 3} and rt.idle()


def test_a_derive_is_due_after_the_interval_even_while_input_flows(
    chdb_path: Path, derive_calls: list[set[Any]]
) -> None:
    rt, consumer = runtime(chdb_path, "due", derive_interval_seconds=0.3)
    batch = Batches()

    async def run() -> None:
        await rt.write(batch(("feature_partials", feature_rows(0, 0))))
        assert derive_calls == []
        await asyncio.sleep(0.35)
        await rt.write(batch(("feature_partials", feature_rows(1, 0))))  # derives both

    asyncio.run(run())
    assert [len(c) for c in derive_calls] == [2]
    assert consumer.committable == {METRICS_0: 2}


def test_batches_that_change_no_window_are_committable_at_once(
    chdb_path: Path, derive_calls: list[set[Any]]
) -> None:
    rt, consumer = runtime(chdb_path, "none")
    asyncio.run(rt.write(Batches()(("pipeline_counters", counter_rows()))))
    assert consumer.committable == {METRICS_0: 1} and derive_calls == [] and rt.idle()


def test_interval_zero_derives_after_every_batch(
    chdb_path: Path, derive_calls: list[set[Any]]
) -> None:
    rt, consumer = runtime(chdb_path, "zero", derive_interval_seconds=0)
    batch = Batches()

    async def run() -> None:
        await rt.write(batch(("feature_partials", feature_rows(0, 0))))
        await rt.write(batch(("feature_partials", feature_rows(1, 0))))

    asyncio.run(run())
    assert len(derive_calls) == 2 and consumer.committable == {METRICS_0: 2}


def test_a_revoked_partition_s_commits_do_not_advance(chdb_path: Path) -> None:
    rt, consumer = runtime(chdb_path, "revoke", derive_interval_seconds=60)

    async def run() -> None:
        events = Batches()(("feature_partials", feature_rows(0, 0)))
        await rt.write(events)
        rt.revoke({events[0].message.tp})
        rt.last_input -= rt.settings.sink_batch_seconds
        await rt.derive_if_due()

    asyncio.run(run())
    assert consumer.committable == {} and rt.idle()


@pytest.mark.parametrize("bound", [30, sink_agent.DERIVED_ROWS_PER_INSERT])
def test_derived_rows_are_inserted_in_bounded_batches(
    chdb_path: Path, monkeypatch: pytest.MonkeyPatch, bound: int
) -> None:
    """A derive of many windows holds about ``DERIVED_ROWS_PER_INSERT`` rows (and one chunk of
    window starts more) before it inserts them; a small derive inserts once."""
    inserts: list[int] = []
    original = ClickHouseSink.insert

    def counted(self: ClickHouseSink, table: str, rows: Any) -> None:
        if table == "drift_rows":
            inserts.append(len(rows))
        original(self, table, rows)

    monkeypatch.setattr(ClickHouseSink, "insert", counted)
    monkeypatch.setattr(sink_agent, "DERIVED_ROWS_PER_INSERT", bound)
    rt, consumer = runtime(chdb_path, f"bounded{bound}", derive_interval_seconds=60)

    async def run() -> None:
        await rt.write(Batches()(*(("feature_partials", feature_rows(k, 0)) for k in range(12))))
        rt.last_input -= rt.settings.sink_batch_seconds
        await rt.derive_if_due()

    asyncio.run(run())
    per_window = 6  # psi, jensen_shannon, wasserstein(_normalised), ks, the decision
    assert sum(inserts) == 11 * per_window  # the first window has no previous one
    assert len(inserts) == (1 if bound > sum(inserts) else 2)
    assert max(inserts) < bound + CHUNK_STARTS * per_window
    assert drift_windows(rt) == {T0 + k * MINUTE for k in range(1, 12)}
    assert consumer.committable == {METRICS_0: 12} and rt.idle()


def test_metrics_messages_that_cannot_be_written_are_dead_letters(chdb_path: Path) -> None:
    """A message that is no rows, names an unknown table or an impossible result set would
    fail its insert for ever: it is a dead letter with its reason, and what is good in the
    batch is written."""
    rt, consumer = runtime(chdb_path, "refused")
    batches = Batches()
    good = batches(("pipeline_counters", counter_rows()))
    bad_json = batches(("pipeline_counters", counter_rows()))
    bad_json[0].message.value = b"{not json"
    unknown = batches(("no_such_table", counter_rows()))
    impossible = [
        SimpleNamespace(
            message=ConsumerMessage(
                TOPICS.metrics, 0, 9, time.time(), 0, [], None,
                encode_rows("pipeline_counters", counter_rows(), "bad name;"), None,
            )
        )
    ]  # fmt: skip
    asyncio.run(rt.write(good + bad_json + unknown + impossible))
    _, rows = rt.open().query(
        "SELECT source_offset, reason FROM dead_letters ORDER BY source_offset"
    )
    assert rows == [(1, "invalid_rows"), (2, "unknown_table"), (9, "invalid_result_set")]
    _, counted = rt.open().query(
        "SELECT count() FROM pipeline_counters FINAL WHERE stage = 'compute'"
    )
    assert counted == [(1,)]
    assert consumer.committable == {METRICS_0: 10}

"""The sink agent: metrics and dead-letter messages into ClickHouse, in batches."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import faust

from pipeline.settings import Settings
from pipeline.sink.clickhouse import ClickHouseSink, redact
from pipeline.sink.derive import Deriver, WindowRef, window_of
from schemas.rows import decode_rows
from schemas.topics import Topics

log = logging.getLogger(__name__)


class SinkRuntime:
    """Batches rows by table and writes them; offsets are acknowledged after the insert."""

    def __init__(self, settings: Settings, topics: Topics, run_id: str) -> None:
        self.settings = settings
        self.topics = topics
        self.run_id = run_id
        self.sink: ClickHouseSink | None = None
        self.targets: dict[str, tuple[ClickHouseSink, Deriver]] = {}
        self.last_input = time.monotonic()
        self.counters = {"write_failures": 0, "outage_ms": 0, "rows_written": 0}
        self.busy = False  # a batch is being written (or retried)
        self.seen_input = False
        self.last_offsets: dict[Any, int] = {}  # the last offset written, per partition

    def open(self) -> ClickHouseSink:
        if self.sink is None:
            self.sink = ClickHouseSink(
                self.settings.clickhouse_dsn,
                self.settings.clickhouse_database,
                self.settings.window_seconds,
            )
            self.sink.migrate()
        return self.sink

    def _counter_rows(self, counters: dict[str, int]) -> list[dict]:
        """The sink's own counters, written with each batch (so failures and outage time are
        recorded as soon as ClickHouse accepts writes again)."""
        version = time.time_ns() // 1_000_000
        return [
            {
                "stage": "sink",
                "run_id": self.run_id,
                "partition": 0,
                "counter": name,
                "value": value,
                "version": version,
            }
            for name, value in counters.items()
        ]

    def batch(self, events: list[faust.EventT]) -> dict[str, dict[str, list[dict]]]:
        """Rows by result set ("" = live) and table."""
        sets: dict[str, dict[str, list[dict]]] = {}
        for event in events:
            message = event.message
            if message.topic == self.topics.deadletter:
                headers = {k: v.decode() for k, v in (message.headers or [])}
                row = {
                    "source_topic": headers.get("source_topic", ""),
                    "source_partition": int(headers.get("source_partition", 0)),
                    "source_offset": int(headers.get("source_offset", 0)),
                    "event_index": int(headers.get("event_index", -1)),
                    "reason": headers.get("reason", ""),
                    "raw": message.value or b"",
                    "raw_size": int(headers.get("raw_size", len(message.value or b""))),
                    "received_at": int(headers.get("received_at", 0)),
                }
                sets.setdefault("", {}).setdefault("dead_letters_rows", []).append(row)
                continue
            try:
                rows = decode_rows(message.value)
            except ValueError:
                log.error(
                    "skipping a metrics message that is not rows at offset %d", message.offset
                )
                continue
            tables = sets.setdefault(rows.result_set, {})
            tables.setdefault(rows.table, []).extend(rows.rows)
        return sets

    def _target(self, result_set: str) -> tuple[ClickHouseSink, Deriver]:
        """The sink and deriver of a result set: the live database, or ``<db>_<name>``."""
        live = self.open()
        if result_set not in self.targets:
            sink = live.sibling(f"{live.database}_{result_set}") if result_set else live
            self.targets[result_set] = (sink, Deriver(sink, self.settings))
        return self.targets[result_set]

    def _write(self, events: list[faust.EventT], counters: dict[str, int]) -> dict[str, int]:
        """Insert, then derive drift, data quality and client activity for the windows whose
        feature or client summaries changed (blocking: runs in a worker thread).

        The batch is decoded and inserted ``sink_insert_bytes`` of messages at a time, which
        bounds the rows in memory; what changed is derived once, after the last part. Returns
        ``counters`` with the rows written added (written with the batch)."""
        counters = dict(counters)
        profiles: dict[str, set[tuple[str, str]]] = {}
        changed: dict[str, set[WindowRef]] = {}
        for part in _parts(events, self.settings.sink_insert_bytes):
            sets = self.batch(part)
            for result_set, tables in sets.items():
                sink, _ = self._target(result_set)
                for table, rows in tables.items():
                    sink.insert(table, rows)
                    counters["rows_written"] += len(rows)
                profiles.setdefault(result_set, set()).update(
                    (r["model"], r["model_version"]) for r in tables.get("reference_profiles", ())
                )
                changed.setdefault(result_set, set()).update(
                    window_of(r)
                    for table in ("feature_partials", "client_partials")
                    for r in tables.get(table, ())
                )
        self.open().insert("pipeline_counters", self._counter_rows(counters))
        for result_set in profiles.keys() | changed.keys():
            sink, deriver = self._target(result_set)
            derived = []
            if profiles.get(result_set):
                derived.append(deriver.rederive(profiles[result_set]))
            if changed.get(result_set):
                derived.append(deriver.derive(changed[result_set]))
            for by_table in derived:
                for table, rows in by_table.items():
                    sink.insert(f"{table}_rows", rows)
        return counters

    async def write(self, events: list[faust.EventT]) -> None:
        """Insert everything in ``events``; retry with backoff until ClickHouse accepts it.
        Until then the batch is not acknowledged, so offsets do not move and the stream's
        bounded buffer stops consumption: nothing piles up in memory."""
        self.last_input = time.monotonic()
        self.seen_input = True
        self.busy = True
        delay = 0.5
        failed_at: float | None = None
        while True:
            counters = dict(self.counters)
            if failed_at is not None:
                counters["outage_ms"] += int((time.monotonic() - failed_at) * 1000)
            try:
                counters = await asyncio.to_thread(self._write, events, counters)
            except Exception as exc:
                failed_at = failed_at or time.monotonic()
                self.counters["write_failures"] += 1
                log.error(
                    "ClickHouse write failed (%s, attempt %d); retrying in %.1fs: %s",
                    redact(self.settings.clickhouse_dsn),
                    self.counters["write_failures"],
                    delay,
                    exc,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)
                continue
            if failed_at is not None:
                log.warning(
                    "ClickHouse writes work again after %.1fs", time.monotonic() - failed_at
                )
            self.counters = counters
            for event in events:
                tp = event.message.tp
                self.last_offsets[tp] = max(self.last_offsets.get(tp, -1), event.message.offset)
            self.busy = False
            self.last_input = time.monotonic()
            return


def _parts(events: list[Any], max_bytes: int) -> list[list[Any]]:
    """``events`` in order, split into runs of at most ``max_bytes`` of message values (a
    larger message is a run of its own; empty values count nothing).

    >>> from types import SimpleNamespace as E
    >>> sizes = [b"", b"xx", b"", b"xxx", b"xxxxxx", None]
    >>> parts = _parts([E(message=E(value=v)) for v in sizes], 5)
    >>> [[len(e.message.value or b"") for e in part] for part in parts]
    [[0, 2, 0, 3], [6, 0]]
    """
    parts: list[list[Any]] = []
    size = 0
    for event in events:
        n = len(event.message.value or b"")
        if not parts or (n and size + n > max_bytes and parts[-1]):
            parts.append([])
            size = 0
        parts[-1].append(event)
        size += n
    return parts


def register(app: faust.App, runtime: SinkRuntime) -> None:
    source = app.topic(
        runtime.topics.metrics,
        runtime.topics.deadletter,
        key_serializer="raw",
        value_serializer="raw",
    )

    @app.agent(source, concurrency=1, name="modelmon.sink")
    async def sink(stream: faust.StreamT[bytes]) -> None:
        settings = runtime.settings
        async for events in stream.take_events(
            settings.sink_batch_messages, settings.sink_batch_seconds
        ):
            await runtime.write(events)

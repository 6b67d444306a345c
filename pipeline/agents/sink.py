"""The sink agent: metrics and dead-letter messages into ClickHouse, in batches, and the
derived rows of the windows they changed."""

from __future__ import annotations

import asyncio
import logging
import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import replace
from itertools import chain
from typing import Any, cast

import faust
from faust.types import TP

from pipeline.kafka import BoundedConsumer, RawSchema
from pipeline.ratelog import RateLimitedCounts
from pipeline.settings import Settings
from pipeline.sink.clickhouse import ClickHouseSink, json_rows, redact
from pipeline.sink.derive import Deriver, WindowRef, window_of
from schemas.deadletter import DeadLetter
from schemas.rows import RowBatch, decode_rows
from schemas.topics import Topics

log = logging.getLogger(__name__)


#: Derived rows held before they are inserted. Each insert is a part in ClickHouse (about
#: 20 ms in chDB: inserting every few windows made the last derive of a run several times
#: slower to write); the bound keeps a derive of a long history (a new reference profile)
#: from holding it all.
DERIVED_ROWS_PER_INSERT = 20_000


class SinkRuntime:
    """Batches rows by table and writes them; derives what changed at most every
    ``derive_interval_seconds`` (at once when input pauses); advances a partition's commits
    past a message only once its rows are inserted and the windows they changed derived."""

    def __init__(
        self,
        app: faust.App,
        settings: Settings,
        topics: Topics,
        run_id: str,
        sink: ClickHouseSink | None = None,
    ) -> None:
        self.app = app
        self.settings = settings
        self.topics = topics
        self.inputs = (topics.metrics, topics.deadletter)
        self.run_id = run_id
        #: The result database, opened and migrated (by the worker at start; else on the
        #: first write, or the query endpoint's first query).
        self.sink = sink
        self._opening = threading.Lock()
        self.targets: dict[str, tuple[ClickHouseSink, Deriver]] = {}
        self.last_input = time.monotonic()
        self.counters = {"write_failures": 0, "outage_ms": 0, "rows_written": 0}
        self.seen_input = False
        self.last_offsets: dict[Any, int] = {}  # the last offset written, per partition
        #: By result set: windows whose partials changed since they were last derived, and
        #: (model, version) pairs with a new reference profile; since when they wait.
        self.stale: dict[str, set[WindowRef]] = {}
        self.new_profiles: dict[str, set[tuple[str, str]]] = {}
        self.stale_since: float | None = None
        #: Per partition, the offset after the last inserted message, waiting for the derive
        #: that covers what it changed before commits may reach it.
        self.held: dict[TP, int] = {}
        #: One ClickHouse step at a time, a batch or a derive; held while one runs or retries.
        self.lock = asyncio.Lock()
        self.refused_log = RateLimitedCounts(
            log,
            60.0,
            "dead-lettered %(total)d metrics messages in %(seconds).0fs that cannot be written,"
            " by reason: %(counts)s",
        )

    def open(self) -> ClickHouseSink:
        """The live database, opened and migrated on first use (blocking; the sink's writes
        and the query endpoint each call it from a thread of their own)."""
        with self._opening:
            if self.sink is None:
                sink = ClickHouseSink(
                    self.settings.clickhouse_dsn,
                    self.settings.clickhouse_database,
                    self.settings,
                )
                sink.migrate()
                self.sink = sink
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

    def _target(self, result_set: str) -> tuple[ClickHouseSink, Deriver]:
        """The sink and deriver of a result set: the live database, or ``<db>_<name>``."""
        live = self.open()
        if result_set not in self.targets:
            sink = live.sibling(f"{live.database}_{result_set}") if result_set else live
            self.targets[result_set] = (sink, Deriver(sink, self.settings))
        return self.targets[result_set]

    def _insert(self, events: list[faust.EventT], counters: dict[str, int]) -> dict[str, int]:
        """Insert the batch ``sink_insert_bytes`` of messages at a time and mark the windows
        whose feature or client summaries changed, and the models with a new reference
        profile, as stale (blocking: runs in a worker thread). Rows go to ClickHouse as JSON
        text, decoded one message at a time: a part never becomes Python objects all at
        once. Returns ``counters`` with the rows written added (written with the batch)."""
        counters = dict(counters)
        live = self.open()
        for part in _parts(events, self.settings.sink_insert_bytes):
            # Dead letters hold raw bytes, which JSON cannot carry: they go through the row
            # insert, by result set (a replay's are its own).
            dead_letters: dict[str, list[dict[str, Any]]] = {}
            texts: dict[tuple[str, str], list[bytes]] = {}
            for event in part:
                message = event.message
                if message.topic == self.topics.deadletter:
                    dead = DeadLetter.from_message(message.value, message.headers or [])
                    if not _result_set_name(dead.result_set, self.settings.clickhouse_database):
                        dead = replace(dead, result_set="")  # kept with the live ones
                    dead_letters.setdefault(dead.result_set, []).append(dead.row())
                    continue
                try:
                    batch = decode_rows(message.value)
                    problem = self._unusable(batch)
                except ValueError as exc:
                    problem = ("invalid_rows", str(exc))
                if problem is not None:
                    dead = self._refused(message, *problem)
                    dead_letters.setdefault("", []).append(dead.row())
                    continue
                if not batch.rows:
                    continue
                self._mark_stale(batch)
                sink, _ = self._target(batch.result_set)
                text = json_rows(batch.rows, sink.time_columns(batch.table))
                texts.setdefault((batch.result_set, batch.table), []).append(text)
                counters["rows_written"] += len(batch.rows)
            for result_set, rows in dead_letters.items():
                self._target(result_set)[0].insert("dead_letters_rows", rows)
                counters["rows_written"] += len(rows)
            for (result_set, table), parts in texts.items():
                self._target(result_set)[0].insert_json(table, b",".join(parts))
        live.insert("pipeline_counters", self._counter_rows(counters))
        return counters

    def _unusable(self, batch: RowBatch) -> tuple[str, str] | None:
        """Why a rows message cannot be written, if it cannot (reason, detail)."""
        if not _result_set_name(batch.result_set, self.settings.clickhouse_database):
            return "invalid_result_set", f"result set {batch.result_set!r} is not a plain name"
        try:
            self.open().schema.table(batch.table)
        except KeyError:
            return "unknown_table", f"no table {batch.table!r} in the result database"
        return None

    def _refused(self, message: Any, reason: str, detail: str) -> DeadLetter:
        """A metrics message the sink cannot write, as a dead letter (logged, rate-limited):
        left in the topic, it would be retried for ever."""
        self.refused_log.add(reason)
        raw = message.value or b""
        stamp = message.timestamp
        return DeadLetter(
            message.topic,
            message.partition,
            message.offset,
            -1,
            reason,
            detail,
            raw,
            len(raw),
            round(stamp * 1000) if stamp is not None and stamp >= 0 else 0,
        )

    def _mark_stale(self, batch: RowBatch) -> None:
        deriver = self._target(batch.result_set)[1]
        if batch.table in deriver.rederive_on:
            profiles = {(r["model"], r["model_version"]) for r in batch.rows}
            self.new_profiles.setdefault(batch.result_set, set()).update(profiles)
        elif batch.table in deriver.triggers:
            windows = {window_of(r) for r in batch.rows}
            self.stale.setdefault(batch.result_set, set()).update(windows)
        else:
            return
        if self.stale_since is None:
            self.stale_since = time.monotonic()

    def _derive(self, counters: dict[str, int]) -> dict[str, int]:
        """Derive drift, data quality and client activity of every stale window (blocking:
        runs in a worker thread); a new reference profile re-derives its model's windows."""
        counters = dict(counters)
        for result_set in self.new_profiles.keys() | self.stale.keys():
            sink, deriver = self._target(result_set)
            derived = chain(
                deriver.rederive(self.new_profiles.get(result_set, ())),
                deriver.derive(self.stale.get(result_set, ())),
            )
            held: dict[str, list[dict[str, Any]]] = {}
            for by_table in derived:
                for table, rows in by_table.items():
                    held.setdefault(table, []).extend(rows)
                if sum(map(len, held.values())) >= DERIVED_ROWS_PER_INSERT:
                    counters["rows_written"] += _insert_derived(sink, held)
            counters["rows_written"] += _insert_derived(sink, held)
        self.open().insert("pipeline_counters", self._counter_rows(counters))
        self.stale.clear()
        self.new_profiles.clear()
        self.stale_since = None
        return counters

    async def _retrying(self, step: Callable[[dict[str, int]], dict[str, int]], what: str) -> None:
        """Run a blocking ClickHouse step in a worker thread until it succeeds, with backoff;
        the failures and the outage's length are counted (and written once writes work)."""
        delay = 0.5
        failed_at: float | None = None
        while True:
            counters = dict(self.counters)
            if failed_at is not None:
                counters["outage_ms"] += int((time.monotonic() - failed_at) * 1000)
            try:
                self.counters = await asyncio.to_thread(step, counters)
            except Exception as exc:
                failed_at = failed_at or time.monotonic()
                self.counters["write_failures"] += 1
                log.error(
                    "ClickHouse %s failed (%s, attempt %d); retrying in %.1fs: %s",
                    what,
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
            return

    async def write(self, events: list[faust.EventT]) -> None:
        """Insert everything in ``events``; retry with backoff until ClickHouse accepts it.
        Until then commits do not move, and the stream's bounded buffer stops consumption:
        nothing piles up in memory. Commits pass the batch once the derive that covers what it
        changed ran (right away if nothing is stale)."""
        async with self.lock:
            self.last_input = time.monotonic()
            self.seen_input = True
            await self._retrying(lambda counters: self._insert(events, counters), "write")
            for event in events:
                tp, offset = event.message.tp, event.message.offset
                self.held[tp] = max(self.held.get(tp, 0), offset + 1)
                self.last_offsets[tp] = max(self.last_offsets.get(tp, -1), offset)
            if self.stale_since is None or self._derive_due(time.monotonic()):
                await self._derive_now()
            self.last_input = time.monotonic()

    def _derive_due(self, now: float) -> bool:
        return (
            self.stale_since is not None
            and now - self.stale_since >= self.settings.derive_interval_seconds
        )

    async def derive_if_due(self) -> None:
        """Derive what is stale once it waited ``derive_interval_seconds``, or once no batch
        came for ``sink_batch_seconds`` (the input paused: no need to wait for more)."""
        now = time.monotonic()
        paused = now - self.last_input >= self.settings.sink_batch_seconds
        if self.stale_since is None or self.lock.locked():
            return
        if paused or self._derive_due(now):
            async with self.lock:
                await self._derive_now()

    async def _derive_now(self) -> None:
        """Derive (with the lock held), then advance commits past every inserted message."""
        if self.stale_since is not None:
            await self._retrying(self._derive, "derive")
        consumer = cast(BoundedConsumer, self.app.consumer)
        for tp, offset in self.held.items():
            consumer.advance(tp, offset)
        self.held.clear()

    def revoke(self, tps: Iterable[Any]) -> None:
        """Forget the partitions another worker now owns (it re-reads what is not committed)."""
        for tp in tps:
            self.held.pop(tp, None)
            self.last_offsets.pop(tp, None)

    def idle(self) -> bool:
        """Nothing is being written and nothing waits to be derived."""
        return not self.lock.locked() and self.stale_since is None and not self.held


def _insert_derived(sink: ClickHouseSink, held: dict[str, list[dict[str, Any]]]) -> int:
    """Insert the derived rows ``held`` (by table, emptied) and return how many there were."""
    written = 0
    for table, rows in held.items():
        sink.insert(table, rows)
        written += len(rows)
    held.clear()
    return written


def _result_set_name(name: str, database: str) -> bool:
    """Whether a result set's database name (``<database>_<name>``) is a plain identifier."""
    return (
        not name or re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,63}", f"{database}_{name}") is not None
    )


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
    source = app.topic(*runtime.inputs, schema=RawSchema())

    @app.agent(source, concurrency=1, name="modelmon.sink")
    async def sink(stream: faust.StreamT[bytes]) -> None:
        settings = runtime.settings
        async for events in stream.take_events(
            settings.sink_batch_messages, settings.sink_batch_seconds
        ):
            await runtime.write(events)
            # Faust yields a copy of its buffer: kept bound here, a written batch would stay
            # in memory while the next one fills (about 10 MiB of a catching-up sink's peak).
            del events

    @app.task
    async def derive() -> None:
        """Checks four times per batch wait (a pause is noticed soon after the first empty
        wait); a loop, not a timer, as a derive may run longer than the period."""
        while True:
            await asyncio.sleep(runtime.settings.sink_batch_seconds / 4)
            await runtime.derive_if_due()

    @app.on_partitions_revoked.connect
    async def on_revoked(sender: Any, revoked: Any, **_: Any) -> None:
        runtime.revoke(revoked)

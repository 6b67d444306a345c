"""Replay: recompute results from historical topics or files, beside the live pipeline.

A replay reads the input partitions directly (no consumer group, so the live workers'
partitions and offsets are untouched), folds every message with the same
:class:`~pipeline.partition.PartitionState` the live compute stage uses, and publishes the
rows to the ``metrics`` topic, from where the live sink writes them — the only way into an
embedded ClickHouse that the worker holds. Rows go to the live tables (they overwrite the
replayed windows idempotently: same input, same rows and versions) or, with a result set
name, to a database of their own (``<database>_<name>``) to compare with the live one.

Every decision is driven by event time and the order within a partition, never by the wall
clock, so the same input gives byte-identical rows whatever the batch size or the number of
replay workers, and a month replays as fast as the machine reads it. Detectors start fresh at
the start of the range: their firings match the live ones when the range starts at the
beginning of the topics.

``modelmon export`` writes the messages of a topic range to JSON Lines, one message per line
with its partition and offset, so that a replay from the file reproduces the topics exactly.
"""

from __future__ import annotations

import asyncio
import base64
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from pipeline.fold import Folder, InputMessage, is_rerouted
from pipeline.partition import PartitionState
from pipeline.settings import Settings
from schemas.codec import decode_message
from schemas.rows import MAX_ROWS_MESSAGE_BYTES, ROWS_BATCH_BYTES
from schemas.topics import Topics, partition_for

#: A message for the broker: topic, partition (None: the producer's choice), value, headers.
Outgoing = tuple[str, int | None, bytes, list[tuple[str, bytes]] | None]


@dataclass(slots=True)
class Summary:
    """What a replay read and wrote."""

    messages: int = 0
    events: int = 0
    dead_letters: int = 0
    rerouted: int = 0  # events read on another partition than theirs: folded there
    windows: int = 0
    rows: int = 0
    seconds: float = 0.0
    partitions: list[int] = field(default_factory=list)

    def __str__(self) -> str:
        rate = self.events / self.seconds if self.seconds else 0.0
        return (
            f"replayed {self.events} events ({self.messages} messages, partitions "
            f"{self.partitions}) in {self.seconds:.1f}s ({rate:,.0f} events/s): "
            f"{self.windows} windows, {self.rows} rows, {self.dead_letters} dead letters, "
            f"{self.rerouted} events skipped on a partition not theirs (folded on their own)"
        )


# --- sources -------------------------------------------------------------------------------


async def topic_messages(
    settings: Settings,
    partitions: Iterable[int],
    start: dict[tuple[str, int], int] | None = None,
    end: dict[tuple[str, int], int] | None = None,
) -> AsyncIterator[InputMessage]:
    """The predictions and labels messages of ``partitions``, each partition in offset order,
    from ``start`` (default: the beginning) up to ``end`` (default: what is there now)."""
    topics = Topics(settings.topic_prefix)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=4 * max(settings.max_message_bytes, 1_048_576),
        **settings.kafka_client_config(),
    )
    await consumer.start()
    try:
        kinds = {topics.predictions: "prediction", topics.labels: "label"}
        tps = [TopicPartition(t, p) for t in kinds for p in partitions]
        consumer.assign(tps)
        for tp in tps:
            offset = (start or {}).get((kinds[tp.topic], tp.partition))
            if offset is None:
                await consumer.seek_to_beginning(tp)
            else:
                consumer.seek(tp, offset)
        limits = {tp: (end or {}).get((kinds[tp.topic], tp.partition)) for tp in tps}
        open_tps = set(tps)
        while open_tps:
            batch = await consumer.getmany(*open_tps, timeout_ms=500)
            for tp, records in batch.items():
                for record in records:
                    limit = limits[tp]
                    if limit is not None and record.offset >= limit:
                        open_tps.discard(tp)
                        break
                    yield InputMessage(
                        kinds[tp.topic],
                        tp.topic,
                        tp.partition,
                        record.offset,
                        record.value,
                        record.timestamp if record.timestamp >= 0 else None,
                        rerouted=is_rerouted(record.headers),
                    )
            for tp in list(open_tps):
                # The fetch's high watermark is right on every broker (end_offsets is not).
                high = consumer.highwater(tp)
                limit = limits[tp] if high is None else min(limits[tp] or high, high)
                if limit is not None and await consumer.position(tp) >= limit:
                    open_tps.discard(tp)
    finally:
        await consumer.stop()


def file_messages(
    paths: Iterable[str | Path], partitions: int, topic_prefix: str = "modelmon."
) -> Iterator[InputMessage]:
    """Messages from JSON Lines files: lines written by ``modelmon export`` are the messages
    as they were (partition, offset, timestamp and bytes); any other line is one event object
    with a ``kind`` member ("prediction" or "label"), given the partition of its ``event_id``
    and the next offset."""
    topics = Topics(topic_prefix)
    offsets: dict[tuple[str, int], int] = {}
    for path in paths:
        with open(path, "rb") as lines:
            for line in lines:
                if not line.strip():
                    continue
                obj = orjson.loads(line)
                if "offset" in obj and "partition" in obj:
                    yield InputMessage(
                        obj["kind"],
                        topics.for_kind(obj["kind"]),
                        obj["partition"],
                        obj["offset"],
                        _exported_value(obj),
                        obj.get("timestamp"),
                        rerouted=bool(obj.get("rerouted")),
                    )
                    continue
                kind = obj.pop("kind")
                partition = partition_for(str(obj.get("event_id", "")), partitions)
                offset = offsets.get((kind, partition), 0)
                offsets[(kind, partition)] = offset + 1
                yield InputMessage(
                    kind, topics.for_kind(kind), partition, offset, orjson.dumps(obj)
                )


def _exported_value(obj: dict[str, Any]) -> bytes | None:
    """The message bytes of an export line: ``value`` (UTF-8 text) or ``value_base64``; lines
    of older exports carry the parsed ``message``."""
    if "value_base64" in obj:
        return base64.b64decode(obj["value_base64"])
    if "value" in obj:
        return None if obj["value"] is None else obj["value"].encode()
    return orjson.dumps(obj["message"])


async def offsets_for_time(
    settings: Settings, partitions: Iterable[int], ts_ms: int
) -> dict[tuple[str, int], int]:
    """For each predictions/labels partition, the first offset whose message holds events at
    or after ``ts_ms``, found by binary search over the events' own ``ts`` (brokers that keep
    their own append time, not the producer's, answer offsets-for-times wrongly)."""
    topics = Topics(settings.topic_prefix)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers,
        enable_auto_commit=False,
        max_partition_fetch_bytes=4 * max(settings.max_message_bytes, 1_048_576),
        **settings.kafka_client_config(),
    )
    await consumer.start()
    out: dict[tuple[str, int], int] = {}
    try:
        for kind in ("prediction", "label"):
            for p in partitions:
                tp = TopicPartition(topics.for_kind(kind), p)
                consumer.assign([tp])
                lo = (await consumer.beginning_offsets([tp]))[tp]
                hi = await _end_offset(consumer, tp)
                while lo < hi:
                    mid = (lo + hi) // 2
                    ts = await _first_ts_from(consumer, tp, mid, hi, kind, settings)
                    if ts is not None and ts >= ts_ms:
                        hi = mid
                    else:
                        lo = mid + 1
                out[(kind, p)] = lo
    finally:
        await consumer.stop()
    return out


async def _end_offset(consumer: AIOKafkaConsumer, tp: TopicPartition) -> int:
    """The next offset to be written, from a fetch's high watermark."""
    await consumer.seek_to_end(tp)
    await consumer.getmany(tp, timeout_ms=200)
    high = consumer.highwater(tp)
    return high if high is not None else await consumer.position(tp)


async def _first_ts_from(
    consumer: AIOKafkaConsumer,
    tp: TopicPartition,
    offset: int,
    end: int,
    kind: str,
    settings: Settings,
) -> int | None:
    """The smallest event ts of the first decodable message at or after ``offset``."""
    consumer.seek(tp, offset)
    while await consumer.position(tp) < end:
        records = (await consumer.getmany(tp, timeout_ms=2000, max_records=1)).get(tp, [])
        if not records:
            return None
        events = decode_message(records[0].value, kind, settings.max_message_bytes).events
        if events:
            return min(e.ts_ms for e in events)
    return None


# --- the fold ------------------------------------------------------------------------------


class Replayer:
    """Folds messages per partition and turns the windows into rows for the sink."""

    def __init__(
        self,
        settings: Settings,
        result_set: str = "",
        flush_every: int = 1000,
        time_range: tuple[int, int] | None = None,
    ):
        self.settings = settings
        self.topics = Topics(settings.topic_prefix)
        self.time_range = time_range
        self.result_set = result_set
        self.flush_every = flush_every
        self.folder = Folder(
            settings,
            reroute=False,
            result_set=result_set,
            keep=None if time_range is None else self._in_range,
        )
        self.states: dict[int, PartitionState] = {}
        self.summary = Summary()
        self.pending = 0

    def fold(self, message: InputMessage) -> list[Outgoing]:
        """Fold one message; its dead letters, and every ``flush_every`` messages the rows
        of what changed."""
        state = self.states.get(message.partition)
        if state is None:
            state = self.states[message.partition] = PartitionState.from_settings(
                message.partition, self.settings
            )
        folded = self.folder.fold(message, state)
        out: list[Outgoing] = [
            (self.topics.deadletter, message.partition, dead.value, list(dead.headers().items()))
            for dead in folded.dead_letters
        ]
        self.summary.messages += 1
        self.summary.events += folded.events
        self.summary.dead_letters += len(folded.dead_letters)
        self.summary.rerouted += folded.skipped
        self.pending += 1
        if self.pending >= self.flush_every:
            out += self.flush(open_windows=False)
        return out

    def _in_range(self, kind: str, ts_ms: int) -> bool:
        """Predictions in [start, end); labels until their predictions can no longer join."""
        start, end = self.time_range  # type: ignore[misc]
        if kind == "label":
            end += self.settings.window_spec.longest_ms + self.settings.label_ttl_seconds * 1000
        return start <= ts_ms < end

    def flush(self, open_windows: bool = True) -> list[Outgoing]:
        """Rows (as metrics messages) of every window changed since the last flush; windows
        that can still gain predictions only if ``open_windows``."""
        self.pending = 0
        out: list[Outgoing] = []
        for _, state in sorted(self.states.items()):
            messages, rows = self.folder.rows(state, open_windows)
            self.summary.windows += rows.windows
            self.summary.rows += sum(len(batch) for _, batch in rows.by_table())
            out += [(self.topics.metrics, None, m, None) for m in messages]
        return out


async def replay(
    settings: Settings,
    messages: AsyncIterator[InputMessage] | Iterable[InputMessage],
    *,
    result_set: str = "",
    flush_every: int = 1000,
    time_range: tuple[int, int] | None = None,
    progress: Report | None = None,
) -> Summary:
    """Fold ``messages`` and publish the rows to the metrics topic; returns the summary.
    ``time_range`` (epoch ms) keeps the events of that range; ``progress`` is told the
    messages and events folded after each message, and once more at the end."""
    replayer = Replayer(settings, result_set, flush_every, time_range)
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.bootstrap_servers,
        enable_idempotence=False,
        acks="all",
        max_request_size=MAX_ROWS_MESSAGE_BYTES + 65_536,
        max_batch_size=ROWS_BATCH_BYTES,
        **settings.kafka_client_config(),
    )
    started = time.monotonic()
    await producer.start()

    async def send(out: list[Outgoing]) -> None:
        for topic, partition, value, headers in out:
            acks.append(await producer.send(topic, value, partition=partition, headers=headers))

    try:
        acks: list[asyncio.Future[Any]] = []
        folded = replayer.summary
        async for message in _aiter(messages):
            await send(replayer.fold(message))
            if progress is not None:
                progress(folded.messages, folded.events, False)
            if len(acks) > 1000:
                await asyncio.gather(*acks)
                acks = []
        await send(replayer.flush())
        await asyncio.gather(*acks)
    finally:
        await producer.stop()
    summary = replayer.summary
    summary.seconds = time.monotonic() - started
    summary.partitions = sorted(replayer.states)
    if progress is not None:
        progress(summary.messages, summary.events, True)
    return summary


async def _aiter(
    messages: AsyncIterator[InputMessage] | Iterable[InputMessage],
) -> AsyncIterator[InputMessage]:
    if hasattr(messages, "__aiter__"):
        async for m in messages:  # type: ignore[union-attr]
            yield m
    else:
        for m in messages:  # type: ignore[union-attr]
            yield m


#: A progress report: messages and events (None: not counted) done so far, and whether
#: that is all.
Report = Callable[[int, int | None, bool], None]


class ProgressLine:
    """A progress line on ``out``, redrawn in place at most twice a second: messages (and
    events) done and their rate; with a ``total`` of messages, a bar and an estimate of the
    time left. Its :meth:`update` is a :data:`Report`.

    >>> import io
    >>> out = io.StringIO()
    >>> ProgressLine(out, total=4).update(1, None, True)
    >>> out.getvalue().split(" 1 messages")[0]
    '\\r[#######                       ]  25.0%'
    """

    def __init__(self, out: TextIO, total: int | None = None) -> None:
        self.out = out
        self.total = total
        self.started = time.monotonic()
        self._drawn = float("-inf")

    def update(self, messages: int, events: int | None, final: bool) -> None:
        now = time.monotonic()
        if not final and now - self._drawn < 0.5:
            return
        self._drawn = now
        elapsed = now - self.started
        counted, unit = (messages, "messages") if events is None else (events, "events")
        rate = counted / elapsed if elapsed > 0 else 0.0
        line = f"{messages} messages" + ("" if events is None else f", {events} events")
        line += f", {rate:,.0f} {unit}/s"
        if self.total:
            done = min(messages / self.total, 1.0)
            eta = elapsed / done - elapsed if done > 0 else float("nan")
            line = f"[{'#' * int(done * 30):<30}] {done:6.1%} {line}, ETA {eta:,.0f}s"
        self.out.write("\r" + line + ("\n" if final else ""))
        self.out.flush()


# --- export ---------------------------------------------------------------------------------


async def export(
    settings: Settings,
    partitions: Iterable[int],
    out: TextIO,
    start: dict[tuple[str, int], int] | None = None,
    end: dict[tuple[str, int], int] | None = None,
    progress: TextIO | None = None,
) -> int:
    """Write the messages of a topic range as JSON Lines (kind, partition, offset, Kafka
    timestamp, whether it is a re-routed copy, and the value as text, or ``value_base64``
    when it is not UTF-8), so a replay of the file reads the very bytes and times the topics
    held; returns how many, with a progress line on ``progress``."""
    partitions = tuple(partitions)
    report = None
    if progress is not None:
        report = ProgressLine(
            progress, await _range_size(settings, partitions, start or {}, end or {})
        )
    count = 0
    async for m in topic_messages(settings, partitions, start, end):
        line: dict[str, Any] = {
            "kind": m.kind,
            "partition": m.partition,
            "offset": m.offset,
            "timestamp": m.timestamp_ms,
        }
        if m.rerouted:
            line["rerouted"] = True
        try:
            line["value"] = None if m.value is None else m.value.decode()
        except UnicodeDecodeError:
            line["value_base64"] = base64.b64encode(m.value or b"").decode()
        out.write(orjson.dumps(line).decode() + "\n")
        count += 1
        if report is not None:
            report.update(count, None, False)
    if report is not None:
        report.update(count, None, True)
    return count


# --- running it ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """What to replay: files or the topics' partitions, and which part of them."""

    partitions: tuple[int, ...]
    files: tuple[str, ...] = ()
    time_range: tuple[int, int] | None = None  # epoch ms, [start, end)
    offsets: dict[tuple[str, int], tuple[int, int | None]] = field(default_factory=dict)
    result_set: str = ""
    flush_every: int = 1000


async def locate(
    settings: Settings, plan: Plan, partitions: tuple[int, ...]
) -> tuple[dict[tuple[str, int], int], dict[tuple[str, int], int]]:
    start = {k: v[0] for k, v in plan.offsets.items()}
    end = {k: v[1] for k, v in plan.offsets.items() if v[1] is not None}
    if plan.time_range is not None:
        lo, hi = plan.time_range
        extra = settings.window_spec.longest_ms + settings.label_ttl_seconds * 1000
        first = await offsets_for_time(settings, partitions, lo)
        start |= {k: max(v - 1, 0) for k, v in first.items()}  # the one before may straddle
        last = await offsets_for_time(settings, partitions, hi)
        labels_last = await offsets_for_time(settings, partitions, hi + extra)
        # Messages just before a boundary may hold events inside it: read one past it.
        end |= {k: v + 1 for k, v in last.items() if k[0] == "prediction"}
        end |= {k: v + 1 for k, v in labels_last.items() if k[0] == "label"}
    return start, end


async def _run(
    settings: Settings, plan: Plan, partitions: tuple[int, ...], progress: Report | None
) -> Summary:
    messages: Iterable[InputMessage] | AsyncIterator[InputMessage]
    if plan.files:
        wanted = set(partitions)
        messages = (
            m
            for m in file_messages(plan.files, settings.partitions, settings.topic_prefix)
            if m.partition in wanted
        )
    else:
        start, end = await locate(settings, plan, partitions)
        messages = topic_messages(settings, partitions, start, end)
    return await replay(
        settings,
        messages,
        result_set=plan.result_set,
        flush_every=plan.flush_every,
        time_range=plan.time_range,
        progress=progress,
    )


async def _total(settings: Settings, plan: Plan) -> int:
    """Messages the replay of ``plan`` reads (for the progress line's ETA)."""
    if plan.files:
        return _lines(plan.files)
    start, end = await locate(settings, plan, plan.partitions)
    return await _range_size(settings, plan.partitions, start, end)


def _lines(paths: Iterable[str]) -> int:
    count = 0
    for path in paths:
        with open(path, "rb") as lines:
            count += sum(1 for line in lines if line.strip())
    return count


async def _range_size(
    settings: Settings,
    partitions: Iterable[int],
    start: dict[tuple[str, int], int],
    end: dict[tuple[str, int], int],
) -> int:
    """Messages in the range (for the progress line's ETA)."""
    topics = Topics(settings.topic_prefix)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers,
        enable_auto_commit=False,
        **settings.kafka_client_config(),
    )
    await consumer.start()
    try:
        size = 0
        for kind in ("prediction", "label"):
            for p in partitions:
                tp = TopicPartition(topics.for_kind(kind), p)
                consumer.assign([tp])
                first = start.get((kind, p), (await consumer.beginning_offsets([tp]))[tp])
                last = min(end.get((kind, p), 2**63), await _end_offset(consumer, tp))
                size += max(last - first, 0)
        return size
    finally:
        await consumer.stop()


#: In a replay process: the array its progress goes to (two slots per process).
_COUNTS: Any = None


def _share_counts(counts: Any) -> None:
    global _COUNTS
    _COUNTS = counts


def _run_in_process(args: tuple[Settings, Plan, tuple[int, ...], int]) -> Summary:
    """One replay process's share; what it folded goes to its two slots of ``_COUNTS``."""
    settings, plan, partitions, slot = args

    def report(messages: int, events: int | None, final: bool) -> None:
        _COUNTS[2 * slot], _COUNTS[2 * slot + 1] = messages, events or 0

    return asyncio.run(_run(settings, plan, partitions, report))


def run(
    settings: Settings, plan: Plan, workers: int = 1, progress: TextIO | None = sys.stderr
) -> Summary:
    """Replay ``plan`` with ``workers`` processes, each owning a share of the partitions,
    with a progress line on ``progress`` (over all of them)."""
    line = None if progress is None else ProgressLine(progress, asyncio.run(_total(settings, plan)))
    if workers <= 1:
        return asyncio.run(_run(settings, plan, plan.partitions, line and line.update))
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    shares = [s for s in (plan.partitions[i::workers] for i in range(workers)) if s]
    # Each process writes only its own slots: no lock needed.
    counts = context.Array("q", 2 * len(shares), lock=False)
    with context.Pool(len(shares), _share_counts, (counts,)) as pool:
        done = pool.map_async(
            _run_in_process, [(settings, plan, s, i) for i, s in enumerate(shares)]
        )
        while not done.ready():
            done.wait(0.5)
            if line is not None:
                line.update(sum(counts[0::2]), sum(counts[1::2]), False)
        parts = done.get()
    total = Summary()
    for part in parts:
        for name in ("messages", "events", "dead_letters", "windows", "rows"):
            setattr(total, name, getattr(total, name) + getattr(part, name))
        total.seconds = max(total.seconds, part.seconds)
        total.partitions += part.partitions
    total.partitions.sort()
    if line is not None:
        line.update(total.messages, total.events, True)
    return total

"""The compute runtime shares the event loop: a long run of buffered messages does not hold
back the flush timer; it flushes by itself after every ``flush_events`` input events, one
flush at a time; and it holds a topic-partition that runs ahead of the rest in event time."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace
from typing import Any

import orjson
from faust.types import TP
from faust.types.tuples import ConsumerMessage

from pipeline.compute import YIELD_SECONDS, ComputeRuntime
from pipeline.settings import Settings
from schemas.topics import Topics
from tests.ids import event_id_in

TOPICS = Topics("computert.")


class Consumer:
    """Nothing is behind: every message is already in hand."""

    def highwater(self, tp: TP) -> int:
        return 0

    def advance(self, tp: TP, offset: int) -> None:
        pass


class Producer:
    """Kafka's acks after ``delay`` seconds; notes ``runtime.events_in`` at each counters
    message, which every flush that read input sends."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.runtime: ComputeRuntime | None = None
        self.flushes_at: list[int] = []

    async def send(self, topic: str, value: bytes, **_: Any) -> asyncio.Future[None]:
        if topic == TOPICS.metrics and b'"pipeline_counters"' in value:
            assert self.runtime is not None
            self.flushes_at.append(self.runtime.events_in)
        ack = asyncio.get_running_loop().create_future()
        asyncio.get_running_loop().call_later(self.delay, ack.set_result, None)
        return ack


class PacedConsumer(Consumer):
    """High watermarks as the test sets them; keeps the topic-partitions the runtime holds."""

    def __init__(self, highwaters: dict[TP, int]) -> None:
        self.highwaters = highwaters
        self.held: set[TP] = set()

    def highwater(self, tp: TP) -> int:
        return self.highwaters[tp]

    def hold(self, tp: TP) -> None:
        self.held.add(tp)

    def release(self, tp: TP) -> None:
        self.held.discard(tp)


def runtime_with(
    producer: Producer, consumer: Consumer | None = None, **overrides: Any
) -> ComputeRuntime:
    settings = Settings.load(env={}, overrides={"topic_prefix": TOPICS.prefix, **overrides})
    app = SimpleNamespace(consumer=consumer or Consumer(), producer=producer)
    runtime = ComputeRuntime(app, settings, TOPICS, "t")  # type: ignore[arg-type]
    for partition in range(settings.partitions):
        runtime.checkpoints[partition] = []  # a first start: no checkpoint topic to read
    producer.runtime = runtime
    return runtime


def prediction(partition: int, offset: int, ts: float, partitions: int = 4) -> Any:
    """The message at ``offset`` of a partition (of ``partitions``) of the predictions topic:
    one prediction, whose id belongs there."""
    value = orjson.dumps(
        {
            "event_id": event_id_in(partition, partitions, f"e{partition}-{offset}"),
            "model": "m",
            "ts": ts,
            "task": "binary",
            "prediction": "1",
            "score": 0.75,
            "features": {"x": float(offset), "y": "a"},
        }
    )
    message = ConsumerMessage(
        TOPICS.predictions, partition, offset, time.time(), 0, [], None, value, None
    )
    return SimpleNamespace(message=message, value=value)


def predictions(n: int) -> list[Any]:
    return [prediction(0, i, 1_700_000_000 + i / 1000) for i in range(n)]


def test_a_long_run_of_messages_yields_to_the_loop() -> None:
    runtime = runtime_with(Producer(), flush_events=100_000)
    events = predictions(20_000)
    progress: list[int] = []

    async def timer() -> None:  # what Faust's flush timer is to the agent
        while True:
            await asyncio.sleep(YIELD_SECONDS)
            progress.append(runtime.events_in)

    async def run() -> float:
        task = asyncio.create_task(timer())
        await asyncio.sleep(0)
        started = time.monotonic()
        for event in events:  # as Faust delivers a full buffer: no wait between messages
            await runtime.process(event)
        elapsed = time.monotonic() - started
        task.cancel()
        return elapsed

    elapsed = asyncio.run(run())
    assert runtime.events_in == len(events)
    during = [n for n in progress if n < len(events)]
    assert elapsed > 5 * YIELD_SECONDS  # long enough for the timer to be due several times
    assert len(during) >= 2, (elapsed, progress)  # it ran while the messages were processed


def test_a_flush_follows_every_flush_events_input_events() -> None:
    producer = Producer()
    runtime = runtime_with(producer, flush_events=5_000)

    async def run() -> None:  # no timer: only the runtime's own flushes
        for event in predictions(12_000):
            await runtime.process(event)

    asyncio.run(run())
    assert producer.flushes_at == [5_000, 10_000]
    assert runtime.flushed_at == 10_000


def test_the_timer_and_the_input_never_flush_at_once() -> None:
    producer = Producer(delay=0.005)  # each flush waits for acks, twice
    runtime = runtime_with(producer, flush_events=500)
    flushing, overlaps, flushes = [0], [0], [0]
    flush_rows = runtime._flush

    async def counted(open_windows: bool) -> None:
        flushing[0] += 1
        overlaps[0] = max(overlaps[0], flushing[0])
        try:
            await flush_rows(open_windows)
        finally:
            flushing[0] -= 1
            flushes[0] += 1

    runtime._flush = counted  # type: ignore[method-assign]

    async def run() -> None:
        async def timer() -> None:  # what Faust's flush timer is to the agent
            while True:
                await asyncio.sleep(0.001)
                await runtime.flush()

        task = asyncio.create_task(timer())
        for event in predictions(3_000):
            await runtime.process(event)
        task.cancel()

    asyncio.run(run())
    assert flushes[0] > 6  # the input's six and the timer's
    assert overlaps[0] == 1


def test_a_topic_partition_ahead_in_event_time_is_held_until_the_rest_catch_up() -> None:
    preds = [TP(TOPICS.predictions, p) for p in (0, 1)]
    labels = [TP(TOPICS.labels, p) for p in (0, 1)]
    consumer = PacedConsumer({preds[0]: 10, preds[1]: 10, labels[0]: 0, labels[1]: 0})
    runtime = runtime_with(
        Producer(),
        consumer,
        partitions=2,
        window="10s",
        label_ttl_seconds=10,
        lateness_seconds=2,
    )
    lead = runtime.lead_ms / 1000  # window + ttl + lateness: 22 s
    t0 = 1_700_000_000.0
    held: list[set[TP]] = []

    async def read(partition: int, offset: int, ts: float) -> None:
        await runtime.process(prediction(partition, offset, ts, partitions=2))
        held.append(set(consumer.held))

    async def run() -> None:
        await read(0, 0, t0)
        await read(1, 0, t0 + lead + 5)  # leads partition 0, which has unread messages
        await read(1, 1, t0 + lead + 6)  # what was fetched already still comes
        await read(0, 1, t0 + 5)  # 1 s short of catching up
        await read(0, 2, t0 + 6)  # caught up: within lead of partition 1
        await read(1, 2, t0 + 3 * lead)  # far ahead again
        await read(0, 3, t0 + 7)
        consumer.highwaters[preds[0]] = 4  # partition 0 has nothing more to read
        await runtime.flush()
        held.append(set(consumer.held))

    asyncio.run(run())
    p1 = {preds[1]}
    assert held == [set(), p1, p1, p1, set(), p1, p1, set()]
    assert runtime.events_in == 7  # held is not dropped: everything read was processed

"""The compute runtime shares the event loop: a long run of buffered messages does not hold
back the flush timer; and it flushes by itself after every ``flush_events`` input events, one
flush at a time."""

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


def runtime_with(producer: Producer, **overrides: Any) -> ComputeRuntime:
    settings = Settings.load(env={}, overrides={"topic_prefix": TOPICS.prefix, **overrides})
    app = SimpleNamespace(consumer=Consumer(), producer=producer)
    runtime = ComputeRuntime(app, settings, TOPICS, "t")  # type: ignore[arg-type]
    runtime.checkpoints[0] = []  # a first start: no checkpoint topic to read
    producer.runtime = runtime
    return runtime


def predictions(n: int) -> list[Any]:
    events = []
    for i in range(n):
        value = orjson.dumps(
            {
                "event_id": f"e{i}",
                "model": "m",
                "ts": 1_700_000_000 + i / 1000,
                "task": "binary",
                "prediction": "1",
                "score": 0.75,
                "features": {"x": float(i), "y": "a"},
            }
        )
        message = ConsumerMessage(TOPICS.predictions, 0, i, time.time(), 0, [], None, value, None)
        events.append(SimpleNamespace(message=message, value=value))
    return events


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

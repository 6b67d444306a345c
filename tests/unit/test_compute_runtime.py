"""The compute runtime shares the event loop: a long run of buffered messages does not hold
back the flush timer."""

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
    settings = Settings.load(env={}, overrides={"topic_prefix": TOPICS.prefix})
    app = SimpleNamespace(consumer=Consumer(), producer=None)
    runtime = ComputeRuntime(app, settings, TOPICS, "t")  # type: ignore[arg-type]
    runtime.checkpoints[0] = []  # a first start: no checkpoint topic to read
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

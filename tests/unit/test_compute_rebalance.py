"""A rebalance in the middle of the compute stage's work: what it was doing for a partition it
lost is dropped, never checkpointed or acknowledged, and every assignment is told apart."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
from faust.types import TP
from faust.types.tuples import ConsumerMessage

from pipeline import compute
from pipeline.app import caught_up
from pipeline.checkpoint import Checkpoint
from pipeline.compute import ComputeRuntime
from pipeline.kafka import BoundedConsumer
from pipeline.settings import Settings
from pipeline.windows import Mark
from schemas.topics import Topics
from tests.ids import event_id_in

TOPICS = Topics("rebalance.")
PRED = TP(TOPICS.predictions, 0)


class Consumer:
    def __init__(self, highwater: dict[TP, int | None] | None = None) -> None:
        self.marks = highwater or {}
        self.committable: dict[TP, int] = {}

    def highwater(self, tp: TP) -> int | None:
        return self.marks.get(tp, 0)

    def assignment(self) -> set[TP]:
        return set(self.marks)

    def advance(self, tp: TP, offset: int) -> None:
        self.committable[tp] = offset


class Producer:
    """Acknowledges every send, after ``gate`` opens if one is set."""

    def __init__(self) -> None:
        self.sent: list[str] = []
        self.gate: asyncio.Event | None = None

    async def send(self, topic: str, **_: Any) -> asyncio.Future[None]:
        if self.gate is not None:
            await self.gate.wait()
        self.sent.append(topic)
        future = asyncio.get_running_loop().create_future()
        future.set_result(None)
        return future


def event(offset: int) -> Any:
    value = orjson.dumps(
        {
            "event_id": event_id_in(0, Settings().partitions, f"e{offset}"),
            "model": "m",
            "ts": 1_700_000_000 + offset,
            "task": "binary",
            "prediction": "1",
            "score": 0.75,
        }
    )
    message = ConsumerMessage(
        PRED.topic, 0, offset, time.time(), 0, [], None, value, None, generation_id=0
    )
    return SimpleNamespace(message=message, value=value)


def make_runtime() -> tuple[ComputeRuntime, Producer]:
    settings = Settings.load(env={}, overrides={"topic_prefix": TOPICS.prefix})
    producer = Producer()
    app = SimpleNamespace(consumer=Consumer(), producer=producer, consumer_generation_id=0)
    return ComputeRuntime(app, settings, TOPICS, "t"), producer  # type: ignore[arg-type]


def held_checkpoint_read(
    monkeypatch: pytest.MonkeyPatch,
) -> tuple[asyncio.Event, list[list[int]]]:
    """Make reading checkpoints wait for the returned event (the broker's answer), and note
    the partitions of each read."""
    gate = asyncio.Event()
    reads: list[list[int]] = []

    async def read(
        _servers: str, _topic: str, partitions: Iterable[int], _config: Any
    ) -> dict[int, list[Any]]:
        reads.append(sorted(partitions))
        await gate.wait()
        return {p: [] for p in partitions}

    monkeypatch.setattr(compute, "read_checkpoints", read)
    return gate, reads


def test_a_partition_revoked_while_its_checkpoints_are_read_is_dropped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def run() -> None:
        gate, reads = held_checkpoint_read(monkeypatch)
        runtime, producer = make_runtime()
        first = asyncio.create_task(runtime.process(event(7)))
        await asyncio.sleep(0)
        await runtime.flush()  # the flush timer, while the read waits
        assert TOPICS.checkpoints not in producer.sent  # nothing to checkpoint yet
        runtime.revoke([PRED])  # ...and the partition goes elsewhere meanwhile
        gate.set()
        await first
        assert runtime.events_in == 0 and not runtime.states
        assert not runtime.checkpoints and PRED not in runtime.restored
        # assigned again: read afresh, then processed
        await runtime.process(event(7))
        assert reads == [[0], [0]]
        assert runtime.events_in == 1 and runtime.last_offsets[PRED] == 7

    asyncio.run(run())


def test_the_first_restore_reads_the_checkpoints_of_every_assigned_partition(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def run() -> None:
        gate, reads = held_checkpoint_read(monkeypatch)
        gate.set()
        runtime, _ = make_runtime()
        assigned = [PRED, TP(TOPICS.labels, 0), TP(TOPICS.predictions, 2), TP(TOPICS.metrics, 1)]
        runtime.app.consumer = Consumer({tp: 0 for tp in assigned})
        await runtime.process(event(3))
        await runtime.process(event(4))
        assert reads == [[0, 2]] and set(runtime.checkpoints) == {0, 2}
        assert runtime.events_in == 2

    asyncio.run(run())


def test_a_restore_resumes_from_the_checkpoint_of_its_offset(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The watermark comes from the record that names the offset Faust resumed at, and the
    re-routes before the last record's read position are not sent again."""
    labels = TP(TOPICS.labels, 0)
    record = Checkpoint(
        0,
        {PRED.topic: Mark(7, 1_700_000_100_000), labels.topic: Mark(3, 1_700_000_002_000)},
        read={PRED.topic: 12, labels.topic: 9},
    )

    async def read(*_: Any) -> dict[int, list[Checkpoint]]:
        return {0: [Checkpoint.decode(record.encode())]}

    monkeypatch.setattr(compute, "read_checkpoints", read)

    async def run() -> None:
        runtime, _ = make_runtime()
        runtime.app.consumer = Consumer({PRED: 0, labels: 0})
        await runtime.process(event(7))
        state = runtime.states[0]
        assert state.pred_wm.max_ts == 1_700_000_100_000  # ahead of the event read
        assert runtime.folder.rerouted_before == {(PRED.topic, 0): 12, (labels.topic, 0): 9}

    asyncio.run(run())


def test_a_flush_does_not_checkpoint_a_partition_revoked_while_rows_were_sent() -> None:
    async def run() -> None:
        runtime, producer = make_runtime()
        runtime.checkpoints[0] = []  # a first start: no checkpoint topic to read
        await runtime.process(event(1))
        producer.gate = asyncio.Event()
        flush = asyncio.create_task(runtime.flush())
        await asyncio.sleep(0)
        runtime.revoke([PRED, TP(TOPICS.labels, 0)])
        producer.gate.set()
        await flush
        assert producer.sent and TOPICS.checkpoints not in producer.sent
        assert 0 not in runtime.written and runtime.app.consumer.committable == {}

    asyncio.run(run())


def test_every_assignment_gets_an_id_of_its_own() -> None:
    """Faust drops messages fetched under an older assignment by this id; a broker that keeps
    the group generation across rebalances (Tansu) must not make two assignments look alike."""
    seen: list[int] = []

    async def assigned(_tps: Any, generation_id: int) -> None:
        seen.append(generation_id)

    app = SimpleNamespace(consumer_generation_id=0)
    thread = SimpleNamespace(app=app, on_partitions_assigned=assigned)
    listener = BoundedConsumer.RebalanceListener(thread)  # type: ignore[arg-type]
    for _ in range(3):
        asyncio.run(listener.on_partitions_assigned([PRED]))
    assert seen == [1, 2, 3] and app.consumer_generation_id == 3


@pytest.mark.parametrize(
    ("highwater", "done", "position", "expected"),
    [
        ({PRED: None}, {}, 0, False),  # no fetch answered since the assignment
        ({PRED: None}, {PRED: 4}, 5, False),
        ({PRED: 5}, {PRED: 3}, 5, False),
        ({PRED: 5}, {PRED: 4}, 5, True),
        ({PRED: 0}, {}, 0, True),  # an empty partition
        ({PRED: 5}, {}, 5, True),  # all of it committed before this worker started
        ({PRED: 5}, {}, 2, False),  # unread messages, none processed yet
        ({PRED: 5, TP("other", 0): None}, {PRED: 4}, 5, True),  # not an input
    ],
)
def test_caught_up_needs_a_known_high_watermark(
    highwater: dict[TP, int | None], done: dict[TP, int], position: int, expected: bool
) -> None:
    runtime = SimpleNamespace(inputs=(PRED.topic,), last_offsets=done)
    consumer = Consumer(highwater)

    async def at(tp: TP) -> int:
        return position

    consumer.position = at  # type: ignore[method-assign]
    assert asyncio.run(caught_up(consumer, [runtime])) is expected  # type: ignore[arg-type,list-item]

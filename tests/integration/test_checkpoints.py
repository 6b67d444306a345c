"""Checkpoints read back from a real broker, several partitions at once: every record of a
partition, also when they were written in one batch (whose end some brokers misreport), and
none of an empty one."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from aiokafka import AIOKafkaProducer

from pipeline.checkpoint import Checkpoint, read_checkpoints
from pipeline.embedded import EmbeddedBroker
from pipeline.kafka import ensure_topics
from pipeline.windows import Mark

pytestmark = pytest.mark.integration


def test_every_checkpoint_of_a_partition_is_read_back(broker: EmbeddedBroker) -> None:
    topic = f"t{uuid.uuid4().hex[:8]}.checkpoints"
    records = [
        Checkpoint(0, {"p": Mark(10 * i, 1000 * i)}, evicted_through={"1m": 60_000 * i})
        for i in range(5)
    ]

    async def run() -> dict[int, list[Checkpoint]]:
        await ensure_topics(broker.bootstrap_servers, {topic: 2})
        producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap_servers, linger_ms=200)
        await producer.start()
        try:  # all five in one batch
            sent = [await producer.send(topic, r.encode(), partition=0) for r in records]
            await asyncio.gather(*sent)
        finally:
            await producer.stop()
        return await read_checkpoints(broker.bootstrap_servers, topic, [0, 1], {})

    assert asyncio.run(run()) == {0: records, 1: []}

"""Labels from a client whose partitioner is not Kafka's murmur2 (confluent-kafka: librdkafka's
CRC32) join their predictions, sent by modelmon's client: the worker re-routes each label that
arrived on another partition than its ``event_id``'s, says so, and counts it."""

from __future__ import annotations

import asyncio
import random
import zlib
from typing import Any

import orjson
import pytest
from confluent_kafka import Producer

from producers.client import MonitorClient
from schemas.topics import partition_for

pytestmark = pytest.mark.integration

START = 1_700_000_040.0
EVENTS = 300


async def predictions(d: Any) -> None:
    async with MonitorClient(d.bootstrap_servers, topic_prefix=d.prefix, linger_ms=5) as client:
        for i in range(EVENTS):
            assert client.log_prediction(
                event_id=f"req-{i}",
                model="m",
                task="binary",
                ts=START + i / 10,
                prediction=i % 2,
                score=0.9 if i % 2 else 0.1,
            )
        await client.flush()


def librdkafka_labels(d: Any, partitioner: str | None) -> None:
    """One label per message keyed by event_id, as a confluent-kafka producer sends it."""
    config = {"bootstrap.servers": d.bootstrap_servers, "enable.idempotence": False}
    if partitioner:
        config["partitioner"] = partitioner
    producer = Producer(config)
    failed: list[Any] = []
    rng = random.Random(1)
    for i in range(EVENTS):
        label = {"event_id": f"req-{i}", "ts": START + i / 10 + rng.uniform(1, 20), "label": i % 2}
        producer.produce(
            d.prefix + "labels",
            orjson.dumps(label),
            key=f"req-{i}".encode(),
            on_delivery=lambda err, _msg: failed.append(err) if err else None,
        )
        producer.poll(0)
    assert producer.flush(30) == 0 and not failed, failed


def counters(d: Any) -> dict[str, int]:
    rows = d.query("SELECT counter, value FROM pipeline_stats WHERE stage = 'compute'")
    return {r["counter"]: r["value"] for r in rows}


@pytest.mark.parametrize("partitioner", [None, "murmur2_random"])
def test_labels_sent_with_librdkafkas_partitioner_join(deployment: Any, partitioner: str) -> None:
    d = deployment(partitions=4)
    asyncio.run(predictions(d))
    librdkafka_labels(d, partitioner)
    d.run_worker()
    (window,) = d.query("SELECT predictions, labelled, accuracy FROM quality_windows")
    assert (window["predictions"], window["labelled"], window["accuracy"]) == (EVENTS, EVENTS, 1.0)
    stats = counters(d)
    assert stats.get("late_labels", 0) == stats.get("unmatched_labels", 0) == 0
    log = (d.root / "worker.log").read_text()
    if partitioner is None:  # CRC32: most labels arrive elsewhere, and are re-routed
        misrouted = sum(
            partition_for(f"req-{i}", 4) != _crc32_partition(f"req-{i}", 4) for i in range(EVENTS)
        )
        assert misrouted > EVENTS // 2
        assert stats["rerouted_labels"] == misrouted
        assert "partitioner=murmur2_random" in log
    else:  # Java-compatible: nothing to re-route
        assert stats.get("rerouted_labels", 0) == 0
        assert "re-routed" not in log


def _crc32_partition(key: str, partitions: int) -> int:
    """librdkafka's ``consistent`` partitioner: CRC32 of the key modulo the partitions."""
    return zlib.crc32(key.encode()) % partitions

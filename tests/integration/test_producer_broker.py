"""Producers through a real broker: every event arrives once, on its event_id's partition."""

from __future__ import annotations

import asyncio
import collections
import uuid
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from pipeline.kafka import ensure_topics
from producers import MonitorClient, SyncMonitorClient, generate, simulate
from schemas.codec import decode_message
from schemas.topics import Topics, partition_for

pytestmark = pytest.mark.integration

PARTITIONS = 3
START = 1_700_000_040.0


def _prefix() -> str:
    return f"t{uuid.uuid4().hex[:10]}."


def _create_topics(bootstrap: str, prefix: str) -> None:
    topics = Topics(prefix)
    asyncio.run(
        ensure_topics(bootstrap, {topics.predictions: PARTITIONS, topics.labels: PARTITIONS})
    )


async def _consume(bootstrap: str, topic: str, kind: str, expected: int) -> list[tuple[int, Any]]:
    """Read ``topic`` from the start until ``expected`` events came and a further second
    brought nothing; returns (partition, event) pairs."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign([TopicPartition(topic, p) for p in range(PARTITIONS)])
        await consumer.seek_to_beginning()
        out: list[tuple[int, Any]] = []
        deadline = asyncio.get_running_loop().time() + 30
        quiet_since = None
        while asyncio.get_running_loop().time() < deadline:
            batches = await consumer.getmany(timeout_ms=250)
            for tp, records in batches.items():
                for record in records:
                    decoded = decode_message(record.value, kind)
                    assert not decoded.rejected, decoded.rejected[:1]
                    out += [(tp.partition, event) for event in decoded.events]
            if len(out) < expected or batches:
                quiet_since = None
            elif quiet_since is None:
                quiet_since = asyncio.get_running_loop().time()
            elif asyncio.get_running_loop().time() - quiet_since > 1.0:
                break
        return out
    finally:
        await consumer.stop()


def _assert_exactly_once_on_its_partition(
    received: list[tuple[int, Any]], sent: collections.Counter[str]
) -> None:
    got = collections.Counter(event.event_id for _, event in received)
    assert got == sent
    assert all(
        partition == partition_for(event.event_id, PARTITIONS) for partition, event in received
    )


def _traffic(events: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    pairs = list(generate(events=events, seed=7, start_ts=START, duplicate_label_rate=0.0))
    return ([e for k, e in pairs if k == "prediction"], [e for k, e in pairs if k == "label"])


def test_async_client_delivers_every_event_once_on_its_partition(broker: Any) -> None:
    bootstrap, prefix = broker.bootstrap_servers, _prefix()
    _create_topics(bootstrap, prefix)
    predictions, labels = _traffic(3000)

    async def run() -> tuple[dict[str, int], list[tuple[int, Any]], list[tuple[int, Any]]]:
        client = MonitorClient(
            bootstrap, topic_prefix=prefix, max_batch_events=200, max_batch_bytes=60_000
        )
        await client.start()
        for event in predictions:
            assert client.log("prediction", event)
            await asyncio.sleep(0)
        for event in labels:
            assert client.log_label(**event)
        await client.close()
        topics = Topics(prefix)
        return (
            client.stats,
            await _consume(bootstrap, topics.predictions, "prediction", len(predictions)),
            await _consume(bootstrap, topics.labels, "label", len(labels)),
        )

    stats, got_predictions, got_labels = asyncio.run(run())
    assert stats["sent_events"] == len(predictions) + len(labels)
    assert stats["dropped_events"] == stats["rejected_events"] == stats["buffered"] == 0
    assert stats["sent_messages"] > (len(predictions) * 700) // 60_000  # the byte bound split them
    _assert_exactly_once_on_its_partition(
        got_predictions, collections.Counter(e["event_id"] for e in predictions)
    )
    _assert_exactly_once_on_its_partition(
        got_labels, collections.Counter(e["event_id"] for e in labels)
    )


def test_sync_client_delivers_every_event_once_on_its_partition(broker: Any) -> None:
    bootstrap, prefix = broker.bootstrap_servers, _prefix()
    _create_topics(bootstrap, prefix)
    ids = [f"sync-{i}" for i in range(4000)]
    with SyncMonitorClient(bootstrap, topic_prefix=prefix, max_batch_events=300) as client:
        for i, event_id in enumerate(ids):
            assert client.log_prediction(
                event_id=event_id,
                model="m",
                task="binary",
                prediction=i % 2,
                score=0.5,
                ts=START + i,
            )
            assert client.log_label(event_id=event_id, label=(i // 2) % 2, ts=START + i + 10)
        client.flush(timeout=60)
        stats = client.stats
    assert stats["sent_events"] == 2 * len(ids) and stats["dropped_events"] == 0
    topics = Topics(prefix)
    for topic, kind in ((topics.predictions, "prediction"), (topics.labels, "label")):
        received = asyncio.run(_consume(bootstrap, topic, kind, len(ids)))
        _assert_exactly_once_on_its_partition(received, collections.Counter(ids))


def test_simulate_sends_what_it_reports(broker: Any) -> None:
    bootstrap, prefix = broker.bootstrap_servers, _prefix()
    _create_topics(bootstrap, prefix)
    summary = asyncio.run(
        simulate(bootstrap, events=1500, seed=2, topic_prefix=prefix, start_ts=START)
    )
    topics = Topics(prefix)
    labels = asyncio.run(_consume(bootstrap, topics.labels, "label", summary.labels))
    predictions = asyncio.run(
        _consume(bootstrap, topics.predictions, "prediction", summary.predictions)
    )
    assert len(predictions) == summary.predictions == 1500
    assert len(labels) == summary.labels
    distinct = {event.event_id for _, event in labels}
    assert summary.labels - len(distinct) == summary.duplicate_labels
    assert summary.predictions - len(distinct) == summary.missing_labels
    assert summary.first_ts == START
    assert summary.last_ts * 1000 == pytest.approx(
        max(e.ts_ms for _, e in labels + predictions), abs=1
    )

"""Measurement 1, the limit: raw aiokafka ``getmany`` + orjson decode of every message of the
predictions and labels topics, no processing. Run as ``python -m bench.raw_limit``."""

from __future__ import annotations

import argparse
import asyncio
import time

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from bench.common import emit


async def consume(bootstrap: str, topics: list[str], messages: int) -> dict[str, float]:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=8 * 1_048_576,
        fetch_max_bytes=32 * 1_048_576,
    )
    await consumer.start()
    try:
        tps = [
            TopicPartition(t, p) for t in topics for p in sorted(consumer.partitions_for_topic(t))
        ]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        seen = events = 0
        first = last = 0.0
        while seen < messages:
            batches = await consumer.getmany(timeout_ms=1000, max_records=10_000)
            if batches and not first:
                first = time.monotonic()
            for records in batches.values():
                for r in records:
                    obj = orjson.loads(r.value)
                    events += len(obj["events"]) if "events" in obj else 1
                seen += len(records)
            if batches:
                last = time.monotonic()
        span = last - first
        return {"messages": seen, "events": events, "seconds": span}
    finally:
        await consumer.stop()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bootstrap", required=True)
    ap.add_argument("--topics", required=True, help="comma-separated")
    ap.add_argument("--messages", type=int, required=True, help="stop after this many")
    ap.add_argument("--out", required=True, help="result JSON path")
    a = ap.parse_args()
    # warm-up of the connection is outside the timed span: it runs from the first fetched
    # batch to the last, like the other consumers' spans
    emit(asyncio.run(consume(a.bootstrap, a.topics.split(","), a.messages)), a.out)


if __name__ == "__main__":
    main()

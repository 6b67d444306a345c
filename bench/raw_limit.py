"""Measurement 1, the limit: raw aiokafka ``getmany`` + orjson decode of every message of the
predictions and labels topics, no processing. Run as ``python -m bench.raw_limit``.

With ``--validate`` each message goes through modelmon's own decoder instead
(:func:`schemas.codec.decode_message`: parse and validate every event, as the compute worker
must before anything else): the most any monitor that checks its input can reach here."""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Callable

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from bench.common import emit
from schemas.codec import decode_message

#: Events in one message value of a topic.
Decode = Callable[[str, bytes], int]


def parsed(topic: str, value: bytes) -> int:
    """Parse with orjson, nothing else."""
    obj = orjson.loads(value)
    return len(obj["events"]) if "events" in obj else 1


def validator(kinds: dict[str, str]) -> Decode:
    """Parse and validate with modelmon's decoder (``kinds``: event kind of each topic)."""

    def validated(topic: str, value: bytes) -> int:
        decoded = decode_message(value, kinds[topic])
        if decoded.rejected:
            raise ValueError(f"{topic}: {decoded.rejected[0].reason}")
        return len(decoded.events)

    return validated


async def consume(
    bootstrap: str, topics: list[str], messages: int, decode: Decode = parsed
) -> dict[str, float]:
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
                    events += decode(r.topic, r.value)
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
    ap.add_argument(
        "--validate",
        metavar="KINDS",
        help="decode with modelmon's validation; the kind of each topic's events, e.g. "
        "prediction,label",
    )
    a = ap.parse_args()
    topics = a.topics.split(",")
    decode: Decode = parsed
    if a.validate:
        decode = validator(dict(zip(topics, a.validate.split(","), strict=True)))
    # warm-up of the connection is outside the timed span: it runs from the first fetched
    # batch to the last, like the other consumers' spans
    emit(asyncio.run(consume(a.bootstrap, topics, a.messages, decode)), a.out)


if __name__ == "__main__":
    main()

"""Per-partition checkpoints: the event-time watermark that held at each committed offset,
the state of the partition's drift detectors, and the last window start whose state was
dropped (its final rows were emitted before the record was written).

Kafka keeps the committed offsets, but not (on every broker) the metadata next to them, so
the watermark of each input topic at its committed offset lives in a small topic of its own,
one record per change, in the partition of the same number. A record also carries the
previous position: the offsets are committed right after the record is written, so the
committed offset is one of the two even if the worker died in between.

>>> rec = Checkpoint(3, {"p": Mark(10, 5000)}, {"p": Mark(7, 4000)})
>>> Checkpoint.decode(rec.encode()).find("p", 7)
(Mark(offset=7, max_ts=4000), {})
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from pipeline.windows import Mark

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """Marks by input topic for one partition, and the partition's detector state there: the
    current ones and the previous ones; the last window start evicted, by window spec, when
    it was written
    (events of it or earlier that are re-read after a restart were folded already); and, by
    input topic, the offset before which every message was read and its misrouted events
    re-routed (sent and acknowledged) when it was written."""

    partition: int
    current: Mapping[str, Mark]
    previous: Mapping[str, Mark] = field(default_factory=dict)
    state: Mapping[str, Any] = field(default_factory=dict)
    previous_state: Mapping[str, Any] = field(default_factory=dict)
    evicted_through: Mapping[str, int] = field(default_factory=dict)
    read: Mapping[str, int] = field(default_factory=dict)

    def find(self, topic: str, offset: int) -> tuple[Mark, Mapping[str, Any]] | None:
        """The mark of ``topic`` at ``offset`` and the state saved with it, if recorded."""
        for positions, state in ((self.current, self.state), (self.previous, self.previous_state)):
            mark = positions.get(topic)
            if mark is not None and mark.offset == offset:
                return mark, state
        return None

    def encode(self) -> bytes:
        return orjson.dumps(
            {
                "partition": self.partition,
                "current": {t: [p.offset, p.max_ts] for t, p in self.current.items()},
                "previous": {t: [p.offset, p.max_ts] for t, p in self.previous.items()},
                "state": self.state,
                "previous_state": self.previous_state,
                "evicted_through": dict(self.evicted_through),
                "read": dict(self.read),
            }
        )

    @classmethod
    def decode(cls, raw: bytes) -> Checkpoint:
        obj = orjson.loads(raw)
        return cls(
            obj["partition"],
            {t: Mark(*v) for t, v in obj["current"].items()},
            {t: Mark(*v) for t, v in obj["previous"].items()},
            obj.get("state", {}),
            obj.get("previous_state", {}),
            _by_window(obj.get("evicted_through")),
            obj.get("read", {}),
        )


async def read_checkpoints(
    bootstrap_servers: str,
    topic: str,
    partitions: Iterable[int],
    client_config: Mapping[str, Any],
) -> dict[int, list[Checkpoint]]:
    """Every checkpoint record of each of ``partitions``, oldest first: one consumer for all
    of them, as a worker needs those of every partition it was assigned."""
    tps = [TopicPartition(topic, p) for p in sorted(set(partitions))]
    out: dict[int, list[Checkpoint]] = {tp.partition: [] for tp in tps}
    if not tps:
        return out
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap_servers, enable_auto_commit=False, **dict(client_config)
    )
    await consumer.start()
    try:
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        reading = set(tps)
        while reading:
            batch = await consumer.getmany(*reading, timeout_ms=50)
            for tp, messages in batch.items():
                for m in messages:
                    try:
                        out[tp.partition].append(Checkpoint.decode(m.value))
                    except (ValueError, KeyError, TypeError) as exc:
                        # A record that cannot be read is as good as none: the partition's
                        # watermark restarts from the data if the committed offset needed it.
                        log.warning(
                            "skipping checkpoint %s[%d]@%d: %r",
                            tp.topic,
                            tp.partition,
                            m.offset,
                            exc,
                        )
            for tp in list(reading):
                # The end is the high watermark of a fetch answered after this call began
                # (every record it needs was acknowledged before), not end_offsets(): some
                # brokers (Tansu) answer that with the base offset of the last batch.
                end = consumer.highwater(tp)
                if end is not None and await consumer.position(tp) >= end:
                    reading.discard(tp)
        return out
    finally:
        await consumer.stop()


def _by_window(value: Any) -> dict[str, int]:
    """``evicted_through`` as written: by window spec; a record written before families
    could have windows of their own holds the one window's start ("": whatever it is)."""
    if value is None:
        return {}
    if isinstance(value, int):
        return {"": value}
    return {str(k): int(v) for k, v in value.items()}

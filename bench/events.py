"""The benchmark's fixed, seeded event set: predictions and delayed labels of 3 models.

Every event has 20 features (14 numeric, 6 categorical) and a segment tag. Event time runs at
a fixed rate (``rate`` predictions per second of event time), so more events means more
windows at the same cardinality (models x segments x features), never denser windows. The
second half of the numeric features drifts from the middle of the run on.

The same events are produced twice: as envelopes (500 events of one partition per message,
as modelmon's producers send them) and as single-event messages keyed by ``event_id``.

>>> a = list(generate(300, seed=3, start_ts=1_700_000_000.0))
>>> a == list(generate(300, seed=3, start_ts=1_700_000_000.0))
True
>>> sum(k == "prediction" for k, _ in a), all(a[i][1]["ts"] <= a[i + 1][1]["ts"]
...                                            for i in range(len(a) - 1))
(300, True)
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from schemas.codec import encode_envelope, encode_event
from schemas.topics import Topics, partition_for

MODELS: dict[str, list[str]] = {  # model -> classes
    "fraud": ["0", "1"],
    "churn": ["0", "1"],
    "intent": ["0", "1", "2", "3"],
}
TASKS = {"fraud": "binary", "churn": "binary", "intent": "multiclass"}
SEGMENTS = ["eu", "us", "apac"]
NUMERIC = [f"n{i:02d}" for i in range(14)]
CATEGORICAL = [f"c{i:02d}" for i in range(6)]
VOCAB = [f"v{i}" for i in range(8)]
ENVELOPE_EVENTS = 500
CHUNK = 2000


@dataclass(frozen=True, slots=True)
class EventSetSpec:
    events: int  # predictions
    seed: int = 0
    start_ts: float = 1_700_000_000.0
    rate: float = 1000.0  # predictions per second of event time
    label_delay_s: tuple[float, float] = (0.5, 5.0)
    missing_label_rate: float = 0.03


def generate(
    events: int,
    *,
    seed: int = 0,
    start_ts: float = 1_700_000_000.0,
    rate: float = 1000.0,
    label_delay_s: tuple[float, float] = (0.5, 5.0),
    missing_label_rate: float = 0.03,
) -> Iterator[tuple[str, dict[str, Any]]]:
    """``(kind, event)`` in send order (by ``ts``): predictions, and labels once event time
    passed theirs. Deterministic for the arguments."""
    rng = np.random.default_rng(seed)
    names = list(MODELS)
    pending: list[tuple[float, int, dict[str, Any]]] = []
    seq = 0
    drift_from = events // 2
    for first in range(0, events, CHUNK):
        n = min(CHUNK, events - first)
        idx = np.arange(first, first + n)
        ts = np.round(start_ts + idx / rate, 3)
        model = rng.integers(0, len(names), n)
        seg = rng.integers(0, len(SEGMENTS), n)
        num = rng.normal(0.0, 1.0, (n, len(NUMERIC)))
        num[idx >= drift_from, 7:] += 0.75
        num = np.round(num, 4).tolist()
        cat = rng.integers(0, len(VOCAB), (n, len(CATEGORICAL))).tolist()
        logits = rng.normal(0.0, 1.5, (n, 4))
        truth_u = rng.random(n)
        fate = rng.random(n)
        delay = rng.uniform(*label_delay_s, n)
        for j in range(n):
            m = names[model[j]]
            classes = MODELS[m]
            k = len(classes)
            z = logits[j, :k]
            p = np.exp(z - z.max())
            p /= p.sum()
            probs = np.round(p, 4)
            pred = classes[int(np.argmax(p))]
            # the truth follows the model's probabilities, so quality is realistic
            truth = classes[min(int(np.searchsorted(np.cumsum(p), truth_u[j])), k - 1)]
            t = float(ts[j])
            while pending and pending[0][0] <= t:
                yield "label", heapq.heappop(pending)[2]
            event_id = f"b{seed}-{first + j}"
            yield (
                "prediction",
                {
                    "event_id": event_id,
                    "model": m,
                    "model_version": "v1",
                    "ts": t,
                    "task": TASKS[m],
                    "prediction": pred,
                    "probabilities": dict(zip(classes, probs.tolist(), strict=True)),
                    "features": {
                        **dict(zip(NUMERIC, num[j], strict=True)),
                        **{c: VOCAB[v] for c, v in zip(CATEGORICAL, cat[j], strict=True)},
                    },
                    "segment": {"region": SEGMENTS[seg[j]]},
                },
            )
            if fate[j] < missing_label_rate:
                continue
            label_ts = round(t + float(delay[j]), 3)
            heapq.heappush(
                pending, (label_ts, seq, {"event_id": event_id, "ts": label_ts, "label": truth})
            )
            seq += 1
    while pending:
        yield "label", heapq.heappop(pending)[2]


def from_spec(spec: EventSetSpec) -> Iterator[tuple[str, dict[str, Any]]]:
    return generate(
        spec.events,
        seed=spec.seed,
        start_ts=spec.start_ts,
        rate=spec.rate,
        label_delay_s=spec.label_delay_s,
        missing_label_rate=spec.missing_label_rate,
    )


Message = tuple[str, int | None, bytes | None, bytes, int]  # topic, partition, key, value, events


def envelope_messages(
    events: Iterable[tuple[str, dict[str, Any]]], topics: Topics, partitions: int
) -> Iterator[Message]:
    """Envelopes of up to 500 events of one kind and partition, in send order per partition."""
    open_: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for kind, event in events:
        key = (kind, partition_for(event["event_id"], partitions))
        batch = open_.setdefault(key, [])
        batch.append(event)
        if len(batch) >= ENVELOPE_EVENTS:
            yield topics.for_kind(kind), key[1], None, encode_envelope(kind, batch), len(batch)
            open_[key] = []
    for (kind, partition), batch in open_.items():
        if batch:
            yield topics.for_kind(kind), partition, None, encode_envelope(kind, batch), len(batch)


def single_messages(
    events: Iterable[tuple[str, dict[str, Any]]], topics: Topics, partitions: int
) -> Iterator[Message]:
    """One event per message keyed by ``event_id`` (Kafka's default partitioner: murmur2)."""
    for kind, event in events:
        eid = event["event_id"]
        yield (
            topics.for_kind(kind),
            partition_for(eid, partitions),
            eid.encode(),
            encode_event(event),
            1,
        )


async def produce(bootstrap_servers: str, messages: Iterable[Message]) -> dict[str, float]:
    """Send every message (acks=all) and wait for the acks; returns counts and wall times."""
    import time

    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap_servers,
        enable_idempotence=False,
        acks="all",
        linger_ms=5,
        max_batch_size=1_048_576,
        max_request_size=2_097_152,
    )
    await producer.start()
    started = time.time()
    n_msgs = n_events = 0
    try:
        futures = []
        for topic, partition, key, value, count in messages:
            futures.append(await producer.send(topic, value, key=key, partition=partition))
            n_msgs += 1
            n_events += count
            if len(futures) >= 5000:
                for f in futures:
                    await f
                futures = []
        for f in futures:
            await f
    finally:
        await producer.stop()
    return {"messages": n_msgs, "events": n_events, "started": started, "ended": time.time()}

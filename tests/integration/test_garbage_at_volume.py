"""Garbage at volume: 100k events with about 10 % garbage interleaved (random bytes, truncated
JSON, wrong types, null values, an oversized message, bad events inside envelopes of good
ones). Every valid prediction and label is counted exactly once, every garbage message or
event is one dead letter with a reason, and none of the valid input is late."""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from producers.client import MonitorClient
from schemas.codec import encode_envelope
from schemas.topics import partition_for

pytestmark = pytest.mark.integration

START = 1_700_000_040.0  # on a minute boundary
PREDICTIONS = 50_000
LABELLED = 0.8
RATE = 100.0  # predictions per second of event time: 500 s, nine windows
BLOCK_SECONDS = 20  # of event time per block: shorter than the 30 s allowed lateness
MIXED_SHARE = 0.1  # valid events sent inside envelopes that also hold bad events
PARTITIONS = 3
OVERSIZED = 1_200_000  # above the default max_message_bytes


@dataclass
class Sent:
    """What went to the broker: the valid events and the raw form of every garbage item."""

    predictions: list[dict[str, Any]] = field(default_factory=list)
    labels: list[dict[str, Any]] = field(default_factory=list)
    # (topic suffix, whole message?, raw bytes the dead letter keeps)
    garbage: list[tuple[str, bool, bytes]] = field(default_factory=list)


def make_predictions(rng: random.Random) -> list[dict[str, Any]]:
    out = []
    for i in range(PREDICTIONS):
        ts = START + i / RATE
        segment = {"region": rng.choice(["eu", "us"])}
        if i % 2:
            score = round(rng.random(), 4)
            out.append(
                {
                    "event_id": f"b{i}",
                    "model": "bin",
                    "model_version": "v1",
                    "task": "binary",
                    "ts": ts,
                    "prediction": int(score >= 0.5),
                    "score": score,
                    "segment": segment,
                }
            )
        else:
            p = [rng.random() + 0.01 for _ in range(3)]
            total = sum(p)
            probabilities = {str(c): v / total for c, v in enumerate(p)}
            out.append(
                {
                    "event_id": f"m{i}",
                    "model": "multi",
                    "model_version": "v2",
                    "task": "multiclass",
                    "ts": ts,
                    "prediction": max(probabilities, key=probabilities.__getitem__),
                    "probabilities": probabilities,
                    "segment": segment,
                }
            )
    return out


def bad_event(rng: random.Random, kind: str, n: int) -> Any:
    """An event of ``kind`` that breaks its contract in one of many ways (never matches a valid
    event_id, so it cannot join anything)."""
    event_id = f"garbage-{kind}-{n}"
    if kind == "label":
        base: dict[str, Any] = {"event_id": event_id, "ts": START + 1, "label": 1}
        breakages: list[dict[str, Any]] = [
            {"label": None},
            {"ts": "yesterday"},
            {"ts": -5},
            {"event_id": ""},
            {"event_id": 17},
            {"label": {"a": 1}},
            {"label": []},
            {"schema_version": 7},
        ]
    else:
        base = {
            "event_id": event_id,
            "model": "bin",
            "task": "binary",
            "ts": START + 1,
            "prediction": 1,
        }
        breakages = [
            {"model": 7},
            {"task": "clustering"},
            {"score": 1.5},
            {"prediction": 2},
            {"ts": None},
            {"ts": "2023-11-14T22:13:20"},
            {"model": ""},
            {"probabilities": {"1": 2.0}},
            {"segment": {"a": "b=c"}},
            {"latency_ms": -1},
            {"features": {"v": [[1.0], [2.0]]}},
        ]
    if rng.random() < 0.1:
        return rng.choice(["not an object", 42, None, [1, 2], True])
    return {k: v for k, v in {**base, **rng.choice(breakages)}.items() if v is not None}


def garbage_message(rng: random.Random, kind: str, n: int) -> bytes | None:
    """A whole message that is garbage: one dead letter each."""
    choice = rng.randrange(8)
    if choice == 0:
        return rng.randbytes(rng.randint(1, 300))
    if choice == 1:  # truncated JSON: a prefix of an object is never valid JSON
        whole = encode_envelope(kind, [bad_event(rng, kind, n)])
        return whole[: rng.randint(1, len(whole) - 1)]
    if choice == 2:
        return orjson.dumps(rng.choice([[1, 2], "text", 3.5, None, True]))
    if choice == 3:  # the other kind's envelope on this topic
        other = "label" if kind == "prediction" else "prediction"
        return encode_envelope(other, [])
    if choice == 4:
        return orjson.dumps({"schema_version": 2, "kind": kind, "events": []})
    if choice == 5:
        return orjson.dumps({"schema_version": 1, "kind": kind, "events": {"a": 1}})
    if choice == 6:  # one bad event per message, as other producers send them
        event = bad_event(rng, kind, n)
        return orjson.dumps(event if isinstance(event, dict) else {"event_id": event})
    return None if rng.random() < 0.05 else b"\x00" * rng.randint(1, 20)


def mixed_envelope(
    rng: random.Random, kind: str, valid: list[dict[str, Any]], n: int
) -> tuple[bytes, list[bytes]]:
    """Valid events of one partition with bad events shuffled in; some written with NaN tokens
    by the standard encoder. Returns the message and the raw bytes of each bad event."""
    items: list[Any] = list(valid)
    bad = [bad_event(rng, kind, n * 100 + j) for j in range(rng.randint(1, 8))]
    for b in bad:
        items.insert(rng.randint(0, len(items)), b)
    envelope = {"schema_version": 1, "kind": kind, "events": items}
    if kind == "prediction" and rng.random() < 0.3:
        # a NaN score in one bad event: the whole message is read by the fallback parser
        nan_event = {
            "event_id": f"garbage-nan-{n}",
            "model": "bin",
            "task": "binary",
            "ts": START + 1,
            "score": float("nan"),
        }
        items.insert(rng.randint(0, len(items)), nan_event)
        bad.append({**nan_event, "score": None})  # orjson writes NaN back as null
        return json.dumps(envelope).encode(), [orjson.dumps(b) for b in bad]
    return encode_envelope(kind, items), [orjson.dumps(b) for b in bad]


def blocks(events: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Events (in ts order) cut into spans of BLOCK_SECONDS of event time: whatever order a
    block's messages reach the broker in, none is later than the allowed lateness."""
    out: dict[int, list[dict[str, Any]]] = {}
    for event in events:
        out.setdefault(int((event["ts"] - START) // BLOCK_SECONDS), []).append(event)
    return [out[k] for k in sorted(out)]


async def produce(bootstrap: str, prefix: str, seed: int) -> Sent:
    rng = random.Random(seed)
    sent = Sent()
    preds = make_predictions(rng)
    labels = [
        {"event_id": p["event_id"], "ts": p["ts"] + rng.uniform(1, 60), "label": rng.choice("01")}
        if p["model"] == "bin"
        else {
            "event_id": p["event_id"],
            "ts": p["ts"] + rng.uniform(1, 60),
            "label": rng.choice("012"),
        }
        for p in preds
        if rng.random() < LABELLED
    ]
    labels.sort(key=lambda lab: lab["ts"])
    client = MonitorClient(bootstrap, topic_prefix=prefix, linger_ms=20)
    raw = AIOKafkaProducer(
        bootstrap_servers=bootstrap, enable_idempotence=False, max_request_size=4_000_000
    )
    await client.start()
    await raw.start()
    counter = mixed = 0
    try:
        for kind, events, suffix in (
            ("prediction", preds, "predictions"),
            ("label", labels, "labels"),
        ):
            topic = prefix + suffix
            for block in blocks(events):
                pending = []
                by_partition: dict[int, list[dict[str, Any]]] = {}
                for event in block:
                    if rng.random() < MIXED_SHARE:
                        p = partition_for(event["event_id"], PARTITIONS)
                        by_partition.setdefault(p, []).append(event)
                        mixed += 1
                    else:
                        assert client.log(kind, event)
                    (sent.predictions if kind == "prediction" else sent.labels).append(event)
                for p, valid in by_partition.items():
                    for i in range(0, len(valid), 10):
                        counter += 1
                        value, bad = mixed_envelope(rng, kind, valid[i : i + 10], counter)
                        pending.append(await raw.send(topic, value, partition=p))
                        sent.garbage.extend((suffix, False, b) for b in bad)
                for _ in range(rng.randint(110, 150)):
                    counter += 1
                    value = garbage_message(rng, kind, counter)
                    pending.append(await raw.send(topic, value, key=str(counter).encode()))
                    sent.garbage.append((suffix, True, value or b""))
                await client.flush()
                await asyncio.gather(*pending)
        oversized = orjson.dumps({"event_id": "huge", "pad": "x" * OVERSIZED})
        await raw.send_and_wait(prefix + "predictions", oversized, key=b"huge")
        sent.garbage.append(("predictions", True, oversized))
    finally:
        await client.close()
        await raw.stop()
    stats = client.stats
    assert stats["dropped_events"] == stats["rejected_events"] == 0, stats
    assert stats["sent_events"] == len(sent.predictions) + len(sent.labels) - mixed, stats
    return sent


def window_of(ts: float) -> int:
    ms = round(ts * 1000)
    return ms - ms % 60_000


def expected_windows(sent: Sent) -> dict[tuple[str, str, str, int], tuple[int, int]]:
    labelled = {lab["event_id"] for lab in sent.labels}
    counts: dict[tuple[str, str, str, int], list[int]] = {}
    for p in sent.predictions:
        segment = f"region={p['segment']['region']}"
        key = (p["model"], p["model_version"], segment, window_of(p["ts"]))
        c = counts.setdefault(key, [0, 0])
        c[0] += 1
        c[1] += p["event_id"] in labelled
    return {k: (v[0], v[1]) for k, v in counts.items()}


def test_garbage_at_volume_costs_no_valid_event_and_each_is_one_dead_letter(
    deployment: Any,
) -> None:
    d = deployment(partitions=PARTITIONS)
    began = time.monotonic()
    sent = asyncio.run(produce(d.bootstrap_servers, d.prefix, seed=11))
    produced = time.monotonic()
    total = len(sent.predictions) + len(sent.labels) + len(sent.garbage)
    share = len(sent.garbage) / total
    assert 0.08 < share < 0.12 and total >= 95_000, (total, share)
    d.run_worker()
    print(
        f"{total} items ({len(sent.garbage)} garbage, {share:.1%}): produced in "
        f"{produced - began:.1f}s, worker {time.monotonic() - produced:.1f}s"
    )

    rows = d.query(
        "SELECT model, model_version, segment, toUnixTimestamp64Milli(window_start) AS ws,"
        " predictions, labelled FROM quality_windows"
    )
    actual = {
        (r["model"], r["model_version"], r["segment"], r["ws"]): (r["predictions"], r["labelled"])
        for r in rows
    }
    assert len(rows) == len(actual)
    # On a mismatch, the compute's counters tell input counted late (it reached the broker out
    # of order) from input never folded.
    stats = {
        r["counter"]: r["value"]
        for r in d.query("SELECT counter, value FROM pipeline_stats WHERE stage = 'compute'")
    }
    assert actual == expected_windows(sent), stats

    dead = d.query(
        "SELECT source_topic, event_index, reason, detail, raw_size, lower(hex(raw)) AS raw"
        " FROM dead_letters"
    )
    assert len(dead) == len(sent.garbage)
    assert all(r["reason"].strip() and r["detail"].strip() for r in dead)
    # the reasons are codes, however varied the garbage: a handful, not one per message
    assert len({r["reason"] for r in dead}) < 40, Counter(r["reason"] for r in dead)
    got = Counter(
        (r["source_topic"].removeprefix(d.prefix), r["event_index"] == -1, r["raw"]) for r in dead
    )
    expected = Counter((topic, whole, raw[:65_536].hex()) for topic, whole, raw in sent.garbage)
    assert got == expected
    assert any(r["raw_size"] > OVERSIZED and r["reason"] == "message_too_large" for r in dead)

"""Hostile names end to end: model names, versions, segment tags, feature names and event ids
with quotes, backticks, SQL, backslashes, newlines and non-ASCII text go through the broker,
the worker, the derive step's queries and ClickHouse byte for byte, and every table survives.
"""

from __future__ import annotations

import asyncio
import random
import re
from collections import Counter
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from pipeline.reference import profile_rows, publish
from pipeline.settings import Settings
from pipeline.sink.tables import Schema, view_settings
from producers.client import MonitorClient

pytestmark = pytest.mark.integration

START = 1_700_000_040.0
MINUTES = 3
RATE = 5  # predictions per second of event time, per model

DROP = "'; DROP TABLE quality_partials; --"
MODELS = {  # model -> version
    DROP: 'v1"); DROP TABLE drift_rows; --',
    'it\'s `quoted` "twice"': "back\\slash\\",
    "new\nline\tand\r\nreturn": "ünïcödé 漢字 🙂",
    "back\\'; SELECT 1; --\\": "nul\x00byte",
}
PROFILED = DROP  # the model with an uploaded reference profile
SEGMENTS = [  # tag names and values may hold anything but '=' and ','
    {"re'gion": 'eu"; DROP TABLE drift; --', "tier`": 1},
    {"re'gion": "new\nline\\", "tier`": 2},
    {"ключ": "🙂 `x` 'y'"},
]
NUMERIC = "amo'unt\"; DROP TABLE data_quality_rows; --"
CATEGORICAL = "cou`ntry\\\n"
CATEGORIES = ["fr'", 'de"', "es\\", "`it`", "ü\n"]
WORKER = {"window": "60s", "lateness_seconds": 10, "label_ttl_seconds": 60}


def segment_key(tags: dict[str, Any]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(tags.items()))


def traffic(seed: int) -> tuple[list[tuple[str, dict[str, Any]]], Counter[tuple[str, ...]]]:
    """Predictions and labels in event-time order, and the predictions per quality window."""
    rng = random.Random(seed)
    out: list[tuple[str, dict[str, Any]]] = []
    counts: Counter[tuple[str, ...]] = Counter()
    for i in range(MINUTES * 60 * RATE):
        ts = START + i / RATE
        for m, (model, version) in enumerate(MODELS.items()):
            tags = SEGMENTS[(i + m) % len(SEGMENTS)]
            event_id = f"{model}|'\"`\\{i}"
            y = rng.choice("01")
            out.append(
                (
                    "prediction",
                    {
                        "event_id": event_id,
                        "model": model,
                        "model_version": version,
                        "task": "binary",
                        "ts": ts,
                        "prediction": int(y),
                        "score": round(rng.random(), 4),
                        "segment": tags,
                        "features": {
                            NUMERIC: round(rng.gauss(10, 2), 3),
                            CATEGORICAL: rng.choice(CATEGORIES),
                        },
                    },
                )
            )
            out.append(("label", {"event_id": event_id, "ts": ts + rng.uniform(1, 5), "label": y}))
            ms = round(ts * 1000)
            counts[(model, version, segment_key(tags), str(ms - ms % 60_000))] += 1
    out.sort(key=lambda item: item[1]["ts"])
    return out, counts


def reference(seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    return [{NUMERIC: rng.gauss(10, 2), CATEGORICAL: rng.choice(CATEGORIES)} for _ in range(2000)]


def bad_messages() -> list[tuple[str, bytes, bytes, str]]:
    """(topic suffix, value, raw bytes its dead letter keeps, text its detail must hold)."""
    unknown_task = orjson.dumps(
        {"event_id": "x'", "model": DROP, "task": DROP, "ts": START, "prediction": 1}
    )
    bad_label = {"event_id": DROP}
    envelope = orjson.dumps(
        {
            "schema_version": 1,
            "kind": "label",
            "events": [{"event_id": "unmatched", "ts": START, "label": 1}, bad_label],
        }
    )
    not_json = "`\\\n'\"🙂".encode()
    return [
        ("predictions", unknown_task, unknown_task, f"unknown task type {DROP!r}"),
        ("predictions", DROP.encode(), DROP.encode(), "not valid JSON"),
        ("labels", envelope, orjson.dumps(bad_label), "label: required field is missing"),
        ("labels", not_json, not_json, "not valid JSON"),
    ]


async def produce(bootstrap: str, prefix: str, events: list[tuple[str, dict[str, Any]]]) -> None:
    await publish(profile_rows(reference(5), PROFILED, MODELS[PROFILED]), bootstrap, prefix)
    async with MonitorClient(bootstrap, topic_prefix=prefix, linger_ms=5) as client:
        for kind, event in events:
            assert client.log(kind, event), event
        await client.flush()
    raw = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=False)
    await raw.start()
    try:
        for suffix, value, _, _ in bad_messages():
            await raw.send_and_wait(prefix + suffix, value, key=DROP.encode())
    finally:
        await raw.stop()


def created(db: str) -> set[str]:
    """Every table and view the sink's migrations create."""
    settings = Settings(**WORKER)
    statements = Schema.of(settings).ddl(db, view_settings(settings))
    pattern = re.compile(rf"CREATE (?:TABLE IF NOT EXISTS|OR REPLACE VIEW) {db}\.(\w+)")
    return {m.group(1) for s in statements for m in pattern.finditer(s)}


def test_hostile_names_round_trip_and_every_table_survives(deployment: Any) -> None:
    d = deployment(partitions=2)
    events, counts = traffic(seed=1)
    asyncio.run(produce(d.bootstrap_servers, d.prefix, events))
    d.run_worker(**WORKER)

    quality = d.query(
        "SELECT model, model_version, segment, toString(toUnixTimestamp64Milli(window_start))"
        " AS ws, predictions, labelled FROM quality_windows"
    )
    got = {(r["model"], r["model_version"], r["segment"], r["ws"]): r for r in quality}
    assert {k: r["predictions"] for k, r in got.items()} == dict(counts)
    assert {k: r["labelled"] for k, r in got.items()} == dict(counts)

    # Byte for byte: compare the bytes ClickHouse holds, not only what the driver decoded.
    names = d.query(
        "SELECT DISTINCT hex(model) AS m, hex(model_version) AS v, hex(segment) AS s"
        " FROM quality_windows"
    )
    expected_names = {
        (m.encode().hex().upper(), v.encode().hex().upper(), segment_key(t).encode().hex().upper())
        for m, v in MODELS.items()
        for t in SEGMENTS
    }
    assert {(r["m"], r["v"], r["s"]) for r in names} == expected_names

    for view in ("drift", "data_quality"):
        rows = d.query(f"SELECT DISTINCT model, model_version, segment, feature FROM {view}")
        keys = {(r["model"], r["model_version"], r["segment"]) for r in rows}
        assert keys == {(m, v, segment_key(t)) for m, v in MODELS.items() for t in SEGMENTS}
        features = {r["feature"] for r in rows if not r["feature"].startswith("__")}
        assert features == {NUMERIC, CATEGORICAL}, view

    references = d.query(
        "SELECT model, model_version, feature, reference FROM drift WHERE method = 'decision'"
    )
    profiled = {
        r["reference"]
        for r in references
        if r["model"] == PROFILED and r["feature"] in (NUMERIC, CATEGORICAL)
    }
    assert profiled == {"profile:default"}
    stored = d.query("SELECT DISTINCT model, model_version, feature FROM reference_profiles")
    assert {(r["model"], r["model_version"], r["feature"]) for r in stored} == {
        (PROFILED, MODELS[PROFILED], NUMERIC),
        (PROFILED, MODELS[PROFILED], CATEGORICAL),
    }

    dead = d.query("SELECT source_topic, detail, lower(hex(raw)) AS raw FROM dead_letters")
    bad = bad_messages()
    assert len(dead) == len(bad)
    by_raw = {r["raw"]: r for r in dead}
    for suffix, _, kept, detail in bad:
        row = by_raw[kept.hex()]
        assert row["source_topic"] == d.prefix + suffix
        assert detail in row["detail"], (detail, row["detail"])

    existing = d.query("SELECT name FROM system.tables WHERE database = 'modelmon'")
    assert created("modelmon") <= {r["name"] for r in existing}
    counts_sql = ", ".join(
        f"(SELECT count() FROM modelmon.{name}) AS {name}" for name in sorted(created("modelmon"))
    )
    (sizes,) = d.query(f"SELECT {counts_sql}")  # every table and view still answers
    for table in ("quality_partials", "drift_rows", "data_quality_rows", "dead_letters_rows"):
        assert sizes[table] > 0, table

"""Drift through a real broker, worker processes and chDB: a drifted feed is flagged, an
undrifted one is not, and a worker restarted mid-stream (resuming from its checkpoint) ends
with the same drift, detector and quality rows as one that ran undisturbed."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest

from pipeline.reference import profile_rows, publish
from producers.client import MonitorClient

pytestmark = pytest.mark.integration

START = 1_700_000_040.0
MINUTES = 8
RATE = 20  # predictions per second of event time, per model


def traffic(seed: int) -> list[tuple[str, dict[str, Any]]]:
    """Two models over eight minutes: 'steady' keeps its feature and score distributions,
    'shifting' moves them (and errs more) from minute four on. Labels follow 5-40 s later."""
    rng = random.Random(seed)
    predictions, labels = [], []
    for i in range(MINUTES * 60 * RATE):
        ts = START + i / RATE
        for model in ("steady", "shifting"):
            late = model == "shifting" and ts >= START + 240
            y = rng.choice("01")
            right = rng.random() < (0.6 if late else 0.9)
            score = min(max(rng.gauss(0.75 if late else 0.5, 0.1), 0.0), 1.0)
            event_id = f"{model}-{i}"
            predictions.append(
                {
                    "event_id": event_id,
                    "model": model,
                    "task": "binary",
                    "ts": ts,
                    "prediction": int(y if right else "10"[int(y)]),
                    "score": round(score, 4),
                    "features": {
                        "amount": round(rng.lognormvariate(3.0 + (1.0 if late else 0.0), 0.5), 3),
                        "country": rng.choice(["fr", "de", "es"] + (["br"] * 3 if late else [])),
                    },
                }
            )
            labels.append((ts + rng.uniform(5, 40), {"event_id": event_id, "label": int(y)}))
    labels.sort(key=lambda item: item[0])
    out = [("prediction", p) for p in predictions]
    out += [("label", {**lab, "ts": ts}) for ts, lab in labels]
    return sorted(out, key=lambda item: item[1]["ts"])


def reference(seed: int) -> list[dict[str, Any]]:
    """Training data of both models: the undrifted distributions."""
    rng = random.Random(seed)
    return [
        {"amount": rng.lognormvariate(3.0, 0.5), "country": rng.choice(["fr", "de", "es"])}
        for _ in range(5000)
    ]


async def send(bootstrap: str, prefix: str, events: list[tuple[str, dict[str, Any]]]) -> None:
    async with MonitorClient(bootstrap, topic_prefix=prefix, linger_ms=5) as client:
        for kind, event in events:
            assert client.log(kind, event)
        await client.flush()


async def upload_references(bootstrap: str, prefix: str) -> None:
    for model in ("steady", "shifting"):
        await publish(profile_rows(reference(7), model=model), bootstrap, prefix)


WORKER = {"window_seconds": 60, "lateness_seconds": 10, "label_ttl_seconds": 60}
TABLES = {
    "quality": "SELECT model, toUnixTimestamp64Milli(window_start) AS ws, predictions, labelled,"
    " accuracy, roc_auc FROM quality_windows ORDER BY model, ws",
    "drift": "SELECT model, toUnixTimestamp64Milli(window_start) AS ws, feature, method, reference,"
    " statistic, drifted FROM drift ORDER BY model, ws, feature, method",
    "detections": "SELECT model, stream, detector, partition, position,"
    " toUnixTimestamp64Milli(ts) AS ts, event_id FROM drift_detections"
    " ORDER BY model, stream, detector, partition, position",
}


def results(d: Any) -> dict[str, list[dict[str, Any]]]:
    return {name: d.query(sql) for name, sql in TABLES.items()}


def test_drifted_feed_is_flagged_and_a_restart_changes_no_result(deployment: Any) -> None:
    events = traffic(seed=3)
    undisturbed, restarted = deployment(partitions=2), deployment(partitions=2)
    for d in (undisturbed, restarted):
        asyncio.run(upload_references(d.bootstrap_servers, d.prefix))

    asyncio.run(send(undisturbed.bootstrap_servers, undisturbed.prefix, events))
    undisturbed.run_worker(**WORKER)

    half = len(events) // 2
    asyncio.run(send(restarted.bootstrap_servers, restarted.prefix, events[:half]))
    restarted.run_worker(**WORKER)
    committed = asyncio.run(restarted.committed("predictions", "labels"))
    asyncio.run(send(restarted.bootstrap_servers, restarted.prefix, events[half:]))
    restarted.run_worker(**WORKER)

    expected = results(undisturbed)
    assert results(restarted) == expected
    # The second run resumed past the start of both topics, at offsets whose watermarks it
    # found in the checkpoints (it warns when it does not).
    assert all(o > 0 for o in committed.values()), committed
    assert "no checkpoint for" not in (restarted.root / "worker.log").read_text()

    decisions = [r for r in expected["drift"] if r["method"] == "decision"]
    flagged = {(r["model"], r["feature"]) for r in decisions if r["drifted"]}
    shift_ms = int((START + 240) * 1000)
    assert {("shifting", "amount"), ("shifting", "country"), ("shifting", "__score__")} <= flagged
    assert not any(r["drifted"] for r in decisions if r["model"] == "steady")
    assert all(r["ws"] >= shift_ms - 60_000 for r in decisions if r["drifted"])
    assert {r["reference"] for r in decisions if r["feature"] == "amount"} == {"profile:default"}

    firings = expected["detections"]
    assert any(r["model"] == "shifting" and r["stream"] == "score" for r in firings)
    assert any(r["model"] == "shifting" and r["stream"] == "error" for r in firings)
    assert all(r["ts"] >= shift_ms for r in firings if r["model"] == "shifting")

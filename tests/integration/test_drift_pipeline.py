"""Drift through a real broker, worker processes and chDB: a drifted feed is flagged, an
undrifted one is not, and a worker restarted mid-stream (resuming from its checkpoint) ends
with the same drift, detector and quality rows as one that ran undisturbed."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import pytest
from streams import START, TABLES, WORKER, reference, traffic

from pipeline.reference import profile_rows, publish
from producers.client import MonitorClient

pytestmark = pytest.mark.integration


async def send(bootstrap: str, prefix: str, events: list[tuple[str, dict[str, Any]]]) -> None:
    async with MonitorClient(bootstrap, topic_prefix=prefix, linger_ms=5) as client:
        for kind, event in events:
            assert client.log(kind, event)
        await client.flush()


async def upload_references(bootstrap: str, prefix: str) -> None:
    for model in ("steady", "shifting"):
        await publish(profile_rows(reference(7), model=model), bootstrap, prefix)


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

    # Every prediction's client is counted once, in its window.
    sent = Counter(
        (e["model"], int(e["ts"] * 1000) // 60_000 * 60_000, e["client_id"])
        for kind, e in events
        if kind == "prediction"
    )
    assert {
        (r["model"], r["ws"], r["client_id"]): r["requests"] for r in expected["clients"]
    } == sent
    after = [r for r in expected["clients"] if r["model"] == "shifting" and r["ws"] >= shift_ms]
    assert after and all(r["outside_reference_share"] > 0.2 for r in after)

    firings = expected["detections"]
    assert any(r["model"] == "shifting" and r["stream"] == "score" for r in firings)
    assert any(r["model"] == "shifting" and r["stream"] == "error" for r in firings)
    assert all(r["ts"] >= shift_ms for r in firings if r["model"] == "shifting")

"""Replay and export through a real broker, worker and chDB: replays equal the live rows byte
for byte (whatever the batch size, the number of replay workers, and whether they read the
topics, a time range or an exported file), and leave the live pipeline untouched."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from typing import Any

import pytest
from streams import START, WORKER, traffic, with_future_dated, with_regression

from pipeline.embedded import worker_command
from pipeline.replay import offsets_for_time
from pipeline.settings import Settings
from producers.client import MonitorClient
from schemas.codec import decode_message

pytestmark = pytest.mark.integration

PARTIALS = (
    "quality_partials",
    "regression_partials",
    "quality_class_partials",
    "feature_partials",
    "drift_detections_rows",
    "dead_letters_rows",
)


def rows(d: Any, database: str) -> dict[str, list[str]]:
    """Every result row, without insertion times, in a stable order."""
    return {
        table: sorted(
            repr(sorted(r.items()))
            for r in d.query(f"SELECT * EXCEPT inserted_at FROM {database}.{table} FINAL")
        )
        for table in PARTIALS
    }


def modelmon(d: Any, *args: str) -> str:
    flags = [
        f"--{k.replace('_', '-')}={v}"
        for k, v in d.settings(**WORKER).items()
        if k
        not in (
            "idle_exit_seconds",
            "session_timeout_seconds",
            "heartbeat_interval_seconds",
            "rebalance_timeout_seconds",
        )
    ]
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline.cli",
            "--log-level=WARNING",
            *args,
            "--no-progress",
            *flags,
        ]
        if args[0] == "replay"
        else [sys.executable, "-m", "pipeline.cli", "--log-level=WARNING", *args, *flags],
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
    )
    return out.stdout


async def send(d: Any, events: list[tuple[str, dict[str, Any]]]) -> None:
    async with MonitorClient(d.bootstrap_servers, topic_prefix=d.prefix, linger_ms=5) as client:
        for kind, event in events:
            assert client.log(kind, event)
        await client.flush()


def test_replays_equal_live_rows_and_leave_live_alone(deployment: Any, tmp_path: Any) -> None:
    d = deployment(partitions=2)
    events = with_future_dated(with_regression(traffic(seed=4), seed=4))
    asyncio.run(send(d, events))
    d.run_worker(**WORKER)
    live = rows(d, "modelmon")
    # the future-dated prediction is a dead letter, identical in every replay below
    assert [r for r in live["dead_letters_rows"] if "future_timestamp" in r]
    assert not d.query(
        "SELECT counter FROM pipeline_stats WHERE counter LIKE 'late_%' AND value > 0"
    )
    before = asyncio.run(d.committed("predictions", "labels", "metrics"))

    # Replay while a live worker runs: it sinks the replayed rows, keeps its offsets.
    with open(d.root / "worker.log", "ab") as log:
        worker = subprocess.Popen(
            worker_command(d.settings(**WORKER, idle_exit_seconds=6)),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        summary = modelmon(d, "replay", "--result-set=topics")
        assert f"replayed {len(events)} events" in summary, summary
        modelmon(d, "replay", "--result-set=batched", "--flush-every=7", "--workers=2")
        end = START + 8 * 60 + 60
        modelmon(d, "replay", "--result-set=timed", f"--start-time={START}", f"--end-time={end}")
        archive = tmp_path / "archive.jsonl"
        assert "exported" in modelmon(d, "export", f"--out={archive}")
        modelmon(d, "replay", "--result-set=file", f"--file={archive}")
    finally:
        assert worker.wait(timeout=240) == 0
    # Sink what the replays published after that worker stopped (a longer quiet period than
    # the other runs: several result sets arrive in one backlog).
    d.run_worker(**WORKER, idle_exit_seconds=8)
    after = asyncio.run(d.committed("predictions", "labels"))
    assert after == {k: v for k, v in before.items() if k[0] != "metrics"}

    assert rows(d, "modelmon") == live  # the live results are untouched
    for result_set in ("topics", "batched", "timed", "file"):
        assert rows(d, f"modelmon_{result_set}") == live, result_set


def test_time_range_is_found_from_the_events_ts(deployment: Any) -> None:
    """Binary search over offsets by the events' own ts (the broker's offsets-for-times
    answers with its own append time)."""
    d = deployment(partitions=2)
    asyncio.run(send(d, traffic(seed=8)))
    settings = Settings.load(overrides=d.settings(**WORKER))
    target = int((START + 200) * 1000)
    found = asyncio.run(offsets_for_time(settings, range(2), target))

    async def first_ts(kind: str, partition: int, offset: int) -> int | None:
        from aiokafka import AIOKafkaConsumer, TopicPartition

        consumer = AIOKafkaConsumer(bootstrap_servers=d.bootstrap_servers)
        await consumer.start()
        try:
            tp = TopicPartition(
                d.prefix + ("predictions" if kind == "prediction" else "labels"), partition
            )
            consumer.assign([tp])
            consumer.seek(tp, offset)
            record = (await consumer.getmany(tp, timeout_ms=2000, max_records=1))[tp][0]
            return min(e.ts_ms for e in decode_message(record.value, kind).events)
        finally:
            await consumer.stop()

    for (kind, partition), offset in found.items():
        assert offset > 0
        assert asyncio.run(first_ts(kind, partition, offset)) >= target
        assert asyncio.run(first_ts(kind, partition, offset - 1)) < target

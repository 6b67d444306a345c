"""A ClickHouse outage: the sink retries with backoff, commits nothing, keeps its memory
bounded, says so in its log and counters, and catches up with nothing lost."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
from typing import Any

import pytest
from streams import WORKER, rss_kb, traffic

from pipeline.embedded import worker_command
from producers.client import MonitorClient

# Ten-second windows and frequent flushes: many result messages pile up during the outage.
SHORT = {**WORKER, "window": "10s", "flush_interval_seconds": 0.1}

pytestmark = pytest.mark.integration

# chDB opens a database path in one process only: while this process holds it, the worker's
# sink cannot open it, exactly as when a ClickHouse server is unreachable.
HOLDER = """
import sys, time, clickhouse_connect
client = clickhouse_connect.get_client(dsn=sys.argv[1])
client.command("SELECT 1")
print("holding", flush=True)
time.sleep(3600)
"""


async def send(d: Any, events: list[tuple[str, dict[str, Any]]], pace: float = 0) -> None:
    """Send in blocks of 200 events, ``pace`` seconds apart."""
    async with MonitorClient(d.bootstrap_servers, topic_prefix=d.prefix, linger_ms=5) as client:
        for i in range(0, len(events), 200):
            for kind, event in events[i : i + 200]:
                assert client.log(kind, event)
            await client.flush()
            await asyncio.sleep(pace)


def test_sink_outage_loses_nothing_and_commits_nothing(deployment: Any) -> None:
    events = traffic(seed=9)
    calm, outage = deployment(partitions=2), deployment(partitions=2)
    asyncio.run(send(calm, events))
    calm.run_worker(**SHORT)
    expected = calm.query("SELECT * EXCEPT inserted_at FROM quality_windows ORDER BY ALL")

    (outage.root / "chdb").mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, outage.dsn], stdout=subprocess.PIPE, text=True
    )
    log = outage.root / "worker.log"
    workers: list[subprocess.Popen[bytes]] = []
    try:
        try:
            assert holder.stdout is not None and holder.stdout.readline().strip() == "holding"
            with open(log, "ab") as out:
                for role in ("sink", "compute"):
                    settings = outage.settings(role=role, idle_exit_seconds=3, **SHORT)
                    workers.append(
                        subprocess.Popen(
                            worker_command(settings), stdout=out, stderr=subprocess.STDOUT
                        )
                    )
            sink, compute = workers
            # Events trickle in during the outage, and every flush re-emits the windows they
            # change: the result backlog in Kafka grows well past the sink's buffer.
            producer = threading.Thread(target=lambda: asyncio.run(send(outage, events, 0.05)))
            producer.start()
            while "ClickHouse write failed" not in log.read_text():
                time.sleep(0.2)
            rss = []  # from the sink's first failed write on: its engine and app are loaded
            while compute.poll() is None:  # the compute stage emits every row meanwhile
                rss.append(rss_kb(sink.pid))
                time.sleep(0.5)
            assert compute.returncode == 0
            producer.join()
            for _ in range(6):
                rss.append(rss_kb(sink.pid))
                time.sleep(0.5)
            committed = asyncio.run(outage.committed("metrics", "deadletter", group_suffix=".sink"))
            assert all(offset is None for offset in committed.values()), committed
            # The sink holds a bounded buffer (at most 128 messages), then stops fetching: its
            # memory stays flat while the compute stage leaves the backlog in Kafka.
            backlog_mb = asyncio.run(outage.topic_bytes("metrics")) / 2**20
            growth_mb = (max(rss) - rss[0]) / 1024
            assert growth_mb < 16, (growth_mb, backlog_mb, rss)
        finally:
            holder.kill()
            holder.wait()
        assert sink.wait(timeout=180) == 0
    finally:
        for proc in workers:  # a failed assertion must not leave workers behind
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert "ClickHouse writes work again" in log.read_text()

    got = outage.query("SELECT * EXCEPT inserted_at FROM quality_windows ORDER BY ALL")
    assert got == expected
    stats = {
        r["counter"]: r["value"]
        for r in outage.query("SELECT counter, value FROM pipeline_stats WHERE stage = 'sink'")
    }
    assert stats["write_failures"] >= 3 and stats["outage_ms"] >= 3000, stats

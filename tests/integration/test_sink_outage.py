"""A ClickHouse outage that begins after the sink started: the sink retries with backoff,
commits nothing, keeps its memory bounded, says so in its log and counters, and catches up
with nothing lost."""

from __future__ import annotations

import asyncio
import os
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from streams import WORKER, rss_kb, traffic

from pipeline.embedded import worker_command
from producers.client import MonitorClient

# Ten-second windows and frequent flushes: many result messages pile up during the outage.
SHORT = {**WORKER, "window": "10s", "flush_interval_seconds": 0.1}

pytestmark = pytest.mark.integration


def set_writable(path: Path, writable: bool) -> None:
    """Let nothing (not even root: the immutable flag) create or remove files in the
    directories under ``path``, or let it again: to the sink, an outage of its database that
    begins after it started (at start, it would be an error)."""
    directories = [path, *(p for p in path.rglob("*") if p.is_dir() and not p.is_symlink())]
    if os.geteuid() == 0:
        flag = "-i" if writable else "+i"
        done = subprocess.run(["chattr", flag, *map(str, directories)], capture_output=True)
        if done.returncode and not writable:
            set_writable(path, True)
            pytest.skip(f"root cannot make {path} read-only: chattr: {done.stderr[:200]!r}")
        return
    for directory in directories:
        mode = directory.stat().st_mode
        directory.chmod(mode | 0o200 if writable else mode & ~0o222)


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

    log = outage.root / "worker.log"
    workers: list[subprocess.Popen[bytes]] = []
    try:
        try:
            with open(log, "ab") as out:

                def start(role: str, level: str) -> subprocess.Popen[bytes]:
                    settings = outage.settings(role=role, idle_exit_seconds=3, **SHORT)
                    command = worker_command(settings)
                    command[command.index("--log-level=WARNING")] = f"--log-level={level}"
                    workers.append(subprocess.Popen(command, stdout=out, stderr=out))
                    return workers[-1]

                # Faust says Ready at INFO once the start-up checks passed and the tables exist.
                sink = start("sink", "INFO")
                while "[^Worker]: Ready" not in log.read_text():
                    assert sink.poll() is None, log.read_text()[-3000:]
                    time.sleep(0.1)
                set_writable(outage.root / "chdb", False)
                compute = start("compute", "WARNING")
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
            set_writable(outage.root / "chdb", True)
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

"""Helpers for tests that run real worker processes against the session broker.

Each test gets its own topic prefix and consumer group on the shared broker and its own chDB
path, owned by the worker process; results are read back through ``modelmon query`` in a
child process, as chDB allows one database path per process.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from pipeline.app import all_topics
from pipeline.embedded import EMBEDDED_WORKER_FLAGS, EmbeddedBroker, run_worker_until_idle
from pipeline.kafka import ensure_topics
from pipeline.settings import Settings


class Deployment:
    """One isolated modelmon deployment on the shared broker."""

    def __init__(self, broker: EmbeddedBroker, root: Path, partitions: int = 3) -> None:
        self.bootstrap_servers = broker.bootstrap_servers
        name = uuid.uuid4().hex[:8]
        self.root = root / name  # each deployment its own chDB and logs
        self.root.mkdir()
        self.prefix = f"t{name}."
        self.group = f"g{name}"
        self.partitions = partitions
        self.dsn = f"chdb://{self.root / 'chdb'}"
        settings = Settings.load(overrides={"topic_prefix": self.prefix, "partitions": partitions})
        asyncio.run(ensure_topics(self.bootstrap_servers, all_topics(settings)))

    def settings(self, **overrides: Any) -> dict[str, str]:
        base = {
            "bootstrap_servers": self.bootstrap_servers,
            "topic_prefix": self.prefix,
            "group_id": self.group,
            "partitions": str(self.partitions),
            "clickhouse_dsn": self.dsn,
            "data_dir": str(self.root),
            "idle_exit_seconds": "3",
            **EMBEDDED_WORKER_FLAGS,
        }
        base.update({k: str(v) for k, v in overrides.items()})
        return base

    def run_worker(self, timeout: float = 240, **overrides: Any) -> float:
        return run_worker_until_idle(
            self.settings(**overrides), timeout, str(self.root / "worker.log")
        )

    async def committed(
        self, *names: str, group_suffix: str = ""
    ) -> dict[tuple[str, int], int | None]:
        """The worker group's committed offset of each partition of the named topics
        (``group_suffix`` ".compute" or ".sink" for workers of a split role)."""
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap_servers,
            group_id=self.group + group_suffix,
            enable_auto_commit=False,
        )
        await consumer.start()
        try:
            return {
                (name, p): await consumer.committed(TopicPartition(self.prefix + name, p))
                for name in names
                for p in range(self.partitions)
            }
        finally:
            await consumer.stop()

    async def topic_bytes(self, name: str) -> int:
        """Bytes of all message values in a topic (read back from the broker)."""
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap_servers,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
        )
        await consumer.start()
        try:
            tps = [TopicPartition(self.prefix + name, p) for p in range(self.partitions)]
            consumer.assign(tps)
            total = 0
            while batch := await consumer.getmany(*tps, timeout_ms=500):
                total += sum(len(m.value or b"") for ms in batch.values() for m in ms)
            return total
        finally:
            await consumer.stop()

    def query(self, sql: str) -> list[dict[str, Any]]:
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "pipeline.cli",
                "--log-level=WARNING",
                "query",
                "--format=json",
                f"--clickhouse-dsn={self.dsn}",
                sql,
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )
        return orjson.loads(out.stdout)


@pytest.fixture
def deployment(broker: EmbeddedBroker, tmp_path: Path) -> Callable[..., Deployment]:
    return lambda **kw: Deployment(broker, tmp_path, **kw)

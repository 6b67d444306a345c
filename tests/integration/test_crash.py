"""Crash safety: compute and sink workers killed with SIGKILL at random moments while events
stream in, restarted each time; the result tables end equal to an undisturbed run's.

``MODELMON_CRASH_KILLS`` (default 6) sets how many kills a run makes; the long variant is
``MODELMON_CRASH_KILLS=40 pytest tests/integration/test_crash.py``.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from streams import TABLES, WORKER, reference, traffic, with_future_dated, with_regression

from pipeline.embedded import worker_command
from pipeline.reference import profile_rows, publish
from producers.client import MonitorClient

pytestmark = pytest.mark.integration

KILLS = int(os.environ.get("MODELMON_CRASH_KILLS", "6"))
ROLES = ("compute", "compute", "sink")


def profile(model: str) -> list[dict[str, Any]]:
    """A reference for every feature, the prediction and the score included, so no drift
    row depends on which earlier windows happened to be stored when it was derived."""
    rng = random.Random(11)
    records = [
        {**r, "__prediction__": rng.choice("01"), "__score__": rng.random()} for r in reference(7)
    ]
    return profile_rows(records, model=model)


async def produce(d: Any, events: list[tuple[str, dict[str, Any]]], pace: float) -> None:
    """Send the events in order, ``pace`` seconds between blocks of 500."""
    for model in ("steady", "shifting"):
        await publish(profile(model), d.bootstrap_servers, d.prefix)
    async with MonitorClient(d.bootstrap_servers, topic_prefix=d.prefix, linger_ms=5) as client:
        for i in range(0, len(events), 500):
            for kind, event in events[i : i + 500]:
                assert client.log(kind, event)
            await client.flush()
            await asyncio.sleep(pace)


class Workers:
    """Worker processes of one deployment, by slot; each slot restarts what was killed."""

    def __init__(self, d: Any, log: Path, idle_exit: float) -> None:
        self.d = d
        self.log = log
        self.idle_exit = idle_exit
        self.procs: dict[int, subprocess.Popen[bytes]] = {}

    def start(self, slot: int, role: str) -> None:
        settings = self.d.settings(role=role, idle_exit_seconds=self.idle_exit, **WORKER)
        with open(self.log, "ab") as out:
            self.procs[slot] = subprocess.Popen(
                worker_command(settings), stdout=out, stderr=subprocess.STDOUT
            )

    def kill(self, slot: int) -> None:
        self.procs[slot].send_signal(signal.SIGKILL)
        self.procs[slot].wait()

    def wait(self, slots: list[int], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for slot in slots:
            proc = self.procs[slot]
            try:
                proc.wait(timeout=max(deadline - time.monotonic(), 1))
            except subprocess.TimeoutExpired:
                proc.kill()
                raise
            assert proc.returncode == 0, f"worker {slot} exited with {proc.returncode}"

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def drain(d: Any, log: Path) -> None:
    """Run compute workers until they are idle, then the sink until it is: everything the
    compute stage emitted is then in ClickHouse."""
    for roles in (("compute", "compute"), ("sink",)):
        workers = Workers(d, log, idle_exit=4)
        try:
            for slot, role in enumerate(roles):
                workers.start(slot, role)
            workers.wait(list(range(len(roles))), timeout=240)
        finally:
            workers.stop_all()


def test_results_survive_sigkill_of_any_worker_at_any_time(deployment: Any) -> None:
    events = with_future_dated(with_regression(traffic(seed=5), seed=5))
    calm, crashed = deployment(partitions=3), deployment(partitions=3)

    asyncio.run(produce(calm, events, pace=0))
    drain(calm, calm.root / "calm.log")
    expected = {name: calm.query(sql) for name, sql in TABLES.items()}

    rng = random.Random(KILLS)
    producer = threading.Thread(target=lambda: asyncio.run(produce(crashed, events, pace=0.25)))
    workers = Workers(crashed, crashed.root / "crashed.log", idle_exit=0)
    producer.start()
    try:
        for slot, role in enumerate(ROLES):
            workers.start(slot, role)
        for _ in range(KILLS):
            time.sleep(rng.uniform(1.0, 5.0))
            slot = rng.randrange(len(ROLES))
            workers.kill(slot)
            time.sleep(rng.uniform(0.0, 1.0))
            workers.start(slot, ROLES[slot])
        producer.join()
    finally:
        workers.stop_all()
        producer.join()
    drain(crashed, crashed.root / "crashed.log")

    got = {name: crashed.query(sql) for name, sql in TABLES.items()}
    for name in TABLES:
        assert got[name] == expected[name], name
    assert expected["detections"], "the traffic makes the detectors fire"
    assert expected["regression"] and all(r["labelled"] for r in expected["regression"])
    assert [r["reason"] for r in expected["dead_letters"]] == ["future_timestamp"]
    predictions = sum(kind == "prediction" for kind, _ in events) - 1  # not the future one
    counted = sum(r["predictions"] for name in ("quality", "regression") for r in got[name])
    assert counted == predictions
    late = calm.query(
        "SELECT counter, value FROM pipeline_stats WHERE counter IN"
        " ('late_predictions', 'late_labels') AND value > 0"
    )
    assert not late, late


def test_two_workers_with_rebalances_equal_one(deployment: Any) -> None:
    """A second compute worker joins mid-stream and the first leaves before the end."""
    events = traffic(seed=6)
    single, pair = deployment(partitions=3), deployment(partitions=3)
    asyncio.run(produce(single, events, pace=0))
    drain(single, single.root / "single.log")

    producer = threading.Thread(target=lambda: asyncio.run(produce(pair, events, pace=0.25)))
    workers = Workers(pair, pair.root / "pair.log", idle_exit=0)
    producer.start()
    try:
        workers.start(0, "sink")
        workers.start(1, "compute")
        time.sleep(6)
        workers.start(2, "compute")  # joins: partitions move to it
        time.sleep(6)
        workers.procs[1].send_signal(signal.SIGTERM)  # leaves: its partitions move back
        assert workers.procs[1].wait(timeout=60) == 0
        producer.join()
    finally:
        workers.stop_all()
        producer.join()
    drain(pair, pair.root / "pair.log")
    for name, sql in TABLES.items():
        assert pair.query(sql) == single.query(sql), name

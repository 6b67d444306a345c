"""Measurement 3, modelmon end to end: real worker processes, one per role as a deployment
runs them (compute, and sink with an embedded chDB at its own path), from the first event
produced to the last row inserted in ClickHouse; and the paced sub-run that measures
event-to-row latency.

Results are read through ``modelmon query`` in a child process (chDB opens one database path
per process). Every window table the worker writes counts towards "the last row": the
``*_partials`` tables and the ``*_rows`` tables derived from them (not the dead letters), so
metric families added to the worker are measured without changes here.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import orjson

from bench.common import Ended, wait_measured_all
from bench.events import Message, generate, produce
from pipeline.app import all_topics
from pipeline.embedded import EMBEDDED_WORKER_FLAGS, worker_command
from pipeline.kafka import ensure_topics
from pipeline.settings import Settings
from schemas.codec import encode_envelope
from schemas.topics import Topics, partition_for

DB = "modelmon"
READY_SECONDS = 8.0  # start-up: imports, chDB migrations, the group join (~1 s on Tansu)
#: One worker process per role, the sink first so that it is up when the first rows arrive.
ROLES = ("sink", "compute")
T = TypeVar("T")


def create_topics(bootstrap: str, prefix: str, partitions: int) -> None:
    settings = Settings.load(overrides={"topic_prefix": prefix, "partitions": partitions})
    asyncio.run(ensure_topics(bootstrap, all_topics(settings)))


def worker_settings(
    bootstrap: str, prefix: str, partitions: int, root: Path, window_s: int, **extra: Any
) -> dict[str, str]:
    return {
        "bootstrap_servers": bootstrap,
        "topic_prefix": prefix,
        "group_id": "g-" + prefix.strip("."),
        "partitions": str(partitions),
        "clickhouse_dsn": f"chdb://{root / 'chdb'}",
        "data_dir": str(root),
        "idle_exit_seconds": "3",
        "window": f"{window_s}s",
        "lateness_seconds": "2",
        "label_ttl_seconds": str(window_s),
        **EMBEDDED_WORKER_FLAGS,
        **{k: str(v) for k, v in extra.items()},
    }


def query(dsn: str, sql: str) -> list[dict[str, Any]]:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline.cli",
            "--log-level=WARNING",
            "query",
            "--format=json",
            f"--clickhouse-dsn={dsn}",
            sql,
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return orjson.loads(out.stdout)


def window_tables(dsn: str) -> list[str]:
    rows = query(
        dsn,
        f"SELECT name FROM system.tables WHERE database = '{DB}' AND (name LIKE '%\\_partials' "
        "OR (name LIKE '%\\_rows' AND name != 'dead_letters_rows')) ORDER BY name",
    )
    return [r["name"] for r in rows]


def last_insert_ms(dsn: str) -> tuple[int, dict[str, int]]:
    """The latest ``inserted_at`` over every window table, and the row count of each."""
    latest, counts = 0, {}
    for t in window_tables(dsn):
        r = query(
            dsn,
            f"SELECT toUnixTimestamp64Milli(max(inserted_at)) AS t, count() AS n "
            f"FROM {DB}.{t} FINAL",
        )[0]
        counts[t] = int(r["n"])
        if counts[t]:
            latest = max(latest, int(r["t"]))
    return latest, counts


def compute_line(log_path: Path) -> dict[str, float]:
    """The worker's own ``compute:`` throughput line (events read, span of input)."""
    text = log_path.read_text(errors="replace") if log_path.exists() else ""
    matches = list(re.finditer(r"compute: (\d+) events in ([\d.]+)s of input", text))
    m = matches[-1] if matches else None
    if m is None:
        return {}
    events, span = int(m.group(1)), float(m.group(2))
    return {"events": events, "seconds": span, "events_per_s": events / span if span else 0.0}


def run_workers(
    settings: dict[str, str], root: Path, feed: Callable[[], T], timeout: float
) -> tuple[T, dict[str, Ended]]:
    """Start a worker per role, let them join, call ``feed`` (it produces the input) and wait
    until every worker stopped by itself. Returns what ``feed`` returned and how each role's
    worker ended; raises if one failed (see ``worker-<role>.log`` in ``root``)."""
    procs = {}
    for role in ROLES:
        log = open(root / f"worker-{role}.log", "ab")  # noqa: SIM115 - the child holds it
        procs[role] = subprocess.Popen(
            worker_command({**settings, "role": role}), stdout=log, stderr=subprocess.STDOUT
        )
    try:
        time.sleep(READY_SECONDS)
        fed = feed()
        ended = wait_measured_all(procs, timeout)
    finally:
        for proc in procs.values():
            if proc.returncode is None:
                proc.kill()
                proc.wait()
    failed = {role: e.code for role, e in ended.items() if e.code != 0}
    if failed:
        raise RuntimeError(f"workers exited with {failed}; see {root}/worker-*.log")
    return fed, ended


def run_e2e(
    bootstrap: str,
    prefix: str,
    partitions: int,
    root: Path,
    window_s: int,
    messages: list[Message] | None,
    timeout: float = 1200,
) -> dict[str, Any]:
    """Start the workers, let them join, produce ``messages`` (None: the topics already hold
    the input), wait until they stop by themselves; the span is first produce to last row
    inserted."""
    root.mkdir(parents=True, exist_ok=True)
    settings = worker_settings(bootstrap, prefix, partitions, root, window_s)
    produced, ended = run_workers(
        settings,
        root,
        lambda: {} if messages is None else asyncio.run(produce(bootstrap, messages)),
        timeout,
    )
    dsn = settings["clickhouse_dsn"]
    last_ms, counts = last_insert_ms(dsn)
    out: dict[str, Any] = {
        "dsn": dsn,
        "peak_rss_mib": {role: e.rss_mib for role, e in ended.items()},
        "peak_anon_mib": {role: e.anon_mib for role, e in ended.items()},
        "cpu_seconds": {role: e.cpu_s for role, e in ended.items()},
        "tables": counts,
        "compute": compute_line(root / "worker-compute.log"),
    }
    if produced:
        span = last_ms / 1000.0 - produced["started"]
        out.update(
            events=produced["events"],
            messages=produced["messages"],
            seconds=span,
            produce_seconds=produced["ended"] - produced["started"],
            events_per_s=produced["events"] / span,
        )
    return out


def quality_windows(dsn: str) -> list[dict[str, Any]]:
    return query(
        dsn,
        "SELECT model, model_version, segment, toUnixTimestamp64Milli(window_start) AS ws, "
        "predictions, labelled, accuracy, macro_recall FROM quality_windows "
        "ORDER BY model, segment, ws",
    )


# --- the paced sub-run: event-to-row latency ---------------------------------------------------


async def _paced_produce(
    bootstrap: str,
    topics: Topics,
    partitions: int,
    rate: float,
    seconds: float,
    window_ms: int,
    seed: int,
) -> list[tuple[str, tuple[Any, ...], int]]:
    """Send predictions at ``rate`` events/s (predictions + labels) in real time with ``ts`` =
    send time, envelopes every 100 ms per partition; each label follows its prediction after
    0.2–1.0 s. Returns (kind, (model, segment, window_start, partition), ts_ms) per event."""
    from aiokafka import AIOKafkaProducer

    pool = [e for k, e in generate(5000, seed=seed) if k == "prediction"]
    rng = np.random.default_rng(seed)
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        enable_idempotence=False,
        acks="all",
        linger_ms=5,
        max_batch_size=1_048_576,
        max_request_size=2_097_152,
    )
    await producer.start()
    sent: list[tuple[str, tuple[Any, ...], int]] = []
    labels: list[tuple[float, dict[str, Any], tuple[Any, ...]]] = []
    tick, per_tick = 0.1, rate / 2 * 0.1  # half the events are predictions
    n = 0
    carry = 0.0
    start = time.time()
    try:
        while time.time() - start < seconds:
            now = time.time()
            carry += per_tick
            k, carry = int(carry), carry - int(carry)
            batches: dict[tuple[str, int], list[dict[str, Any]]] = {}
            for _ in range(k):
                src = pool[n % len(pool)]
                eid = f"paced-{seed}-{n}"
                n += 1
                ts_ms = int(now * 1000)
                part = partition_for(eid, partitions)
                ev = {**src, "event_id": eid, "ts": ts_ms / 1000.0}
                key = (
                    src["model"],
                    "region=" + src["segment"]["region"],
                    ts_ms - ts_ms % window_ms,
                    part,
                )
                batches.setdefault(("prediction", part), []).append(ev)
                sent.append(("prediction", key, ts_ms))
                truth = (
                    src["prediction"] if rng.random() < 0.7 else next(iter(src["probabilities"]))
                )
                labels.append((now + rng.uniform(0.2, 1.0), {"event_id": eid, "label": truth}, key))
            due = [x for x in labels if x[0] <= now]
            labels = [x for x in labels if x[0] > now]
            for _, lab, key in due:
                ts_ms = int(now * 1000)
                batches.setdefault(("label", key[3]), []).append({**lab, "ts": ts_ms / 1000.0})
                sent.append(("label", key, ts_ms))
            for (kind, part), evs in batches.items():
                await producer.send(
                    topics.for_kind(kind), encode_envelope(kind, evs), partition=part
                )
            await asyncio.sleep(max(0.0, tick - (time.time() - now)))
        for when, lab, key in sorted(labels, key=lambda x: x[0]):
            await asyncio.sleep(max(0.0, when - time.time()))
            ts_ms = int(time.time() * 1000)
            await producer.send(
                topics.for_kind("label"),
                encode_envelope("label", [{**lab, "ts": ts_ms / 1000.0}]),
                partition=key[3],
            )
            sent.append(("label", key, ts_ms))
        await producer.flush()
    finally:
        await producer.stop()
    return sent


async def _row_versions(bootstrap: str, topic: str) -> list[tuple[int, dict[str, Any]]]:
    """Every quality_partials row emitted on the metrics topic, with its message timestamp."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    from schemas.rows import decode_rows

    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    out: list[tuple[int, dict[str, Any]]] = []
    try:
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic))]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        idle = 0
        while idle < 3:
            batches = await consumer.getmany(timeout_ms=500, max_records=5000)
            idle = 0 if batches else idle + 1
            for records in batches.values():
                for r in records:
                    batch = decode_rows(r.value)
                    if batch.table == "quality_partials":
                        out.extend((r.timestamp, row) for row in batch.rows)
    finally:
        await consumer.stop()
    return out


def run_paced(
    bootstrap: str,
    prefix: str,
    partitions: int,
    root: Path,
    window_s: int,
    rate: float,
    seconds: float,
    seed: int = 7,
) -> dict[str, Any]:
    """Event-to-row latency at ``rate`` events/s: for each event, the first row version on the
    metrics topic that counts it (predictions, or labelled for a label) gives when it was
    emitted; the insertion delay of its window's final row in ClickHouse is added."""
    root.mkdir(parents=True, exist_ok=True)
    create_topics(bootstrap, prefix, partitions)
    settings = worker_settings(bootstrap, prefix, partitions, root, window_s)
    sent, ended = run_workers(
        settings,
        root,
        lambda: asyncio.run(
            _paced_produce(
                bootstrap, Topics(prefix), partitions, rate, seconds, window_s * 1000, seed
            )
        ),
        600,
    )
    dsn = settings["clickhouse_dsn"]
    versions = asyncio.run(_row_versions(bootstrap, Topics(prefix).metrics))
    final = query(
        dsn,
        "SELECT model, segment, toUnixTimestamp64Milli(window_start) AS ws, "
        "partition, version, toUnixTimestamp64Milli(inserted_at) AS ins "
        "FROM quality_partials FINAL",
    )
    by_key: dict[tuple[Any, ...], list[tuple[int, int, int, int]]] = {}
    for ts, row in versions:
        key = (row["model"], row["segment"], int(row["window_start"]), int(row["partition"]))
        by_key.setdefault(key, []).append(
            (ts, int(row["predictions"]), int(row["labelled"]), int(row["version"]))
        )
    emitted_final = {k: {v[3]: v[0] for v in vs} for k, vs in by_key.items()}
    sink_lag = {}
    for r in final:
        k = (r["model"], r["segment"], int(r["ws"]), int(r["partition"]))
        t = emitted_final.get(k, {}).get(int(r["version"]))
        if t is not None:
            sink_lag[k] = max(0, int(r["ins"]) - t)
    lag_default = float(np.median(list(sink_lag.values()))) if sink_lag else 0.0
    # How long after a window's last feature partials its drift rows were derived.
    derive_lag = [
        max(0, int(r["lag"]))
        for r in query(
            dsn,
            "SELECT toUnixTimestamp64Milli(d.ins) - toUnixTimestamp64Milli(f.ins) AS lag FROM "
            "(SELECT model, segment, window_start, max(inserted_at) AS ins "
            " FROM feature_partials FINAL GROUP BY model, segment, window_start) AS f "
            "JOIN (SELECT model, segment, window_start, max(inserted_at) AS ins "
            " FROM drift_rows FINAL GROUP BY model, segment, window_start) AS d "
            "USING (model, segment, window_start)",
        )
    ]
    ranks: dict[tuple[str, tuple[Any, ...]], int] = {}
    emit_lat, row_lat, missing = [], [], 0
    for kind, key, ts_ms in sent:
        r = ranks[(kind, key)] = ranks.get((kind, key), 0) + 1
        vs = by_key.get(key, [])
        col = 1 if kind == "prediction" else 2
        t = next((v[0] for v in sorted(vs) if v[col] >= r), None)
        if t is None:
            missing += 1
            continue
        emit_lat.append(t - ts_ms)
        row_lat.append(t - ts_ms + sink_lag.get(key, lag_default))

    def pct(xs: list[Any], q: float) -> float:
        return float(np.percentile(xs, q)) / 1000.0 if xs else float("nan")

    return {
        "rate_events_per_s": rate,
        "events": len(sent),
        "seconds": seconds,
        "uncounted_events": missing,
        "emit_p50_s": pct(emit_lat, 50),
        "emit_p99_s": pct(emit_lat, 99),
        "row_p50_s": pct(row_lat, 50),
        "row_p99_s": pct(row_lat, 99),
        "sink_lag_p50_s": pct(list(sink_lag.values()), 50),
        "sink_lag_p99_s": pct(list(sink_lag.values()), 99),
        "derive_lag_p50_s": pct(derive_lag, 50),
        "derive_lag_p99_s": pct(derive_lag, 99),
        "peak_rss_mib": {role: e.rss_mib for role, e in ended.items()},
        "cpu_seconds": {role: e.cpu_s for role, e in ended.items()},
    }

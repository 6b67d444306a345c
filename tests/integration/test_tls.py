"""TLS for real: a broker reachable only through TLS (Tansu behind stunnel, see ``tests/tls.py``).

modelmon's producer client, a plain aiokafka consumer and a ``modelmon worker`` process, all
configured through :class:`~pipeline.settings.Settings` (``security_protocol="SSL"``,
``ssl_cafile``), work over it; a client that does not trust the CA is refused with a
certificate-verification error, and a PLAINTEXT client fails fast instead of hanging.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.conn import create_conn
from aiokafka.errors import KafkaConnectionError

from pipeline.app import all_topics
from pipeline.embedded import EMBEDDED_WORKER_FLAGS, run_worker_until_idle
from pipeline.kafka import ensure_topics
from pipeline.settings import Settings
from producers.client import MonitorClient
from schemas.codec import decode_message
from schemas.topics import Topics
from tests.tls import TlsBroker, TlsFiles, make_pki

pytestmark = pytest.mark.integration

PARTITIONS = 2
START = 1_700_000_040.0  # on a minute boundary
FAILURE_BOUND_SECONDS = 20.0  # a refused client must give up well within this


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def tls_broker(pki: TlsFiles, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsBroker]:
    broker = TlsBroker(pki, tmp_path_factory.mktemp("tls-broker"))
    with broker:
        yield broker


def _tls_settings(broker: TlsBroker, pki: TlsFiles, **overrides: Any) -> Settings:
    return Settings(
        bootstrap_servers=broker.bootstrap_servers,
        security_protocol="SSL",
        ssl_cafile=str(pki.ca_cert),
        topic_prefix=f"t{uuid.uuid4().hex[:10]}.",
        partitions=PARTITIONS,
        **overrides,
    )


def _traffic(n: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """A binary model over two minutes of event time; every event but each tenth labelled,
    every seventh prediction wrong."""
    predictions, labels = [], []
    for i in range(n):
        truth = i % 2
        predictions.append(
            {
                "event_id": f"e{i}",
                "model": "tls-model",
                "task": "binary",
                "ts": START + i * 120 / n,
                "prediction": truth if i % 7 else 1 - truth,
                "score": 0.8 if truth else 0.2,
            }
        )
        if i % 10:
            labels.append({"event_id": f"e{i}", "ts": START + i * 120 / n + 1, "label": truth})
    return predictions, labels


async def _produce(
    settings: Settings, predictions: list[dict[str, Any]], labels: list[dict[str, Any]]
) -> dict[str, int]:
    client = MonitorClient(
        settings.bootstrap_servers,
        topic_prefix=settings.topic_prefix,
        linger_ms=5,
        max_batch_events=100,
        kafka_config=settings.kafka_client_config(),
    )
    await client.start()
    try:
        for p in predictions:
            assert client.log_prediction(**p)
        await client.flush()
        for lab in labels:
            assert client.log_label(**lab)
        await client.flush()
    finally:
        await client.close(timeout=30)
    return client.stats


async def _consume(settings: Settings, topic: str, kind: str, expected: int) -> list[Any]:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers,
        enable_auto_commit=False,
        **settings.kafka_client_config(),
    )
    await consumer.start()
    try:
        consumer.assign([TopicPartition(topic, p) for p in range(PARTITIONS)])
        await consumer.seek_to_beginning()
        events: list[Any] = []
        deadline = time.monotonic() + 30
        while len(events) < expected and time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=250)).values():
                for record in records:
                    decoded = decode_message(record.value, kind)
                    assert not decoded.rejected, decoded.rejected[:1]
                    events += decoded.events
        return events
    finally:
        await consumer.stop()


def test_producer_and_consumer_work_over_tls(tls_broker: TlsBroker, pki: TlsFiles) -> None:
    settings = _tls_settings(tls_broker, pki)
    topics = Topics(settings.topic_prefix)
    predictions, labels = _traffic(600)
    before = tls_broker.tls_connections()

    async def run() -> tuple[dict[str, int], list[Any], list[Any]]:
        await ensure_topics(
            settings.bootstrap_servers,
            {topics.predictions: PARTITIONS, topics.labels: PARTITIONS},
            settings.kafka_client_config(),
        )
        stats = await _produce(settings, predictions, labels)
        got_predictions = await _consume(settings, topics.predictions, "prediction", 600)
        got_labels = await _consume(settings, topics.labels, "label", len(labels))
        return stats, got_predictions, got_labels

    stats, got_predictions, got_labels = asyncio.run(run())
    assert stats["sent_events"] == len(predictions) + len(labels)
    assert stats["dropped_events"] == stats["rejected_events"] == 0
    assert Counter(e.event_id for e in got_predictions) == Counter(
        p["event_id"] for p in predictions
    )
    assert Counter(e.event_id for e in got_labels) == Counter(lab["event_id"] for lab in labels)
    # Every client connection went through the TLS terminator (the broker advertises only it).
    assert tls_broker.tls_connections() > before


def test_worker_computes_windows_over_tls(
    tls_broker: TlsBroker, pki: TlsFiles, tmp_path: Path
) -> None:
    settings = _tls_settings(tls_broker, pki)
    predictions, labels = _traffic(1200)
    asyncio.run(
        ensure_topics(
            settings.bootstrap_servers, all_topics(settings), settings.kafka_client_config()
        )
    )
    asyncio.run(_produce(settings, predictions, labels))

    dsn = f"chdb://{tmp_path / 'chdb'}"
    flags = {
        "bootstrap_servers": settings.bootstrap_servers,
        "security_protocol": "SSL",
        "ssl_cafile": str(pki.ca_cert),
        "topic_prefix": settings.topic_prefix,
        "group_id": f"g{uuid.uuid4().hex[:8]}",
        "partitions": str(PARTITIONS),
        "clickhouse_dsn": dsn,
        "data_dir": str(tmp_path),
        "idle_exit_seconds": "3",
        **EMBEDDED_WORKER_FLAGS,
    }
    run_worker_until_idle(flags, timeout=240, log_path=str(tmp_path / "worker.log"))

    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline.cli",
            "--log-level=WARNING",
            "query",
            "--format=json",
            f"--clickhouse-dsn={dsn}",
            "SELECT model, toUnixTimestamp64Milli(window_start) AS start_ms, predictions,"
            " labelled, accuracy FROM quality_windows ORDER BY start_ms",
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    rows = orjson.loads(out.stdout)

    labelled_ids = {lab["event_id"] for lab in labels}
    expected: dict[int, dict[str, Any]] = {}
    for p in predictions:
        start_ms = int(p["ts"] // 60) * 60_000
        w = expected.setdefault(start_ms, {"predictions": 0, "labelled": 0, "correct": 0})
        w["predictions"] += 1
        if p["event_id"] in labelled_ids:
            w["labelled"] += 1
            w["correct"] += int(p["prediction"] == int(p["event_id"][1:]) % 2)
    assert [r["start_ms"] for r in rows] == sorted(expected)
    for r in rows:
        exp = expected[r["start_ms"]]
        assert r["model"] == "tls-model"
        assert (r["predictions"], r["labelled"]) == (exp["predictions"], exp["labelled"])
        assert r["accuracy"] == pytest.approx(exp["correct"] / exp["labelled"], abs=1e-12)


@pytest.mark.parametrize("trust", ["another CA", "the system's CAs"])
def test_client_not_trusting_the_ca_is_refused(
    tls_broker: TlsBroker, pki: TlsFiles, trust: str, caplog: pytest.LogCaptureFixture
) -> None:
    cafile = str(pki.other_ca_cert) if trust == "another CA" else ""
    settings = _tls_settings(tls_broker, pki).with_(ssl_cafile=cafile)
    config = settings.kafka_client_config()
    host, port = tls_broker.bootstrap_servers.split(":")

    async def connect() -> None:
        conn = await create_conn(
            host, int(port), security_protocol="SSL", ssl_context=config["ssl_context"]
        )
        conn.close()

    # At the connection layer, the TLS handshake itself fails on the certificate.
    with pytest.raises(ssl.SSLCertVerificationError) as refused:
        asyncio.run(asyncio.wait_for(connect(), FAILURE_BOUND_SECONDS))
    assert refused.value.verify_message == "unable to get local issuer certificate"
    assert "CERTIFICATE_VERIFY_FAILED" in str(refused.value)

    # A producer built from the same settings fails to start, and says why in its log.
    async def start_producer() -> None:
        producer = AIOKafkaProducer(
            bootstrap_servers=settings.bootstrap_servers, enable_idempotence=False, **config
        )
        try:
            await asyncio.wait_for(producer.start(), FAILURE_BOUND_SECONDS)
        finally:
            await producer.stop()

    with caplog.at_level(logging.ERROR, logger="aiokafka"), pytest.raises(KafkaConnectionError):
        asyncio.run(start_producer())
    assert any("CERTIFICATE_VERIFY_FAILED" in r.getMessage() for r in caplog.records)


def test_plaintext_client_on_the_tls_port_fails_fast(tls_broker: TlsBroker, pki: TlsFiles) -> None:
    settings = Settings(bootstrap_servers=tls_broker.bootstrap_servers)  # PLAINTEXT
    assert settings.kafka_client_config() == {"security_protocol": "PLAINTEXT"}

    async def start_producer() -> None:
        producer = AIOKafkaProducer(
            bootstrap_servers=settings.bootstrap_servers,
            enable_idempotence=False,
            request_timeout_ms=5000,
            **settings.kafka_client_config(),
        )
        try:
            await producer.start()
        finally:
            await producer.stop()

    started = time.monotonic()
    with pytest.raises(KafkaConnectionError, match="Unable to bootstrap"):
        # The outer bound turns a hang into a TimeoutError, which would fail the test.
        asyncio.run(asyncio.wait_for(start_producer(), FAILURE_BOUND_SECONDS))
    assert time.monotonic() - started < FAILURE_BOUND_SECONDS
    # The terminator saw a non-TLS first record and dropped the connection.
    deadline = time.monotonic() + 5
    while "wrong version number" not in tls_broker.stunnel_log.read_text(errors="replace"):
        assert time.monotonic() < deadline, "stunnel did not log the refused plain connection"
        time.sleep(0.1)

"""Producers without a broker: envelope formation, the client's buffer and counters (with an
in-memory stand-in for the Kafka producer), and the simulated traffic."""

from __future__ import annotations

import asyncio
import collections
from typing import Any, ClassVar

import numpy as np
import orjson
import pytest
from aiokafka.errors import KafkaConnectionError

import producers.client
from producers import Batcher, MonitorClient, SyncMonitorClient, generate
from producers.simulate import MIN_WINDOWS, default_rate
from schemas.codec import decode_message
from schemas.topics import partition_for

START = 1_700_000_040.0


def _prediction(i: int, **extra: Any) -> dict[str, Any]:
    return {
        "event_id": f"e{i}",
        "model": "m",
        "ts": START + i,
        "task": "binary",
        "prediction": i % 2,
        **extra,
    }


def _label(i: int) -> dict[str, Any]:
    return {"event_id": f"e{i}", "ts": START + i + 5, "label": i % 2}


# --- Batcher ----------------------------------------------------------------------------------


def test_predictions_and_labels_of_one_event_id_share_a_partition() -> None:
    batcher = Batcher(max_events=50, max_bytes=100_000)
    where: dict[str, dict[str, int]] = {"prediction": {}, "label": {}}
    for kind, events in (
        ("prediction", [_prediction(i) for i in range(1000)]),
        ("label", [_label(i) for i in range(1000)]),
    ):
        envelopes, failed = batcher.build(kind, events, partitions=6)
        assert not failed
        for envelope in envelopes:
            assert envelope.key is None and envelope.count <= 50
            for event in decode_message(envelope.value, kind).events:
                where[kind][event.event_id] = envelope.partition
    assert where["prediction"] == where["label"]
    assert all(partition_for(eid, 6) == p for eid, p in where["label"].items())
    assert len(set(where["label"].values())) == 6


def test_envelopes_keep_every_event_once_and_in_order_within_the_byte_bound() -> None:
    events = [_prediction(i, features={"pixels": [float(i)] * 64}) for i in range(2000)]
    batcher = Batcher(max_events=500, max_bytes=20_000)
    envelopes, failed = batcher.build("prediction", events, partitions=3)
    assert not failed
    assert all(len(e.value) <= 20_000 and e.count <= 500 for e in envelopes)
    per_partition: dict[int | None, list[str]] = collections.defaultdict(list)
    for envelope in envelopes:
        decoded = decode_message(envelope.value, "prediction")
        assert not decoded.rejected and len(decoded.events) == envelope.count
        per_partition[envelope.partition] += [e.event_id for e in decoded.events]
    for partition, ids in per_partition.items():
        assert ids == [
            e["event_id"] for e in events if partition_for(e["event_id"], 3) == partition
        ]


def test_an_event_too_large_or_not_encodable_fails_alone() -> None:
    events = [
        _prediction(0),
        _prediction(1, features={"blob": "x" * 5000}),
        _prediction(2, features={"bad": object()}),
        _prediction(3),
    ]
    envelopes, failed = Batcher(max_events=10, max_bytes=2000).build("prediction", events, 1)
    assert sorted(e["event_id"] for e, _ in failed) == ["e1", "e2"]
    assert "exceed max_batch_bytes" in {e["event_id"]: r for e, r in failed}["e1"]
    assert sum(e.count for e in envelopes) == 2


def test_other_kinds_are_keyed_by_model() -> None:
    steps = [
        {"run_id": "r", "model": m, "ts": START, "step": i, "metrics": {"loss": 1.0}}
        for i, m in enumerate(["a", "b", "a"])
    ]
    envelopes, _ = Batcher().build("training", steps)
    assert sorted((e.key, e.count, e.partition) for e in envelopes) == [
        (b"a", 2, None),
        (b"b", 1, None),
    ]


# --- MonitorClient with an in-memory producer ------------------------------------------------


class MemoryProducer:
    """Stands in for AIOKafkaProducer: acks at once, fails ``fail`` sends first, or never acks."""

    instances: ClassVar[list[MemoryProducer]] = []

    def __init__(self, **config: Any) -> None:
        self.config = config
        self.sent: list[tuple[str, bytes, bytes | None, int | None]] = []
        self.fail = 0
        self.hang = False
        MemoryProducer.instances.append(self)

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    async def partitions_for(self, topic: str) -> set[int]:
        return {0, 1, 2, 3}

    async def send(
        self, topic: str, value: bytes, key: bytes | None = None, partition: int | None = None
    ) -> asyncio.Future[None]:
        ack: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self.fail:
            self.fail -= 1
            ack.set_exception(KafkaConnectionError("down"))
        elif not self.hang:
            self.sent.append((topic, value, key, partition))
            ack.set_result(None)
        return ack


@pytest.fixture
def memory_producer(monkeypatch: pytest.MonkeyPatch) -> type[MemoryProducer]:
    MemoryProducer.instances.clear()
    monkeypatch.setattr(producers.client, "AIOKafkaProducer", MemoryProducer)
    return MemoryProducer


def test_client_sends_envelopes_to_the_event_id_partition(
    memory_producer: type[MemoryProducer],
) -> None:
    async def run() -> dict[str, int]:
        async with MonitorClient(
            "unused:9092", max_batch_events=40, kafka_config={"linger_ms": 7}
        ) as c:
            for i in range(300):
                assert c.log_prediction(
                    event_id=f"e{i}",
                    model="m",
                    task="multiclass",
                    prediction=np.int64(i % 3),
                    probabilities={0: 0.2, 1: 0.5, 2: 0.3},
                )
                assert c.log_label(event_id=f"e{i}", label=i % 3)
            await c.flush()
            return c.stats

    stats = asyncio.run(run())
    producer = memory_producer.instances[0]
    assert producer.config["enable_idempotence"] is False and producer.config["acks"] == "all"
    assert producer.config["linger_ms"] == 7 and producer.config["max_request_size"] > 900_000
    seen = collections.Counter()
    for topic, value, key, partition in producer.sent:
        kind = "prediction" if topic == "modelmon.predictions" else "label"
        decoded = decode_message(value, kind)
        assert not decoded.rejected and key is None
        for event in decoded.events:
            assert partition == partition_for(event.event_id, 4)
            seen[(kind, event.event_id)] += 1
    assert len(seen) == 600 and set(seen.values()) == {1}
    assert stats["sent_events"] == 600 and stats["buffered"] == 0
    assert stats["sent_messages"] == len(producer.sent)


def test_invalid_events_are_rejected_and_counted_without_raising(
    memory_producer: type[MemoryProducer], caplog: pytest.LogCaptureFixture
) -> None:
    async def run() -> tuple[list[bool], dict[str, int]]:
        async with MonitorClient("unused:9092") as c:
            results = [
                c.log_prediction(event_id="", model="m", task="binary", prediction=1),
                c.log_prediction(event_id="a", model="m", task="psychic", prediction=1),
                c.log_label(event_id="a", label=None),
                c.log_interaction(event_id="a", model="m", kind="hover"),
                c.log_training_step(run_id="r", model="m", step=1, metrics={}),
                c.log_training_step(run_id="r", model="m", step=1, metrics={"loss": float("nan")}),
            ]
            await c.flush()
            return results, c.stats

    results, stats = asyncio.run(run())
    assert results == [False] * 5 + [True]
    assert stats["rejected_events"] == 5 and stats["sent_events"] == 1
    assert "task: unknown task type 'psychic'" in caplog.text


def test_a_full_buffer_drops_new_events_and_close_gives_up(
    memory_producer: type[MemoryProducer],
) -> None:
    async def run() -> tuple[list[bool], dict[str, int], dict[str, int]]:
        c = MonitorClient("unused:9092", max_buffered_events=100, linger_ms=1)
        await c.start()
        memory_producer.instances[0].hang = True
        accepted = [c.log_label(event_id=f"e{i}", label=1) for i in range(150)]
        await asyncio.sleep(0.05)
        accepted += [c.log_label(event_id="late", label=1)]
        full = c.stats
        await c.close(timeout=0.1)
        return accepted, full, c.stats

    accepted, full, closed = asyncio.run(run())
    assert accepted == [True] * 100 + [False] * 51
    assert full["buffered"] == 100 and full["dropped_events"] == 51
    assert closed["buffered"] == 0 and closed["dropped_events"] == 151


def test_failed_sends_are_retried(memory_producer: type[MemoryProducer]) -> None:
    async def run() -> dict[str, int]:
        async with MonitorClient("unused:9092") as c:
            memory_producer.instances[0].fail = 2
            for i in range(10):
                c.log_label(event_id=f"e{i}", label=1)
            await c.flush()
            return c.stats

    stats = asyncio.run(run())
    assert stats["send_errors"] == 2 and stats["sent_events"] == 10 and stats["dropped_events"] == 0


def test_logging_before_start_is_a_programmer_error() -> None:
    with pytest.raises(RuntimeError, match="not started"):
        MonitorClient("unused:9092").log_label(event_id="a", label=1)
    with pytest.raises(RuntimeError, match="not started"):
        SyncMonitorClient("unused:9092").log_label(event_id="a", label=1)


def test_sync_client_hands_events_to_its_loop(memory_producer: type[MemoryProducer]) -> None:
    with SyncMonitorClient("unused:9092", max_batch_events=64) as c:
        assert not c.log_label(event_id="a", label=None)
        for i in range(1000):
            assert c.log_prediction(event_id=f"e{i}", model="m", task="binary", prediction=1)
        c.flush(timeout=10)
        stats = c.stats
    assert stats["sent_events"] == 1000 and stats["rejected_events"] == 1 and stats["buffered"] == 0


# --- simulated traffic ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def traffic() -> list[tuple[str, dict[str, Any]]]:
    return list(generate(events=20_000, seed=3, start_ts=START))


def test_generate_is_deterministic_for_a_seed(traffic: list[tuple[str, dict[str, Any]]]) -> None:
    again = list(generate(events=2000, seed=3, start_ts=START))
    assert again == list(generate(events=2000, seed=3, start_ts=START))
    assert again != list(generate(events=2000, seed=4, start_ts=START))


def test_generated_events_are_valid(traffic: list[tuple[str, dict[str, Any]]]) -> None:
    assert all(producers.client.validate(kind, event) is None for kind, event in traffic[:3000])
    kind, first = traffic[0]
    assert kind == "prediction" and first["ts"] == START and len(first["features"]["pixels"]) == 64
    assert first["segment"]["source"] in ("scanner-a", "scanner-b")


def test_labels_are_late_missing_and_duplicated_at_the_configured_rates(
    traffic: list[tuple[str, dict[str, Any]]],
) -> None:
    predicted_at: dict[str, float] = {}
    scraped: list[int] = []  # positions of the scraper's predictions
    labels: collections.Counter[str] = collections.Counter()
    clock = 0.0
    for kind, event in traffic:
        if kind == "prediction":
            if event["client_id"] == "scraper":
                scraped.append(len(predicted_at))
            predicted_at[event["event_id"]] = clock = event["ts"]
            continue
        assert 5.0 <= event["ts"] - predicted_at[event["event_id"]] <= 120.0
        if len(predicted_at) < 20_000:  # released just before the first later prediction
            assert clock < event["ts"] <= clock + 1 / default_rate(20_000) + 1e-6
        labels[event["event_id"]] += 1
    assert len(predicted_at) == 20_000
    # The scraper probes from a quarter of the run on, at 2 %, and is never labelled.
    assert min(scraped) >= 5_000 and abs(len(scraped) / 15_000 - 0.02) < 0.005
    ids = list(predicted_at)
    assert not any(ids[i] in labels for i in scraped)
    served = 20_000 - len(scraped)
    missing = 1 - len(labels) / served
    duplicated = sum(n == 2 for n in labels.values()) / served
    assert abs(missing - 0.05) < 0.01 and abs(duplicated - 0.02) < 0.006
    assert set(labels.values()) <= {1, 2}
    assert traffic[-1][1]["ts"] == max(event["ts"] for _, event in traffic)


def test_degradation_lowers_accuracy_in_the_second_half(
    traffic: list[tuple[str, dict[str, Any]]],
) -> None:
    truth = {e["event_id"]: str(e["label"]) for kind, e in traffic if kind == "label"}
    predictions = [e for kind, e in traffic if kind == "prediction"]

    def accuracy(part: list[dict[str, Any]]) -> float:
        scored = [p["prediction"] == truth[p["event_id"]] for p in part if p["event_id"] in truth]
        return sum(scored) / len(scored)

    before, after = accuracy(predictions[:10_000]), accuracy(predictions[10_000:])
    assert before > 0.9 and after < before - 0.08
    noisy = np.mean([p["features"]["mean_intensity"] for p in predictions[10_000:]])
    clean = np.mean([p["features"]["mean_intensity"] for p in predictions[:10_000]])
    assert noisy - clean > 0.5


@pytest.mark.parametrize("events", [300, 3000, 20_000])
def test_any_number_of_events_spans_windows_before_and_after_the_degradation(
    events: int, traffic: list[tuple[str, dict[str, Any]]]
) -> None:
    run = traffic if events == 20_000 else generate(events=events, seed=3, start_ts=START)
    predictions = [e for kind, e in run if kind == "prediction"]
    minute = [int(p["ts"] // 60) for p in predictions]
    noisy_from = minute[events // 2]  # the noise starts halfway, within this window
    assert len(set(minute)) >= MIN_WINDOWS
    assert len({m for m in minute if m < noisy_from}) >= MIN_WINDOWS // 2 - 1
    assert len({m for m in minute if m > noisy_from}) >= MIN_WINDOWS // 2 - 1


def test_envelopes_of_generated_traffic_stay_decodable(
    traffic: list[tuple[str, dict[str, Any]]],
) -> None:
    predictions = [e for kind, e in traffic[:2000] if kind == "prediction"]
    envelopes, failed = Batcher().build("prediction", predictions, partitions=2)
    assert not failed
    assert sum(len(decode_message(e.value, "prediction").events) for e in envelopes) == len(
        predictions
    )
    assert orjson.loads(envelopes[0].value)["kind"] == "prediction"

"""The asyncio producer client: validate, buffer (bounded), batch into envelopes, send.

``log_*`` never blocks and never raises for a bad event or a down broker: it validates the
event against its contract, appends it to an in-memory buffer and returns ``True``; an
invalid event or a full buffer is counted and answered with ``False``. A background task
packs buffered events into envelopes (one Kafka message holds many events) and sends them.

Predictions and labels are grouped by ``partition_for(event_id, n)`` and each envelope goes to
that explicit partition, so a prediction and its label always meet in the same partition.

>>> batcher = Batcher(max_events=2, max_bytes=10_000)
>>> labels = [{"event_id": f"e{i}", "ts": 1.0, "label": 1} for i in range(3)]
>>> envelopes, failed = batcher.build("label", labels, partitions=1)
>>> [(e.partition, e.count) for e in envelopes], failed
([(0, 2), (0, 1)], [])
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import numbers
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Self

import numpy as np
from aiokafka import AIOKafkaProducer

from schemas.codec import encode_envelope
from schemas.events import DECODERS, SchemaError
from schemas.topics import Topics, partition_for

log = logging.getLogger(__name__)

PARTITIONED_KINDS: Final = frozenset({"prediction", "label"})
"""Kinds joined on ``event_id``: their envelopes are formed per partition of the event_id hash."""

_REQUEST_OVERHEAD: Final = 64 * 1024


@dataclass(frozen=True, slots=True)
class Envelope:
    """One Kafka message: ``count`` events of one kind, encoded, with where it goes.

    ``partition`` is set for partitioned kinds (and ``key`` is None); otherwise ``key`` (the
    model name) lets the producer's partitioner choose.
    """

    kind: str
    partition: int | None
    key: bytes | None
    value: bytes
    count: int


class Batcher:
    """Pure envelope formation: group events, bound each envelope by count and by bytes.

    Parameters
    ----------
    max_events
        Most events in one envelope.
    max_bytes
        Largest encoded envelope; a bigger one is split. An event that alone exceeds it, or
        that cannot be encoded as JSON, is returned as failed (with the reason) instead.

    >>> batcher = Batcher(max_events=500, max_bytes=900_000)
    >>> preds = [{"event_id": str(i), "model": "m", "ts": 1.0, "task": "binary",
    ...           "prediction": 1} for i in range(10)]
    >>> envelopes, _ = batcher.build("prediction", preds, partitions=3)
    >>> sum(e.count for e in envelopes), sorted({e.partition for e in envelopes})
    (10, [0, 1, 2])
    """

    def __init__(self, max_events: int = 500, max_bytes: int = 900_000) -> None:
        if max_events < 1 or max_bytes < 1:
            raise ValueError("max_events and max_bytes must be positive")
        self.max_events = max_events
        self.max_bytes = max_bytes

    def build(
        self, kind: str, events: Sequence[dict[str, Any]], partitions: int | None = None
    ) -> tuple[list[Envelope], list[tuple[dict[str, Any], str]]]:
        """Envelopes for ``events`` of one kind, and the ``(event, reason)`` that cannot go.

        ``partitions`` (the topic's partition count) is required for predictions and labels.
        """
        envelopes: list[Envelope] = []
        failed: list[tuple[dict[str, Any], str]] = []
        for (partition, key), group in self._groups(kind, events, partitions).items():
            for start in range(0, len(group), self.max_events):
                chunk = group[start : start + self.max_events]
                for value, count in self._encode_bounded(kind, chunk, failed):
                    envelopes.append(Envelope(kind, partition, key, value, count))
        return envelopes, failed

    @staticmethod
    def _groups(
        kind: str, events: Sequence[dict[str, Any]], partitions: int | None
    ) -> dict[tuple[int | None, bytes | None], list[dict[str, Any]]]:
        groups: dict[tuple[int | None, bytes | None], list[dict[str, Any]]] = {}
        if kind in PARTITIONED_KINDS:
            if not partitions:
                raise ValueError(f"{kind} envelopes need the topic's partition count")
            for event in events:
                groups.setdefault((partition_for(event["event_id"], partitions), None), []).append(
                    event
                )
        else:
            for event in events:
                groups.setdefault((None, event["model"].encode()), []).append(event)
        return groups

    def _encode_bounded(
        self, kind: str, events: list[dict[str, Any]], failed: list[tuple[dict[str, Any], str]]
    ) -> Iterator[tuple[bytes, int]]:
        try:
            value = encode_envelope(kind, events)
        except TypeError as exc:  # orjson.JSONEncodeError: find the culprits one by one
            if len(events) == 1:
                failed.append((events[0], f"not JSON-encodable: {exc}"))
                return
            for event in events:
                yield from self._encode_bounded(kind, [event], failed)
            return
        if len(value) <= self.max_bytes:
            yield value, len(events)
        elif len(events) == 1:
            failed.append(
                (events[0], f"{len(value)} bytes exceed max_batch_bytes={self.max_bytes}")
            )
        else:
            parts = min(len(events), math.ceil(len(value) / self.max_bytes))
            size = math.ceil(len(events) / parts)
            for start in range(0, len(events), size):
                yield from self._encode_bounded(kind, events[start : start + size], failed)


def validate(kind: str, event: Mapping[str, Any]) -> str | None:
    """The reason ``event`` breaks the contract of ``kind``, or None when it is valid.

    >>> validate("label", {"event_id": "e1", "ts": 1.0})
    'label: required field is missing'
    """
    try:
        DECODERS[kind](event)
    except SchemaError as exc:
        return str(exc)
    return None


def prediction_event(
    event_id: str,
    model: str,
    task: str,
    prediction: Any,
    ts: float | str | None = None,
    model_version: str = "",
    score: float | None = None,
    probabilities: Mapping[str, float] | None = None,
    features: Mapping[str, Any] | None = None,
    segment: Mapping[str, str | int] | str | None = None,
    latency_ms: float | None = None,
    client_id: str | None = None,
) -> dict[str, Any]:
    """The prediction event object (unset optional fields left out to keep messages small)."""
    event: dict[str, Any] = {
        "event_id": event_id,
        "model": model,
        "model_version": model_version,
        "ts": time.time() if ts is None else ts,
        "task": task,
        "prediction": _plain(prediction),
    }
    if score is not None:
        event["score"] = _plain(score)
    if probabilities is not None:
        event["probabilities"] = {
            k if k.__class__ is str else _class_key(k): p for k, p in probabilities.items()
        }
    if features is not None:
        event["features"] = features
    if segment is not None:
        event["segment"] = segment
    if latency_ms is not None:
        event["latency_ms"] = _plain(latency_ms)
    if client_id is not None:
        event["client_id"] = client_id
    return event


def label_event(
    event_id: str, label: Any, ts: float | str | None = None, model: str | None = None
) -> dict[str, Any]:
    """The label event object."""
    event: dict[str, Any] = {
        "event_id": event_id,
        "ts": time.time() if ts is None else ts,
        "label": _plain(label),
    }
    if model is not None:
        event["model"] = model
    return event


def interaction_event(
    event_id: str,
    model: str,
    kind: str,
    ts: float | str | None = None,
    variant: str = "",
    value: float = 1.0,
    prediction_id: str | None = None,
    segment: Mapping[str, str | int] | str | None = None,
) -> dict[str, Any]:
    """The interaction event object."""
    event: dict[str, Any] = {
        "event_id": event_id,
        "model": model,
        "ts": time.time() if ts is None else ts,
        "kind": kind,
        "variant": variant,
        "value": value,
    }
    if prediction_id is not None:
        event["prediction_id"] = prediction_id
    if segment is not None:
        event["segment"] = segment
    return event


def training_event(
    run_id: str,
    model: str,
    step: int,
    metrics: Mapping[str, float],
    ts: float | str | None = None,
    epoch: int | None = None,
) -> dict[str, Any]:
    """The training-step event object; non-finite metric values travel as strings ("nan")."""
    event: dict[str, Any] = {
        "run_id": run_id,
        "model": model,
        "ts": time.time() if ts is None else ts,
        "step": step,
        "metrics": {k: v if _finite(v) else str(float(v)) for k, v in metrics.items()},
    }
    if epoch is not None:
        event["epoch"] = epoch
    return event


def _class_key(value: Any) -> Any:
    """A JSON object key for a class label given as a number or bool (as the contract reads it)."""
    if isinstance(value, bool | np.bool_):
        return "1" if value else "0"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value) if isinstance(value, numbers.Integral) else value


def _plain(value: Any) -> Any:
    """A numpy scalar (what ``model.predict(x)[i]`` gives) as the Python number it holds."""
    return value.item() if isinstance(value, np.generic) else value


def _finite(value: Any) -> bool:
    return not isinstance(value, float) or math.isfinite(value)


class MonitorClient:
    """Asyncio client that model servers and label sources log events with.

    Parameters
    ----------
    bootstrap_servers
        Kafka bootstrap servers, ``host:port[,host:port]``.
    topic_prefix
        Prefix of the input topics (see :class:`schemas.topics.Topics`).
    max_batch_events, max_batch_bytes
        Bounds of one envelope (one Kafka message).
    linger_ms
        Longest time an event waits in the buffer before its envelope is sent.
    max_buffered_events
        Events held in memory (waiting or in flight); beyond it new events are dropped.
    kafka_config
        Passed unchanged to ``AIOKafkaProducer`` (security_protocol, sasl_*, ssl_context, ...).
    send_retries
        Attempts per envelope before its events are given up (and counted as dropped).

    Usage::

        client = MonitorClient("localhost:9092")
        await client.start()
        client.log_prediction(event_id="e1", model="digits", task="multiclass", prediction=3)
        await client.close()
    """

    def __init__(
        self,
        bootstrap_servers: str,
        *,
        topic_prefix: str = "modelmon.",
        max_batch_events: int = 500,
        max_batch_bytes: int = 900_000,
        linger_ms: int = 50,
        max_buffered_events: int = 100_000,
        kafka_config: Mapping[str, Any] | None = None,
        send_retries: int = 5,
    ) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.topic_prefix = topic_prefix
        self.max_batch_events = max_batch_events
        self.max_batch_bytes = max_batch_bytes
        self.linger_ms = linger_ms
        self.max_buffered_events = max_buffered_events
        self.kafka_config = dict(kafka_config or {})
        self.send_retries = send_retries
        self._topics = Topics(topic_prefix)
        self._batcher = Batcher(max_batch_events, max_batch_bytes)
        self._pending: dict[str, list[dict[str, Any]]] = {kind: [] for kind in DECODERS}
        self._partitions: dict[str, int] = {}
        self._inflight: set[asyncio.Task[None]] = set()
        self._producer: AIOKafkaProducer | None = None
        self._runner: asyncio.Task[None] | None = None
        self._has_data = asyncio.Event()
        self._urgent = asyncio.Event()
        self._buffered = 0
        self._sent_events = 0
        self._sent_messages = 0
        self._dropped = 0
        self._rejected = 0
        self._send_errors = 0

    # --- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect the Kafka producer and start the background sender."""
        config: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap_servers,
            "acks": "all",
            "enable_idempotence": False,
            "max_request_size": self.max_batch_bytes + _REQUEST_OVERHEAD,
            **self.kafka_config,
        }
        self._producer = AIOKafkaProducer(**config)
        await self._producer.start()
        self._runner = asyncio.create_task(self._run(), name="modelmon-producer")

    async def flush(self) -> None:
        """Send every buffered event now and wait until each is acknowledged or given up."""
        self._require_started()
        while self._buffered > 0:
            self._urgent.set()
            self._has_data.set()
            await asyncio.sleep(0.005)

    async def close(self, timeout: float | None = None) -> None:
        """Flush, then stop the sender and the Kafka producer.

        With a ``timeout`` (seconds), events still unacknowledged by then are given up and
        counted as dropped, so closing against a dead broker ends.
        """
        if self._producer is None:
            return
        try:
            await asyncio.wait_for(self.flush(), timeout)
        except TimeoutError:
            self._pending = {kind: [] for kind in DECODERS}
            self._give_up(self._buffered, f"still unsent when closing after {timeout}s")
        if self._runner is not None:
            self._runner.cancel()
            await asyncio.gather(self._runner, return_exceptions=True)
            self._runner = None
        await self._producer.stop()
        self._producer = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @property
    def buffered(self) -> int:
        """Events waiting or in flight (what ``max_buffered_events`` bounds)."""
        return self._buffered

    @property
    def stats(self) -> dict[str, int]:
        """Counters: ``buffered`` (waiting or in flight), ``sent_events``, ``sent_messages``,
        ``dropped_events`` (buffer full, or given up after retries), ``rejected_events``
        (invalid or too large to send), ``send_errors`` (failed send attempts)."""
        return {
            "buffered": self._buffered,
            "sent_events": self._sent_events,
            "sent_messages": self._sent_messages,
            "dropped_events": self._dropped,
            "rejected_events": self._rejected,
            "send_errors": self._send_errors,
        }

    # --- logging --------------------------------------------------------------------------

    def log_prediction(
        self,
        *,
        event_id: str,
        model: str,
        task: str,
        prediction: Any,
        ts: float | str | None = None,
        model_version: str = "",
        score: float | None = None,
        probabilities: Mapping[str, float] | None = None,
        features: Mapping[str, Any] | None = None,
        segment: Mapping[str, str | int] | str | None = None,
        latency_ms: float | None = None,
        client_id: str | None = None,
    ) -> bool:
        """Log one model output; ``ts`` defaults to now (epoch seconds). False if not kept."""
        return self.log(
            "prediction",
            prediction_event(
                event_id,
                model,
                task,
                prediction,
                ts,
                model_version,
                score,
                probabilities,
                features,
                segment,
                latency_ms,
                client_id,
            ),
        )

    def log_label(
        self, *, event_id: str, label: Any, ts: float | str | None = None, model: str | None = None
    ) -> bool:
        """Log the ground truth of the prediction with the same ``event_id``."""
        return self.log("label", label_event(event_id, label, ts, model))

    def log_interaction(
        self,
        *,
        event_id: str,
        model: str,
        kind: str,
        ts: float | str | None = None,
        variant: str = "",
        value: float = 1.0,
        prediction_id: str | None = None,
        segment: Mapping[str, str | int] | str | None = None,
    ) -> bool:
        """Log a business interaction (impression, click, conversion)."""
        return self.log(
            "interaction",
            interaction_event(event_id, model, kind, ts, variant, value, prediction_id, segment),
        )

    def log_training_step(
        self,
        *,
        run_id: str,
        model: str,
        step: int,
        metrics: Mapping[str, float],
        ts: float | str | None = None,
        epoch: int | None = None,
    ) -> bool:
        """Log one training step's metrics."""
        return self.log("training", training_event(run_id, model, step, metrics, ts, epoch))

    def log(self, kind: str, event: dict[str, Any]) -> bool:
        """Validate and buffer a ready-made event object of ``kind``."""
        self._require_started()
        reason = validate(kind, event)
        if reason is not None:
            self._reject(kind, reason)
            return False
        if self._buffered >= self.max_buffered_events:
            self._dropped += 1
            return False
        self.enqueue(kind, event)
        return True

    def enqueue(self, kind: str, event: dict[str, Any]) -> None:
        """Buffer an already validated event, without the bound check (loop thread only)."""
        pending = self._pending[kind]
        pending.append(event)
        self._buffered += 1
        if len(pending) == 1:
            self._has_data.set()
        if len(pending) >= self.max_batch_events:
            self._urgent.set()

    def _reject(self, kind: str, reason: str) -> None:
        self._rejected += 1
        log.warning("rejected %s event: %s", kind, reason)

    def _require_started(self) -> None:
        if self._producer is None:
            raise RuntimeError("MonitorClient is not started: await client.start() first")

    # --- sending --------------------------------------------------------------------------

    async def _run(self) -> None:
        """The one task that hands envelopes to the producer, so each partition receives its
        envelopes in the order the events were logged (the pipeline's watermarks rely on it)."""
        linger = self.linger_ms / 1000
        while True:
            await self._has_data.wait()
            if linger > 0 and not self._urgent.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._urgent.wait(), linger)
            self._has_data.clear()
            self._urgent.clear()
            for kind, events in self._pending.items():
                if events:
                    self._pending[kind] = []
                    await self._deliver(kind, events)

    async def _deliver(self, kind: str, events: list[dict[str, Any]]) -> None:
        topic = self._topics.for_kind(kind)
        partitions = None
        if kind in PARTITIONED_KINDS:
            partitions = await self._with_retries(self._partition_count, topic)
            if partitions is None:
                self._give_up(len(events), f"no partition metadata for {topic}")
                return
        envelopes, failed = self._batcher.build(kind, events, partitions)
        self._buffered -= len(failed)
        for _, reason in failed:
            self._reject(kind, reason)
        assert self._producer is not None
        for envelope in envelopes:
            try:
                ack: asyncio.Future[Any] | None = await self._producer.send(
                    topic, envelope.value, key=envelope.key, partition=envelope.partition
                )
            except Exception as exc:
                log.warning("send to %s failed: %r", topic, exc)
                ack = None
            task = asyncio.create_task(self._settle(topic, envelope, ack))
            self._inflight.add(task)
            task.add_done_callback(self._inflight.discard)

    async def _settle(
        self, topic: str, envelope: Envelope, ack: asyncio.Future[Any] | None
    ) -> None:
        """Wait for the broker's ack; a failed envelope is retried on its own (it may then land
        after later ones: the pipeline counts such events as late if they are)."""
        try:
            if ack is None:
                raise ConnectionError("not handed to the producer")
            await ack
        except Exception:
            self._send_errors += 1
            if await self._with_retries(self._send_once, topic, envelope) is None:
                self._give_up(
                    envelope.count, f"{self.send_retries} attempts to send to {topic} failed"
                )
                return
        self._buffered -= envelope.count
        self._sent_events += envelope.count
        self._sent_messages += 1

    async def _send_once(self, topic: str, envelope: Envelope) -> bool:
        assert self._producer is not None
        ack = await self._producer.send(
            topic, envelope.value, key=envelope.key, partition=envelope.partition
        )
        await ack
        return True

    async def _partition_count(self, topic: str) -> int:
        if topic not in self._partitions:
            assert self._producer is not None
            self._partitions[topic] = len(await self._producer.partitions_for(topic))
        return self._partitions[topic]

    async def _with_retries(self, action: Any, *args: Any) -> Any:
        """``await action(*args)``, retried with exponential backoff; None when all fail."""
        delay = 0.2
        for attempt in range(1, self.send_retries + 1):
            try:
                return await action(*args)
            except Exception as exc:
                self._send_errors += 1
                log.warning("send attempt %d/%d failed: %r", attempt, self.send_retries, exc)
                if attempt < self.send_retries:
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 5.0)
        return None

    def _give_up(self, n: int, why: str) -> None:
        self._buffered -= n
        self._dropped += n
        if n:
            log.error("dropped %d events: %s", n, why)

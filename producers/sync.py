"""The client for code without an event loop: a :class:`MonitorClient` on a daemon thread.

``log_*`` validates in the caller's thread and hands the event to the client's loop through a
thread-safe queue; it never blocks and never raises for a bad event or a down broker.

Usage::

    with SyncMonitorClient("localhost:9092") as monitor:
        monitor.log_prediction(event_id="e1", model="digits", task="multiclass", prediction=3)
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import deque
from collections.abc import Mapping
from typing import Any, Self

from producers.client import (
    MonitorClient,
    interaction_event,
    label_event,
    prediction_event,
    training_event,
    validate,
)

log = logging.getLogger(__name__)


class SyncMonitorClient:
    """Thread-safe, non-blocking twin of :class:`MonitorClient` for synchronous servers.

    Takes the same arguments as :class:`MonitorClient`. Call :meth:`start` (or use it as a
    context manager) before logging, and :meth:`close` at shutdown to send what is buffered.
    """

    def __init__(self, bootstrap_servers: str, **options: Any) -> None:
        self._client = MonitorClient(bootstrap_servers, **options)
        self._max_buffered = self._client.max_buffered_events
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._inbox: deque[tuple[str, dict[str, Any]]] = deque()
        self._scheduled = False
        self._lock = threading.Lock()
        self._rejected = 0
        self._dropped = 0

    # --- lifecycle ------------------------------------------------------------------------

    def start(self, timeout: float = 30.0) -> Self:
        """Start the loop thread and connect; raises if the broker is not reached in time."""
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name="modelmon-producer", daemon=True)
        thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self._client.start(), loop).result(timeout)
        except BaseException:
            _stop_loop(loop, thread)
            raise
        self._loop, self._thread = loop, thread
        return self

    def flush(self, timeout: float | None = 60.0) -> None:
        """Send everything logged so far and wait for the broker's acks (TimeoutError if not
        done within ``timeout`` seconds; the events stay buffered)."""
        self._call(self._flush(), timeout)

    def close(self, timeout: float | None = 60.0) -> None:
        """Flush for up to ``timeout`` seconds (what is still unsent then is dropped and
        counted), then stop the client and its thread."""
        if self._loop is None or self._thread is None:
            return
        try:
            self._call(self._close(timeout), None)
        finally:
            _stop_loop(self._loop, self._thread)
            self._loop = self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def stats(self) -> dict[str, int]:
        """The counters of :attr:`MonitorClient.stats`, including events still in hand-over."""
        stats = self._client.stats
        stats["buffered"] += len(self._inbox)
        stats["rejected_events"] += self._rejected
        stats["dropped_events"] += self._dropped
        return stats

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
        """See :meth:`MonitorClient.log_prediction`."""
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
        """See :meth:`MonitorClient.log_label`."""
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
        """See :meth:`MonitorClient.log_interaction`."""
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
        """See :meth:`MonitorClient.log_training_step`."""
        return self.log("training", training_event(run_id, model, step, metrics, ts, epoch))

    def log(self, kind: str, event: dict[str, Any]) -> bool:
        """Validate a ready-made event object of ``kind`` and hand it to the loop thread."""
        loop = self._loop
        if loop is None:
            raise RuntimeError("SyncMonitorClient is not started: call start() first")
        reason = validate(kind, event)
        if reason is not None:
            with self._lock:
                self._rejected += 1
            log.warning("rejected %s event: %s", kind, reason)
            return False
        if len(self._inbox) + self._client.buffered >= self._max_buffered:
            with self._lock:
                self._dropped += 1
            return False
        self._inbox.append((kind, event))
        # One wake-up per hand-over batch, not per event: _take_inbox clears the flag before
        # it drains, so an event appended after the drain schedules the next one.
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon_threadsafe(self._take_inbox)
        return True

    # --- loop side ------------------------------------------------------------------------

    def _take_inbox(self) -> None:
        self._scheduled = False
        inbox, enqueue = self._inbox, self._client.enqueue
        while inbox:
            enqueue(*inbox.popleft())

    async def _flush(self) -> None:
        self._take_inbox()
        await self._client.flush()

    async def _close(self, timeout: float | None) -> None:
        self._take_inbox()
        await self._client.close(timeout)

    def _call(self, coro: Any, timeout: float | None) -> None:
        if self._loop is None:
            coro.close()
            raise RuntimeError("SyncMonitorClient is not started: call start() first")
        asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)


def _stop_loop(loop: asyncio.AbstractEventLoop, thread: threading.Thread) -> None:
    loop.call_soon_threadsafe(loop.stop)
    thread.join()
    loop.close()

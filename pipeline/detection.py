"""Online drift detectors over two per-event streams of one partition, in a canonical order.

- ``score``: each prediction's score (binary: P(label = 1); multiclass: the top probability),
  in (prediction ts, event_id) order, released once the prediction watermark passed it.
- ``error``: 1 if a joined prediction was wrong, else 0, in (label ts, event_id) order, for
  pairs whose prediction is not younger than its label; released once both watermarks passed
  the label's ts. No non-late pair can sort before a released one after that, so the sequence
  each detector sees depends on the events only — not on how the two topics interleave, nor on
  restarts: the detectors' state and the last released key travel with the checkpoint, and
  items up to that key are not fed again when a restarted worker re-reads them.

Each partition holds its own detectors: events are spread over partitions by ``event_id``
hash, so each detector watches a uniform sample of a model's traffic.

A detector whose saved state cannot be restored (written by another River version or state
format, or damaged) starts afresh instead of stopping the worker: see :class:`DetectorStreams`.
"""

from __future__ import annotations

import bisect
import logging
from collections.abc import Iterable, Mapping
from typing import Any

import orjson

from pipeline.estimators.detectors import Detector
from pipeline.estimators.family import INSERTED_AT, TIME, Column, Table

log = logging.getLogger(__name__)

STREAMS = ("score", "error")
StreamKey = tuple[str, str, str]  # model, model_version, stream
Item = tuple[int, str, str, str, float]  # ts, event_id, model, model_version, value
Released = tuple[int, str]  # (ts, event_id) of the last item fed


def _read_state(state: Any) -> tuple[dict[str, Released], dict[StreamKey, Mapping[str, Any]]]:
    """The released keys and, per stream, the detector states of a
    :meth:`DetectorStreams.to_state` output; ``ValueError`` saying why if it is not one. The
    detector states themselves are left to :meth:`Detector.from_state`."""
    if not (isinstance(state, Mapping) and set(state) == {"released", "detectors"}):
        raise ValueError("expected a JSON object of 'released' and 'detectors'")
    released, entries = state["released"], state["detectors"]
    if not isinstance(released, Mapping) or not isinstance(entries, list):
        raise ValueError("'released' is not an object or 'detectors' not a list")
    keys: dict[str, Released] = {}
    for stream, key in released.items():
        if not (
            stream in STREAMS
            and isinstance(key, list)
            and len(key) == 2
            and type(key[0]) is int
            and isinstance(key[1], str)
        ):
            raise ValueError(f"released: {stream!r}: {key!r} is not a stream's [ts, event_id]")
        keys[stream] = (key[0], key[1])
    states: dict[StreamKey, Mapping[str, Any]] = {}
    for entry in entries:
        if not (
            isinstance(entry, Mapping)
            and isinstance(entry.get("model"), str)
            and isinstance(entry.get("model_version"), str)
            and entry.get("stream") in STREAMS
            and isinstance(entry.get("state"), Mapping)
        ):
            raise ValueError(f"detectors: {entry!r:.200} is not a stream's detector states")
        stream_key = (entry["model"], entry["model_version"], entry["stream"])
        if stream_key in states:
            raise ValueError(f"detectors: {stream_key} appears twice")
        states[stream_key] = entry["state"]
    return keys, states


class DetectorStreams:
    """Pending items and detectors of one partition.

    Parameters
    ----------
    detectors
        Names of the detectors (keys of :data:`~pipeline.estimators.detectors.DETECTORS`)
        that watch every stream.
    state
        A :meth:`to_state` output to continue from (``None`` or ``{}``: none). Each stream in
        it gets the configured detectors: restored from their saved states, fresh where
        there is none (a detector configured since); saved detectors no longer configured
        are dropped. A detector whose state cannot be restored (written by another River
        version or state format, or damaged) starts afresh, with a warning naming it and
        why; the streams' released keys are kept, so it is fed the items after them, in the
        canonical order. A state that cannot be read as a whole (its released keys unknown)
        restarts every detector of the partition, also with a warning. Either is counted in
        :attr:`resets`; neither raises.

    Examples
    --------
    >>> saved = DetectorStreams(["adwin"])
    >>> saved.push("error", 1_000, "e1", "m", "1", 1.0)
    >>> saved.release("error", 2_000, partition=0)
    []
    >>> state = saved.to_state()
    >>> state["detectors"][0]["state"]["adwin"]["river_version"] = "0.0.1"
    >>> restored = DetectorStreams(["adwin"], state)
    >>> restored.resets, restored.released
    (1, {'error': (1000, 'e1')})
    >>> restored.detectors[("m", "1", "error")]["adwin"].position  # afresh
    0
    """

    def __init__(self, detectors: Iterable[str], state: Any = None) -> None:
        self.names = tuple(detectors)
        self.pending: dict[str, list[Item]] = {s: [] for s in STREAMS}
        self.detectors: dict[StreamKey, dict[str, Detector]] = {}
        self.released: dict[str, Released] = {}
        #: Detectors started afresh because their saved state could not be restored: one per
        #: detector state refused, one for a whole state that could not be read (then all
        #: the partition's detectors restart). Each was logged as a warning.
        self.resets = 0
        if state is not None and state != {}:
            self._restore(state)

    def _restore(self, state: Any) -> None:
        try:
            self.released, saved = _read_state(state)
        except ValueError as exc:
            log.warning(
                "detector state unreadable, every detector of the partition starts afresh: %s",
                exc,
            )
            self.resets += 1
            return
        dropped: set[str] = set()
        for key, states in saved.items():
            self.detectors[key] = {n: self._restored(key, n, states) for n in self.names}
            dropped.update(set(states) - set(self.names))
        if dropped:
            log.info(
                "detectors no longer configured, their saved states dropped: %s", sorted(dropped)
            )

    def _restored(self, key: StreamKey, name: str, states: Mapping[str, Any]) -> Detector:
        if name not in states:
            return Detector(name)
        try:
            detector = Detector.from_state(states[name])
            if detector.name != name:
                raise ValueError(f"it is the state of {detector.name!r}")
            return detector
        except ValueError as exc:
            log.warning(
                "detector %s of model %r version %r, stream %s, starts afresh: "
                "its state cannot be restored: %s",
                name,
                *key,
                exc,
            )
            self.resets += 1
            return Detector(name)

    def push(
        self, stream: str, ts_ms: int, event_id: str, model: str, version: str, value: float
    ) -> None:
        if self.names:
            self.pending[stream].append((ts_ms, event_id, model, version, value))

    def release(self, stream: str, before_ts: int, partition: int) -> list[dict[str, Any]]:
        """Feed every pending item of ``stream`` with ts < ``before_ts``, in order; returns
        one row per detector firing.

        Items are kept in a list sorted here, not a heap: they arrive nearly in order and
        what stays pending is sorted already, so one sort per release costs less than a
        push and a pop per item."""
        pending = self.pending[stream]
        pending.sort()
        cut = bisect.bisect_left(pending, (before_ts,))
        ready, self.pending[stream] = pending[:cut], pending[cut:]
        done = self.released.get(stream)
        if done is not None and ready and ready[0][:2] <= done:
            ready = [item for item in ready if item[:2] > done]  # fed before a restart
        if not ready:
            return []
        self.released[stream] = ready[-1][:2]
        batches: dict[StreamKey, list[Item]] = {}
        for item in ready:
            batches.setdefault((item[2], item[3], stream), []).append(item)
        rows = []
        for key, items in batches.items():
            detectors = self.detectors.get(key)
            if detectors is None:
                detectors = self.detectors[key] = {n: Detector(n) for n in self.names}
            values = [item[4] for item in items]
            for name, detector in detectors.items():
                start = detector.position
                for firing in detector.update(values):
                    ts, event_id = items[firing.position - start][:2]
                    rows.append(
                        {
                            "model": key[0],
                            "model_version": key[1],
                            "partition": partition,
                            "stream": stream,
                            "detector": name,
                            "position": firing.position,
                            "ts": ts,
                            "event_id": event_id,
                            "params": orjson.dumps(firing.params).decode(),
                        }
                    )
        return rows

    def to_state(self) -> dict[str, Any]:
        return {
            "released": {s: list(k) for s, k in self.released.items()},
            "detectors": [
                {
                    "model": k[0],
                    "model_version": k[1],
                    "stream": k[2],
                    "state": {n: d.to_state() for n, d in ds.items()},
                }
                for k, ds in self.detectors.items()
            ],
        }


#: Where the detectors' firings go (``drift_detections``).
DETECTIONS = Table(
    "drift_detections_rows",
    (
        Column("model", "String"),
        Column("model_version", "String"),
        Column("partition", "UInt32"),
        Column("stream", "String"),
        Column("detector", "String"),
        Column("position", "UInt64"),
        Column("ts", TIME),
        Column("event_id", "String"),
        Column("params", "String"),
        INSERTED_AT,
    ),
    ("model", "model_version", "stream", "detector", "partition", "position"),
    engine="ReplacingMergeTree",
)
